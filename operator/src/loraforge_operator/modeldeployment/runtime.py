"""The serving runtime seam: everything that knows it is TGI lives here.

A runtime turns the spec and the chosen adapter revisions into the serving
container (image, flags, environment, probes) and its volumes, and names its
queue metric. vLLM would be a second implementation of these three functions
(its ``--lora-modules name=path``, ``/health``, ``vllm:num_requests_waiting``);
the rest of the operator does not change.
"""

from __future__ import annotations

from typing import Any

from ..finetunejob import contract
from ..settings import Settings
from .model import ModelDeploymentSpec, ServingRevision

PORT = 8080
PRESTOP_SECONDS = 5
# TGI's gauge of requests waiting in its queue, per pod (what the HPA targets).
QUEUE_METRIC = "tgi_queue_size"
# Where TGI serves its Prometheus metrics (on the API port).
METRICS_PATH = "/metrics"

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


def _model_id(spec: ModelDeploymentSpec) -> list[str]:
    b = spec.base_model
    if b.path is not None:
        return ["--model-id", f"{contract.MODEL_STORE_MOUNT}/{b.path}"]
    return ["--model-id", str(b.hugging_face_id), "--revision", b.revision]


def lora_adapters(revisions: dict[str, ServingRevision]) -> str:
    """TGI's LORA_ADAPTERS: ``name=/models/<path>,...`` in a stable order."""
    return ",".join(f"{name}={contract.MODEL_STORE_MOUNT}/{r.path}" for name, r in sorted(revisions.items()))


def container(spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]) -> dict:
    tgi = spec.runtime.tgi
    r = spec.resources
    args = [
        *_model_id(spec),
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
    shards = tgi.num_shard or (r.gpus if r.gpus > 1 else None)
    if shards:
        args += ["--num-shard", str(shards)]
    requests: dict[str, str] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, str] = {"memory": r.memory}
    if r.gpus:
        requests[r.gpu_resource_name] = limits[r.gpu_resource_name] = str(r.gpus)
    health = {"httpGet": {"path": "/health", "port": "http"}}
    return {
        "name": "tgi",
        "image": tgi.image or settings.tgi_image,
        "imagePullPolicy": settings.tgi_image_pull_policy,
        "args": args,
        "env": [
            *({"name": k, "value": v} for k, v in OFFLINE_ENV.items()),
            {"name": "LORA_ADAPTERS", "value": lora_adapters(revisions)},
        ],
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
        # answering meanwhile, then SIGTERM lets TGI finish what is in flight.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "resources": {"requests": requests, "limits": limits},
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
