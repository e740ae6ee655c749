"""A ModelDeployment's HorizontalPodAutoscaler really scales, on the local cluster.

The metrics pipeline is real: metrics-server (built from its Go module) scrapes
the local node's kubelet endpoint, which reports the CPU time of each pod's
processes from /proc; the API server serves it as the Metrics API; the HPA
controller in kube-controller-manager reads it and resizes the Deployment the
operator built. Load from a client makes the TGI stand-in busy, the HPA scales
1 -> 2, the second pod passes its checks and serves; without load it scales
back 2 -> 1. Every request of the client succeeds throughout.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import localnode_workloads as workloads
from tests.e2e.conftest import OperatorProcess
from tests.kube import Kube, wait_for

NAME = "chat"
SELECTOR = f"loraforge.io/modeldeployment={NAME}"
METRICS_API = "/apis/metrics.k8s.io/v1beta1"
PROMPT = "Write a long story about a lighthouse keeper."


@pytest.fixture(scope="module", autouse=True)
def _local_node(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("runs its serving pods on the local cluster's local node, measured by metrics-server")


@pytest.fixture(scope="module")
def ns(kube: Kube, operator: OperatorProcess, base_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("model-store")
    with workloads.store_namespace(kube, "lf-hpa", base_model_dir, folder) as (name, store):
        workloads.random_adapter(base_model_dir, store, "adapters/random/v1")
        yield name


MODEL_DEPLOYMENT = {
    "apiVersion": "loraforge.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": NAME},
    "spec": {
        "baseModel": {"path": workloads.BASE_MODEL_PATH},
        "adapters": [{"name": "random", "from": {"path": "adapters/random/v1"}}],
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 2,
            "cpuUtilization": 50,
            # Scale down as soon as the load is gone (the default keeps replicas for 5 minutes).
            "behavior": {"scaleDownStabilizationSeconds": 0},
        },
        "resources": {"gpus": 1, "cpu": "250m", "memory": "2Gi", **workloads.ON_LOCAL_NODE},
    },
}


def _hpa(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get("hpa", NAME, "-n", ns)


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _cpu_utilization(hpa: dict[str, Any]) -> int | None:
    for m in hpa.get("status", {}).get("currentMetrics") or []:
        if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
            return m["resource"]["current"].get("averageUtilization")
    return None


def test_hpa_scales_the_serving_deployment_up_under_load_and_back_down(kube: Kube, ns: str) -> None:
    kube.apply(MODEL_DEPLOYMENT, namespace=ns)
    wait_for(
        lambda: _cond(kube.get("modeldeployment", NAME, "-n", ns), "Ready").get("status") == "True",
        timeout=300,
        what=f"ModelDeployment {NAME} to be Ready",
        interval=1,
    )

    hpa = _hpa(kube, ns)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    cpu_target = {"type": "Utilization", "averageUtilization": 50}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": cpu_target}}]

    # The Metrics API answers for the serving pod (metrics-server needs two scrapes for a rate).
    pod_metrics = wait_for(
        lambda: (
            (out := kube.kubectl("get", "--raw", f"{METRICS_API}/namespaces/{ns}/pods", check=False))
            and out.returncode == 0
            and (items := json.loads(out.stdout)["items"])
            and items
        ),
        timeout=90,
        what="metrics-server to report the serving pod's usage",
        interval=2,
    )
    assert pod_metrics[0]["containers"][0]["usage"]["cpu"]
    # ... and the HPA sees it: idle, below target, one replica.
    hpa = wait_for(
        lambda: (h := _hpa(kube, ns)) and _cond(h, "ScalingActive").get("status") == "True" and h,
        timeout=120,
        what="the HPA to read the pods' CPU from the Metrics API",
        interval=2,
    )
    assert hpa["status"]["desiredReplicas"] == 1, hpa["status"]

    client = workloads.ReadyPodClient(
        lambda: kube.get("pods", "-n", ns, "-l", SELECTOR)["items"],
        PROMPT,
        "random",
        pause=0,
        max_new_tokens=32,
    )
    status = workloads.scale_up_under_load(kube, ns, NAME, client)
    assert (_cpu_utilization({"status": status}) or 0) > 50, status
    md = kube.get("modeldeployment", NAME, "-n", ns)
    assert md["status"]["readyReplicas"] == 2, md["status"]

    # No load: back to the minimum.
    workloads.scale_down_idle(kube, ns, NAME)
    messages = workloads.rescale_messages(kube, ns, NAME)
    assert any("New size: 2" in m for m in messages) and any("New size: 1" in m for m in messages), messages
