"""The real scheduler places GPU workloads on the fake GPU nodes by their
`nvidia.com/gpu` capacity and taint, and kwok carries Job pods to completion."""

from __future__ import annotations

import ipaddress

import pytest

from localcluster.cluster import POD_CIDR
from tests.kube import RESTRICTED_CONTAINER_SECURITY, Kube, wait_for

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


@pytest.fixture(autouse=True)
def _local_only(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("asserts the local cluster's fake node pools; a real cluster has its own")


def _job(name: str, gpus: int = 0, tolerate_gpu_taint: bool = False) -> dict:
    container = {
        "name": "train",
        "image": "registry.local/loraforge/trainer:test",
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
    }
    if gpus:
        container["resources"]["limits"]["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [container],
                    "tolerations": [GPU_TOLERATION] if tolerate_gpu_taint else [],
                }
            },
        },
    }


def _job_pod(kube: Kube, namespace: str, job: str) -> dict:
    pods = wait_for(
        lambda: kube.get("pods", "-n", namespace, "-l", f"job-name={job}")["items"],
        timeout=60,
        what=f"a pod of job {job}",
    )
    return pods[0]


def _unschedulable_message(kube: Kube, namespace: str, job: str) -> str:
    def message() -> str:
        pod = _job_pod(kube, namespace, job)
        for cond in pod.get("status", {}).get("conditions", []):
            if cond["type"] == "PodScheduled" and cond.get("reason") == "Unschedulable":
                return cond["message"]
        return ""

    return wait_for(message, timeout=60, what=f"job {job}'s pod to be reported unschedulable")


def test_fake_gpu_nodes_are_ready_with_gpu_capacity_and_taint(kube: Kube) -> None:
    nodes = kube.get("nodes", "-l", "loraforge.io/pool=gpu")["items"]
    assert len(nodes) >= 2
    for node in nodes:
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert node["metadata"]["labels"]["nvidia.com/gpu.present"] == "true"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node["spec"]["taints"]
        ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
        assert ready and ready[0]["status"] == "True"


def test_gpu_job_is_scheduled_onto_a_gpu_node_and_completes(kube: Kube, namespace: str) -> None:
    kube.apply(_job("gpu-train", gpus=2, tolerate_gpu_taint=True), namespace=namespace)
    kube.kubectl(
        "wait", "-n", namespace, "--for=condition=Complete", "job/gpu-train", "--timeout=120s", timeout=150
    )
    pod = _job_pod(kube, namespace, "gpu-train")
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert kube.get("job", "gpu-train", "-n", namespace)["status"]["succeeded"] == 1


def test_job_without_gpus_lands_on_the_cpu_pool(kube: Kube, namespace: str) -> None:
    kube.apply(_job("cpu-only"), namespace=namespace)
    pod = wait_for(
        lambda: (p := _job_pod(kube, namespace, "cpu-only"))["spec"].get("nodeName") and p,
        timeout=60,
        what="the CPU job's pod to be bound",
    )
    assert pod["spec"]["nodeName"] == "cpu-node-0"  # the GPU nodes' taint keeps it off them


def test_gpu_job_that_does_not_tolerate_the_gpu_taint_stays_pending(kube: Kube, namespace: str) -> None:
    kube.apply(_job("no-toleration", gpus=1), namespace=namespace)
    message = _unschedulable_message(kube, namespace, "no-toleration")
    assert "untolerated taint" in message and "nvidia.com/gpu" in message


def test_asking_for_more_gpus_than_any_node_has_is_unschedulable(kube: Kube, namespace: str) -> None:
    kube.apply(_job("too-big", gpus=9, tolerate_gpu_taint=True), namespace=namespace)
    assert "Insufficient nvidia.com/gpu" in _unschedulable_message(kube, namespace, "too-big")


def test_deployment_pods_become_ready_on_fake_nodes(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "serve"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"app": "serve"}},
                "template": {
                    "metadata": {"labels": {"app": "serve"}},
                    "spec": {
                        "containers": [
                            {
                                "name": "server",
                                "image": "registry.local/tgi:test",
                                "securityContext": RESTRICTED_CONTAINER_SECURITY,
                            }
                        ]
                    },
                },
            },
        },
        namespace=namespace,
    )
    kube.kubectl("rollout", "status", "-n", namespace, "deployment/serve", "--timeout=120s", timeout=150)
    assert kube.get("deployment", "serve", "-n", namespace)["status"]["readyReplicas"] == 2
    # Fake pods get loopback IPs: dialling one can never leave the machine.
    pods = kube.get("pods", "-n", namespace, "-l", "app=serve")["items"]
    assert all(ipaddress.ip_address(p["status"]["podIP"]) in ipaddress.ip_network(POD_CIDR) for p in pods)
