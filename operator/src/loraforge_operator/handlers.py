"""kopf wiring: start-up and shut-down, and the per-kind handler modules.

Only raw-event handlers (``@kopf.on.event``) and indexes are used: kopf then
keeps no per-object state in annotations, so an operator with nothing to do
writes nothing. Each kind's module (``finetunejob/handlers.py``,
``modeldeployment/handlers.py``) indexes the kind and its children by owner;
an event on either side only *enqueues* the owner's key in that kind's
``loop.Loop`` (coalescing, bounded concurrency, backoff, one timer per key),
which reconciles it from the indexes. Children carry owner references, so
deleting an owner lets Kubernetes' garbage collector remove them; no finalizer
is needed, and published adapters (files in the model store) are never touched.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
from prometheus_client import start_http_server

from . import api
from . import kube as kube_client
from .finetunejob import handlers as finetunejob_handlers
from .kube import Kube
from .modeldeployment import handlers as modeldeployment_handlers
from .settings import Settings, child_watch_selector

log = logging.getLogger("loraforge")

# kopf runs one worker per object with events in flight, and the worker keeps the object's last raw event
# until it has been idle this long (kopf's default: 5 s). Our handlers only enqueue a key, so a worker has
# nothing to wait for; at 5 s, every object a burst touched in the last 5 s stays alive whole, and Python
# keeps the heap that grew to hold them (bench/README.md: 216 -> 160 MiB with this and the bounds on
# connections and Event posters).
QUEUE_IDLE_SECONDS = 0.5
# kopf posts Events from one task per object, each on a connection of its own (kopf's HTTP session has no
# connection limit): a burst opened more than a hundred TLS connections, ~128 KiB each, that stayed open.
# A few posters keep up with what the reconcilers report (Events are posted in the background, never awaited).
EVENT_POSTERS = 4


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf's diff base ("last handled configuration") serves only its change-detecting handlers
    (``on.create``/``on.update``, daemons); loraforge has none. kopf still builds the diff base of every
    object on every event, a deep copy of the whole body (Jobs with their pod templates, pods with their
    status): about a tenth of the operator's CPU in a burst (bench/README.md). It builds nothing here,
    and nothing is ever stored on objects."""

    def build(self, *, body: Any, extra_fields: Any = None) -> Any:
        return {}

    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def watch_selectors(settings: kopf.OperatorSettings) -> None:
    """Put each child kind's label selector (``settings.child_watch_selector``, which says why) on
    kopf's watch of it. kopf's watches are otherwise cluster-wide; kinds loraforge defines, and kopf's
    peering kinds, are still watched whole. With 2,000 unrelated ConfigMaps, 200 FineTuneJobs created
    just after start-up took 26-29 s and 21-24 CPU-seconds; 9-10 s and 4-5 with this (bench/README.md)."""
    kinds = {
        *finetunejob_handlers.CHILD_KINDS,
        *modeldeployment_handlers.CHILD_KINDS,
        finetunejob_handlers.POD,
    }
    for resource in kinds:
        settings.watching.label_selectors[resource.gvp] = child_watch_selector(resource.kind)


def _post_event(body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    kopf.event(body, type=type_, reason=reason, message=message)


class Operator:
    """What start-up creates: the API client, and each kind's handlers."""

    kube: Kube | None = None


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches log in exactly as the operator's own client does (kube.login)."""
    return kube_client.login()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    cfg = Settings.from_env()
    # Everything kopf may store on objects lives under our API group.
    settings.persistence.finalizer = api.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = NoDiffBase()
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = cfg.watch_timeout
    watch_selectors(settings)
    settings.watching.client_timeout = cfg.watch_timeout + 30
    settings.networking.request_timeout = 60
    if cfg.metrics_port:
        start_http_server(cfg.metrics_port)
    settings.queueing.idle_timeout = QUEUE_IDLE_SECONDS
    settings.posting.worker_limit = EVENT_POSTERS
    kube = await Kube.connect(cfg.field_manager, connections=cfg.api_connections)
    Operator.kube = kube
    finetunejob_handlers.start(kube, cfg, _post_event)
    modeldeployment_handlers.start(kube, cfg, _post_event)
    log.info("loraforge operator started (trainer image %s)", cfg.trainer_image)


@kopf.on.cleanup()
async def shutdown(**_: Any) -> None:
    await finetunejob_handlers.stop()
    await modeldeployment_handlers.stop()
    if Operator.kube is not None:
        await Operator.kube.close()
