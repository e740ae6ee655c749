"""Disruptions on the local control plane, each with the promise it checks.

- kube-apiserver killed mid-reconcile and started again, then etcd the same:
  the operator (still the same process) reconciles what was created just before
  the crash and what is created after, with exactly one Job each.
- The operator SIGKILLed in the middle of a ModelDeployment rollout, twice: a
  restarted operator completes a good rollout, and rolls a broken one back;
  neither is left Progressing.
- A training pod deleted mid-run, then its node removed: the Job replaces the
  pod (the deletion uses one retry, the node's removal none: PodGC marks the
  pod as a disruption), each new pod resumes from the newest checkpoint, and
  one revision is published.

The control-plane components are real processes of the local cluster, stopped
with SIGKILL and started again as they were (`LocalCluster.stop_component` and
`start_component`). kwok plays the training pods in the first test; real
training (SmolLM2 on the CPU) and the TGI stand-in run on the local node in the
others."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loraforge_trainer import publish
from loraforge_trainer.training import newest_checkpoint
from tests.e2e import localnode_workloads as workloads
from tests.e2e.conftest import OperatorProcess
from tests.finetunejob_cases import VALID_SPEC, merge
from tests.kube import Kube, wait_for

RUN_LONG = {"annotations": {"job-pod-complete.stage.kwok.x-k8s.io/delay": "10m"}}
LOCAL_NODE = "local"


@pytest.fixture(scope="module")
def cluster(kube: Kube):
    if not kube.local:
        pytest.skip("stops and starts the local cluster's own processes and runs pods on its local node")
    from localcluster.cluster import LocalCluster

    c = LocalCluster()
    yield c
    # Whatever happened, leave every component running for the tests after these.
    for name in ("etcd", "kube-apiserver", "localnode"):
        c.start_component(name)
    assert c.status().running, c.status().detail


def _cond(obj: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


# --- the control plane restarted under the operator ------------------------------------------------


def _ftj(kube: Kube, ns: str, name: str) -> None:
    spec = merge(json.loads(json.dumps(VALID_SPEC)), {"podMetadata": RUN_LONG})
    manifest = {"apiVersion": "loraforge.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}}
    kube.apply({**manifest, "spec": spec}, namespace=ns)


def _all_running_with_one_job(kube: Kube, ns: str, names: list[str]) -> bool:
    items = kube.get("finetunejobs", "-n", ns)["items"]
    return len(items) == len(names) and all(o.get("status", {}).get("phase") == "Running" for o in items)


@pytest.mark.usefixtures("model_store")
@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_the_operator_rides_out_a_crash_of(
    component: str, cluster, kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    assert operator.proc is not None
    pid = operator.proc.pid
    _ftj(kube, namespace, "before")
    wait_for(
        lambda: _all_running_with_one_job(kube, namespace, ["before"]), 60, "the first FineTuneJob to run"
    )

    # Mid-reconcile: the operator has just seen "during" when the component dies.
    _ftj(kube, namespace, "during")
    cluster.stop_component(component, signal.SIGKILL)
    try:
        time.sleep(10)  # the operator's watches and writes fail meanwhile
    finally:
        cluster.start_component(component)
    wait_for(lambda: cluster.status().running, 60, f"the cluster to be ready after {component} restarted")

    _ftj(kube, namespace, "after")
    names = ["before", "during", "after"]
    wait_for(
        lambda: _all_running_with_one_job(kube, namespace, names),
        180,
        f"every FineTuneJob to be reconciled after {component} restarted",
        interval=1,
    )
    jobs = kube.get("jobs", "-n", namespace)["items"]
    assert sorted(j["metadata"]["labels"]["loraforge.io/finetunejob"] for j in jobs) == sorted(names)
    assert all(len(j["metadata"]["ownerReferences"]) == 1 for j in jobs)
    # It recovered by itself: the same process, never restarted.
    assert operator.proc.pid == pid and operator.proc.poll() is None
    # ... and it still follows changes: suspending one stops its pods.
    kube.kubectl("patch", "ftj", "before", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    wait_for(
        lambda: kube.get("ftj", "before", "-n", namespace).get("status", {}).get("phase") == "Suspended",
        60,
        "the operator to act on a change made after the restart",
    )


# --- the operator killed mid-rollout ---------------------------------------------------------------

MD = "assistant"
PROMPT = "What is the capital of Veloria?"


@pytest.fixture(scope="module")
def serving_ns(
    cluster, kube: Kube, operator: OperatorProcess, base_model_dir: Path, tmp_path_factory
) -> Iterator[tuple[str, Path]]:
    folder = tmp_path_factory.mktemp("model-store")
    with workloads.store_namespace(kube, "lf-disrupt", base_model_dir, folder) as (ns, store):
        workloads.random_adapter(base_model_dir, store, "adapters/chat/a", seed=1)
        workloads.random_adapter(base_model_dir, store, "adapters/chat/b", seed=2)
        # Changes nothing: answers exactly like the base model, which its smoke test forbids.
        workloads.random_adapter(base_model_dir, store, "adapters/chat/inert", inert=True)
        yield ns, store


def _deployment(path: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD},
        "spec": {
            "baseModel": {"path": workloads.BASE_MODEL_PATH},
            "adapters": [
                {
                    "name": "chat",
                    "from": {"path": path},
                    "smokeTest": {"prompt": PROMPT, "maxNewTokens": 8, "differsFromBase": True},
                }
            ],
            "replicas": 1,
            "resources": {"gpus": 1, "cpu": "250m", "memory": "2Gi", **workloads.ON_LOCAL_NODE},
            "rollout": {"maxSurge": 1, "progressDeadlineSeconds": 240},
        },
    }


def _md(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get("modeldeployment", MD, "-n", ns)


def _rollout(md: dict[str, Any]) -> dict[str, Any]:
    return md.get("status", {}).get("rollout") or {}


def _serving(md: dict[str, Any]) -> list[str]:
    return [s["path"] for s in md.get("status", {}).get("serving", [])]


def _digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): publish.sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _roll_and_kill_the_operator(kube: Kube, ns: str, operator: OperatorProcess, path: str) -> dict[str, Any]:
    """Roll to ``path``, SIGKILL the operator once the rollout is recorded, start it again; return the
    ModelDeployment once the rollout has ended under the restarted operator."""
    kube.apply(_deployment(path), namespace=ns)
    wait_for(
        lambda: (
            (r := _rollout(_md(kube, ns))).get("phase") == "Progressing"
            and path in json.dumps(r.get("adapters"))
        ),
        60,
        f"the rollout to {path} to start",
        interval=0.2,
    )
    operator.kill()
    time.sleep(3)  # the new pods start and are checked with no operator watching
    operator.start()
    return wait_for(
        lambda: (m := _md(kube, ns)) and _rollout(m).get("phase") not in (None, "Progressing") and m,
        300,
        f"the rollout to {path} to end under the restarted operator",
        interval=1,
    )


def test_an_operator_killed_mid_rollout_completes_a_good_one_and_rolls_back_a_bad_one(
    kube: Kube, serving_ns: tuple[str, Path], operator: OperatorProcess
) -> None:
    ns, store = serving_ns
    adapters_before = _digests(store / "adapters")
    kube.apply(_deployment("adapters/chat/a"), namespace=ns)
    wait_for(
        lambda: (
            _serving(md := _md(kube, ns)) == ["adapters/chat/a"]
            and _cond(md, "Ready").get("status") == "True"
        ),
        300,
        "the first adapter to be served",
        interval=1,
    )

    md = _roll_and_kill_the_operator(kube, ns, operator, "adapters/chat/b")
    assert _rollout(md)["phase"] == "Complete", _rollout(md)
    wait_for(lambda: _serving(_md(kube, ns)) == ["adapters/chat/b"], 60, "b to be served")

    md = _roll_and_kill_the_operator(kube, ns, operator, "adapters/chat/inert")
    assert _rollout(md)["phase"] == "RolledBack" and _rollout(md)["reason"] == "SmokeTestFailed", _rollout(md)
    md = wait_for(
        lambda: (m := _md(kube, ns)) and _cond(m, "Ready").get("status") == "True" and m,
        120,
        "the deployment to be Ready again on b",
        interval=1,
    )
    assert _serving(md) == ["adapters/chat/b"]
    dep = kube.get("deployment", MD, "-n", ns)
    env = {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["LORA_ADAPTERS"].endswith("/models/adapters/chat/b"), env["LORA_ADAPTERS"]
    assert dep["status"].get("readyReplicas") == dep["spec"]["replicas"] == 1
    # One record per rollout: the kills neither lost one nor started one twice.
    history = [(h["phase"], json.dumps(h["revisions"])) for h in md["status"]["history"]]
    assert [phase for phase, _ in history[:2]] == ["RolledBack", "Complete"], history
    assert len(history) == len(set(history)), history
    # The adapters themselves are untouched, the rejected one included.
    assert _digests(store / "adapters") == adapters_before
    kube.kubectl("delete", "modeldeployment", MD, "-n", ns, "--wait=true", "--timeout=120s")


# --- a training pod deleted, then its node removed -------------------------------------------------


def _trainer_log(kube: Kube, ns: str, pod: str) -> str:
    return kube.kubectl("logs", pod, "-n", ns, "-c", "trainer", check=False).stdout


def _pods(kube: Kube, ns: str, ftj: str) -> list[dict[str, Any]]:
    return kube.get("pods", "-n", ns, "-l", f"loraforge.io/finetunejob={ftj}")["items"]


def _running_pod(kube: Kube, ns: str, ftj: str, not_in: set[str]) -> str:
    def running() -> str | None:
        for p in _pods(kube, ns, ftj):
            name = p["metadata"]["name"]
            if name not in not_in and p["status"].get("phase") == "Running":
                return name
        return None

    return wait_for(running, 300, "a replacement training pod to run", interval=1)


def _resumed_from(kube: Kube, ns: str, pod: str) -> int:
    """The step of the checkpoint the trainer in ``pod`` says it resumed from."""
    found = wait_for(
        lambda: re.search(r"resuming from checkpoint-(\d+)", _trainer_log(kube, ns, pod)),
        300,
        f"pod {pod} to resume",
        interval=1,
    )
    return int(found.group(1))


def _checkpoint_after(folder: Path, step: int) -> int:
    def newest() -> int | None:
        found = newest_checkpoint(folder) if folder.is_dir() else None
        n = int(found.name.rsplit("-", 1)[1]) if found else 0
        return n if n > step else None

    return wait_for(newest, 600, f"a checkpoint after step {step} in {folder}", interval=1)


@pytest.mark.timeout(1200)  # three pods, each loading SmolLM2 on a shared CPU
def test_a_training_pod_deleted_then_its_node_removed_resumes_from_checkpoints(
    cluster, kube: Kube, serving_ns: tuple[str, Path]
) -> None:
    ns, store = serving_ns
    name = "resumable"
    # Short steps (one 128-token sequence each), a checkpoint every second one.
    manifest = workloads.finetunejob(
        name, "facts", maxSteps=12, batchSize=1, maxSeqLength=128, learningRate=1e-3, evaluation={}
    )
    manifest["spec"]["dataset"].pop("validationPath")  # no evaluation: only training steps
    manifest["spec"]["checkpoints"] = {"everySteps": 2, "keep": 2}
    kube.apply(manifest, namespace=ns)
    uid = kube.get("ftj", name, "-n", ns)["metadata"]["uid"]
    checkpoints = store / "checkpoints" / ns / f"{name}-{uid[:8]}"

    t0 = time.monotonic()

    def note(what: str) -> None:  # shown when the test fails: where the time went
        print(f"{time.monotonic() - t0:6.1f}s {what}")

    first = _running_pod(kube, ns, name, set())
    step = _checkpoint_after(checkpoints, 0)
    note(f"{first} wrote checkpoint-{step}; deleting it")
    kube.kubectl("delete", "pod", first, "-n", ns, "--wait=false")
    second = _running_pod(kube, ns, name, {first})
    resumed = _resumed_from(kube, ns, second)
    assert resumed >= step
    note(f"{second} resumed from checkpoint-{resumed}")

    # The machine dies (the agent is SIGKILLed; the kernel kills its pods' processes with it) and its
    # Node is deleted: PodGC deletes the pods bound to it, marked as a disruption (no retry used up) ...
    step = _checkpoint_after(checkpoints, resumed)
    note(f"{second} wrote checkpoint-{step}; killing the node")
    cluster.stop_component("localnode", signal.SIGKILL)
    kube.kubectl("delete", "node", LOCAL_NODE)
    wait_for(
        lambda: second not in {p["metadata"]["name"] for p in _pods(kube, ns, name)},
        180,
        f"PodGC to delete {second} from the removed node",
        interval=2,
    )
    # ... and a node joins in its place (the local node agent registers it anew).
    note(f"PodGC deleted {second}; the node joins again")
    cluster.start_component("localnode")
    third = _running_pod(kube, ns, name, {first, second})
    resumed = _resumed_from(kube, ns, third)
    assert resumed >= step
    note(f"{third} resumed from checkpoint-{resumed}")

    done = workloads.wait_finished(kube, ns, name)
    assert done["status"]["phase"] == "Succeeded", done["status"]
    # The deletion used one retry; the node's removal none.
    job = kube.get("job", f"{name}-train", "-n", ns)
    assert job["status"].get("failed") == 1, job["status"]
    # One revision published, complete.
    adapter = done["status"]["adapter"]
    assert adapter["revision"] == "v1"
    published = publish.revisions((store / adapter["path"]).parent)
    assert [p.name for _, p in published] == ["v1"]
    publish.verify(published[0][1])
