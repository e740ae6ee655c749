"""Storage for workloads on the local cluster's fake nodes.

There is no provisioner: a FineTuneJob's model store claim is bound to a
statically created PersistentVolume. On kwok nodes nothing mounts it.
"""

from __future__ import annotations

from typing import Any


def model_store(
    namespace: str, claim: str = "loraforge-model-store", size: str = "10Gi"
) -> list[dict[str, Any]]:
    """A PersistentVolume pre-bound to ``claim`` in ``namespace``, and the claim."""
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
                "hostPath": {"path": f"/nonexistent/loraforge/{pv}"},
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
