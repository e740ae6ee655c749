"""What the in-memory indexes keep of each object, and how handlers reach them.

kopf hands its indexes to handlers as keyword arguments only; the reconcile
loops run outside handlers, so the first event hands them over here. They are
live mappings: kopf updates them in place as events arrive.
"""

from __future__ import annotations

from typing import Any

import kopf

from .packed import Packed


def trimmed(body: kopf.Body | dict[str, Any]) -> dict[str, Any]:
    """The object without what reconciling never reads: managedFields are often
    the largest part of an object written with server-side apply."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


def packed(body: kopf.Body | dict[str, Any]) -> Packed:
    """The trimmed object, packed (see packed.py): what the indexes of the many keep."""
    return Packed(trimmed(body))


class Indexes:
    """kopf's indexes, by id, once a handler has been called."""

    def __init__(self) -> None:
        self._by_id: dict[str, kopf.Index] = {}

    def update(self, kwargs: dict[str, Any]) -> None:
        if not self._by_id:
            self._by_id = {k: v for k, v in kwargs.items() if isinstance(v, kopf.Index)}

    def get(self, index: str, key: Any) -> list[Any]:
        """The values ``index`` holds under ``key`` (none while the index is not known yet)."""
        found = self._by_id.get(index)
        return list(found.get(key, [])) if found is not None else []

    def keys(self, index: str) -> list[Any]:
        found = self._by_id.get(index)
        return list(found.keys()) if found is not None else []


INDEXES = Indexes()
