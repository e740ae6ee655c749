"""ModelDeployment end to end on the local control plane with the local node:
real training (three FineTuneJobs publishing revisions v1, v2, v3 of one
adapter), real serving (vLLM's OpenAI server, its CPU build, from the serving
environment `make serving-env` installs), the operator in between. The TGI
path runs on the TGI stand-in in test_disruptions.py (a good rollout completes
and a bad one rolls back, the operator killed meanwhile) and
test_autoscaling.py (the HPA up and down).

One vLLM-backed deployment is shared by the tests of this module, in order
(each starts from where the one before left it; starting vLLM pods is what
costs time here):

- v1 is served (pinned while v2 trains); v2 rolls out when the pin goes, with
  no failed request from a client that sends requests throughout (to Ready
  pods, as a Service would route them), while the operator is SIGKILLed
  mid-rollout and started again; v3, published next, rolls out by itself and,
  being deliberately broken (trained with a learning rate so small that it
  answers exactly like the base model, which its smoke test forbids), is rolled
  back to v2 by itself, with the reason in status and events;
- then the same deployment is switched to an HPA on CPU, which scales it
  down idle, up under a client's load and down again, every request
  answered."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import localnode_workloads as workloads
from tests.e2e.conftest import OperatorProcess
from tests.kube import Kube, wait_for

PROMPT = json.loads((workloads.DATASET / "validation.jsonl").read_text().splitlines()[0])["messages"]
QUESTION = next(m["content"] for m in PROMPT if m["role"] == "user")


@pytest.fixture(scope="module", autouse=True)
def _local_node(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("runs its serving pods on the local cluster's local node")


@pytest.fixture(scope="module")
def ns(kube: Kube, operator: OperatorProcess, base_model_dir: Path, tmp_path_factory) -> Iterator[str]:
    with workloads.store_namespace(kube, "lf-md", base_model_dir, tmp_path_factory.mktemp("model-store")) as (
        name,
        _,
    ):
        yield name


def _md(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get("modeldeployment", "assistant", "-n", ns)


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _serving(md: dict[str, Any]) -> list[str]:
    return [s["revision"] for s in md.get("status", {}).get("serving", [])]


def _settled(kube: Kube, ns: str, revision: str, timeout: float = 420) -> dict[str, Any]:
    return wait_for(
        lambda: (
            (md := _md(kube, ns))
            and _serving(md) == [revision]
            and (md["status"].get("rollout") or {}).get("phase") in ("Complete", "RolledBack")
            and _cond(md, "Ready").get("status") == "True"
            and md
        ),
        timeout=timeout,
        what=f"ModelDeployment assistant to serve {revision} on every replica",
        interval=1,
    )


MODEL_DEPLOYMENT = {
    "apiVersion": "loraforge.io/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "assistant"},
    "spec": {
        "baseModel": {"path": workloads.BASE_MODEL_PATH},
        "adapters": [
            {
                "name": "facts",
                "from": {"adapter": "facts"},
                # A revision that answers like the base model has not learned the facts.
                "smokeTest": {"prompt": QUESTION, "maxNewTokens": 24, "differsFromBase": True},
            }
        ],
        "replicas": 2,
        "runtime": {"vllm": workloads.VLLM_ON_CPU},
        "resources": {"gpus": 1, "cpu": "500m", "memory": "4Gi", **workloads.ON_LOCAL_NODE},
        "rollout": {"maxSurge": 1, "progressDeadlineSeconds": 420},
    },
}


def _lora_modules(dep: dict[str, Any]) -> list[str]:
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    i = args.index("--lora-modules")
    return list(itertools.takewhile(lambda a: not a.startswith("--"), args[i + 1 :]))


def _pinned(revision: str) -> dict[str, Any]:
    out = json.loads(json.dumps(MODEL_DEPLOYMENT))
    out["spec"]["adapters"][0]["from"]["revision"] = revision
    return out


def _pods(kube: Kube, ns: str) -> list[dict[str, Any]]:
    return kube.get("pods", "-n", ns, "-l", "loraforge.io/modeldeployment=assistant")["items"]


def _client(kube: Kube, ns: str, pause: float, max_new_tokens: int = 4) -> workloads.ReadyPodClient:
    return workloads.ReadyPodClient(lambda: _pods(kube, ns), QUESTION, "facts", pause, max_new_tokens)


def _rollouts(operator: OperatorProcess, result: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("loraforge_modeldeployment_rollouts_total{") and f'result="{result}"' in line
    )


# Three trainings and three vLLM rollouts on two shared cores.
@pytest.mark.timeout(1500)
def test_vllm_serves_v1_rolls_to_v2_through_an_operator_crash_without_a_failed_request_and_rolls_back_v3(
    kube: Kube, ns: str, operator: OperatorProcess
) -> None:
    v1 = workloads.train(kube, ns, workloads.finetunejob("facts-1", "facts"))
    assert v1["status"]["adapter"]["revision"] == "v1", v1["status"]

    # Pinned to v1 while v2 trains: serving and training share two cores, and the rollout to v2 is what the
    # client below must see. Unpinning is one edit (and follows the newest promoted revision, v2).
    kube.apply(_pinned("v1"), namespace=ns)
    md = _settled(kube, ns, "v1")
    assert md["status"]["readyReplicas"] == 2
    assert md["status"]["endpoint"] == f"http://assistant.{ns}.svc"
    assert (md["status"]["runtime"], md["status"]["baseModelName"]) == ("vllm", workloads.BASE_MODEL_PATH)
    dep = kube.get("deployment", "assistant", "-n", ns)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert _lora_modules(dep) == [f"facts=/models/{v1['status']['adapter']['path']}"]
    container = dep["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1"
    # The real vLLM server: it lists the adapter under its name beside the base model, and exports the
    # queue gauge the HPA targets.
    pod = _pods(kube, ns)[0]
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:8080/v1/models", timeout=10) as r:
        models = {m["id"]: m.get("parent") for m in json.load(r)["data"]}
    assert models == {workloads.BASE_MODEL_PATH: None, "facts": workloads.BASE_MODEL_PATH}, models
    with urllib.request.urlopen(f"http://{ip}:8080/metrics", timeout=10) as r:
        assert "vllm:num_requests_waiting" in r.read().decode()

    # v2: a second FineTuneJob of the same adapter, served once the pin is gone; a client sends requests
    # throughout the rollout, and the operator is SIGKILLed once the rollout is recorded, then started again
    # (a crash, an OOM kill, a node drain).
    v2 = workloads.train(kube, ns, workloads.finetunejob("facts-2", "facts", maxSteps=5))
    assert v2["status"]["adapter"]["revision"] == "v2"
    assert _serving(_md(kube, ns)) == ["v1"], "a pinned revision is kept"
    client = _client(kube, ns, pause=0.5)
    client.start()
    try:
        kube.apply(MODEL_DEPLOYMENT, namespace=ns)
        wait_for(
            lambda: (_md(kube, ns)["status"].get("rollout") or {}).get("revisions") == {"facts": "v2"},
            timeout=60,
            what="the rollout to v2 to start",
            interval=0.2,
        )
        operator.kill()
        time.sleep(3)  # the new pod starts with no operator watching; its gate stays unset
        operator.start()
        md = _settled(kube, ns, "v2")
    finally:
        client.stop.set()
        client.join(120)
    assert md["status"]["rollout"]["phase"] == "Complete", md["status"]["rollout"]
    assert client.ok > 10, f"the client got only {client.ok} answers"
    assert client.errors == [], client.errors[:5]
    assert md["status"]["history"][0]["revisions"] == {"facts": "v2"}
    # One record per rollout: the kill neither lost one nor started one twice.
    assert [h["revisions"] for h in md["status"]["history"]] == [{"facts": "v2"}, {"facts": "v1"}]
    events = kube.get("events", "-n", ns, "--field-selector", "involvedObject.name=assistant")["items"]
    assert {"RolloutStarted", "RolloutComplete"} <= {e["reason"] for e in events}

    # From the shell: `loraforge generate` finds a Ready pod and asks it.
    def cli(*args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
        cmd = [sys.executable, "-m", "loraforge_operator.cli", "generate", "assistant", "-n", ns, *args]
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)

    tuned, base = (
        cli("--adapter", "facts", "--max-new-tokens", "24", QUESTION),
        cli("--max-new-tokens", "24", QUESTION),
    )
    assert tuned.returncode == 0 and base.returncode == 0, tuned.stderr + base.stderr
    assert tuned.stdout.strip() and tuned.stdout != base.stdout
    # vLLM refuses an adapter it does not serve (TGI would answer with the base model).
    wrong = cli("--adapter", "nope", QUESTION)
    assert wrong.returncode == 1 and "nope" in wrong.stderr, wrong.stderr

    # v3 learned nothing (learning rate 1e-9): same answers as the base model, so its smoke test fails.
    v3 = workloads.train(
        kube, ns, workloads.finetunejob("facts-3", "facts", maxSteps=1, learningRate=1e-9, evaluation={})
    )
    assert v3["status"]["adapter"]["revision"] == "v3"
    md = wait_for(
        lambda: (
            (m := _md(kube, ns)) and (m["status"].get("rollout") or {}).get("phase") == "RolledBack" and m
        ),
        timeout=420,
        what="the broken revision v3 to be rolled back",
        interval=1,
    )
    md = _settled(kube, ns, "v2")
    rollout = md["status"]["rollout"]
    assert rollout["revisions"] == {"facts": "v3"} and rollout["reason"] == "SmokeTestFailed", rollout
    assert "same answer as the base model" in rollout["message"]
    assert _cond(md, "RolledBack")["status"] == "True"
    assert next(a for a in md["status"]["adapters"] if a["name"] == "facts")["rejected"] == ["v3"]
    dep = kube.get("deployment", "assistant", "-n", ns)
    assert _lora_modules(dep) == [f"facts=/models/{v2['status']['adapter']['path']}"]
    events = kube.get("events", "-n", ns, "--field-selector", "involvedObject.name=assistant")["items"]
    assert {"SmokeTestFailed", "RolledBack"} <= {e["reason"] for e in events}
    # The operator counts rollouts by how they ended (v2 completed, v3 rolled back).
    assert _rollouts(operator, "RolledBack") >= 1 and _rollouts(operator, "Complete") >= 1
    # Rolled back for good: no further rollout to v3 while the spec stays as it is.
    time.sleep(15)
    assert _md(kube, ns)["status"]["rollout"]["phase"] == "RolledBack"


# --- the same deployment under an HorizontalPodAutoscaler --------------------------------------------------


@pytest.mark.timeout(1200)
def test_the_hpa_scales_the_vllm_deployment_down_idle_up_under_load_and_down_again(
    kube: Kube, ns: str, operator: OperatorProcess
) -> None:
    """Real parts only: metrics-server scrapes the local node, where vLLM's processes run; the HPA
    controller resizes the Deployment the operator built; each pod it adds is smoke-tested first."""
    assert _serving(_md(kube, ns)) == ["v2"], "runs on the deployment the test above left serving v2"
    spec = {k: v for k, v in MODEL_DEPLOYMENT["spec"].items() if k != "replicas"}
    spec["autoscaling"] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "cpuUtilization": 50,
        "behavior": {"scaleDownStabilizationSeconds": 0},  # the default keeps replicas for 5 minutes
    }
    kube.apply({**MODEL_DEPLOYMENT, "spec": spec}, namespace=ns)
    hpa = wait_for(
        lambda: (
            (h := kube.get("hpa", "-n", ns)["items"])
            and h[0]["spec"]["scaleTargetRef"]["name"] == "assistant"
            and h[0]
        ),
        timeout=60,
        what="the operator to create the HPA",
    )
    cpu_target = {"type": "Utilization", "averageUtilization": 50}
    assert hpa["spec"]["metrics"] == [{"type": "Resource", "resource": {"name": "cpu", "target": cpu_target}}]

    # Idle, the two replicas the fixed count left are one too many.
    workloads.scale_down_idle(kube, ns, "assistant")
    workloads.scale_up_under_load(kube, ns, "assistant", _client(kube, ns, pause=0, max_new_tokens=32))
    md = _md(kube, ns)
    assert md["status"]["readyReplicas"] == 2 and _serving(md) == ["v2"], md["status"]
    workloads.scale_down_idle(kube, ns, "assistant")
    messages = workloads.rescale_messages(kube, ns, "assistant")
    assert any("New size: 2" in m for m in messages) and any("New size: 1" in m for m in messages), messages
