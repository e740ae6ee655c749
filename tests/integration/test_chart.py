"""The Helm chart against the real API server: `helm lint`, then `helm
template` over several value combinations, each applied with a server-side
dry run (the API server validates every object, RBAC rules included), and
every pod the chart or the operator creates admitted by Pod Security
"restricted" in a namespace that enforces it. Bad values fail with the key
they got wrong."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraforge_operator.finetunejob import builders as ftj_builders
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.modeldeployment import builders as md_builders
from loraforge_operator.modeldeployment.model import (
    ModelDeploymentSpec,
    Runtime,
    ServingRevision,
    VLLMSettings,
)
from loraforge_operator.settings import Settings
from tests.conftest import restricted_namespaces
from tests.finetunejob_cases import VALID_SPEC
from tests.kube import Kube, KubectlError, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "loraforge"
RELEASE = "lf"
DIGEST = "sha256:" + "ab" * 32


class _StrictLoader(yaml.SafeLoader):
    """YAML that refuses duplicate keys (a template that repeats a label renders them)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
    dupes = {k for k in keys if keys.count(k) > 1}
    if dupes:
        raise yaml.constructor.ConstructorError(None, None, f"duplicate keys {dupes}", node.start_mark)
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


@pytest.fixture(scope="module")
def namespaces(kube: Kube, crds: None) -> Iterator[dict[str, str]]:
    """The release namespace and two workload namespaces, all enforcing Pod Security "restricted"."""
    with restricted_namespaces(kube, {"release": "lf-chart", "wl1": "lf-wl", "wl2": "lf-wl"}) as names:
        yield names


@pytest.fixture(scope="module")
def monitoring_crds(kube: Kube) -> Iterator[None]:
    """Stand-ins for the Prometheus operator's ServiceMonitor and PodMonitor CRDs (open schemas), so the
    monitoring objects can be dry-run; removed afterwards unless they were there already."""
    created = []
    for kind in ("ServiceMonitor", "PodMonitor"):
        plural = kind.lower() + "s"
        name = f"{plural}.monitoring.coreos.com"
        if kube.kubectl("get", "crd", name, check=False).returncode == 0:
            continue
        kube.apply(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": name, "labels": {"loraforge.io/test": "true"}},
                "spec": {
                    "group": "monitoring.coreos.com",
                    "scope": "Namespaced",
                    "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "x-kubernetes-preserve-unknown-fields": True,
                                }
                            },
                        }
                    ],
                },
            }
        )
        created.append(name)
    if created:
        kube.kubectl("wait", "--for=condition=Established", *(f"crd/{n}" for n in created), "--timeout=60s")
    yield
    for name in created:
        kube.kubectl("delete", "crd", name, "--wait=false", check=False)


def _template(kube: Kube, namespace: str, values: dict[str, Any], *extra: str, check: bool = True):
    """`helm template` with ``values``; the parsed documents, or the failed process when check=False."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(values, f)
        f.flush()
        proc = kube.helm("template", RELEASE, str(CHART), "-n", namespace, "-f", f.name, *extra, check=check)
    if not check:
        return proc
    return [d for d in yaml.load_all(proc.stdout, Loader=_StrictLoader) if d]


def _dry_run(kube: Kube, docs: list[dict[str, Any]]) -> None:
    """Server-side dry-run apply of every document (each names its namespace, as helm renders them)."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    kube.kubectl("apply", "--server-side", "--dry-run=server", "--field-manager=helm", "-f", "-", input=body)


def _as_pod(name: str, spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    # Pod Security admission judges the pod spec; the ServiceAccount need not exist for a dry run of it.
    spec = {**spec, "serviceAccountName": "default"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {}},
        "spec": spec,
    }


def _admitted(kube: Kube, pod: dict[str, Any], namespace: str) -> None:
    proc = kube.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False
    )
    assert proc.returncode == 0, f"pod {pod['metadata']['name']} refused in {namespace}: {proc.stderr}"


def _chart_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    pods = []
    for d in docs:
        if d["kind"] == "Deployment":
            pods.append(_as_pod(d["metadata"]["name"], d["spec"]["template"]["spec"]))
        elif d["kind"] == "Pod":
            pods.append(_as_pod(d["metadata"]["name"], d["spec"]))
    return pods


def _operator_pods(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods the operator would create with the chart's settings: a training Job's and a serving
    Deployment's with each runtime, TGI and vLLM (the operator's own builders, fed the rendered ConfigMap)."""
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and "LORAFORGE_TRAINER_IMAGE" in d.get("data", {}))
    settings = Settings.from_env(cm["data"])
    owner = ftj_builders.Owner(name="probe", namespace="x", uid="0123456789abcdef")
    job = ftj_builders.job(owner, FineTuneJobSpec.model_validate({**VALID_SPEC}), settings)
    md = ModelDeploymentSpec.model_validate(
        {"baseModel": {"path": "base/m"}, "adapters": [{"name": "a", "from": {"path": "adapters/x/a/v1"}}]}
    )
    revs = {"a": ServingRevision(name="a", path="adapters/x/a/v1")}
    md_owner = md_builders.Owner(name="probe", namespace="x", uid="u" * 16)
    dep = md_builders.deployment(md_owner, md, settings, revs)
    vllm_md = md.model_copy(update={"runtime": Runtime(vllm=VLLMSettings())})
    vllm_dep = md_builders.deployment(md_owner, vllm_md, settings, revs)
    assert vllm_dep["spec"]["template"]["spec"]["containers"][0]["image"] == settings.vllm_image
    return [
        _as_pod("probe-train", job["spec"]["template"]["spec"]),
        _as_pod("probe-serve", dep["spec"]["template"]["spec"]),
        _as_pod("probe-serve-vllm", vllm_dep["spec"]["template"]["spec"]),
    ]


def test_helm_lint_passes(kube: Kube) -> None:
    proc = kube.helm("lint", str(CHART), "--strict", "--set=workloadNamespaces={a}")
    assert "0 chart(s) failed" in proc.stdout


def _cases(ns: dict[str, str]) -> dict[str, tuple[dict[str, Any], tuple[str, ...]]]:
    return {
        # The defaults, with workload NetworkPolicies in one namespace and the API server's address given.
        "defaults": (
            {"workloadNamespaces": [ns["wl1"]], "networkPolicy": {"apiServer": {"cidrs": ["10.96.0.1/32"]}}},
            (),
        ),
        # Air-gapped: every image from the mirror, pinned by digest, with a pull secret; namespaced RBAC;
        # HA with peering; CRDs managed elsewhere.
        "mirror-namespaced-ha": (
            {
                "global": {"imageRegistry": "registry.example:5000/ml", "imagePullSecrets": ["mirror-creds"]},
                "crds": {"enabled": False},
                "scope": {"mode": "namespaces"},
                "workloadNamespaces": [ns["wl1"], ns["wl2"]],
                "operator": {"replicas": 2, "ha": {"enabled": True}, "image": {"digest": DIGEST}},
                "trainer": {"image": {"digest": DIGEST, "pullPolicy": "Always"}},
                "serving": {
                    "image": {"tag": "3.3.6", "digest": DIGEST},
                    "vllm": {"image": {"digest": DIGEST}},
                },
                "networkPolicy": {"apiServer": {"cidrs": ["10.0.0.10/32", "fd00::1/128"], "ports": [6443]}},
            },
            (),
        ),
        # Monitoring on (the Prometheus operator's API, stand-in CRDs), placement, no NetworkPolicies.
        "monitoring-placement": (
            {
                "networkPolicy": {"enabled": False},
                "metrics": {
                    "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "podMonitor": {"enabled": True},
                    "dashboard": {"enabled": True},
                },
                "operator": {
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [
                        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}
                    ],
                    "affinity": {
                        "nodeAffinity": {
                            "requiredDuringSchedulingIgnoredDuringExecution": {
                                "nodeSelectorTerms": [
                                    {
                                        "matchExpressions": [
                                            {
                                                "key": "kubernetes.io/arch",
                                                "operator": "In",
                                                "values": ["amd64"],
                                            }
                                        ]
                                    }
                                ]
                            }
                        }
                    },
                    "priorityClassName": "system-cluster-critical",
                    "logFormat": "plain",
                    "verbose": True,
                },
            },
            ("--api-versions=monitoring.coreos.com/v1",),
        ),
        # The least: no metrics, no test hook, no NetworkPolicies.
        "minimal": (
            {
                "tests": {"enabled": False},
                "operator": {"metricsPort": 0},
                "networkPolicy": {"enabled": False},
            },
            (),
        ),
    }


@pytest.mark.parametrize("case", ["defaults", "mirror-namespaced-ha", "monitoring-placement", "minimal"])
def test_rendered_chart_is_accepted_by_the_api_server_and_its_pods_by_pod_security_restricted(
    kube: Kube, namespaces: dict[str, str], monitoring_crds: None, case: str
) -> None:
    values, extra = _cases(namespaces)[case]
    docs = _template(kube, namespaces["release"], values, *extra)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "ServiceAccount", "ConfigMap"} <= kinds
    # Bare pods (the test hook) would need their ServiceAccount to exist: they are checked below.
    _dry_run(kube, [d for d in docs if d["kind"] != "Pod"])

    pods = _chart_pods(docs) + _operator_pods(docs)
    assert len(pods) >= 3
    for pod in pods:
        _admitted(kube, pod, namespaces["release"])


def test_the_variants_render_what_they_promise(kube: Kube, namespaces: dict[str, str]) -> None:
    values, _ = _cases(namespaces)["mirror-namespaced-ha"]
    docs = _template(kube, namespaces["release"], values)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    dep = by_kind["Deployment"][0]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == f"registry.example:5000/ml/loraforge/operator:0.1.0@{DIGEST}"
    assert f"--namespace={namespaces['wl1']}" in container["args"]
    assert any(a.startswith("--peering=") for a in container["args"])
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate" and dep["spec"]["replicas"] == 2
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "mirror-creds"}]
    cm = next(d for d in by_kind["ConfigMap"] if "LORAFORGE_TRAINER_IMAGE" in d.get("data", {}))
    assert (
        cm["data"]["LORAFORGE_TRAINER_IMAGE"] == f"registry.example:5000/ml/loraforge/trainer:0.1.0@{DIGEST}"
    )
    assert cm["data"]["LORAFORGE_TGI_IMAGE"].startswith(
        "registry.example:5000/ml/huggingface/text-generation-"
    )
    # vLLM's image from the same mirror (global.imageRegistry replaces its docker.io), pinned.
    assert cm["data"]["LORAFORGE_VLLM_IMAGE"] == f"registry.example:5000/ml/vllm/vllm-openai:v0.32.0@{DIGEST}"
    assert cm["data"]["LORAFORGE_VLLM_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert cm["data"]["LORAFORGE_IMAGE_PULL_SECRETS"] == "mirror-creds"
    # Namespaced RBAC: a Role per workload namespace, no cluster-wide grant of the workload rules.
    assert sorted(
        r["metadata"]["namespace"] for r in by_kind["Role"] if "operator" in r["metadata"]["name"]
    ) == sorted([namespaces["wl1"], namespaces["wl2"]])
    cluster_rules = [rule for cr in by_kind["ClusterRole"] for rule in cr["rules"]]
    assert {g for rule in cluster_rules for g in rule["apiGroups"]} <= {"apiextensions.k8s.io", "kopf.dev"}
    # CRDs off: none of loraforge's (kopf's peering CRDs come with HA).
    assert {c["spec"]["group"] for c in by_kind["CustomResourceDefinition"]} == {"kopf.dev"}
    assert by_kind["PodDisruptionBudget"][0]["spec"]["minAvailable"] == 1

    defaults = _template(kube, namespaces["release"], {"workloadNamespaces": [namespaces["wl1"]]})
    dep = next(d for d in defaults if d["kind"] == "Deployment")
    assert dep["spec"]["strategy"] == {"type": "Recreate"} and dep["spec"]["replicas"] == 1
    cm = next(d for d in defaults if d["kind"] == "ConfigMap" and "LORAFORGE_VLLM_IMAGE" in d.get("data", {}))
    assert cm["data"]["LORAFORGE_VLLM_IMAGE"] == "docker.io/vllm/vllm-openai:v0.32.0"
    assert not [d for d in defaults if d["kind"] == "PodDisruptionBudget"]
    crds = [d for d in defaults if d["kind"] == "CustomResourceDefinition"]
    assert sorted(c["metadata"]["name"] for c in crds) == [
        "finetunejobs.loraforge.io",
        "modeldeployments.loraforge.io",
    ]
    for crd in crds:
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        source = yaml.safe_load((REPO / "crds" / f"{crd['metadata']['name']}.yaml").read_text())
        assert crd["spec"] == source["spec"], "the chart's CRD differs from crds/"
    # Without an address to look up (helm template), the API server rule names its ports only.
    np = next(d for d in defaults if d["kind"] == "NetworkPolicy" and "operator" in d["metadata"]["name"])
    assert np["spec"]["egress"][0] == {
        "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}]
    }


def test_the_stage_model_pod_is_admitted_under_restricted(kube: Kube, namespaces: dict[str, str]) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "images" / "stage-model.sh"), "--print-pod", "-s", "mirror-creds", "/m", "smol"],
        capture_output=True,
        text=True,
        check=True,
    )
    _admitted(kube, json.loads(proc.stdout), namespaces["wl1"])


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"operator": {"replicaz": 2}}, "at '/operator': additional properties 'replicaz' not allowed"),
        ({"operator": {"replicas": "two"}}, "at '/operator/replicas': got string, want integer"),
        ({"scope": {"mode": "everywhere"}}, "at '/scope/mode'"),
        ({"operator": {"image": {"digest": "latest"}}}, "at '/operator/image/digest'"),
        ({"serving": {"vllm": {"imag": {}}}}, "at '/serving/vllm': additional properties 'imag' not allowed"),
        (
            {"serving": {"vllm": {"image": {"pullPolicy": "Sometimes"}}}},
            "at '/serving/vllm/image/pullPolicy'",
        ),
        ({"securityContext": {"privileged": "yes"}}, "at '/securityContext/privileged'"),
        ({"networkPolicy": {"apiServer": {"cidrs": ["10.0.0.1"]}}}, "at '/networkPolicy/apiServer/cidrs/0'"),
        ({"workloadNamespaces": ["Not_A_Namespace"]}, "at '/workloadNamespaces/0'"),
        ({"operator": {"replicas": 2}}, "operator.replicas is 2 but operator.ha.enabled is false"),
        ({"scope": {"mode": "namespaces"}}, "workloadNamespaces is empty"),
        ({"metrics": {"podMonitor": {"enabled": True}}}, "monitoring.coreos.com/v1"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_bad_values_fail_naming_the_key(kube: Kube, values: dict[str, Any], message: str) -> None:
    proc = _template(kube, "default", values, check=False)
    assert proc.returncode != 0, f"{values} rendered"
    assert message in proc.stderr, proc.stderr


def test_the_dry_run_catches_what_it_should(kube: Kube, namespaces: dict[str, str]) -> None:
    """The checks above can fail: a privileged pod is refused, an invalid object too."""
    bad = _as_pod(
        "bad", {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}
    )
    with pytest.raises(AssertionError, match="restricted"):
        _admitted(kube, bad, namespaces["release"])
    with pytest.raises(KubectlError, match="port"):
        _dry_run(
            kube,
            [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": "bad", "namespace": namespaces["release"]},
                    "spec": {"ports": [{"port": 0}]},
                }
            ],
        )


@pytest.fixture
def peering_crds(kube: Kube, namespaces: dict[str, str]) -> Iterator[None]:
    """kopf's peering CRDs as the chart renders them with operator.ha.enabled."""
    docs = _template(
        kube,
        namespaces["release"],
        {"operator": {"ha": {"enabled": True}}, "networkPolicy": {"enabled": False}},
    )
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition" and d["spec"]["group"] == "kopf.dev"]
    assert sorted(c["spec"]["names"]["kind"] for c in crds) == ["ClusterKopfPeering", "KopfPeering"]
    # A CRD still being deleted (by an earlier test) would take the peering objects with it mid-test.
    for c in crds:
        kube.kubectl("wait", "--for=delete", f"crd/{c['metadata']['name']}", "--timeout=60s", check=False)
    existing = {
        c["metadata"]["name"]
        for c in crds
        if kube.kubectl("get", "crd", c["metadata"]["name"], check=False).returncode == 0
    }
    kube.apply(crds)
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        *(f"crd/{c['metadata']['name']}" for c in crds),
        "--timeout=60s",
    )
    yield
    for c in crds:
        if c["metadata"]["name"] not in existing:
            kube.kubectl("delete", "crd", c["metadata"]["name"], "--timeout=60s", check=False)


def test_ha_replicas_coordinate_through_the_charts_peering_crds(
    kube: Kube, namespaces: dict[str, str], peering_crds: None, tmp_path: Path
) -> None:
    """Two operators with --peering: each creates or finds the KopfPeering, announces itself there, and the
    one with the lower priority pauses in favour of the other."""
    ns = namespaces["wl2"]
    procs = []
    logs = {}
    try:
        for priority in (10, 20):
            logs[priority] = tmp_path / f"op-{priority}.log"
            env = {
                **os.environ,
                "KUBECONFIG": str(kube.kubeconfig),
                "LORAFORGE_METRICS_PORT": "0",
                "POD_ID": f"replica-{priority}",
            }
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "loraforge_operator",
                        "--log-format=plain",
                        "--verbose",  # kopf's peering and per-object lines: who worked
                        f"--liveness=http://127.0.0.1:{port}/healthz",
                        f"--namespace={ns}",
                        "--peering=lf-ha",
                        f"--priority={priority}",
                    ],
                    env=env,
                    stdout=logs[priority].open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )

        def both_announced() -> dict[str, Any] | None:
            proc = kube.kubectl("get", "kopfpeering", "lf-ha", "-n", ns, "-o", "json", check=False)
            if proc.returncode != 0:
                return None
            status = json.loads(proc.stdout).get("status") or {}
            return status if {"replica-10", "replica-20"} <= status.keys() else None

        status = wait_for(both_announced, timeout=60, what="both replicas in the KopfPeering")
        assert status["replica-20"]["priority"] == 20

        # kopf starts every replica paused until it has read the peering object. The higher-priority one
        # resumes; the lower-priority one stays paused, or (if it read an entry before its priority was
        # written and resumed for a moment) pauses again in favour of the other. From then on only the
        # higher-priority replica works.
        def settled() -> bool:
            low, high = logs[10].read_text(), logs[20].read_text()
            resumed = low.rfind("Resuming operations")
            paused_again = low.rfind("Pausing operations in favour of [<Peer replica-20")
            return "Resuming operations" in high and (resumed < 0 or paused_again > resumed)

        wait_for(settled, timeout=90, what=f"the replicas to settle (logs: {logs[10]}, {logs[20]})")
        time.sleep(3)
        assert settled(), "the lower-priority replica resumed work"
        handled = "Handler 'finetunejob_event' is invoked."
        before = {prio: log.read_text().count(handled) for prio, log in logs.items()}
        ftj = {"apiVersion": "loraforge.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ha"}}
        kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps({**ftj, "spec": VALID_SPEC}))
        wait_for(
            lambda: kube.get("ftj", "ha", "-n", ns).get("status", {}).get("phase"),
            timeout=60,
            what="a replica to reconcile the FineTuneJob",
        )
        assert logs[20].read_text().count(handled) > before[20], "the working replica did not handle it"
        assert logs[10].read_text().count(handled) == before[10], "the paused replica worked too"
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def test_network_policies_name_the_api_server_looked_up_at_install(
    kube: Kube, namespaces: dict[str, str]
) -> None:
    """At install time the chart reads the `kubernetes` Service's EndpointSlices; the local API server
    keeps none (--endpoint-reconciler-type=none), so the test writes one with a documentation address."""
    slice_name = f"kubernetes-{namespaces['release']}"
    kube.apply(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": slice_name,
                "namespace": "default",
                "labels": {"kubernetes.io/service-name": "kubernetes", "loraforge.io/test": "true"},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["192.0.2.10"]}],
            "ports": [{"name": "https", "port": 16443, "protocol": "TCP"}],
        }
    )
    try:
        # CRDs off: a server-side render would have to adopt CRDs that an uninstalled release kept.
        docs = _template(
            kube,
            namespaces["release"],
            {"workloadNamespaces": [namespaces["wl1"]], "crds": {"enabled": False}},
            "--dry-run=server",
        )
    finally:
        kube.kubectl("delete", "endpointslice", slice_name, "-n", "default", check=False)
    policies = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith(("-operator", "-training"))
    ]
    assert len(policies) == 2
    for np in policies:
        rule = np["spec"]["egress"][0]
        assert rule["to"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}], np["metadata"]["name"]
        assert sorted(p["port"] for p in rule["ports"]) == [443, 6443, 16443]
