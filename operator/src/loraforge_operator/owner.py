"""The custom resource whose children a builder makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from . import api


@dataclass(frozen=True)
class Owner:
    """A loraforge object: its children carry a controller reference to it."""

    name: str
    namespace: str
    uid: str
    kind: ClassVar[str] = ""

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": api.API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
