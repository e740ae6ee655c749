"""ModelDeployment end to end on the local control plane with the local node:
real training (three FineTuneJobs publishing revisions v1, v2, v3 of one
adapter), real serving (the TGI stand-in), the operator in between.

v1 is served; v2 rolls out with no failed request from a client that sends
requests throughout (to Ready pods, as a Service would route them); v3 is
deliberately broken (trained with a learning rate so small that it answers
exactly like the base model, which its smoke test forbids) and is rolled back
to v2 by itself, with the reason in status and events."""

from __future__ import annotations

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
        "resources": {"gpus": 1, "cpu": "500m", "memory": "2Gi", **workloads.ON_LOCAL_NODE},
        "rollout": {"maxSurge": 1, "progressDeadlineSeconds": 300},
    },
}


def _rollouts(operator: OperatorProcess, result: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("loraforge_modeldeployment_rollouts_total{") and f'result="{result}"' in line
    )


def test_serves_v1_rolls_to_v2_without_a_failed_request_and_rolls_back_a_broken_v3(
    kube: Kube, ns: str, operator: OperatorProcess
) -> None:
    v1 = workloads.train(kube, ns, workloads.finetunejob("facts-1", "facts"))
    assert v1["status"]["adapter"]["revision"] == "v1", v1["status"]

    kube.apply(MODEL_DEPLOYMENT, namespace=ns)
    md = _settled(kube, ns, "v1")
    assert md["status"]["readyReplicas"] == 2
    assert md["status"]["endpoint"] == f"http://assistant.{ns}.svc"
    dep = kube.get("deployment", "assistant", "-n", ns)
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORA_ADAPTERS"] == f"facts=/models/{v1['status']['adapter']['path']}"
    assert env["HF_HUB_OFFLINE"] == "1"

    # v2: a second FineTuneJob of the same adapter; a client sends requests throughout.
    client = workloads.ReadyPodClient(
        lambda: kube.get("pods", "-n", ns, "-l", "loraforge.io/modeldeployment=assistant")["items"],
        QUESTION,
        "facts",
        pause=0.5,
    )
    client.start()
    try:
        v2 = workloads.train(kube, ns, workloads.finetunejob("facts-2", "facts", maxSteps=5))
        assert v2["status"]["adapter"]["revision"] == "v2"
        md = _settled(kube, ns, "v2")
    finally:
        client.stop.set()
        client.join(120)
    assert md["status"]["rollout"]["phase"] == "Complete", md["status"]["rollout"]
    assert client.ok > 10, f"the client got only {client.ok} answers"
    assert client.errors == [], client.errors[:5]
    assert md["status"]["history"][0]["revisions"] == {"facts": "v2"}
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
    wrong = cli("--adapter", "nope", QUESTION)
    assert wrong.returncode == 1 and "nope" in wrong.stderr

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
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORA_ADAPTERS"] == f"facts=/models/{v2['status']['adapter']['path']}"
    events = kube.get("events", "-n", ns, "--field-selector", "involvedObject.name=assistant")["items"]
    assert {"SmokeTestFailed", "RolledBack"} <= {e["reason"] for e in events}
    # The operator counts rollouts by how they ended (v2 completed, v3 rolled back).
    assert _rollouts(operator, "RolledBack") >= 1 and _rollouts(operator, "Complete") >= 1
    # Rolled back for good: no further rollout to v3 while the spec stays as it is.
    time.sleep(15)
    assert _md(kube, ns)["status"]["rollout"]["phase"] == "RolledBack"
