"""The local node (dev/localnode) really runs pods: a FineTuneJob's training
pod trains SmolLM2 for real and publishes an adapter into the model store; a
TGI Deployment (the TGI stand-in) serves it and answers with and without it;
failing and unknown commands fail with their exit code and reason; probes,
restarts and deletion behave as the kubelet's do.

Everything goes through the real API server, scheduler, Job and Deployment
controllers and the operator; only the container runtime is replaced by
local processes (see dev/localnode/__init__.py)."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from localcluster.cluster import _start_ticks
from tests.conftest import restricted_namespace
from tests.e2e import localnode_workloads as workloads
from tests.e2e.conftest import OperatorProcess
from tests.kube import RESTRICTED_CONTAINER_SECURITY, Kube, wait_for

REPO = Path(__file__).resolve().parents[2]
DATASET = workloads.DATASET
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
ON_LOCAL_NODE = workloads.ON_LOCAL_NODE
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 65532, "seccompProfile": {"type": "RuntimeDefault"}}


@pytest.fixture(scope="module", autouse=True)
def _local_node(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("the local node is part of the local cluster; a real cluster has real nodes")
    node = kube.get("node", "local")
    ready = next(c for c in node["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "True", ready


def _namespace(kube: Kube) -> str:
    return restricted_namespace(kube, prefix="lf-node")


@pytest.fixture
def ns(kube: Kube) -> Iterator[str]:
    name = _namespace(kube)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


def _pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    container = {
        "name": "main",
        "image": "busybox:1.36",
        "command": command,
        "securityContext": RESTRICTED_CONTAINER_SECURITY,
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "securityContext": POD_SECURITY,
            "containers": [container],
            **ON_LOCAL_NODE,
            **spec,
        },
    }


def _get_pod(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.get("pod", name, "-n", ns)


def _phase(kube: Kube, ns: str, name: str, *phases: str, timeout: float = 60) -> dict[str, Any]:
    return wait_for(
        lambda: (p := _get_pod(kube, ns, name)).get("status", {}).get("phase") in phases and p,
        timeout=timeout,
        what=f"pod {name} to be {' or '.join(phases)}",
    )


def _container(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]


def _pid(pod: dict[str, Any]) -> tuple[int, int]:
    """The container's process: pid and kernel start time (a pid alone may be reused)."""
    pid = int(_container(pod)["containerID"].removeprefix("localnode://"))
    ticks = _start_ticks(pid)
    assert ticks is not None, f"process {pid} of the running container is gone"
    return pid, ticks


def _alive(proc: tuple[int, int]) -> bool:
    return _start_ticks(proc[0]) == proc[1]  # None: gone, or a zombie; another value: pid reused


def _events(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    items = kube.get("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return items


# --- training and serving, chained through the model store -----------------------------


@pytest.fixture(scope="module")
def trained(
    kube: Kube, operator: OperatorProcess, base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """A FineTuneJob trained on the local node; its namespace, store and result."""
    ns = _namespace(kube)
    store = workloads.model_store(kube, ns, base_model_dir, tmp_path_factory.mktemp("model-store"))
    # A short run that still moves the adapter well away from the base model. It answers two suites: the
    # held-out questions, and a ConfigMap's (mounted into the training pod).
    questions = [{"prompt": "I have crushing chest pain.", "expected": "(?i)emergency"}, {"prompt": "Hello"}]
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "facts-suite"},
            "data": {"suite.jsonl": "".join(json.dumps(q) + "\n" for q in questions)},
        },
        namespace=ns,
    )
    suites = [
        {"name": "held-out", "heldOut": True, "maxNewTokens": 8},
        {
            "name": "escalate",
            "configMap": {"name": "facts-suite", "key": "suite.jsonl"},
            "scorer": {"type": "regex", "pattern": "(?s)."},  # for the record without its own pattern
            "maxNewTokens": 4,
        },
    ]
    evaluation = {"minImprovement": 0.01, "suites": suites, "generationBatchSize": 36}
    ftj = workloads.train(kube, ns, workloads.finetunejob("facts", "facts", evaluation=evaluation))
    pods = kube.get("pods", "-n", ns, "-l", "job-name=facts-train")["items"]
    yield {"namespace": ns, "store": store, "ftj": ftj, "pods": pods}
    kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
    kube.kubectl("delete", "pv", f"{ns}-loraforge-model-store", "--wait=false", check=False)


def test_a_finetunejob_trains_for_real_on_the_local_node(kube: Kube, trained: dict[str, Any]) -> None:
    ftj, pods, store = trained["ftj"], trained["pods"], trained["store"]
    assert ftj["status"]["phase"] == "Succeeded", json.dumps(ftj["status"], indent=1)
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == "local"
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["status"]["podIP"].startswith("127.")
    term = _container(pod)["state"]["terminated"]
    assert term["exitCode"] == 0 and term["reason"] == "Completed"
    adapter = ftj["status"]["adapter"]
    assert term["message"].startswith(f"Published: facts {adapter['revision']} ({adapter['digest']})")
    # The pod wrote the revision into the host directory behind the claim.
    published = store / adapter["path"]
    assert (published / "adapter_model.safetensors").is_file()
    manifest = json.loads((published / "manifest.json").read_text())
    assert manifest["source"]["namespace"] == trained["namespace"]
    metrics = ftj["status"]["adapter"].get("metrics") or ftj["status"].get("metrics") or manifest["metrics"]
    assert metrics["evalLoss"] < metrics["baseEvalLoss"], metrics
    # Evaluation by answers: both suites asked of both models, in status, the manifest and the revision.
    held, escalate = adapter["suites"]
    asked = len((published / "answers-held-out.jsonl").read_text().splitlines())
    assert asked == 24, "workloads.model_store keeps 24 of the held-out records"
    assert (held["name"], held["records"], escalate["name"], escalate["records"]) == (
        "held-out",
        24,
        "escalate",
        2,
    )
    assert held["baseCorrect"] <= 3, held  # SmolLM2 cannot know invented facts
    assert adapter["answers"] == f"held-out {held['correct']}/24 (base {held['baseCorrect']}/24)"
    assert [s["name"] for s in manifest["evaluation"]["suites"]] == ["held-out", "escalate"]
    escalated = [json.loads(x) for x in (published / "answers-escalate.jsonl").read_text().splitlines()]
    assert [a["where"] for a in escalated] == [
        "configmap/facts-suite[suite.jsonl]:1",
        "configmap/facts-suite[suite.jsonl]:2",
    ]
    wide = kube.kubectl("get", "ftj", "facts", "-n", trained["namespace"], "-o", "wide").stdout
    assert "ANSWERS" in wide.splitlines()[0] and adapter["answers"] in wide, wide


def _tgi_deployment(adapter_path: str) -> dict[str, Any]:
    labels = {"app": "tgi"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tgi"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "securityContext": POD_SECURITY,
                    "terminationGracePeriodSeconds": 5,
                    **ON_LOCAL_NODE,
                    "containers": [
                        {
                            "name": "tgi",
                            "image": TGI_IMAGE,
                            "args": ["--model-id", "/models/base/smollm2-135m-instruct", "--port", "8080"],
                            "env": [
                                {"name": "LORA_ADAPTERS", "value": f"facts=/models/{adapter_path}"},
                                {"name": "HF_HUB_OFFLINE", "value": "1"},
                            ],
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {
                                "httpGet": {"path": "/health", "port": "http"},
                                "periodSeconds": 1,
                                "failureThreshold": 1,
                            },
                            "resources": {
                                "requests": {"nvidia.com/gpu": "1"},
                                "limits": {"nvidia.com/gpu": "1"},
                            },
                            "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
                            "securityContext": RESTRICTED_CONTAINER_SECURITY,
                        }
                    ],
                    "volumes": [
                        {"name": "models", "persistentVolumeClaim": {"claimName": "loraforge-model-store"}}
                    ],
                },
            },
        },
    }


def test_a_tgi_deployment_serves_the_trained_adapter_once_ready(
    kube: Kube, trained: dict[str, Any], base_model_dir: Path
) -> None:
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError
    from transformers import AutoTokenizer

    ns = trained["namespace"]
    adapter = trained["ftj"]["status"]["adapter"]
    kube.apply(_tgi_deployment(adapter["path"]), namespace=ns)

    # Watch the pod from creation: Running while the model loads, Ready only after.
    seen_loading = False
    deadline = time.monotonic() + 300
    pod: dict[str, Any] = {}
    while time.monotonic() < deadline:
        items = kube.get("pods", "-n", ns, "-l", "app=tgi")["items"]
        pod = items[0] if items else {}
        status = pod.get("status", {})
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", []))
        if ready:
            break
        if status.get("phase") == "Running" and status.get("podIP"):
            seen_loading = True
        time.sleep(0.5)
    else:
        raise AssertionError(f"the TGI pod never became Ready: {json.dumps(pod.get('status'), indent=1)}")
    assert seen_loading, "the pod was Ready at once: readiness did not wait for the model to load"
    assert pod["spec"]["nodeName"] == "local"

    client = InferenceClient(f"http://{pod['status']['podIP']}:8080")
    # Ready means loaded: the adapter answers on the first request. The adapter
    # learned chat turns, so the prompt is the question in the chat template.
    question = json.loads((DATASET / "validation.jsonl").read_text().splitlines()[0])["messages"]
    user = [m for m in question if m["role"] == "user"][:1]
    prompt = AutoTokenizer.from_pretrained(base_model_dir).apply_chat_template(
        user, tokenize=False, add_generation_prompt=True
    )
    with_adapter = client.text_generation(prompt, adapter_id="facts", max_new_tokens=32)
    base = client.text_generation(prompt, max_new_tokens=32)
    assert with_adapter.strip() and base.strip()
    assert with_adapter != base, f"the adapter changed nothing: {base!r}"
    chat_tuned = client.chat_completion(user, model="facts", max_tokens=32).choices[0].message.content
    chat_base = client.chat_completion(user, model="tgi", max_tokens=32).choices[0].message.content
    assert (chat_tuned, chat_base) == (with_adapter, base)
    info = json.loads(urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/info", timeout=10).read())
    assert info["model_id"].endswith("smollm2-135m-instruct")
    with pytest.raises(ValidationError) as err:
        client.text_generation(prompt, adapter_id="no-such-adapter", max_new_tokens=4)
    assert "no-such-adapter" in str(err.value)

    # The Deployment controller sees it available; deleting it stops the server.
    wait_for(
        lambda: kube.get("deployment", "tgi", "-n", ns).get("status", {}).get("availableReplicas") == 1,
        timeout=30,
        what="the TGI Deployment to be available",
    )
    pid = _pid(pod)
    assert _alive(pid)
    kube.kubectl("delete", "deployment", "tgi", "-n", ns, "--wait=true", "--timeout=60s")
    wait_for(lambda: not kube.get("pods", "-n", ns, "-l", "app=tgi")["items"], 60, "the TGI pod to go")
    wait_for(lambda: not _alive(pid), 10, f"the TGI process {pid[0]} to end")


# --- the kubelet's promises, one by one --------------------------------------------------


def test_a_failing_command_fails_the_pod_with_its_exit_code_and_message(kube: Kube, ns: str) -> None:
    kube.apply(
        _pod("fails", ["sh", "-c", "echo 'DatasetInvalid: line 3' > /dev/termination-log; echo out; exit 3"]),
        namespace=ns,
    )
    pod = _phase(kube, ns, "fails", "Failed", "Succeeded")
    assert pod["status"]["phase"] == "Failed"
    term = _container(pod)["state"]["terminated"]
    assert (term["exitCode"], term["reason"], term["message"]) == (3, "Error", "DatasetInvalid: line 3\n")
    assert _container(pod)["restartCount"] == 0
    # `kubectl logs` goes through the API server to the local node's kubelet API.
    assert kube.kubectl("logs", "fails", "-n", ns).stdout == "out\n"

    # FallbackToLogsOnError: no message written, so the log's tail explains.
    kube.apply(
        _pod(
            "logs",
            ["sh", "-c", "echo something broke; exit 1"],
            container={"terminationMessagePolicy": "FallbackToLogsOnError"},
        ),
        namespace=ns,
    )
    pod = _phase(kube, ns, "logs", "Failed")
    assert _container(pod)["state"]["terminated"]["message"].strip() == "something broke"


def test_an_unknown_image_fails_with_a_clear_reason(kube: Kube, ns: str) -> None:
    kube.apply(_pod("unknown", ["run"], container={"image": "registry.example/acme/mystery:1"}), namespace=ns)
    pod = _phase(kube, ns, "unknown", "Failed", "Succeeded")
    assert pod["status"]["phase"] == "Failed"
    term = _container(pod)["state"]["terminated"]
    assert term["reason"] == "StartError" and term["exitCode"] == 128
    assert "registry.example/acme/mystery:1" in term["message"]
    assert "cannot run on the local node" in term["message"]
    reasons = [e["reason"] for e in _events(kube, ns, "unknown")]
    assert "Failed" in reasons


def test_volumes_env_and_the_service_account_token_reach_the_container(kube: Kube, ns: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "settings"},
            "data": {"greeting": "hello", "other": "x"},
        },
        namespace=ns,
    )
    script = (
        'set -e; test "$GREETING" = hello; test "$POD_NAME" = env;'
        ' test -n "$POD_IP"; test "$POD_IP" = "$MY_IP";'
        ' test "$(cat /etc/settings/greeting)" = hello; test ! -e /etc/settings/other;'
        ' test "$(cat /etc/podinfo/labels)" = \'app="probe"\';'
        " test -s /var/run/secrets/kubernetes.io/serviceaccount/token;"
        " test -s /var/run/secrets/kubernetes.io/serviceaccount/ca.crt;"
        ' echo "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)" > /dev/termination-log;'
        " echo shared > /scratch/note"
    )
    pod = _pod(
        "env",
        ["sh", "-c", script],
        container={
            "env": [
                {
                    "name": "GREETING",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
                },
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "MY_IP", "value": "$(POD_IP)"},
            ],
            "volumeMounts": [
                {"name": "settings", "mountPath": "/etc/settings", "readOnly": True},
                {"name": "podinfo", "mountPath": "/etc/podinfo"},
                {"name": "scratch", "mountPath": "/scratch"},
            ],
        },
        volumes=[
            {
                "name": "settings",
                "configMap": {"name": "settings", "items": [{"key": "greeting", "path": "greeting"}]},
            },
            {
                "name": "podinfo",
                "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
            },
            {"name": "scratch", "emptyDir": {}},
        ],
    )
    pod["metadata"]["labels"] = {"app": "probe"}
    kube.apply(pod, namespace=ns)
    pod = _phase(kube, ns, "env", "Succeeded", "Failed")
    term = _container(pod)["state"]["terminated"]
    assert pod["status"]["phase"] == "Succeeded", term
    assert term["message"].strip() == ns
    # Nothing of the pod's leaked onto the host's own paths.
    assert not Path("/etc/settings").exists() and not Path("/scratch").exists()


def test_restart_policy_restarts_with_backoff_and_keeps_the_empty_dir(kube: Kube, ns: str) -> None:
    # Fails the first time, succeeds the second: the emptyDir survives the restart.
    script = "if [ -e /state/ran ]; then exit 0; fi; touch /state/ran; echo first run; exit 2"
    kube.apply(
        _pod(
            "flaky",
            ["sh", "-c", script],
            restartPolicy="OnFailure",
            container={"volumeMounts": [{"name": "state", "mountPath": "/state"}]},
            volumes=[{"name": "state", "emptyDir": {}}],
        ),
        namespace=ns,
    )
    pod = _phase(kube, ns, "flaky", "Succeeded", "Failed", timeout=90)
    assert pod["status"]["phase"] == "Succeeded"
    status = _container(pod)
    assert status["restartCount"] == 1
    assert status["lastState"]["terminated"]["exitCode"] == 2
    assert "BackOff" in [e["reason"] for e in _events(kube, ns, "flaky")]
    # The failed first run's log stays readable as the previous container's.
    prev = kube.kubectl("logs", "flaky", "-n", ns, "--previous", check=False)
    assert (prev.returncode, prev.stdout) == (0, "first run\n"), prev.stderr


def test_readiness_follows_the_probe_and_liveness_restarts(kube: Kube, ns: str) -> None:
    # Ready from 2 s to 6 s; live until 8 s; then the liveness probe restarts it.
    script = "touch /s/live; sleep 2; touch /s/ready; sleep 4; rm /s/ready; sleep 2; rm /s/live; sleep 600"
    probe = {"periodSeconds": 1, "failureThreshold": 1}
    kube.apply(
        _pod(
            "probed",
            ["sh", "-c", script],
            restartPolicy="Always",
            container={
                "readinessProbe": {"exec": {"command": ["test", "-e", "/s/ready"]}, **probe},
                # (A first probe at once could race the script's first line.)
                "livenessProbe": {
                    "exec": {"command": ["test", "-e", "/s/live"]},
                    "initialDelaySeconds": 1,
                    **probe,
                },
                "volumeMounts": [{"name": "state", "mountPath": "/s"}],
            },
            volumes=[{"name": "state", "emptyDir": {}}],
        ),
        namespace=ns,
    )

    def ready(pod: dict[str, Any]) -> bool:
        return any(
            c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
        )

    pod = _phase(kube, ns, "probed", "Running")
    assert not ready(pod)
    pod = wait_for(lambda: (p := _get_pod(kube, ns, "probed")) and ready(p) and p, 30, "the pod to be Ready")
    first_pid, restarts = _pid(pod), _container(pod)["restartCount"]
    wait_for(lambda: not ready(_get_pod(kube, ns, "probed")), 30, "the pod to be not Ready again")
    pod = wait_for(
        lambda: (p := _get_pod(kube, ns, "probed")) and _container(p)["restartCount"] == restarts + 1 and p,
        60,
        "the liveness probe to restart the container",
    )
    assert not _alive(first_pid)
    reasons = [e["reason"] for e in _events(kube, ns, "probed")]
    assert "Unhealthy" in reasons and "Killing" in reasons


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(kube: Kube, ns: str) -> None:
    # Ignores SIGTERM: only SIGKILL, after the 3-second grace period, ends it.
    kube.apply(
        _pod(
            "stubborn",
            ["sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"],
            terminationGracePeriodSeconds=3,
        ),
        namespace=ns,
    )
    pod = _phase(kube, ns, "stubborn", "Running")
    pid = _pid(pod)
    assert _alive(pid)
    t0 = time.monotonic()
    kube.kubectl("delete", "pod", "stubborn", "-n", ns, "--wait=true", "--timeout=60s")
    took = time.monotonic() - t0
    assert not _alive(pid)
    assert took >= 2.5, f"deleted after {took:.1f}s: the grace period was not honoured"

    # A process that exits on SIGTERM goes at once.
    kube.apply(_pod("polite", ["sleep", "600"], terminationGracePeriodSeconds=30), namespace=ns)
    pid = _pid(_phase(kube, ns, "polite", "Running"))
    t0 = time.monotonic()
    kube.kubectl("delete", "pod", "polite", "-n", ns, "--wait=true", "--timeout=60s")
    assert time.monotonic() - t0 < 15
    assert not _alive(pid)
