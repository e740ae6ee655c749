"""kopf handlers of FineTuneJobs: the indexes of FineTuneJobs and their
children, and the events that enqueue a FineTuneJob's reconcile.

The FineTuneJob and every child kind are indexed by owner, packed (see
packed.py: with a thousand FineTuneJobs these copies were most of the
operator's memory); training pods keep only their name and status. An event
on either side enqueues the owning FineTuneJob in the loop, which unpacks that
one FineTuneJob's objects and reconciles.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from .. import api, metrics
from ..indexes import INDEXES, index_owned, on_owned_events, packed
from ..kube import Kube
from ..loop import Loop
from ..packed import Packed
from ..settings import LABEL_FINETUNEJOB, Settings
from .reconcile import ChildKey, Key, Reconciler

log = logging.getLogger(__name__)

OWNED = {LABEL_FINETUNEJOB: kopf.PRESENT}
# The kinds a FineTuneJob owns (what builders.children writes), and its training pods.
CHILD_KINDS = [
    api.RESOURCES[k] for k in ("ConfigMap", "ServiceAccount", "Service", "Role", "RoleBinding", "Job")
]
POD = api.RESOURCES["Pod"]
PHASES = ("Pending", "Running", "Suspended", "Succeeded", "Failed")


class State:
    """Process-wide state, created at start-up."""

    reconciler: Reconciler | None = None
    loop: Loop | None = None
    phases: dict[Key, str] = {}  # noqa: RUF012 - for the loraforge_finetunejobs gauge


def start(
    kube: Kube, settings: Settings, post_event: Callable[[dict[str, Any], str, str, str], None]
) -> None:
    for phase in PHASES:
        metrics.FINETUNEJOBS.labels(phase=phase).set(0)
    State.phases.clear()
    State.reconciler = Reconciler(kube=kube, settings=settings, post_event=post_event)
    State.loop = Loop("FineTuneJob", _reconcile, workers=settings.workers)


async def stop() -> None:
    if State.loop is not None:
        await State.loop.close()


def enqueue(key: Key) -> None:
    if State.loop is not None:
        State.loop.enqueue(key)


# --- indexes -------------------------------------------------------------------
# Indexers are coroutines: kopf runs plain functions in a thread pool, which costs more than the work itself.


@kopf.index(*api.FINETUNEJOB.gvp)
async def finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, Packed]:
    return {(namespace, name): packed(body)}


index_owned(LABEL_FINETUNEJOB, CHILD_KINDS, "owned_", packed)


# Training pods (they carry the label through the Job's template): their scheduling and exit state explain a
# stuck or failed FineTuneJob. Only metadata.name and status are kept.
@kopf.index(*POD.gvp, labels=OWNED, id="owned_pods")
async def owned_pods(namespace: str, name: str, labels: kopf.Labels, status: kopf.Status, **_: Any):
    return {
        (namespace, labels[LABEL_FINETUNEJOB]): (
            "Pod",
            name,
            Packed({"metadata": {"name": name}, "status": dict(status)}),
        )
    }


def observed_children(key: Key) -> dict[ChildKey, dict[str, Any]]:
    observed: dict[ChildKey, dict[str, Any]] = {}
    for plural in [*(c.plural for c in CHILD_KINDS), POD.plural]:
        for kind, name, body in INDEXES.get(f"owned_{plural}", key):
            observed[(kind, key[0], name)] = body.unpack()
    return observed


# --- reconciliation --------------------------------------------------------------


async def _reconcile(key: Key) -> None:
    reconciler = State.reconciler
    assert reconciler is not None  # the loop exists only after start()
    bodies = INDEXES.get("finetunejobs", key)
    if not bodies:
        return  # deleted; its children go with it (owner references)
    body = bodies[0].unpack()
    if body["metadata"].get("deletionTimestamp"):
        return
    new_status = await reconciler.reconcile(body, observed_children(key))
    _count_phase(key, new_status.get("phase") or "Pending")


def _count_phase(key: Key, phase: str | None) -> None:
    """Keep the loraforge_finetunejobs gauge: the FineTuneJobs known, by phase (None: deleted)."""
    old = State.phases.pop(key, None)
    if old is not None:
        metrics.FINETUNEJOBS.labels(phase=old).dec()
    if phase is not None:
        State.phases[key] = phase
        metrics.FINETUNEJOBS.labels(phase=phase).inc()


@kopf.on.event(*api.FINETUNEJOB.gvp)
async def finetunejob_event(type: str, namespace: str, name: str, **kwargs: Any) -> None:
    INDEXES.update(kwargs)
    key = (namespace, name)
    if type == "DELETED":
        _count_phase(key, None)
        if State.reconciler is not None:
            State.reconciler.forget(key)
        if State.loop is not None:
            State.loop.forget(key)
        return
    enqueue(key)


# Any event of a child or a training pod enqueues the owner (a wrapper that calls the current `enqueue`).
on_owned_events(LABEL_FINETUNEJOB, [*CHILD_KINDS, POD], "child_", lambda key: enqueue(key))
