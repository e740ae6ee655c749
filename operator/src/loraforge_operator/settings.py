"""Operator settings, read once at start-up from the environment (the Helm
chart sets them). Nothing here is a secret."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import api


@dataclass(frozen=True)
class Settings:
    # Default trainer image for FineTuneJobs that do not name one; the chart
    # points it at the private registry mirror.
    trainer_image: str = "loraforge/trainer:0.1.0"
    # Pull policy of training pods (and of serving pods unless the runtime's own pull policy says otherwise).
    image_pull_policy: str = "IfNotPresent"
    # Secrets (docker-registry, in the workload's namespace) for pulling from a private
    # registry: set on every training and serving pod, whose ServiceAccounts the operator owns.
    image_pull_secrets: tuple[str, ...] = ()
    # UID/GID the trainer image runs as (numeric: runAsNonRoot can verify it).
    trainer_uid: int = 1000
    # Default serving image of ModelDeployments (TGI, mirrored into the private registry by the chart).
    tgi_image: str = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    tgi_image_pull_policy: str = "IfNotPresent"
    # Default image of ModelDeployments with runtime.vllm (vLLM's OpenAI server, mirrored by the chart).
    vllm_image: str = "docker.io/vllm/vllm-openai:v0.32.0"
    vllm_image_pull_policy: str = "IfNotPresent"
    # UID/GID the serving pods run as (numeric, non-root).
    serving_uid: int = 1000
    # Seconds a smoke test of one adapter on one pod may take.
    smoke_test_timeout: float = 120.0
    # Server-side apply field manager of everything the operator writes.
    field_manager: str = "loraforge-operator"
    # Port of the Prometheus /metrics endpoint (0 disables it).
    metrics_port: int = 8080
    # Rendezvous port of multi-node training (torchrun c10d/static).
    rendezvous_port: int = 29500
    # Seconds a watch request lasts before the API server ends it and kopf re-watches.
    watch_timeout: int = 300
    # Objects of one kind reconciled at once (the rest wait in the loop's queue; see loop.py).
    workers: int = 32
    # Most HTTP connections the operator's own client (kube.py) keeps open to the API server. Each TLS
    # connection holds about 128 KiB of buffers, and a burst opens as many as it has requests in flight;
    # beyond what the workers' concurrent writes need, that is memory for nothing (bench/README.md).
    api_connections: int = 16

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        e = os.environ if env is None else env
        d = cls()
        pull_policy = e.get("LORAFORGE_IMAGE_PULL_POLICY", d.image_pull_policy)
        return cls(
            trainer_image=e.get("LORAFORGE_TRAINER_IMAGE", d.trainer_image),
            image_pull_policy=pull_policy,
            # Comma- or space-separated names.
            image_pull_secrets=tuple(e.get("LORAFORGE_IMAGE_PULL_SECRETS", "").replace(",", " ").split()),
            trainer_uid=int(e.get("LORAFORGE_TRAINER_UID", d.trainer_uid)),
            tgi_image=e.get("LORAFORGE_TGI_IMAGE", d.tgi_image),
            tgi_image_pull_policy=e.get("LORAFORGE_TGI_IMAGE_PULL_POLICY", pull_policy),
            vllm_image=e.get("LORAFORGE_VLLM_IMAGE", d.vllm_image),
            vllm_image_pull_policy=e.get("LORAFORGE_VLLM_IMAGE_PULL_POLICY", pull_policy),
            serving_uid=int(e.get("LORAFORGE_SERVING_UID", d.serving_uid)),
            smoke_test_timeout=float(e.get("LORAFORGE_SMOKE_TEST_TIMEOUT", d.smoke_test_timeout)),
            field_manager=e.get("LORAFORGE_FIELD_MANAGER", d.field_manager),
            metrics_port=int(e.get("LORAFORGE_METRICS_PORT", d.metrics_port)),
            rendezvous_port=int(e.get("LORAFORGE_RENDEZVOUS_PORT", d.rendezvous_port)),
            watch_timeout=int(e.get("LORAFORGE_WATCH_TIMEOUT", d.watch_timeout)),
            workers=int(e.get("LORAFORGE_WORKERS", d.workers)),
            api_connections=int(e.get("LORAFORGE_API_CONNECTIONS", d.api_connections)),
        )


def pull_secrets(settings: Settings) -> dict[str, list[dict[str, str]]]:
    """The pod spec's ``imagePullSecrets``, or nothing when none are configured."""
    if not settings.image_pull_secrets:
        return {}
    return {"imagePullSecrets": [{"name": n} for n in settings.image_pull_secrets]}


# Labels the operator puts on everything it creates.
LABEL_FINETUNEJOB = f"{api.GROUP}/finetunejob"
LABEL_MODELDEPLOYMENT = f"{api.GROUP}/modeldeployment"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "loraforge-operator"
LABEL_PART_OF = "app.kubernetes.io/part-of"
PART_OF = "loraforge"
# The components of the pods the operator reads: training pods (a Job's) and serving pods (a Deployment's).
POD_COMPONENTS = ("trainer", "serving")


def child_watch_selector(kind: str) -> str:
    """The label selector of the operator's watch of a kind of children: the API server then sends
    only objects that may be loraforge's, not every ConfigMap, Role or Pod of the cluster (each of
    which kopf would parse, filter out and keep a record of, and which made kopf's start-up wait for
    all of them). Every child carries ``LABEL_PART_OF``; pods are selected by component instead,
    because a serving pod's labels are its Deployment's selector, which cannot change on an existing
    Deployment and never held ``LABEL_PART_OF``. The handlers' own label filters still apply."""
    if kind == "Pod":
        return f"{LABEL_COMPONENT} in ({','.join(POD_COMPONENTS)})"
    return f"{LABEL_PART_OF}={PART_OF}"
