"""A ModelDeployment's smoke test that asks a whole suite (smokeTest.suite), on
the local node with the TGI stand-in and untrained adapters: a new pod that
answers the suite below minAccuracy is never Ready and the rollout rolls back,
with the suite's score in the reason; a suite file with a bad line is a spec
problem (Degraded, naming configmap/name[key]:line) that fails no pod and rolls
nothing back.

The suite is written from what adapter `a` answers on its own pod (the answers
of an untrained adapter are its own), so `a` passes it by construction and `b`,
another random adapter, cannot."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import localnode_workloads as workloads
from tests.e2e.conftest import OperatorProcess
from tests.kube import Kube, wait_for

MD = "quiz"
QUESTIONS = ["What is the capital of Veloria?", "Name a kind of bird.", "What is two plus two?"]
SUITE_CM = {"name": "quiz-suite", "key": "suite.jsonl"}


@pytest.fixture(scope="module")
def serving_ns(
    kube: Kube, operator: OperatorProcess, base_model_dir: Path, tmp_path_factory
) -> Iterator[tuple[str, Path]]:
    if not kube.local:
        pytest.skip("runs on the local node with the TGI stand-in")
    folder = tmp_path_factory.mktemp("model-store")
    with workloads.store_namespace(kube, "lf-suite", base_model_dir, folder) as (ns, store):
        workloads.random_adapter(base_model_dir, store, "adapters/quiz/a", seed=11)
        workloads.random_adapter(base_model_dir, store, "adapters/quiz/b", seed=12)
        yield ns, store


def _deployment(path: str, suite: dict[str, Any] | None = None, replicas: int = 1) -> dict[str, Any]:
    smoke: dict[str, Any] = {"prompt": QUESTIONS[0], "maxNewTokens": 8}
    if suite:
        smoke["suite"] = suite
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "baseModel": {"path": workloads.BASE_MODEL_PATH},
            "adapters": [{"name": "quiz", "from": {"path": path}, "smokeTest": smoke}],
            "replicas": replicas,
            "resources": {"gpus": 1, "cpu": "250m", "memory": "2Gi", **workloads.ON_LOCAL_NODE},
            "rollout": {"maxSurge": 1, "progressDeadlineSeconds": 240},
        },
    }


def _md(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get("modeldeployment", MD, "-n", ns)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in md.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _serving(md: dict[str, Any]) -> list[str]:
    return [s["path"] for s in md.get("status", {}).get("serving", [])]


def _suite_map(kube: Kube, ns: str, text: str) -> None:
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": SUITE_CM["name"]},
            "data": {SUITE_CM["key"]: text},
        },
        namespace=ns,
    )


def _ready_pod(kube: Kube, ns: str) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for p in kube.get("pods", "-n", ns, "-l", f"loraforge.io/modeldeployment={MD}")["items"]:
            conds = {c["type"]: c["status"] for c in p.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True" and not p["metadata"].get("deletionTimestamp"):
                return p
        return None

    return wait_for(ready, 120, "a Ready serving pod", interval=1)


@pytest.mark.timeout(900)
def test_a_pod_that_answers_the_suite_wrong_is_never_ready_and_the_rollout_rolls_back(
    kube: Kube, serving_ns: tuple[str, Path]
) -> None:
    from huggingface_hub import InferenceClient

    ns, _ = serving_ns
    kube.apply(_deployment("adapters/quiz/a"), namespace=ns)
    wait_for(
        lambda: (
            _serving(m := _md(kube, ns)) == ["adapters/quiz/a"] and _cond(m, "Ready").get("status") == "True"
        ),
        300,
        "adapter a to be served",
        interval=1,
    )
    # What a answers (greedy, as the smoke test asks) becomes the suite's expected answers.
    pod = _ready_pod(kube, ns)
    client = InferenceClient(base_url=f"http://{pod['status']['podIP']}:8080", timeout=60)
    expected = [
        client.chat_completion(
            [{"role": "user", "content": q}], model="quiz", max_tokens=12, temperature=0.0, seed=0
        )
        .choices[0]
        .message.content
        for q in QUESTIONS
    ]
    assert all(e.strip() for e in expected), expected
    good = "".join(
        json.dumps({"prompt": q, "expected": e}) + "\n" for q, e in zip(QUESTIONS, expected, strict=True)
    )
    _suite_map(
        kube,
        ns,
        good,
    )
    suite = {"configMap": SUITE_CM, "scorer": {"type": "exact"}, "minAccuracy": 1.0, "maxNewTokens": 12}

    # A bad line: a spec problem named by file:line; nothing is rolled out, nothing fails, a keeps serving.
    _suite_map(kube, ns, json.dumps({"prompt": QUESTIONS[0], "expected": expected[0]}) + '\n{"prompt": \n')
    kube.apply(_deployment("adapters/quiz/b", suite), namespace=ns)
    md = wait_for(
        lambda: (m := _md(kube, ns)) and _cond(m, "Degraded").get("reason") == "SmokeTestSuiteInvalid" and m,
        60,
        "the invalid suite to be reported",
        interval=1,
    )
    assert "configmap/quiz-suite[suite.jsonl]:2: not valid JSON" in _cond(md, "Degraded")["message"], md[
        "status"
    ]
    assert _serving(md) == ["adapters/quiz/a"]
    assert (md["status"].get("rollout") or {}).get("phase") != "RolledBack"

    # The fixed suite: b's pod answers unlike a, fails it, is never Ready, and the rollout rolls back to a.
    _suite_map(
        kube,
        ns,
        good,
    )
    md = wait_for(
        lambda: (
            (m := _md(kube, ns)) and (m["status"].get("rollout") or {}).get("phase") == "RolledBack" and m
        ),
        420,
        "the rollout to b to roll back",
        interval=2,
    )
    rollout = md["status"]["rollout"]
    assert rollout["reason"] == "SmokeTestFailed", rollout
    assert (
        "suite quiz-suite[suite.jsonl]:" in rollout["message"] and "< minAccuracy 100%" in rollout["message"]
    ), rollout
    md = wait_for(
        lambda: (m := _md(kube, ns)) and _cond(m, "Ready").get("status") == "True" and m,
        120,
        "Ready again on a",
    )
    assert _serving(md) == ["adapters/quiz/a"]
    assert "adapters/quiz/b" not in json.dumps(_ready_pod(kube, ns)["spec"])

    # a's own pods pass the same suite: back on a with two replicas, the new pod is verified by it.
    kube.apply(_deployment("adapters/quiz/a", suite, replicas=2), namespace=ns)
    md = wait_for(
        lambda: (m := _md(kube, ns)) and m["status"].get("readyReplicas") == 2 and m,
        300,
        "two Ready pods on a",
    )
    verified = [
        c
        for p in kube.get("pods", "-n", ns, "-l", f"loraforge.io/modeldeployment={MD}")["items"]
        for c in p["status"].get("conditions", [])
        if c["type"] == "loraforge.io/adapters-verified"
        and "suite quiz-suite[suite.jsonl]: 3/3 right" in c["message"]
    ]
    assert verified, "no pod was verified by the suite"
    kube.kubectl("delete", "modeldeployment", MD, "-n", ns, "--wait=true", "--timeout=120s")
