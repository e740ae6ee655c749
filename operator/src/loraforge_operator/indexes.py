"""What the in-memory indexes keep of each object, and how handlers reach them.

kopf hands its indexes to handlers as keyword arguments only; the reconcile
loops run outside handlers, so the first event hands them over here. They are
live mappings: kopf updates them in place as events arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import kopf

from .api import Resource
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


def index_owned(label: str, resources: Iterable[Resource], prefix: str, keep: Callable[[Any], Any]) -> None:
    """Index each kind of ``resources`` that carries ``label`` under (namespace, the owner the label names),
    as ``(kind, name, keep(body))``, in an index named ``<prefix><plural>``."""

    def indexer(kind: str):
        async def index(namespace: str, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any):
            return {(namespace, labels[label]): (kind, name, keep(body))}

        return index

    for resource in resources:
        kopf.index(*resource.gvp, labels={label: kopf.PRESENT}, id=f"{prefix}{resource.plural}")(
            indexer(resource.kind)
        )


def on_owned_events(
    label: str, resources: Iterable[Resource], prefix: str, enqueue: Callable[[tuple[str, str]], None]
) -> None:
    """On any event of a kind of ``resources`` that carries ``label``, enqueue the owner the label names."""

    async def event(namespace: str, labels: kopf.Labels, **kwargs: Any) -> None:
        INDEXES.update(kwargs)
        enqueue((namespace, labels[label]))

    for resource in resources:
        kopf.on.event(*resource.gvp, labels={label: kopf.PRESENT}, id=f"{prefix}{resource.plural}")(event)
