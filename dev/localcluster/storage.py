"""Storage for workloads on the local cluster's fake nodes.

There is no provisioner: a FineTuneJob's model store claim is bound to a
statically created hostPath PersistentVolume. On kwok nodes nothing mounts it;
the local node (dev/localnode) mounts the host directory into its pods.
"""

from __future__ import annotations

from typing import Any


def model_store(
    namespace: str, claim: str = "loraforge-model-store", size: str = "10Gi", host_path: str | None = None
) -> list[dict[str, Any]]:
    """A PersistentVolume pre-bound to ``claim`` in ``namespace``, and the claim.

    ``host_path`` is the directory behind it: the local node mounts it into its
    pods. Without one the PersistentVolume names a path that does not exist
    (fine for kwok's fake nodes, which mount nothing)."""
    pv = f"{namespace}-{claim}"
    return [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv, "labels": {"loraforge.io/local-cluster": "model-store"}},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": host_path or f"/nonexistent/loraforge/{pv}"},
                "claimRef": {"namespace": namespace, "name": claim},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": claim, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": size}},
            },
        },
    ]
