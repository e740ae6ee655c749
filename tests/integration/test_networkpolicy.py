"""The chart's NetworkPolicies against the pods the operator really builds:
training and serving pods run with egress denied, except what they need.

There is no network plugin here, so nothing enforces a NetworkPolicy on this
machine. What this file proves instead: the policies as `helm template`
renders them, evaluated with a small model of the Kubernetes NetworkPolicy
semantics (networking.k8s.io/v1, below), select exactly the pods that the
operator's own builders produce (finetunejob/builders.py,
modeldeployment/builders.py and runtime.py, and the chart's operator
Deployment) and allow exactly the connections those pods need: a label or a
port name that drifts between the chart and the builders fails here, where
on a cluster it would silently disable a policy or cut a pod off.

The model is a model, not an enforcement: it decides whether a policy *says*
a connection is allowed. Whether a network plugin enforces it (and whether it
sees a Service's address before or after translation) is the plugin's
business and needs a real cluster with one.
"""

from __future__ import annotations

import copy
import ipaddress
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from loraforge_operator.finetunejob import builders as ftj_builders
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.modeldeployment import builders as md_builders
from loraforge_operator.modeldeployment import runtime
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.settings import Settings
from tests.finetunejob_cases import VALID_SPEC

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "loraforge"
RELEASE, RELEASE_NS, WORKLOAD_NS, CLIENT_NS = "lf", "loraforge", "team-a", "apps"
API_SERVER_IP = "10.96.0.1"
INTERNET_IP = "1.1.1.1"  # anything outside the cluster, e.g. huggingface.co
SETTINGS = Settings()


# --- a model of NetworkPolicy semantics (networking.k8s.io/v1) ---------------------------------------
#
# - A pod is isolated for a direction (Ingress/Egress) when some policy in its namespace selects it
#   (spec.podSelector) and lists that direction in policyTypes (absent: Ingress, plus Egress when the
#   policy has an `egress` section). A pod that no policy isolates allows everything in that direction.
# - An isolated pod allows a connection when some rule of some policy selecting it matches it; the
#   connection happens only if the source's egress and the destination's ingress both allow it.
# - A rule's peers (`to`/`from`): absent or empty means every peer; podSelector alone selects pods of
#   the policy's namespace; namespaceSelector (with an optional podSelector) pods of matching namespaces;
#   ipBlock addresses in `cidr` but not in `except` (matched against any address, a pod's too: plugins
#   differ there, so the pods here have addresses outside every ipBlock the chart writes).
# - A rule's ports: absent or empty means every port; an entry matches its protocol (default TCP) and a
#   number (up to endPort), or a name, resolved against the *destination pod's* containerPorts.
# - Only new connections are modelled; replies to an allowed connection are always allowed.


@dataclass
class Endpoint:
    """A pod (with a namespace) or an address outside any pod (namespace None)."""

    ip: str
    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    containers: list[dict[str, Any]] = field(default_factory=list)  # the pod spec's, for named ports


def selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A LabelSelector: matchLabels and matchExpressions, all must hold; {} selects everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op in ("Exists", "DoesNotExist"):
            ok = (key in labels) == (op == "Exists")
        else:
            raise ValueError(f"unknown selector operator {op}")
        if not ok:
            return False
    return True


def _peer_matches(peer: Mapping[str, Any], policy_ns: str, other: Endpoint, namespaces) -> bool:
    if "ipBlock" in peer:
        ip, block = ipaddress.ip_address(other.ip), peer["ipBlock"]
        excluded = any(ip in ipaddress.ip_network(c) for c in block.get("except") or [])
        return ip in ipaddress.ip_network(block["cidr"]) and not excluded
    if other.namespace is None:  # pod and namespace selectors select pods only
        return False
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespaces[other.namespace]):
            return False
    elif other.namespace != policy_ns:
        return False
    return selects(peer.get("podSelector") or {}, other.labels)


def _port_matches(entry: Mapping[str, Any], dest: Endpoint, port: int, protocol: str) -> bool:
    if entry.get("protocol", "TCP") != protocol:
        return False
    want = entry.get("port")
    if want is None:
        return True
    if isinstance(want, str):  # a named port: whatever the destination pod declares under that name
        return any(
            p.get("name") == want and p.get("protocol", "TCP") == protocol and p["containerPort"] == port
            for c in dest.containers
            for p in c.get("ports") or []
        )
    return want <= port <= entry.get("endPort", want)


def policy_types(spec: Mapping[str, Any]) -> list[str]:
    if "policyTypes" in spec:
        return spec["policyTypes"]
    return ["Ingress", "Egress"] if "egress" in spec else ["Ingress"]


def isolating(policies: list[dict], pod: Endpoint, direction: str) -> list[dict]:
    """The policies that select ``pod`` for ``direction`` ("Ingress" or "Egress")."""
    return [
        p
        for p in policies
        if p["metadata"]["namespace"] == pod.namespace
        and direction in policy_types(p["spec"])
        and selects(p["spec"]["podSelector"], pod.labels)
    ]


def _permits(policies, namespaces, pod, direction, peer, dest, port, protocol) -> bool:
    if pod.namespace is None:  # not a pod: no NetworkPolicy applies to it
        return True
    chosen = isolating(policies, pod, direction)
    if not chosen:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    for p in chosen:
        policy_ns = p["metadata"]["namespace"]
        for rule in p["spec"].get(key) or []:
            peers, ports = rule.get(peers_key) or [], rule.get("ports") or []
            peer_ok = not peers or any(_peer_matches(x, policy_ns, peer, namespaces) for x in peers)
            port_ok = not ports or any(_port_matches(e, dest, port, protocol) for e in ports)
            if peer_ok and port_ok:
                return True
    return False


def allowed(policies, namespaces, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP") -> bool:
    """May ``src`` open a connection to ``dst`` on ``port``/``protocol``? Both ends' policies must agree."""
    out = _permits(policies, namespaces, src, "Egress", dst, dst, port, protocol)
    return out and _permits(policies, namespaces, dst, "Ingress", src, dst, port, protocol)


# --- the world: the rendered chart and the pods the operator builds ----------------------------------


def _helm() -> str:
    """The helm this repo pins, built from its Go module like the cluster's binaries (cached; the integration
    tier builds them anyway)."""
    from localcluster.build import ensure_built

    return str(ensure_built(quiet=True)["helm"])


def render(*extra: str) -> list[dict[str, Any]]:
    values = [
        f"--set=workloadNamespaces={{{WORKLOAD_NS}}}",
        # helm template cannot look up the API server's endpoints: name its address.
        f"--set=networkPolicy.apiServer.cidrs={{{API_SERVER_IP}/32}}",
    ]
    cmd = [_helm(), "template", RELEASE, str(CHART), "-n", RELEASE_NS, *values, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60)
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _pod(template: Mapping[str, Any], namespace: str, ip: str, **controller_labels: str) -> Endpoint:
    """A pod of ``template`` as its controller creates it (the controller adds its own labels)."""
    labels = {**template["metadata"]["labels"], **controller_labels}
    return Endpoint(ip, namespace, labels, copy.deepcopy(template["spec"]["containers"]))


def training_pods(name: str, nodes: int, first_ip: int, extra: Mapping[str, Any] | None = None):
    owner = ftj_builders.Owner(name, WORKLOAD_NS, f"uid-{name}")
    spec = FineTuneJobSpec.model_validate({**VALID_SPEC, "resources": {"nodes": nodes}, **(extra or {})})
    job = ftj_builders.job(owner, spec, SETTINGS)
    job_name = job["metadata"]["name"]
    by_job = {"batch.kubernetes.io/job-name": job_name, "job-name": job_name, "controller-uid": "c-uid"}
    pods = []
    for i in range(nodes):
        index = {"batch.kubernetes.io/job-completion-index": str(i)} if nodes > 1 else {}
        pods.append(_pod(job["spec"]["template"], WORKLOAD_NS, f"10.244.1.{first_ip + i}", **by_job, **index))
    return pods


def serving_pod(ip: str) -> Endpoint:
    return _pod(serving_deployment()["spec"]["template"], WORKLOAD_NS, ip, **{"pod-template-hash": "5d8f7c"})


def serving_deployment() -> dict[str, Any]:
    owner = md_builders.Owner("assistant", WORKLOAD_NS, "uid-md")
    spec = ModelDeploymentSpec.model_validate(
        {"baseModel": {"path": "base/smollm2"}, "adapters": [{"name": "facts", "from": {"adapter": "facts"}}]}
    )
    revisions = {"facts": ServingRevision(name="facts", revision="v1", path="adapters/team-a/facts/v1")}
    return md_builders.deployment(owner, spec, SETTINGS, revisions)


@dataclass
class World:
    policies: list[dict[str, Any]]
    namespaces: dict[str, dict[str, str]]
    pods: dict[str, Endpoint]

    def can(self, src: str, dst: str, port: int, protocol: str = "TCP") -> bool:
        return allowed(self.policies, self.namespaces, self.pods[src], self.pods[dst], port, protocol)


def make_world(chart: list[dict[str, Any]]) -> World:
    operator = next(d for d in chart if d["kind"] == "Deployment")["spec"]["template"]
    helm_test = next(d for d in chart if d["kind"] == "Pod")  # the `helm test` hook
    single, (multi_0, multi_1) = training_pods("single", 1, 10), training_pods("multi", 2, 20)
    dns_ports = [
        {"name": "dns", "containerPort": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
    ]
    pods = {
        "training": single[0],
        "multi-0": multi_0,
        "multi-1": multi_1,
        "serving": serving_pod("10.244.1.30"),
        "operator": _pod(operator, RELEASE_NS, "10.244.2.10", **{"pod-template-hash": "7b9c6d"}),
        "helm-test": _pod(helm_test, RELEASE_NS, "10.244.2.11"),
        # CoreDNS as kubeadm deploys it.
        "kube-dns": Endpoint("10.244.0.5", "kube-system", {"k8s-app": "kube-dns"}, [{"ports": dns_ports}]),
        "client": Endpoint("10.244.3.10", CLIENT_NS, {"app": "chat-frontend"}),
        "api-server": Endpoint(API_SERVER_IP),
        "internet": Endpoint(INTERNET_IP),
    }
    names = {RELEASE_NS, WORKLOAD_NS, CLIENT_NS, "kube-system"}
    namespaces = {ns: {"kubernetes.io/metadata.name": ns} for ns in names}
    return World([d for d in chart if d["kind"] == "NetworkPolicy"], namespaces, pods)


@pytest.fixture(scope="module")
def world() -> World:
    return make_world(render())


TRAINING = ["training", "multi-0"]


# --- training pods: the API server, DNS and each other; nothing else --------------------------------


@pytest.mark.parametrize("pod", TRAINING)
@pytest.mark.parametrize("port", [443, 6443])
def test_a_training_pod_reports_progress_to_the_api_server(world: World, pod: str, port: int) -> None:
    # The trainer patches its progress ConfigMap (jobs/.../report.py, KUBERNETES_SERVICE_HOST): the
    # Service's port and the endpoints' port, whichever the plugin sees.
    assert world.can(pod, "api-server", port)


@pytest.mark.parametrize("port", [SETTINGS.rendezvous_port, 41234])
def test_pods_of_a_multi_node_job_reach_each_other_on_any_port(world: World, port: int) -> None:
    # torchrun's rendezvous (the master's port) and NCCL's sockets (ephemeral ports), both ways.
    assert world.can("multi-0", "multi-1", port) and world.can("multi-1", "multi-0", port)
    (c,) = world.pods["multi-0"].containers
    assert {"name": "rendezvous", "containerPort": SETTINGS.rendezvous_port} in c["ports"]


@pytest.mark.parametrize("pod", TRAINING)
@pytest.mark.parametrize("protocol", ["UDP", "TCP"])
def test_a_training_pod_resolves_names_through_kube_dns(world: World, pod: str, protocol: str) -> None:
    # Multi-node pods find the master as <job>-0.<job>-rdzv (a headless Service's DNS name).
    assert world.can(pod, "kube-dns", 53, protocol)


@pytest.mark.parametrize("pod", TRAINING)
@pytest.mark.parametrize(("port", "protocol"), [(443, "TCP"), (80, "TCP"), (53, "UDP")])
def test_a_training_pod_cannot_reach_the_internet(world: World, pod: str, port: int, protocol: str) -> None:
    # Air-gapped: no hub download, no telemetry, no resolver outside the cluster.
    assert not world.can(pod, "internet", port, protocol)


@pytest.mark.parametrize("pod", TRAINING)
def test_a_training_pod_cannot_reach_a_serving_pod_or_the_operator(world: World, pod: str) -> None:
    assert not world.can(pod, "serving", runtime.PORT)
    assert not world.can(pod, "operator", 8081)
    assert not world.can(pod, "api-server", 22), "the API server's address, but not its port"


# --- serving pods: nothing out; in on TGI's port only ----------------------------------------------


@pytest.mark.parametrize(
    ("dst", "port", "protocol"),
    [
        ("api-server", 443, "TCP"),
        ("internet", 443, "TCP"),
        ("kube-dns", 53, "UDP"),
        ("training", 29500, "TCP"),
    ],
)
def test_a_serving_pod_dials_nothing(world: World, dst: str, port: int, protocol: str) -> None:
    # TGI reads the model store (a volume) and answers; with HF_HUB_OFFLINE=1 it needs no network out.
    assert not world.can("serving", dst, port, protocol)


def test_the_operator_smoke_tests_a_serving_pod_on_tgis_named_port(world: World) -> None:
    # The smoke test dials http://<podIP>:runtime.PORT (modeldeployment/reconcile.py); both policies
    # name the port `http`, which must resolve to the containerPort the runtime declares.
    (c,) = world.pods["serving"].containers
    assert {"name": "http", "containerPort": runtime.PORT, "protocol": "TCP"} in c["ports"]
    assert world.can("operator", "serving", runtime.PORT)
    assert not world.can("operator", "serving", runtime.PORT + 1)


def test_a_client_in_another_namespace_reaches_a_serving_pod_on_its_port_only(world: World) -> None:
    assert world.can("client", "serving", runtime.PORT)  # networkPolicy.servingFrom: the whole cluster
    assert not world.can("client", "serving", 22)
    assert not world.can("client", "serving", runtime.PORT, "UDP")
    assert not world.can("client", "training", SETTINGS.rendezvous_port)


# --- the operator: the API server and serving pods -------------------------------------------------


def test_the_operator_reaches_the_api_server_and_nothing_else(world: World) -> None:
    assert world.can("operator", "api-server", 443) and world.can("operator", "api-server", 6443)
    assert not world.can("operator", "internet", 443)
    assert not world.can("operator", "training", SETTINGS.rendezvous_port)
    assert not world.can("operator", "kube-dns", 53, "UDP"), "it dials IPs only (in-cluster config, podIP)"


def test_the_operators_health_and_metrics_ports_resolve_by_name(world: World) -> None:
    # The operator's policy names `health` and `metrics`; the chart's Deployment declares them.
    ports = {p["name"]: p["containerPort"] for p in world.pods["operator"].containers[0]["ports"]}
    assert world.can("helm-test", "operator", ports["health"])
    assert world.can("helm-test", "operator", ports["metrics"])
    assert world.can("client", "operator", ports["metrics"])  # networkPolicy.metricsFrom
    assert not world.can("client", "operator", ports["health"])


@pytest.mark.parametrize("peers", ["servingFrom", "metricsFrom", "dns"])
def test_an_empty_list_of_peers_closes_a_rule_never_opens_it(peers: str) -> None:
    # In a NetworkPolicy rule `from: []` / `to: []` means every peer: `networkPolicy.<peers>: []` must
    # leave the rule out (or, for servingFrom, leave only the operator, which always may).
    w = make_world(render(f"--set-json=networkPolicy.{peers}=[]"))
    metrics = next(
        p["containerPort"] for p in w.pods["operator"].containers[0]["ports"] if p["name"] == "metrics"
    )
    closed = {
        "servingFrom": [("client", "serving", runtime.PORT, "TCP")],
        "metricsFrom": [("client", "operator", metrics, "TCP")],
        "dns": [("training", "kube-dns", 53, "UDP"), ("training", "internet", 53, "UDP")],
    }[peers]
    still_open = {
        "servingFrom": ("operator", "serving", runtime.PORT, "TCP"),
        "metricsFrom": ("helm-test", "operator", metrics, "TCP"),
        "dns": ("training", "api-server", 443, "TCP"),
    }[peers]
    for connection in closed:
        assert not w.can(*connection), connection
    assert w.can(*still_open)


# --- selection: every pod the operator builds is isolated -----------------------------------------


WORKLOADS = {
    "single-node": (lambda: training_pods("one", 1, 40), "lf-loraforge-training"),
    "multi-node": (lambda: training_pods("two", 2, 50), "lf-loraforge-training"),
    # podMetadata.labels cannot move a training pod out of its policy: the builders' labels win.
    "podMetadata-labels": (
        lambda: training_pods(
            "odd", 1, 60, {"podMetadata": {"labels": {"app.kubernetes.io/component": "x"}}}
        ),
        "lf-loraforge-training",
    ),
    "serving": (lambda: [serving_pod("10.244.1.70")], "lf-loraforge-serving"),
}


@pytest.mark.parametrize("workload", WORKLOADS)
def test_every_workload_pod_is_isolated_both_ways_by_its_own_policy(world: World, workload: str) -> None:
    # The drift that matters: a selector that no longer matches the builders' labels disables a policy
    # without a word.
    build, policy = WORKLOADS[workload]
    for pod in build():
        for direction in ("Egress", "Ingress"):
            chosen = [p["metadata"]["name"] for p in isolating(world.policies, pod, direction)]
            assert chosen == [policy], f"{direction} of a pod labelled {dict(pod.labels)}"


def test_the_operator_pod_is_isolated_both_ways(world: World) -> None:
    for direction in ("Egress", "Ingress"):
        chosen = [p["metadata"]["name"] for p in isolating(world.policies, world.pods["operator"], direction)]
        assert chosen == ["lf-loraforge-operator"]


# --- offline: the builders' environment --------------------------------------------------------------


@pytest.mark.parametrize("pod", ["training", "multi-0", "serving"])
def test_the_trainer_and_tgi_containers_run_offline(world: World, pod: str) -> None:
    # Set by finetunejob/builders.py and modeldeployment/runtime.py (OFFLINE_ENV).
    (c,) = world.pods[pod].containers
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert c["name"] in ("trainer", "tgi")
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env["HF_HUB_DISABLE_TELEMETRY"] == "1"


# --- the model itself, on the cases the chart does not exercise -------------------------------------


def test_the_model_follows_the_networkpolicy_rules() -> None:
    ns = {"a": {"kubernetes.io/metadata.name": "a", "env": "prod"}, "b": {"kubernetes.io/metadata.name": "b"}}
    web = Endpoint("10.0.0.1", "a", {"app": "web"}, [{"ports": [{"name": "web", "containerPort": 80}]}])
    db, other = Endpoint("10.0.0.2", "a", {"app": "db"}), Endpoint("10.0.0.3", "b", {"app": "web"})
    outside = Endpoint("192.168.1.7")

    def pol(spec: dict[str, Any], namespace: str = "a") -> list[dict[str, Any]]:
        return [{"metadata": {"name": "p", "namespace": namespace}, "spec": spec}]

    assert allowed([], ns, db, web, 1), "no policy: nothing isolated"
    ingress_only = pol({"podSelector": {}, "ingress": [{"ports": [{"port": "web"}]}]})  # default policyTypes
    assert allowed(ingress_only, ns, web, outside, 443), "Ingress only: egress stays open"
    assert allowed(ingress_only, ns, outside, web, 80) and not allowed(ingress_only, ns, outside, web, 81)
    assert not allowed(ingress_only, ns, web, db, 80), "`web` names no port on db"
    assert not allowed(ingress_only, ns, outside, web, 80, "UDP")
    udp_web = pol({"podSelector": {}, "ingress": [{"ports": [{"port": "web", "protocol": "UDP"}]}]})
    assert not allowed(udp_web, ns, outside, web, 80, "UDP"), "`web` is a TCP port"
    deny_egress = pol({"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Egress"]})
    assert not allowed(deny_egress, ns, web, db, 5432) and allowed(deny_egress, ns, db, web, 80)
    same_ns = pol({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}]}]})
    assert allowed(same_ns, ns, web, db, 1) and not allowed(same_ns, ns, web, other, 1)
    exprs = {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]}
    by_ns = pol(
        {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": exprs}]}]}
    )
    assert allowed(by_ns, ns, web, other, 1), "NotIn matches a namespace without the label"
    absent = {"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]}
    assert not selects(absent, web.labels) and selects(absent, {})
    assert selects(
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "web"]}]}, web.labels
    )
    block = {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.1.0/24"]}}
    ranged = [
        {"to": [block]},
        {"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"port": 8000, "endPort": 8100}]},
    ]
    blocks = pol({"podSelector": {}, "policyTypes": ["Egress"], "egress": ranged})
    assert allowed(blocks, ns, web, Endpoint("192.168.2.1"), 9) and not allowed(blocks, ns, web, outside, 9)
    assert allowed(blocks, ns, web, outside, 8100) and not allowed(blocks, ns, web, outside, 8101)
    assert not allowed(blocks, ns, web, db, 9), "a pod is not in 192.168.0.0/16"
