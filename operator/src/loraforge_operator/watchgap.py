"""Objects deleted while a watch was broken are noticed after the re-list.

kopf keeps a watch open per resource. When it breaks for longer than the API
server keeps history ("410 Gone": the resourceVersion has expired), kopf lists
the resource again and goes on watching from there. The re-list brings every
object that exists, but nothing says which objects stopped existing during the
gap: kopf emits no DELETED event for them. The operator's in-memory indexes
would keep them, so a training Job deleted during the gap would still look
present, and the operator would not create it again.

This module wraps kopf's ``continuous_watch`` (the generator of one listing
plus the watch after it) so that it remembers, per resource and namespace, the
objects it has delivered, and after a later listing ends it delivers a DELETED
event for each remembered object that the listing did not contain, before
anything else. What it remembers per object is only what a DELETED event needs:
the kind, the name, the namespace, the uid and the labels (the handlers find
the owner by label).

kopf has no public hook for this; the wrapper replaces one function of its
``_cogs.clients.watching`` module. ``install()`` checks that the function is
there and has the keyword arguments the wrapper passes on, and otherwise logs
a warning and leaves kopf as it is (the operator then has the old limitation,
no more). A unit test pins that it installs against the kopf version in use.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

log = logging.getLogger(__name__)

# (resource, namespace) -> uid -> what a DELETED event needs of an object: its name, namespace,
# resourceVersion and labels, as one compact JSON string. Kept for every object of every watched kind
# (about 10,000 with 1,200 FineTuneJobs): as the object's own metadata dicts it was about 1.4 KiB an
# object, and as tuples of strings a dozen small blocks an object that outlive a burst's transient ones
# and keep the heap it grew to from being given back (bench/README.md).
_known: dict[tuple[Any, Any], dict[str, str]] = {}
# (resource, namespace) -> (apiVersion, kind): the same for every object of one watch.
_kinds: dict[tuple[Any, Any], tuple[Any, Any]] = {}
_PARAMETERS = {"settings", "resource", "namespace", "operator_pause_waiter"}


def _remember(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    kept = [meta.get("name"), meta.get("namespace"), meta.get("resourceVersion"), meta.get("labels") or {}]
    return json.dumps(kept, separators=(",", ":"))


def _skeleton(kinds: tuple[Any, Any], uid: str, seen: str) -> dict[str, Any]:
    """The object a synthesized DELETED event carries."""
    name, namespace, resource_version, labels = json.loads(seen)
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = labels
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": kinds[0], "kind": kinds[1], "metadata": meta}


def wrap(
    original: Callable[..., AsyncIterator[Any]], listed_marker: Any
) -> Callable[..., AsyncIterator[Any]]:
    """``original``: kopf's continuous_watch; ``listed_marker``: its bookmark when a listing ends."""

    async def continuous_watch(**kwargs: Any) -> AsyncIterator[Any]:
        key = (kwargs.get("resource"), kwargs.get("namespace"))
        known = _known.setdefault(key, {})
        listed: set[str] | None = set()  # uids of this listing, until it ends
        async for event in original(**kwargs):
            if event is listed_marker:
                if listed is not None:
                    for uid in [u for u in known if u not in listed]:
                        gone = _skeleton(_kinds.get(key, (None, None)), uid, known.pop(uid))
                        meta = gone["metadata"]
                        log.info(
                            "%s %s/%s was deleted while the watch was broken",
                            gone.get("kind") or "object",
                            meta.get("namespace", ""),
                            meta.get("name", ""),
                        )
                        yield {"type": "DELETED", "object": gone}
                    listed = None
                yield event
                continue
            if not isinstance(event, dict):
                yield event  # another bookmark
                continue
            obj = event.get("object") or {}
            uid = (obj.get("metadata") or {}).get("uid")
            if uid:
                if event.get("type") == "DELETED":
                    known.pop(uid, None)
                else:
                    if _kinds.get(key, (None, None))[1] is None:
                        _kinds[key] = (obj.get("apiVersion"), obj.get("kind"))
                    known[uid] = _remember(obj)
                    if listed is not None and event.get("type") is None:
                        listed.add(uid)
            yield event

    continuous_watch.__wrapped__ = original  # type: ignore[attr-defined]
    return continuous_watch


def install() -> bool:
    """Wrap kopf's continuous_watch once; False (with a warning) where this kopf differs."""
    try:
        from kopf._cogs.clients import watching
    except ImportError:
        watching = None
    original = getattr(watching, "continuous_watch", None)
    marker = getattr(getattr(watching, "Bookmark", None), "LISTED", None)
    if original is None or marker is None or not set(inspect.signature(original).parameters) >= _PARAMETERS:
        log.warning(
            "this kopf version's watch internals differ from the ones loraforge wraps: objects deleted while "
            "a watch is broken may stay in the operator's memory until it restarts"
        )
        return False
    if getattr(original, "__wrapped__", None) is None:
        watching.continuous_watch = wrap(original, marker)
    return True
