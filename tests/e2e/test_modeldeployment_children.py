"""A ModelDeployment's optional children follow its spec, with the operator
running: a ServiceMonitor where the cluster serves that API (and a clear event
where it does not), and an HPA, budget or ServiceMonitor the spec no longer
asks for is deleted (an HPA left behind would keep resizing a Deployment whose
replicas the user fixed). Pods run on kwok's fake GPU nodes: this is about the
objects, not serving.

The ServiceMonitor API here is a stand-in CRD written for this test (group
monitoring.coreos.com, kind ServiceMonitor, the fields loraforge writes, typed
as the Prometheus Operator types them): the Prometheus Operator's own CRD
cannot be downloaded on these machines."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.kube import Kube, wait_for

CRD = "servicemonitors.monitoring.coreos.com"
DURATION = "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
ENDPOINT = {
    "type": "object",
    "properties": {
        "port": {"type": "string"},
        "path": {"type": "string"},
        "interval": {"type": "string", "pattern": DURATION},
    },
}
SPEC = {
    "type": "object",
    "required": ["selector"],
    "properties": {
        "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        "namespaceSelector": {
            "type": "object",
            "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
        },
        "endpoints": {"type": "array", "items": ENDPOINT},
    },
}
SERVICE_MONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD},
    "spec": {
        "group": "monitoring.coreos.com",
        "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList", "plural": "servicemonitors"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {"type": "object", "properties": {"spec": SPEC}}},
            }
        ],
    },
}


def _md(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"path": "base/smollm2-135m-instruct"},
            "adapters": [{"name": "facts", "from": {"path": "adapters/facts/v1"}}],
            **spec,
        },
    }


def _exists(kube: Kube, kind: str, name: str, ns: str) -> bool:
    return kube.kubectl("get", kind, name, "-n", ns, check=False).returncode == 0


@pytest.fixture
def no_service_monitor_api(kube: Kube) -> None:
    if kube.kubectl("get", "crd", CRD, check=False).returncode == 0:
        pytest.fail(f"{CRD} exists in this cluster: this test installs and removes its own stand-in")


def test_service_monitor_and_pruning_of_optional_children(
    kube: Kube, operator: OperatorProcess, namespace: str, model_store: str, no_service_monitor_api: None
) -> None:
    # No ServiceMonitor API yet: the rest is built, and an event says why there is no ServiceMonitor.
    kube.apply(_md("watched", monitoring={"serviceMonitor": True}), namespace=namespace)
    events = wait_for(
        lambda: [
            e
            for e in kube.get("events", "-n", namespace, "--field-selector", "involvedObject.name=watched")[
                "items"
            ]
            if e["reason"] == "ServiceMonitorUnavailable"
        ],
        timeout=60,
        what="a ServiceMonitorUnavailable event",
    )
    assert "monitoring.coreos.com/v1" in events[0]["message"] and events[0]["type"] == "Warning"
    assert _exists(kube, "deployment", "watched", namespace)

    kube.apply(SERVICE_MONITOR_CRD)
    try:
        kube.kubectl("wait", "--for=condition=Established", f"crd/{CRD}", "--timeout=30s")
        # With the API served: a ServiceMonitor for the Service's http port.
        md = _md(
            "scaled",
            autoscaling={"minReplicas": 2, "maxReplicas": 3, "cpuUtilization": 60},
            monitoring={"serviceMonitor": True, "labels": {"release": "prometheus"}},
        )
        kube.apply(md, namespace=namespace)
        sm = wait_for(
            lambda: (
                _exists(kube, "servicemonitor", "scaled", namespace)
                and kube.get("servicemonitor", "scaled", "-n", namespace)
            ),
            timeout=60,
            what="the ServiceMonitor",
        )
        assert sm["metadata"]["labels"]["release"] == "prometheus"
        assert sm["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
        wait_for(lambda: _exists(kube, "hpa", "scaled", namespace), timeout=60, what="the HPA")
        wait_for(lambda: _exists(kube, "pdb", "scaled", namespace), timeout=60, what="the budget")

        # Fixed single replica, no monitoring: HPA, budget and ServiceMonitor go; Deployment and Service stay.
        spec = {k: v for k, v in md["spec"].items() if k not in ("autoscaling", "monitoring")}
        kube.apply({**md, "spec": {**spec, "replicas": 1}}, namespace=namespace)
        wait_for(
            lambda: not any(_exists(kube, k, "scaled", namespace) for k in ("hpa", "pdb", "servicemonitor")),
            timeout=60,
            what="the HPA, budget and ServiceMonitor to be deleted",
        )
        assert _exists(kube, "deployment", "scaled", namespace) and _exists(
            kube, "service", "scaled", namespace
        )
        dep = kube.get("deployment", "scaled", "-n", namespace)
        assert dep["spec"]["replicas"] == 1
    finally:
        kube.kubectl("delete", "crd", CRD, "--wait=false", check=False)
