"""FineTuneJob → the manifests of its children. Pure functions: no I/O.

Children (deterministic names, all owned by the FineTuneJob):

- ``<name>-config``   ConfigMap: the resolved training configuration
- ``<name>-progress`` ConfigMap: the trainer's progress/result channel (created
  empty; the operator manages only its metadata, the trainer its data)
- ``<name>-trainer``  ServiceAccount + Role + RoleBinding: may get/patch
  exactly ``<name>-progress``, nothing else
- ``<name>-train``    batch Job: one pod per node; Indexed with a headless
  ``<name>-rdzv`` Service for torchrun's rendezvous when ``nodes > 1``
"""

from __future__ import annotations

import json
from typing import Any

from ..owner import Owner as OwnedBy
from ..pods import placement
from ..settings import (
    LABEL_COMPONENT,
    LABEL_FINETUNEJOB,
    LABEL_MANAGED_BY,
    LABEL_PART_OF,
    MANAGED_BY,
    PART_OF,
    Settings,
    pull_secrets,
)
from . import contract
from .model import FineTuneJobSpec, resolve

Manifest = dict[str, Any]


class Owner(OwnedBy):
    """The FineTuneJob the children belong to."""

    kind = "FineTuneJob"


def _labels(owner: Owner, component: str) -> dict[str, str]:
    return {
        LABEL_FINETUNEJOB: owner.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PART_OF: PART_OF,
    }


def _meta(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": _labels(owner, component),
        "ownerReferences": [owner.reference()],
    }


def resolved_config(owner: Owner, spec: FineTuneJobSpec) -> dict[str, Any]:
    """The training configuration the trainer receives (see contract.py): the spec resolved
    (model.resolve: every default explicit), plus where things are inside the pod (``run``)."""
    resolved = resolve(spec, owner.name)
    adapter = resolved.adapter.name
    body = resolved.model_dump(by_alias=True, exclude_none=True, mode="json")
    run = {
        "namespace": owner.namespace,
        "fineTuneJob": owner.name,
        "uid": owner.uid,
        "modelStore": contract.MODEL_STORE_MOUNT,
        "datasetDir": contract.DATASET_MOUNT if spec.dataset.config_map else None,
        "suitesDir": contract.SUITES_MOUNT if any(x.config_map for x in spec.evaluation.suites) else None,
        # Per FineTuneJob object (uid), so a re-created job never resumes a stranger's run.
        "checkpointDir": (
            f"{contract.MODEL_STORE_MOUNT}/checkpoints/{owner.namespace}/{owner.name}-{owner.uid[:8]}"
        ),
        "adapterDir": f"{contract.MODEL_STORE_MOUNT}/adapters/{owner.namespace}/{adapter}",
        "progressConfigMap": contract.progress_map_name(owner.name),
    }
    body[contract.RUN_SECTION] = {k: v for k, v in run.items() if v is not None}
    return body


def config_map(owner: Owner, spec: FineTuneJobSpec) -> Manifest:
    text = json.dumps(resolved_config(owner, spec), indent=2, sort_keys=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, contract.config_map_name(owner.name), "training-config"),
        "data": {contract.CONFIG_KEY: text},
    }


def progress_map(owner: Owner) -> Manifest:
    # No `data`: those fields belong to the trainer's field manager.
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(owner, contract.progress_map_name(owner.name), "training-progress"),
    }


def trainer_rbac(owner: Owner) -> list[Manifest]:
    name = contract.trainer_identity(owner.name)
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _meta(owner, name, "trainer"),
            "automountServiceAccountToken": False,  # mounted explicitly, by the training pod only
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _meta(owner, name, "trainer"),
            "rules": [
                {
                    # Report progress and the result: this one ConfigMap, nothing else.
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": [contract.progress_map_name(owner.name)],
                    "verbs": ["get", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _meta(owner, name, "trainer"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
        },
    ]


def rendezvous_service(owner: Owner, settings: Settings) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(owner, contract.rendezvous_service_name(owner.name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            # Pods must resolve each other before they are Ready.
            "publishNotReadyAddresses": True,
            "selector": {"batch.kubernetes.io/job-name": contract.job_name(owner.name)},
            "ports": [{"name": "rendezvous", "port": settings.rendezvous_port, "protocol": "TCP"}],
        },
    }


OFFLINE_ENV = {
    # Never reach for the Hugging Face hub (air-gapped), never send telemetry.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DO_NOT_TRACK": "1",
    # Pre-staged hub cache in the model store, for baseModel.huggingFaceId.
    "HF_HOME": f"{contract.MODEL_STORE_MOUNT}/hf-cache",
    # Writable scratch on a read-only root filesystem.
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "TRITON_CACHE_DIR": "/tmp/triton",
}


def _command(owner: Owner, spec: FineTuneJobSpec, settings: Settings) -> list[str]:
    config = f"{contract.CONFIG_DIR}/{contract.CONFIG_KEY}"
    procs = max(spec.resources.gpus_per_node, 1)
    if spec.resources.nodes == 1 and procs == 1:
        return ["loraforge-train", "--config", config]
    launcher = ["torchrun", f"--nproc-per-node={procs}"]
    if spec.resources.nodes == 1:
        launcher.append("--standalone")
    else:
        master = f"{contract.job_name(owner.name)}-0.{contract.rendezvous_service_name(owner.name)}"
        launcher += [
            f"--nnodes={spec.resources.nodes}",
            "--node-rank=$(JOB_COMPLETION_INDEX)",
            f"--master-addr={master}",
            f"--master-port={settings.rendezvous_port}",
        ]
    return [*launcher, "-m", "loraforge_trainer", "--config", config]


def _pod_metadata(owner: Owner, spec: FineTuneJobSpec) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": {**spec.pod_metadata.labels, **_labels(owner, "trainer")}}
    if spec.pod_metadata.annotations:
        meta["annotations"] = dict(spec.pod_metadata.annotations)
    return meta


def job(owner: Owner, spec: FineTuneJobSpec, settings: Settings) -> Manifest:
    r = spec.resources
    multi_node = r.nodes > 1
    requests: dict[str, str] = {"cpu": r.cpu, "memory": r.memory}
    limits: dict[str, str] = {"memory": r.memory}
    if r.gpus_per_node:
        requests[r.gpu_resource_name] = str(r.gpus_per_node)
        limits[r.gpu_resource_name] = str(r.gpus_per_node)

    env = [{"name": k, "value": v} for k, v in OFFLINE_ENV.items()]
    env += [
        {"name": contract.ENV_CONFIG, "value": f"{contract.CONFIG_DIR}/{contract.CONFIG_KEY}"},
        {"name": contract.ENV_PROGRESS_CONFIGMAP, "value": contract.progress_map_name(owner.name)},
        {"name": contract.ENV_NAMESPACE, "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": contract.ENV_POD_NAME, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    mounts = [
        {"name": "model-store", "mountPath": contract.MODEL_STORE_MOUNT},
        {"name": "config", "mountPath": contract.CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "model-store", "persistentVolumeClaim": {"claimName": spec.model_store.claim_name}},
        {"name": "config", "configMap": {"name": contract.config_map_name(owner.name)}},
        {"name": "tmp", "emptyDir": {}},
        # PyTorch data loaders and NCCL need more shared memory than the 64Mi default.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}},
    ]
    if spec.dataset.config_map:
        mounts.append({"name": "dataset", "mountPath": contract.DATASET_MOUNT, "readOnly": True})
        volumes.append(
            {
                "name": "dataset",
                "configMap": {
                    "name": spec.dataset.config_map.name,
                    "items": [{"key": spec.dataset.config_map.key, "path": spec.dataset.config_map.key}],
                },
            }
        )

    for suite in spec.evaluation.suites:
        if suite.config_map is None:
            continue
        volume = f"suite-{suite.name}"[:63].rstrip("-")
        mounts.append(
            {"name": volume, "mountPath": f"{contract.SUITES_MOUNT}/{suite.name}", "readOnly": True}
        )
        volumes.append(
            {
                "name": volume,
                "configMap": {
                    "name": suite.config_map.name,
                    "items": [{"key": suite.config_map.key, "path": suite.config_map.key}],
                },
            }
        )

    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image or settings.trainer_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": _command(owner, spec, settings),
        "env": env,
        "resources": {"requests": requests, "limits": limits},
        "volumeMounts": mounts,
        # The trainer writes a one-line failure summary here; the logs' tail otherwise.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if multi_node:
        container["ports"] = [{"name": "rendezvous", "containerPort": settings.rendezvous_port}]

    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": contract.trainer_identity(owner.name),
        "automountServiceAccountToken": True,  # the progress channel
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.trainer_uid,
            "runAsGroup": settings.trainer_uid,
            "fsGroup": settings.trainer_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    pod_spec.update(placement(r))
    pod_spec.update(pull_secrets(settings))
    if multi_node:
        pod_spec["subdomain"] = contract.rendezvous_service_name(owner.name)

    job_spec: dict[str, Any] = {
        "backoffLimit": spec.backoff_limit,
        "suspend": spec.suspend,
        "completions": r.nodes,
        "parallelism": r.nodes,
        "completionMode": "Indexed" if multi_node else "NonIndexed",
        # Bad input fails at once (the trainer exits EXIT_INVALID_INPUT);
        # an evicted or preempted pod does not use up a retry.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": "trainer",
                        "operator": "In",
                        "values": [contract.EXIT_INVALID_INPUT],
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": _pod_metadata(owner, spec),
            "spec": pod_spec,
        },
    }
    if spec.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = spec.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _meta(owner, contract.job_name(owner.name), "training"),
        "spec": job_spec,
    }


def children(owner: Owner, spec: FineTuneJobSpec, settings: Settings) -> list[Manifest]:
    """Every child, in the order they are applied (the Job last: what it mounts
    and runs as exists before its pods are created)."""
    out = [config_map(owner, spec), progress_map(owner), *trainer_rbac(owner)]
    if spec.resources.nodes > 1:
        out.append(rendezvous_service(owner, settings))
    out.append(job(owner, spec, settings))
    return out
