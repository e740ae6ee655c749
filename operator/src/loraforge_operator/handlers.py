"""kopf wiring: watches, in-memory indexes, and the thin handlers that call
the reconcilers.

Only raw-event handlers (``@kopf.on.event``) and indexes are used: kopf then
keeps no per-object state in annotations, so an operator with nothing to do
writes nothing. The FineTuneJob and every child kind are indexed by owner; an
event on either side reconciles the owner from those indexes. Children carry
owner references, so deleting a FineTuneJob lets Kubernetes' garbage
collector remove them; no finalizer is needed, and published adapters (files
in the model store) are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from prometheus_client import start_http_server

from . import api, metrics
from .finetunejob.reconcile import ChildKey, Key, Reconciler
from .kube import Kube
from .modeldeployment.reconcile import ModelDeploymentReconciler
from .settings import LABEL_FINETUNEJOB, LABEL_MODELDEPLOYMENT, Settings

log = logging.getLogger("loraforge")

FTJ = (api.GROUP, api.VERSION, "finetunejobs")
OWNED = {LABEL_FINETUNEJOB: kopf.PRESENT}
# Child kinds the operator creates: (group, version, plural, kind).
CHILD_KINDS = [
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("", "v1", "services", "Service"),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    ("batch", "v1", "jobs", "Job"),
]


MD = (api.GROUP, api.VERSION, "modeldeployments")
MD_OWNED = {LABEL_MODELDEPLOYMENT: kopf.PRESENT}
MD_CHILD_KINDS = [
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler"),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget"),
    # Optional, another project's API: where its CRD is missing, kopf warns once and watches nothing.
    ("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor"),
]
# While a rollout runs, look again this often even without events (its deadline).
ROLLOUT_RECHECK_SECONDS = 10.0
# While a smoke-test suite is unusable, read its ConfigMap again this often (ConfigMaps are not watched).
SUITE_RECHECK_SECONDS = 30.0


class Serial:
    """At most one reconcile per key at a time. Events for one object arrive in
    bursts (each child we apply echoes back): while a reconcile runs, further
    events only mark the key dirty, and the running reconcile goes round once
    more, from the freshest indexes."""

    def __init__(self) -> None:
        self.running: set[Key] = set()
        self.dirty: set[Key] = set()

    async def run(self, key: Key, once: Callable[[], Awaitable[None]]) -> None:
        if key in self.running:
            self.dirty.add(key)
            return
        self.running.add(key)
        try:
            while True:
                self.dirty.discard(key)
                await once()
                if key not in self.dirty:
                    break
        finally:
            self.running.discard(key)


class MDState:
    """Per-ModelDeployment bookkeeping, as State is for FineTuneJobs."""

    reconciler: ModelDeploymentReconciler | None = None
    serial = Serial()
    backoff: dict[Key, float] = {}  # noqa: RUF012
    timers: dict[Key, asyncio.Task] = {}  # noqa: RUF012


class State:
    """Process-wide state, created at start-up."""

    reconciler: Reconciler | None = None
    serial = Serial()
    phases: dict[Key, str] = {}  # noqa: RUF012 - for the loraforge_finetunejobs gauge
    backoff: dict[Key, float] = {}  # noqa: RUF012 - seconds before the next retry, per FineTuneJob
    retries: set[asyncio.Task] = set()  # noqa: RUF012 - pending retries (kept referenced)


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = Settings.from_env()
    # Everything kopf may store on objects lives under our API group.
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = cfg.watch_timeout
    settings.watching.client_timeout = cfg.watch_timeout + 30
    settings.networking.request_timeout = 60
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    kube = await Kube.connect(cfg.field_manager)
    State.reconciler = Reconciler(kube=kube, settings=cfg, post_event=_post_event)
    MDState.reconciler = ModelDeploymentReconciler(kube=kube, settings=cfg, post_event=_post_event)
    log.info("loraforge operator started (trainer image %s)", cfg.trainer_image)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    if State.reconciler is not None:
        await State.reconciler.kube.close()


# --- indexes -------------------------------------------------------------------


def _trimmed(body: kopf.Body) -> dict[str, Any]:
    """The object without what reconciling never reads: managedFields are often
    the largest part of an object written with server-side apply."""
    obj = dict(body)
    meta = dict(obj.get("metadata") or {})
    meta.pop("managedFields", None)
    obj["metadata"] = meta
    return obj


# Indexers are coroutines: kopf runs plain functions in a thread pool, which
# costs more than the work itself.
@kopf.index(*FTJ)
async def finetunejobs(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _trimmed(body)}


def _child_indexer(kind: str):
    async def index(namespace: str, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any):
        owner = labels[LABEL_FINETUNEJOB]
        return {(namespace, owner): (kind, name, _trimmed(body))}

    return index


for _group, _version, _plural, _kind in CHILD_KINDS:
    kopf.index(_group, _version, _plural, labels=OWNED, id=f"owned_{_plural}")(_child_indexer(_kind))


# Training pods (they carry the label through the Job's template): their
# scheduling and exit state explain a stuck or failed FineTuneJob. Only
# metadata.name and status are kept, to keep memory low.
@kopf.index("", "v1", "pods", labels=OWNED, id="owned_pods")
async def owned_pods(namespace: str, name: str, labels: kopf.Labels, status: kopf.Status, **_: Any):
    return {
        (namespace, labels[LABEL_FINETUNEJOB]): (
            "Pod",
            name,
            {"metadata": {"name": name}, "status": dict(status)},
        )
    }


def _observed_children(key: Key, indexes: dict[str, Any]) -> dict[ChildKey, dict[str, Any]]:
    observed: dict[ChildKey, dict[str, Any]] = {}
    ns = key[0]
    for plural in [*(c[2] for c in CHILD_KINDS), "pods"]:
        index = indexes[f"owned_{plural}"]
        for kind, name, body in index.get(key, []):
            observed[(kind, ns, name)] = body
    return observed


# --- reconciliation --------------------------------------------------------------


async def _reconcile(key: Key, indexes: dict[str, Any], logger: logging.Logger) -> None:
    reconciler = State.reconciler
    if reconciler is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    await State.serial.run(key, lambda: _reconcile_once(reconciler, key, indexes, logger))


async def _reconcile_once(
    reconciler: Reconciler, key: Key, indexes: dict[str, Any], logger: logging.Logger
) -> None:
    bodies = list(indexes["finetunejobs"].get(key, []))
    if not bodies:
        return  # deleted; its children go with it (owner references)
    body = bodies[0]
    if body["metadata"].get("deletionTimestamp"):
        return
    started = time.monotonic()
    try:
        new_status = await reconciler.reconcile(body, _observed_children(key, indexes))
    except Exception as e:
        metrics.RECONCILES.labels(kind="FineTuneJob", result="error").inc()
        _retry_later(key, indexes, logger, e)
        return
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="FineTuneJob").observe(time.monotonic() - started)
    metrics.RECONCILES.labels(kind="FineTuneJob", result="ok").inc()
    State.backoff.pop(key, None)
    State.phases[key] = new_status.get("phase") or "Pending"
    _refresh_phase_gauge()


def _retry_later(key: Key, indexes: dict[str, Any], logger: logging.Logger, error: Exception) -> None:
    """Raw-event handlers are not retried by kopf, so a failed reconcile
    (API error, conflict, throttling) schedules its own retry with capped
    exponential backoff; any new event for the object also retries it."""
    delay = min(State.backoff.get(key, 0.5) * 2, 60.0)
    State.backoff[key] = delay
    logger.warning("reconcile of %s/%s failed (%s); retrying in %.0fs", *key, error, delay)

    async def retry() -> None:
        await asyncio.sleep(delay)
        await _reconcile(key, indexes, logger)

    task = asyncio.get_running_loop().create_task(retry())
    State.retries.add(task)
    task.add_done_callback(State.retries.discard)


def _refresh_phase_gauge() -> None:
    counts = Counter(State.phases.values())
    for phase in ("Pending", "Running", "Suspended", "Succeeded", "Failed"):
        metrics.FINETUNEJOBS.labels(phase=phase).set(counts.get(phase, 0))


def _all_indexes(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v
        for k, v in kwargs.items()
        if k in ("finetunejobs", "modeldeployments", "md_pods") or k.startswith(("owned_", "md_owned_"))
    }


@kopf.on.event(*FTJ)
async def finetunejob_event(
    type: str, namespace: str, name: str, logger: logging.Logger, **kwargs: Any
) -> None:
    key = (namespace, name)
    if type == "DELETED":
        State.phases.pop(key, None)
        if State.reconciler is not None:
            State.reconciler.forget(key)
        _refresh_phase_gauge()
        return
    indexes = _all_indexes(kwargs)
    await _reconcile(key, indexes, logger)
    # A FineTuneJob that published (or failed) may change what deployments in its namespace serve.
    for md_key in [k for k in indexes["modeldeployments"] if k[0] == namespace]:
        await _reconcile_md(md_key, indexes, logger)


async def _child_event(type: str, namespace: str, labels: kopf.Labels, logger: logging.Logger, **kwargs: Any):
    await _reconcile((namespace, labels[LABEL_FINETUNEJOB]), _all_indexes(kwargs), logger)


for _group, _version, _plural, _kind in [*CHILD_KINDS, ("", "v1", "pods", "Pod")]:
    kopf.on.event(_group, _version, _plural, labels=OWNED, id=f"child_{_plural}")(_child_event)


# --- ModelDeployments ------------------------------------------------------------------


@kopf.index(*MD)
async def modeldeployments(namespace: str, name: str, body: kopf.Body, **_: Any) -> dict[Key, dict[str, Any]]:
    return {(namespace, name): _trimmed(body)}


def _md_child_indexer(kind: str):
    async def index(namespace: str, name: str, labels: kopf.Labels, body: kopf.Body, **_: Any):
        return {(namespace, labels[LABEL_MODELDEPLOYMENT]): (kind, name, _trimmed(body))}

    return index


for _group, _version, _plural, _kind in MD_CHILD_KINDS:
    kopf.index(_group, _version, _plural, labels=MD_OWNED, id=f"md_owned_{_plural}")(_md_child_indexer(_kind))


@kopf.index("", "v1", "pods", labels=MD_OWNED, id="md_pods")
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


def _namespace_finetunejobs(ns: str, indexes: dict[str, Any]) -> list[dict[str, Any]]:
    return [b for (n, _), store in indexes["finetunejobs"].items() if n == ns for b in store]


async def _reconcile_md(key: Key, indexes: dict[str, Any], logger: logging.Logger) -> None:
    reconciler = MDState.reconciler
    if reconciler is None:
        raise kopf.TemporaryError("the operator is still starting", delay=1)
    await MDState.serial.run(key, lambda: _reconcile_md_once(reconciler, key, indexes, logger))


async def _reconcile_md_once(
    reconciler: ModelDeploymentReconciler, key: Key, indexes: dict[str, Any], logger: logging.Logger
) -> None:
    bodies = list(indexes["modeldeployments"].get(key, []))
    if not bodies or bodies[0]["metadata"].get("deletionTimestamp"):
        return
    observed: dict[ChildKey, dict[str, Any]] = {}
    for _, _, plural, _ in MD_CHILD_KINDS:
        for kind, name, body in indexes[f"md_owned_{plural}"].get(key, []):
            observed[(kind, key[0], name)] = body
    pods = list(indexes["md_pods"].get(key, []))
    started = time.monotonic()
    try:
        status = await reconciler.reconcile(
            bodies[0], observed, pods, _namespace_finetunejobs(key[0], indexes)
        )
    except Exception as e:
        metrics.RECONCILES.labels(kind="ModelDeployment", result="error").inc()
        delay = min(MDState.backoff.get(key, 0.5) * 2, 60.0)
        MDState.backoff[key] = delay
        logger.warning("reconcile of ModelDeployment %s/%s failed (%s); retrying in %.0fs", *key, e, delay)
        _recheck_md(key, indexes, logger, delay)
        return
    finally:
        metrics.RECONCILE_SECONDS.labels(kind="ModelDeployment").observe(time.monotonic() - started)
    metrics.RECONCILES.labels(kind="ModelDeployment", result="ok").inc()
    MDState.backoff.pop(key, None)
    if (status.get("rollout") or {}).get("phase") == "Progressing":
        _recheck_md(key, indexes, logger, ROLLOUT_RECHECK_SECONDS)
    elif reconciler.suite_invalid(key):
        _recheck_md(key, indexes, logger, SUITE_RECHECK_SECONDS)


def _recheck_md(key: Key, indexes: dict[str, Any], logger: logging.Logger, delay: float) -> None:
    """Reconcile again after ``delay`` (a rollout's deadline, or a retry); one pending timer per key."""
    pending = MDState.timers.get(key)
    if pending is not None and not pending.done():
        return

    async def later() -> None:
        await asyncio.sleep(delay)
        MDState.timers.pop(key, None)
        await _reconcile_md(key, indexes, logger)

    MDState.timers[key] = asyncio.get_running_loop().create_task(later())


@kopf.on.event(*MD)
async def modeldeployment_event(
    type: str, namespace: str, name: str, logger: logging.Logger, **kwargs: Any
) -> None:
    key = (namespace, name)
    if type == "DELETED":
        if MDState.reconciler is not None:
            MDState.reconciler.forget(key)
        return
    await _reconcile_md(key, _all_indexes(kwargs), logger)


async def _md_child_event(namespace: str, labels: kopf.Labels, logger: logging.Logger, **kwargs: Any):
    await _reconcile_md((namespace, labels[LABEL_MODELDEPLOYMENT]), _all_indexes(kwargs), logger)


for _group, _version, _plural, _kind in [*MD_CHILD_KINDS, ("", "v1", "pods", "Pod")]:
    kopf.on.event(_group, _version, _plural, labels=MD_OWNED, id=f"md_child_{_plural}")(_md_child_event)
