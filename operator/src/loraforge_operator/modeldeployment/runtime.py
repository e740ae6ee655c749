"""The serving runtime seam: everything that knows it is TGI or vLLM lives here.

A runtime turns the spec and the chosen adapter revisions into the serving
container (image, flags, environment, probes) and its volumes, names its
queue metric and the `model` that means the base model, and says which
revisions it cannot load. The rest of the operator (rollout, smoke tests,
autoscaling) is the same for both: each serves the OpenAI-compatible chat
completions API on the same port, with the adapter selected by `model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..finetunejob import contract
from ..settings import Settings
from .model import (
    VLLM_DEFAULT_LORA_RANK,
    VLLM_LORA_RANKS,
    ModelDeploymentSpec,
    ServingRevision,
)
from .vocabulary import Reason

PORT = 8080
PRESTOP_SECONDS = 5
# How long a terminating serving pod has: the preStop pause, then SIGTERM and the server's draining.
TERMINATION_GRACE_SECONDS = 60
# vLLM aborts in-flight requests on SIGTERM unless told to drain (`--shutdown-timeout`, 0 = abort): it may
# take what is left of the grace period after the preStop pause, with a margin before the SIGKILL.
VLLM_DRAIN_SECONDS = TERMINATION_GRACE_SECONDS - PRESTOP_SECONDS - 5
# Where both runtimes serve their Prometheus metrics (on the API port).
METRICS_PATH = "/metrics"

# No runtime reaches out: nothing is downloaded (the model store is pre-staged) and no telemetry is sent.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    # A base model given as huggingFaceId resolves from the pre-staged cache in the store.
    "HF_HOME": f"{contract.MODEL_STORE_MOUNT}/hf-cache",
    "HUGGINGFACE_HUB_CACHE": f"{contract.MODEL_STORE_MOUNT}/hf-cache/hub",
    "HOME": "/tmp",
}
# TGI's launcher reports usage statistics to Hugging Face unless told not to (`--usage-stats`, default
# `on`); HF_HUB_DISABLE_TELEMETRY and DO_NOT_TRACK do not turn it off.
TGI_ENV = {"USAGE_STATS": "off"}
# vLLM's usage statistics, and its caches moved under /tmp: the root file system is read-only.
VLLM_ENV = {
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_DO_NOT_TRACK": "1",
    "VLLM_CACHE_ROOT": "/tmp/vllm/cache",
    "VLLM_CONFIG_ROOT": "/tmp/vllm/config",
    "XDG_CACHE_HOME": "/tmp/.cache",
    "XDG_CONFIG_HOME": "/tmp/.config",
    "NUMBA_CACHE_DIR": "/tmp/numba",
    "OUTLINES_CACHE_DIR": "/tmp/outlines",
    "TRITON_CACHE_DIR": "/tmp/triton",
    "TORCHINDUCTOR_CACHE_DIR": "/tmp/torchinductor",
}
# Environment variables whose value turns a runtime's usage statistics off (tests hold every container to it).
TELEMETRY_OFF = {"tgi": TGI_ENV, "vllm": {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}}


def store_path(relative: str) -> str:
    return f"{contract.MODEL_STORE_MOUNT}/{relative}"


@dataclass(frozen=True)
class Incompatible:
    """A revision the runtime cannot load, and why (a Degraded reason, vocabulary.Reason; the rollout does not
    start)."""

    reason: str
    message: str


def _model(spec: ModelDeploymentSpec, flag: str) -> list[str]:
    """The base model on the command line: a store folder, or a hub id with its revision (from the cache)."""
    b = spec.base_model
    if b.path is not None:
        return [flag, store_path(b.path)]
    return [flag, str(b.hugging_face_id), "--revision", b.revision]


def _resources(spec: ModelDeploymentSpec) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, str] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, str] = {"memory": r.memory}
    if r.gpus:
        requests[r.gpu_resource_name] = limits[r.gpu_resource_name] = str(r.gpus)
    return {"requests": requests, "limits": limits}


def _container(
    spec: ModelDeploymentSpec, name: str, image: str, pull_policy: str, env: dict[str, str]
) -> dict[str, Any]:
    """What both runtimes' containers share: port, probes, draining, resources, mounts, security."""
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull_policy,
        "env": [{"name": k, "value": v} for k, v in {**OFFLINE_ENV, **env}.items()],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # Loading a model can take minutes: the startup probe allows up to the
        # rollout's deadline, then liveness and readiness take over.
        "startupProbe": {
            **health,
            "periodSeconds": 5,
            "failureThreshold": max(spec.rollout.progress_deadline_seconds // 5, 1),
        },
        "readinessProbe": {**health, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {**health, "periodSeconds": 15, "timeoutSeconds": 5, "failureThreshold": 4},
        # Endpoints drop a terminating pod a moment after it is marked: keep
        # answering meanwhile, then SIGTERM lets the server finish what is in flight.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        # A server that exits at start (an adapter it refuses, a bad flag) says why in the pod's status,
        # which the rollout's failure message quotes.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": _resources(spec),
        "volumeMounts": [
            {"name": "model-store", "mountPath": contract.MODEL_STORE_MOUNT, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
            {"name": "data", "mountPath": "/data"},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }


class TGI:
    """text-generation-inference: adapters from LORA_ADAPTERS at start, `model: tgi` for the base model."""

    name = "tgi"
    # TGI's gauge of requests waiting in its queue, per pod (what the HPA targets).
    queue_metric = "tgi_queue_size"

    @staticmethod
    def lora_adapters(revisions: dict[str, ServingRevision]) -> str:
        """TGI's LORA_ADAPTERS: ``name=/models/<path>,...`` in a stable order."""
        return ",".join(f"{name}={store_path(r.path)}" for name, r in sorted(revisions.items()))

    def base_model_name(self, spec: ModelDeploymentSpec) -> str:
        return "tgi"  # TGI's chat route takes `model: tgi` (or any name that is not an adapter's)

    def container(
        self, spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]
    ) -> dict[str, Any]:
        tgi = spec.runtime.tgi_settings
        args = [
            *_model(spec, "--model-id"),
            "--port",
            str(PORT),
            "--max-input-tokens",
            str(tgi.max_input_tokens),
            "--max-total-tokens",
            str(tgi.max_total_tokens),
            "--max-concurrent-requests",
            str(tgi.max_concurrent_requests),
        ]
        if tgi.quantize:
            args += ["--quantize", tgi.quantize]
        if tgi.max_batch_size:
            args += ["--max-batch-size", str(tgi.max_batch_size)]
        gpus = spec.resources.gpus
        shards = tgi.num_shard or (gpus if gpus > 1 else None)
        if shards:
            args += ["--num-shard", str(shards)]
        c = _container(
            spec,
            "tgi",
            tgi.image or settings.tgi_image,
            settings.tgi_image_pull_policy,
            {**TGI_ENV, "LORA_ADAPTERS": self.lora_adapters(revisions)},
        )
        return {**c, "args": args}

    def incompatible(self, spec: ModelDeploymentSpec, revision: ServingRevision) -> Incompatible | None:
        return None  # TGI loads any peft LoRA the trainer publishes


class VLLM:
    """vLLM's OpenAI-compatible server: adapters from ``--lora-modules`` at start, the base model by its
    served name (the store path or hub id, which never clashes with an adapter's DNS-label name)."""

    name = "vllm"
    queue_metric = "vllm:num_requests_waiting"
    # The server module, not the `vllm` console script: the same in the upstream image and vLLM's CPU image.
    command = ("python3", "-m", "vllm.entrypoints.openai.api_server")

    def base_model_name(self, spec: ModelDeploymentSpec) -> str:
        b = spec.base_model
        return b.path if b.path is not None else str(b.hugging_face_id)

    @staticmethod
    def max_lora_rank(spec: ModelDeploymentSpec, revisions: dict[str, ServingRevision]) -> int:
        explicit = spec.runtime.vllm.max_lora_rank if spec.runtime.vllm else None
        if explicit is not None:
            return explicit
        largest = max((r.rank or VLLM_DEFAULT_LORA_RANK for r in revisions.values()), default=1)
        return next((v for v in VLLM_LORA_RANKS if v >= largest), VLLM_LORA_RANKS[-1])

    def container(
        self, spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]
    ) -> dict[str, Any]:
        v = spec.runtime.vllm
        assert v is not None
        args = [
            *_model(spec, "--model"),
            "--served-model-name",
            self.base_model_name(spec),
            "--port",
            str(PORT),
            "--dtype",
            v.dtype,
            "--tensor-parallel-size",
            str(v.tensor_parallel_size or max(spec.resources.gpus, 1)),
            "--enable-lora",
            "--max-loras",
            str(v.max_loras or len(revisions) or 1),
            "--max-lora-rank",
            str(self.max_lora_rank(spec, revisions)),
            "--shutdown-timeout",
            str(VLLM_DRAIN_SECONDS),
        ]
        if revisions:
            args += [
                "--lora-modules",
                *(f"{name}={store_path(r.path)}" for name, r in sorted(revisions.items())),
            ]
        for flag, value in (
            ("--max-model-len", v.max_model_len),
            ("--max-num-seqs", v.max_num_seqs),
            ("--max-num-batched-tokens", v.max_num_batched_tokens),
            ("--gpu-memory-utilization", v.gpu_memory_utilization),
            ("--quantization", v.quantization),
        ):
            if value is not None:
                args += [flag, str(value)]
        c = _container(
            spec, "vllm", v.image or settings.vllm_image, settings.vllm_image_pull_policy, VLLM_ENV
        )
        return {**c, "command": list(self.command), "args": args}

    def incompatible(self, spec: ModelDeploymentSpec, revision: ServingRevision) -> Incompatible | None:
        explicit = spec.runtime.vllm.max_lora_rank if spec.runtime.vllm else None
        limit = explicit or VLLM_LORA_RANKS[-1]
        if revision.rank <= limit:
            return None
        source = f" (FineTuneJob {revision.fine_tune_job})" if revision.fine_tune_job else ""
        what = f"runtime.vllm.maxLoraRank {limit}" if explicit else f"{limit}, the largest rank vLLM loads"
        fix = f"raise maxLoraRank or pin a revision of rank <= {limit}" if explicit else "train a lower rank"
        return Incompatible(
            Reason.ADAPTER_RANK_TOO_HIGH,
            f"revision {revision.revision or revision.path}{source} has LoRA rank {revision.rank}, above "
            f"{what}: vLLM cannot load it; {fix}",
        )


_RUNTIMES: dict[str, TGI | VLLM] = {"tgi": TGI(), "vllm": VLLM()}


def of(spec: ModelDeploymentSpec) -> TGI | VLLM:
    return _RUNTIMES[spec.runtime.name]


def container(spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]) -> dict:
    return of(spec).container(spec, settings, revisions)


def volumes(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    return [
        {
            "name": "model-store",
            "persistentVolumeClaim": {"claimName": spec.model_store.claim_name, "readOnly": True},
        },
        {"name": "tmp", "emptyDir": {}},
        {"name": "data", "emptyDir": {}},  # TGI's default cache folder; nothing is downloaded into it
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm_size}},
    ]
