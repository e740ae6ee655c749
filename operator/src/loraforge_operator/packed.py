"""Objects kept in memory as compressed JSON.

The operator keeps a copy of every object it reconciles from (each FineTuneJob
and its six children, the serving Deployments, ...) so that a reconcile
compares desired with observed without reading from the API server. As Python
dicts those copies were most of the operator's memory (bench/README.md).
Packed, an object takes a fraction of its dict's memory, and is unpacked (tens
of microseconds) only for the reconcile that reads it. Nothing is dropped: a
hand edit of a child is still seen and put right (a digest of each child would
be smaller still, but blind to such edits).

zlib at level 1: the stdlib, and at a fraction of the default level's cost.
"""

from __future__ import annotations

import json
import zlib
from typing import Any

_LEVEL = 1


class Packed:
    """One JSON object, compressed. Immutable: ``unpack`` gives a fresh copy each time."""

    __slots__ = ("_data",)

    def __init__(self, obj: Any) -> None:
        self._data = zlib.compress(json.dumps(obj, separators=(",", ":")).encode(), _LEVEL)

    def unpack(self) -> Any:
        return json.loads(zlib.decompress(self._data))

    def __repr__(self) -> str:
        return f"Packed({len(self._data)} bytes)"
