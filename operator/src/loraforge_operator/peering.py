"""High availability with kopf peering (``loraforge-operator --peering NAME``).

Without a peering name the operator runs standalone: one replica, a
Deployment with strategy Recreate, no peering objects. With one, every replica
announces itself in that KopfPeering (a ClusterKopfPeering when it watches the
whole cluster) and only the live replica with the highest priority works; the
others wait and take over when it stops, or when it stops renewing its entry.
"""

from __future__ import annotations

import time
from typing import Any

GROUP, VERSION = "kopf.dev", "v1"


def run_args(name: str | None, priority: int | None) -> dict[str, Any]:
    """kopf.run's peering arguments.

    Replicas of equal priority would all pause (kopf cannot tell which should
    work), so the default priority is the start time in milliseconds: the
    newest replica takes over, which is also what a rolling update wants.
    """
    if not name:
        return {"standalone": True}
    return {
        "standalone": False,
        "peering_name": name,
        "priority": priority if priority is not None else time.time_ns() // 1_000_000,
    }


def objects(name: str, namespaces: list[str]) -> list[dict[str, Any]]:
    """The peering objects the replicas share: one cluster-wide, or one per watched namespace."""
    if not namespaces:
        return [
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
        ]
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "KopfPeering",
            "metadata": {"name": name, "namespace": ns},
        }
        for ns in namespaces
    ]


async def ensure(name: str, namespaces: list[str]) -> None:
    """Create the peering objects that are missing, before kopf starts.

    kopf does not create them, and a replica that finds none works as if it
    were alone, so several replicas would all work. The chart cannot ship them
    (a custom resource cannot be installed with its CRD in one release)."""
    from .kube import ApiError, Kube
    from .settings import Settings

    async with await Kube.connect(Settings.from_env().field_manager) as kube:
        for obj in objects(name, namespaces):
            try:
                await kube.create(obj)
            except ApiError as e:
                if e.status == 404:
                    raise SystemExit(
                        f"--peering {name}: the API server does not serve {obj['kind']} ({GROUP}/{VERSION}); "
                        "install kopf's peering CRDs (the chart does with operator.ha.installPeeringCRDs)"
                    ) from e
                if e.status != 409:  # 409: already there (another replica, an earlier start)
                    raise
