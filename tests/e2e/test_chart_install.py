"""`helm install` of charts/loraforge into the local control plane, with the
operator really running in the cluster: its pod lands on the local node (the
image `loraforge/operator` runs `loraforge-operator` there with the pod's
environment and ServiceAccount token), so it works with exactly the chart's
ServiceAccount, RBAC and settings. Namespaces enforce Pod Security
"restricted", so the chart's pods and the ones the operator creates must all
be admitted.

The lifecycle: install (every object created, the operator Ready and
reconciling a FineTuneJob and a ModelDeployment), `helm test`, `kubectl auth
can-i` on what the operator may and may not do, `helm upgrade` (namespaced to
cluster-wide), `helm uninstall`; FineTuneJobs, ModelDeployments and published
adapters outlive both. Bad values and a missing pull secret fail the install
with a message that names them."""

from __future__ import annotations

import hashlib
import socket
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster import storage
from tests.conftest import restricted_namespace
from tests.finetunejob_cases import VALID_SPEC
from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "loraforge"
RELEASE = "lfchart"
OPERATOR = f"{RELEASE}-loraforge-operator"
SA = f"{RELEASE}-loraforge-operator"
LOCAL_NODE = {
    "nodeSelector": {"loraforge.io/local-node": "true"},
    "tolerations": [{"key": "loraforge.io/local-node", "operator": "Exists", "effect": "NoSchedule"}],
}
ADAPTER = "adapters/{ns}/support/v1"


@pytest.fixture(autouse=True)
def _local_only(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("the operator image runs only on the local cluster's local node here")


@pytest.fixture(autouse=True)
def _only_the_charts_operator(session_operator_paused: None) -> None:
    """The chart's operator must be the one that reconciles what these tests create."""


def _free_port() -> int:
    # The local node's pods share the host's network: the operator's ports must be free on it.
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))  # noqa: S104 - probing what the operator will bind
        return s.getsockname()[1]


def _helm(kube: Kube, verb: str, values: dict[str, Any], *extra: str, check: bool = True):
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        return kube.helm(verb, RELEASE, str(CHART), "-f", f.name, *extra, check=check, timeout=240)


@pytest.fixture
def spaces(kube: Kube, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A release namespace and a workload namespace (both "restricted"); the workload one with a model
    store holding a published adapter revision."""
    release, workload = restricted_namespace(kube, "lf-rel"), restricted_namespace(kube, "lf-wl")
    store = tmp_path / "store"
    adapter = store / ADAPTER.format(ns=workload)
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    (adapter / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (adapter / "COMPLETE").write_text("")
    pv, pvc = storage.model_store(workload, host_path=str(store))
    kube.apply([pv, pvc])
    yield {"release": release, "workload": workload, "store": store}
    kube.helm("uninstall", RELEASE, "-n", release, "--wait", "--timeout=60s", check=False)
    for ns in (release, workload):
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kube.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)


def _values(spaces: dict[str, Any], health: int, metrics_port: int, **more: Any) -> dict[str, Any]:
    return {
        "scope": {"mode": "namespaces"},
        "workloadNamespaces": [spaces["workload"]],
        "operator": {"healthPort": health, "metricsPort": metrics_port, "logFormat": "plain", **LOCAL_NODE},
        "tests": LOCAL_NODE,
        **more,
    }


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _operator_pod(kube: Kube, ns: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        pods = kube.get("pods", "-n", ns, "-l", "app.kubernetes.io/component=operator")["items"]
        for p in pods:
            conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp"):
                return p
        return None

    return wait_for(ready, timeout=120, what=f"a Ready operator pod in {ns}", interval=1)


def _metric(pod: dict[str, Any], port: int, name: str, **labels: str) -> float:
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and all(w in line for w in want)
    )


def _can_i(kube: Kube, ns: str, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{ns}:{SA}", check=False)
    return proc.stdout.strip() == "yes"


def _workloads(kube: Kube, ns: str) -> None:
    kube.apply(
        [
            {
                "apiVersion": "loraforge.io/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": "support"},
                "spec": {**VALID_SPEC, "adapter": {"name": "support"}},
            },
            {
                "apiVersion": "loraforge.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "support"},
                "spec": {
                    "baseModel": {"path": "base/smollm2-135m-instruct"},
                    "adapters": [{"name": "support", "from": {"path": ADAPTER.format(ns=ns)}}],
                },
            },
        ],
        namespace=ns,
    )


def _uids(kube: Kube, ns: str) -> dict[str, str]:
    return {
        kind: kube.get(kind, "support", "-n", ns)["metadata"]["uid"]
        for kind in ("finetunejob", "modeldeployment")
    }


def test_install_test_upgrade_uninstall(kube: Kube, spaces: dict[str, Any]) -> None:
    rel, wl = spaces["release"], spaces["workload"]
    health, metrics_port = _free_port(), _free_port()
    values = _values(spaces, health, metrics_port)
    adapter_digest = _tree_digest(spaces["store"] / "adapters")

    # --- install ------------------------------------------------------------------------------------
    # The CRDs may exist already (applied by other tests from crds/): the release takes them over.
    _helm(kube, "install", values, "-n", rel, "--take-ownership", "--wait", "--timeout=180s")
    manifest = [d for d in yaml.safe_load_all(kube.helm("get", "manifest", RELEASE, "-n", rel).stdout) if d]
    for d in manifest:
        ns = ["-n", d["metadata"]["namespace"]] if d["metadata"].get("namespace") else []
        group = d["apiVersion"].rpartition("/")[0]
        kind = f"{d['kind']}.{group}" if group else d["kind"]
        assert kube.kubectl("get", kind, d["metadata"]["name"], *ns, check=False).returncode == 0, (
            f"{d['kind']} {d['metadata']['name']} was not created"
        )
    kinds = {d["kind"] for d in manifest}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount", "NetworkPolicy", "Role"} <= kinds
    pod = _operator_pod(kube, rel)
    assert pod["spec"]["nodeName"] == "local" and pod["spec"]["serviceAccountName"] == SA

    # The operator works with the chart's RBAC: a FineTuneJob and a ModelDeployment in the restricted
    # workload namespace get their Job and Deployment, whose pods Pod Security admits.
    _workloads(kube, wl)
    wait_for(
        lambda: kube.get("pods", "-n", wl, "-l", "loraforge.io/finetunejob=support")["items"],
        timeout=90,
        what="the training pod (created and admitted)",
    )
    wait_for(
        lambda: kube.get("pods", "-n", wl, "-l", "loraforge.io/modeldeployment=support")["items"],
        timeout=90,
        what="the serving pod (created and admitted)",
    )
    train = kube.get("job", "support-train", "-n", wl)["spec"]["template"]["spec"]["containers"][0]
    assert train["image"] == "loraforge/trainer:0.1.0", (
        "the chart's trainer image default reached the operator"
    )
    wait_for(
        lambda: (
            _metric(pod, metrics_port, "loraforge_reconciles_total", kind="FineTuneJob", result="ok") >= 1
        ),
        timeout=30,
        what="a successful FineTuneJob reconcile by the chart's operator",
    )
    assert _metric(pod, metrics_port, "loraforge_api_writes_total") >= 5

    # --- helm test ----------------------------------------------------------------------------------
    proc = kube.helm("test", RELEASE, "-n", rel, "--logs", "--timeout=120s", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout

    # --- what the operator may do, and what not -----------------------------------------------------
    may = [
        ("list", "finetunejobs.loraforge.io", "-n", wl),
        ("watch", "modeldeployments.loraforge.io", "-n", wl),
        ("patch", "finetunejobs.loraforge.io", "--subresource=status", "-n", wl),
        ("patch", "modeldeployments.loraforge.io", "--subresource=status", "-n", wl),
        ("create", "jobs.batch", "-n", wl),
        ("delete", "jobs.batch", "-n", wl),
        ("patch", "configmaps", "-n", wl),
        ("create", "roles.rbac.authorization.k8s.io", "-n", wl),
        ("create", "deployments.apps", "-n", wl),
        ("create", "horizontalpodautoscalers.autoscaling", "-n", wl),
        ("create", "poddisruptionbudgets.policy", "-n", wl),
        ("delete", "horizontalpodautoscalers.autoscaling", "-n", wl),
        ("watch", "pods", "-n", wl),
        ("patch", "pods", "--subresource=status", "-n", wl),
        ("create", "events", "-n", wl),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    may_not = [
        ("get", "secrets", "-n", wl),
        ("list", "secrets", "-n", rel),
        ("delete", "finetunejobs.loraforge.io", "-n", wl),
        ("update", "finetunejobs.loraforge.io", "-n", wl),
        ("create", "pods", "-n", wl),
        ("delete", "pods", "-n", wl),
        ("create", "pods", "--subresource=exec", "-n", wl),
        ("delete", "deployments.apps", "-n", wl),
        ("bind", "roles.rbac.authorization.k8s.io", "-n", wl),
        ("escalate", "roles.rbac.authorization.k8s.io", "-n", wl),
        ("create", "clusterroles.rbac.authorization.k8s.io"),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("patch", "nodes"),
        # Namespaced scope: nothing outside the workload namespace.
        ("create", "jobs.batch", "-n", "default"),
        ("list", "finetunejobs.loraforge.io", "-n", "default"),
        ("create", "deployments.apps", "-n", rel),
    ]
    assert [a for a in may if not _can_i(kube, rel, *a)] == []
    assert [a for a in may_not if _can_i(kube, rel, *a)] == []

    # --- upgrade: cluster-wide ----------------------------------------------------------------------
    before = _uids(kube, wl)
    # Settled first: kwok ends the training pod 2 s after it runs (Failed, NoResultReported: no trainer ran),
    # and a status taken meanwhile would change during the upgrade by itself.
    wait_for(
        lambda: kube.get("finetunejob", "support", "-n", wl).get("status", {}).get("phase") == "Failed",
        timeout=60,
        what="the FineTuneJob's training to end",
    )
    ftj_status = kube.get("finetunejob", "support", "-n", wl).get("status")
    _helm(kube, "upgrade", {**values, "scope": {"mode": "cluster"}}, "-n", rel, "--wait", "--timeout=180s")
    new_pod = _operator_pod(kube, rel)
    assert new_pod["metadata"]["uid"] != pod["metadata"]["uid"], "changed arguments restart the operator"
    assert not any(a.startswith("--namespace") for a in new_pod["spec"]["containers"][0]["args"])
    assert _can_i(kube, rel, "create", "jobs.batch", "-n", "default")
    assert not _can_i(kube, rel, "get", "secrets", "-n", "default")
    assert _uids(kube, wl) == before
    # Not reset by the new operator: the same status, transition times included.
    assert kube.get("finetunejob", "support", "-n", wl).get("status") == ftj_status
    assert _tree_digest(spaces["store"] / "adapters") == adapter_digest

    # --- uninstall ----------------------------------------------------------------------------------
    kube.helm("uninstall", RELEASE, "-n", rel, "--wait", "--timeout=90s")
    assert kube.kubectl("get", "deployment", OPERATOR, "-n", rel, check=False).returncode != 0
    assert kube.kubectl("get", "serviceaccount", SA, "-n", rel, check=False).returncode != 0
    assert kube.kubectl("get", "clusterrole", OPERATOR, check=False).returncode != 0
    for crd in ("finetunejobs.loraforge.io", "modeldeployments.loraforge.io"):
        assert kube.kubectl("get", "crd", crd, check=False).returncode == 0, f"{crd} was deleted"
    assert _uids(kube, wl) == before, "FineTuneJobs and ModelDeployments outlive the release"
    assert kube.kubectl("get", "job", "support-train", "-n", wl, check=False).returncode == 0
    assert _tree_digest(spaces["store"] / "adapters") == adapter_digest, "published adapters are untouched"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicas": "two"}}, "at '/operator/replicas': got string, want integer"),
        (
            {"networkPolicy": {"egress": []}},
            "at '/networkPolicy': additional properties 'egress' not allowed",
        ),
        (
            {"global": {"imagePullSecrets": ["mirror-creds"]}},
            'names Secret "mirror-creds", which does not exist',
        ),
    ],
    ids=["wrong-type", "unknown-key", "missing-pull-secret"],
)
def test_bad_values_fail_the_install_naming_them(
    kube: Kube, spaces: dict[str, Any], values: dict[str, Any], message: str
) -> None:
    proc = _helm(kube, "install", {**_values(spaces, 1, 2), **values}, "-n", spaces["release"], check=False)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr
    assert kube.helm("status", RELEASE, "-n", spaces["release"], check=False).returncode != 0, (
        "nothing installed"
    )
