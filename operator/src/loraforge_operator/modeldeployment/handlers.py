"""kopf handlers of ModelDeployments: the indexes of ModelDeployments, their
children and serving pods, what each needs of the namespace's FineTuneJobs,
and the events that enqueue a ModelDeployment's reconcile.

A ModelDeployment serves what FineTuneJobs published, so a FineTuneJob's event
enqueues the ModelDeployments of its namespace, and only when what they read of
it (``resolve.finetunejob_view``) changed: a progress report does not wake
them. Enqueueing never waits: a FineTuneJob event never waits for a rollout's
smoke tests.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf

from .. import api
from ..indexes import INDEXES, index_owned, on_owned_events, trimmed
from ..kube import Kube
from ..loop import Loop
from ..settings import LABEL_MODELDEPLOYMENT, Settings
from ..writes import ChildKey
from . import resolve
from .reconcile import Key, ModelDeploymentReconciler

log = logging.getLogger(__name__)

OWNED = {LABEL_MODELDEPLOYMENT: kopf.PRESENT}
# The kinds a ModelDeployment owns (what builders.children writes).
CHILD_KINDS = [
    api.RESOURCES[k]
    for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor")
]
POD = api.RESOURCES["Pod"]
# While a rollout runs, look again this often even without events (its deadline).
ROLLOUT_RECHECK_SECONDS = 10.0
# While a smoke-test suite is unusable, read its ConfigMap again this often (ConfigMaps are not watched).
SUITE_RECHECK_SECONDS = 30.0


class State:
    reconciler: ModelDeploymentReconciler | None = None
    loop: Loop | None = None
    # FineTuneJob -> what the namespace's ModelDeployments last saw of it (to wake them only on a change).
    # Reconciles read the md_finetunejobs index, not this: kopf fills indexes before any handler runs, so a
    # ModelDeployment never resolves from a half-listed namespace.
    seen: dict[Key, dict[str, Any]] = {}  # noqa: RUF012


def start(
    kube: Kube, settings: Settings, post_event: Callable[[dict[str, Any], str, str, str], None]
) -> None:
    State.reconciler = ModelDeploymentReconciler(kube=kube, settings=settings, post_event=post_event)
    State.loop = Loop("ModelDeployment", _reconcile, workers=settings.workers)
    State.seen.clear()


async def stop() -> None:
    if State.loop is not None:
        await State.loop.close()


def enqueue(key: Key) -> None:
    if State.loop is not None:
        State.loop.enqueue(key)


# --- indexes -------------------------------------------------------------------


@kopf.index(*api.MODELDEPLOYMENT.gvp)
async def modeldeployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): trimmed(body)}


index_owned(LABEL_MODELDEPLOYMENT, CHILD_KINDS, "md_owned_", trimmed)


@kopf.index(*POD.gvp, labels=OWNED, id="md_pods")
async def md_pods(namespace: str, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any):
    """Serving pods: what the smoke tests and the rollout need (template revisions, IP, conditions)."""
    meta = body.get("metadata") or {}
    return {
        (namespace, labels[LABEL_MODELDEPLOYMENT]): {
            "metadata": {
                "name": name,
                "uid": meta.get("uid"),
                "annotations": dict(meta.get("annotations") or {}),
                "deletionTimestamp": meta.get("deletionTimestamp"),
            },
            "status": dict(body.get("status") or {}),
        }
    }


@kopf.index(*api.FINETUNEJOB.gvp, id="md_finetunejobs")
async def md_finetunejobs(namespace: str, body: kopf.Body, **_: Any) -> dict[str, dict[str, Any]]:
    """Per namespace, what resolving revisions reads of each FineTuneJob (not the whole object)."""
    return {namespace: resolve.finetunejob_view(body)}


# --- reconciliation --------------------------------------------------------------


async def _reconcile(key: Key) -> float | None:
    reconciler = State.reconciler
    assert reconciler is not None  # the loop exists only after start()
    bodies = INDEXES.get("modeldeployments", key)
    if not bodies or bodies[0]["metadata"].get("deletionTimestamp"):
        return None
    observed: dict[ChildKey, dict[str, Any]] = {}
    for child in CHILD_KINDS:
        for kind, name, body in INDEXES.get(f"md_owned_{child.plural}", key):
            observed[(kind, key[0], name)] = body
    pods = INDEXES.get("md_pods", key)
    finetunejobs = INDEXES.get("md_finetunejobs", key[0])
    status = await reconciler.reconcile(bodies[0], observed, pods, finetunejobs)
    if (status.get("rollout") or {}).get("phase") == "Progressing":
        return ROLLOUT_RECHECK_SECONDS
    if reconciler.suite_invalid(key):
        return SUITE_RECHECK_SECONDS
    return None


@kopf.on.event(*api.MODELDEPLOYMENT.gvp)
async def modeldeployment_event(type: str, namespace: str, name: str, **kwargs: Any) -> None:
    INDEXES.update(kwargs)
    key = (namespace, name)
    if type == "DELETED":
        if State.reconciler is not None:
            State.reconciler.forget(key)
        if State.loop is not None:
            State.loop.forget(key)
        return
    enqueue(key)


# Any event of a child or a serving pod enqueues the owner (a wrapper that calls the current `enqueue`).
on_owned_events(LABEL_MODELDEPLOYMENT, [*CHILD_KINDS, POD], "md_child_", lambda key: enqueue(key))


@kopf.on.event(*api.FINETUNEJOB.gvp, id="md_finetunejob_event")
async def finetunejob_event(type: str, namespace: str, name: str, body: kopf.Body, **kwargs: Any) -> None:
    """A FineTuneJob that published, failed, or went away may change what its namespace serves."""
    INDEXES.update(kwargs)
    key = (namespace, name)
    view = None if type == "DELETED" else resolve.finetunejob_view(body)
    if State.seen.get(key) == view:
        return
    if view is None:
        State.seen.pop(key, None)
    else:
        State.seen[key] = view
    for md in INDEXES.keys("modeldeployments"):
        if md[0] == namespace:
            enqueue(md)
