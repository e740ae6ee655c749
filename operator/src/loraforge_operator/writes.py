"""What the reconcilers share about writing: apply a child only when it
differs, remember our own writes until the watch shows them, and know which
status is current when the watch lags behind our last status write."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from .kube import Kube
from .packed import Packed

log = logging.getLogger(__name__)

ChildKey = tuple[str, str, str]  # (kind, namespace, name)


def is_subset(desired: Any, observed: Any) -> bool:
    """True if every field we set has that value in the observed object
    (fields the API server or others added are ignored)."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(is_subset(v, observed.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
        )
    return desired == observed


@dataclass
class WriteMemo:
    """Remembers the last apply per object and the server's answer, so a
    reconcile that runs before the watch has delivered our own write neither
    sends it again nor mistakes the stale copy for the truth."""

    # key -> (the payload's digest, the resourceVersion it was applied over, the server's answer, packed)
    _last: dict[Any, tuple[bytes, str | None, Packed]] = field(default_factory=dict)

    def answer_to(self, key: Any, payload: Any, observed_rv: str | None) -> dict[str, Any] | None:
        """The server's answer if ``payload`` was already applied over the object
        at ``observed_rv``, else None. Once the watch shows a newer object, the
        entry has served its purpose and is dropped (memory stays bounded)."""
        last = self._last.get(key)
        if last is None:
            return None
        if last[1] != observed_rv:
            del self._last[key]
            return None
        return last[2].unpack() if last[0] == _digest(payload) else None

    def sent(self, key: Any, payload: Any, observed_rv: str | None, answer: dict[str, Any]) -> None:
        self._last[key] = (_digest(payload), observed_rv, Packed(answer))

    def discard(self, key: Any) -> None:
        self._last.pop(key, None)

    def answers(self) -> dict[Any, dict[str, Any]]:
        """The server's last answer per object written (for objects no watch delivers)."""
        return {key: last[2].unpack() for key, last in self._last.items()}


def _digest(payload: Any) -> bytes:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).digest()


def rv(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata") or {}).get("resourceVersion")


@dataclass
class StatusWrite:
    """The last status the operator wrote for an object, and the
    resourceVersions known to predate it (what the watch may still show)."""

    status: dict[str, Any]
    version: str | None
    stale_versions: set[str | None]

    @staticmethod
    def known_status(previous: StatusWrite | None, body: dict[str, Any]) -> dict[str, Any]:
        """The object's status as last known: if the watch has not delivered our
        last status write yet, what we wrote, not the stale copy (so no repeated
        writes or events)."""
        if previous is not None and rv(body) in previous.stale_versions:
            return previous.status
        return body.get("status") or {}

    @staticmethod
    def caught_up(previous: StatusWrite | None, body: dict[str, Any]) -> bool:
        """The watch shows our last status write or something newer: the record has served its purpose."""
        return previous is not None and rv(body) not in previous.stale_versions

    @staticmethod
    def after(
        previous: StatusWrite | None, body: dict[str, Any], status: dict[str, Any], updated: dict[str, Any]
    ) -> StatusWrite:
        """The record of a status just written over ``body`` (the server answered ``updated``)."""
        stale = {rv(body)}
        if previous is not None and rv(body) != previous.version:
            # The watch has not shown our last write yet: what it may still show
            # includes everything before it. Once it has, older versions cannot
            # come back (a watch is ordered), so the set starts afresh.
            stale |= previous.stale_versions | {previous.version}
        return StatusWrite(status, rv(updated), stale)


async def ensure_child(
    kube: Kube, memo: WriteMemo, manifest: dict[str, Any], observed: dict[ChildKey, dict[str, Any]]
) -> None:
    """Apply ``manifest`` (server-side) unless the observed object already has
    it; the server's answer replaces the observed copy. API errors propagate."""
    meta = manifest["metadata"]
    key = (manifest["kind"], meta["namespace"], meta["name"])
    current = observed.get(key)
    if current is not None and is_subset(manifest, current):
        memo.discard(key)
        return
    earlier_answer = memo.answer_to(key, manifest, rv(current))
    if earlier_answer is not None:
        observed[key] = earlier_answer
        return
    log.debug("applying %s %s/%s (%s)", *key, "missing" if current is None else "differs")
    applied = await kube.apply(manifest)
    memo.sent(key, manifest, rv(current), applied)
    # What the server answered is the freshest view; the status uses it.
    observed[key] = applied
