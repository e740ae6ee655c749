"""A FineTuneJob on the local control plane, with the operator running: it
becomes a GPU Job on a fake GPU node, follows the trainer's reports to
Succeeded with its adapter, or to Failed with the trainer's reason; it can be
suspended and resumed; deleting it removes the Job; a killed operator leaves
no duplicates and converges after restart.

kwok stands in for the trainer's container (nothing runs on fake nodes); the
test plays the trainer through the real channel, with the trainer's own
reporter authenticated as the trainer's ServiceAccount."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from loraforge_operator.finetunejob import contract
from loraforge_trainer.report import ProgressReporter
from tests.e2e.conftest import TRAINER_IMAGE, OperatorProcess
from tests.finetunejob_cases import VALID_SPEC, merge
from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("model_store")


@pytest.fixture(autouse=True)
def _local_only(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("kwok plays the training container here; a real cluster would run the trainer image")


def _apply_ftj(kube: Kube, namespace: str, name: str, **patch) -> None:
    spec = merge(json.loads(json.dumps(VALID_SPEC)), patch)
    kube.apply(
        {
            "apiVersion": "loraforge.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        },
        namespace=namespace,
    )


# kwok holds the fake training pod Running this long: "until the test stops it".
RUN_LONG = {"annotations": {"job-pod-complete.stage.kwok.x-k8s.io/delay": "10m"}}


def _ftj(kube: Kube, namespace: str, name: str) -> dict:
    return kube.get("finetunejob", name, "-n", namespace)


def _condition(obj: dict, ctype: str) -> dict:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == ctype), {})


def _phase(kube: Kube, namespace: str, name: str, phase: str, timeout: float = 60) -> dict:
    return wait_for(
        lambda: (o := _ftj(kube, namespace, name)).get("status", {}).get("phase") == phase and o,
        timeout=timeout,
        what=f"FineTuneJob {name} to be {phase}",
    )


def _reporter(kube: Kube, namespace: str, name: str, tmp_path: Path) -> ProgressReporter:
    server, ca = kube.server_and_ca(tmp_path)
    return ProgressReporter(
        server=server,
        namespace=namespace,
        config_map=contract.progress_map_name(name),
        token=kube.token(namespace, contract.trainer_identity(name)),
        ca_file=ca,
    )


def _events(kube: Kube, namespace: str, name: str) -> list[dict]:
    return kube.get(
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.kind=FineTuneJob,involvedObject.name={name}",
    )["items"]


def test_example_finetunejob_trains_on_a_gpu_node_and_succeeds_with_the_reported_adapter(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    ftj = yaml.safe_load((REPO / "examples" / "finetunejob-lora.yaml").read_text())
    # Keep the fake training pod running long enough to report progress.
    ftj["spec"]["podMetadata"] = {"annotations": {"job-pod-complete.stage.kwok.x-k8s.io/delay": "8s"}}
    name = ftj["metadata"]["name"]
    kube.apply(ftj, namespace=namespace)
    job = wait_for(lambda: kube.get("jobs", "-n", namespace)["items"], 60, "the training Job")[0]
    assert job["metadata"]["name"] == f"{name}-train"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == TRAINER_IMAGE
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    # The namespace enforces Pod Security "restricted": the pod was admitted.
    selector = f"batch.kubernetes.io/job-name={name}-train"

    def scheduled() -> list[dict]:
        return [
            p for p in kube.get("pods", "-n", namespace, "-l", selector)["items"] if p["spec"].get("nodeName")
        ]

    pod = wait_for(scheduled, 60, "the pod to be scheduled")[0]
    assert pod["spec"]["nodeName"].startswith("gpu-node-")
    _phase(kube, namespace, name, "Running")

    reporter = _reporter(kube, namespace, name, tmp_path)
    assert reporter.progress(step=50, total_steps=200, epoch=0.5, loss=1.31, learning_rate=1.8e-4)
    running = wait_for(
        lambda: (o := _ftj(kube, namespace, name))["status"].get("progress") and o,
        30,
        "progress in the status",
    )
    assert running["status"]["progress"]["percent"] == 25 and running["status"]["progress"]["loss"] == 1.31
    adapter = {
        "name": name,
        "revision": "r1",
        "path": f"adapters/{namespace}/{name}/r1",
        "digest": "sha256:" + "0f" * 32,
    }
    reporter.result(adapter, {"evalLoss": 0.92, "baseEvalLoss": 1.6}, evaluation_passed=True)

    done = _phase(kube, namespace, name, "Succeeded")
    assert done["status"]["adapter"]["revision"] == "r1"
    assert done["status"]["adapter"]["evaluationPassed"] is True
    assert _condition(done, "Succeeded")["reason"] == "AdapterPublished"
    assert _condition(done, "Evaluated")["status"] == "True"
    assert done["status"]["observedGeneration"] == done["metadata"]["generation"]
    reasons = {e["reason"] for e in _events(kube, namespace, name)}
    assert {"Accepted", "TrainingRunning", "AdapterPublished"} <= reasons
    printed = kube.kubectl("get", "ftj", name, "-n", namespace).stdout
    assert "Succeeded" in printed and "r1" in printed


def test_failed_training_fails_once_with_the_trainers_reason_and_exit_code(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    message = "DatasetInvalid: datasets/support/train.jsonl:17: missing key 'messages'"
    _apply_ftj(
        kube,
        namespace,
        "broken",
        podMetadata={
            "annotations": {
                "kwok.loraforge.io/exit-code": str(contract.EXIT_INVALID_INPUT),
                "kwok.loraforge.io/termination-message": message,
            }
        },
    )
    failed = _phase(kube, namespace, "broken", "Failed")
    cond = _condition(failed, "Failed")
    assert cond["reason"] == "DatasetInvalid"
    assert (
        "train.jsonl:17" in cond["message"] and f"exit code {contract.EXIT_INVALID_INPUT}" in cond["message"]
    )
    # Bad input is not retried (podFailurePolicy), although backoffLimit is 2.
    time.sleep(3)
    assert kube.get("job", "broken-train", "-n", namespace)["status"].get("failed") == 1
    assert any(
        e["type"] == "Warning" and e["reason"] == "DatasetInvalid" for e in _events(kube, namespace, "broken")
    )


def test_pods_that_cannot_be_scheduled_are_explained(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _apply_ftj(kube, namespace, "nostore", modelStore={"claimName": "missing-store"})
    stuck = wait_for(
        lambda: (
            (o := _ftj(kube, namespace, "nostore")).get("status")
            and _condition(o, "Running").get("reason") == "Unschedulable"
            and o
        ),
        60,
        "the Running condition to say Unschedulable",
    )
    assert stuck["status"]["phase"] == "Pending"
    assert 'persistentvolumeclaim "missing-store" not found' in _condition(stuck, "Running")["message"]
    assert any(
        e["type"] == "Warning" and e["reason"] == "Unschedulable" for e in _events(kube, namespace, "nostore")
    )


def test_job_that_completes_without_a_result_fails_saying_so(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _apply_ftj(kube, namespace, "silent")
    failed = _phase(kube, namespace, "silent", "Failed")
    assert _condition(failed, "Failed")["reason"] == "NoResultReported"


def test_suspend_stops_the_pods_and_resume_restarts_them(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _apply_ftj(
        kube,
        namespace,
        "pausable",
        podMetadata=RUN_LONG,
    )
    _phase(kube, namespace, "pausable", "Running")
    kube.kubectl(
        "patch", "ftj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}'
    )
    suspended = _phase(kube, namespace, "pausable", "Suspended")
    assert _condition(suspended, "Suspended")["status"] == "True"
    assert kube.get("job", "pausable-train", "-n", namespace)["spec"]["suspend"] is True
    wait_for(
        lambda: not kube.get("pods", "-n", namespace, "-l", "loraforge.io/finetunejob=pausable")["items"],
        60,
        "the training pods to be removed",
    )
    kube.kubectl(
        "patch", "ftj", "pausable", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":false}}'
    )
    resumed = _phase(kube, namespace, "pausable", "Running")
    assert _condition(resumed, "Suspended")["status"] == "False"


def test_deleting_a_finetunejob_removes_its_job_and_pods(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    _apply_ftj(
        kube,
        namespace,
        "doomed",
        podMetadata=RUN_LONG,
    )
    _phase(kube, namespace, "doomed", "Running")
    kube.kubectl("delete", "ftj", "doomed", "-n", namespace, "--timeout=60s")
    wait_for(
        lambda: (
            not kube.get(
                "jobs,pods,configmaps,roles", "-n", namespace, "-l", "loraforge.io/finetunejob=doomed"
            )["items"]
        ),
        90,
        "the garbage collector to remove the FineTuneJob's children",
    )


def test_killed_operator_restarts_without_duplicates_and_converges_with_no_idle_writes(
    kube: Kube, namespace: str, operator: OperatorProcess
) -> None:
    names = [f"burst-{i}" for i in range(12)]
    for name in names:
        _apply_ftj(
            kube,
            namespace,
            name,
            podMetadata=RUN_LONG,
        )
    time.sleep(0.5)
    operator.kill()  # mid-burst
    operator.start()

    def converged() -> bool:
        items = kube.get("finetunejobs", "-n", namespace)["items"]
        return len(items) == len(names) and all(
            _condition(o, "Accepted").get("status") == "True" and o["status"].get("phase") == "Running"
            for o in items
        )

    wait_for(converged, 120, "every FineTuneJob to be Accepted and Running after the restart")
    jobs = kube.get("jobs", "-n", namespace)["items"]
    owners = sorted(j["metadata"]["labels"]["loraforge.io/finetunejob"] for j in jobs)
    assert owners == sorted(names)  # exactly one Job each
    for j in jobs:
        assert len(j["metadata"]["ownerReferences"]) == 1

    # Nothing changes now: a fresh operator must not write anything. It watches
    # only this namespace: earlier tests' namespaces may still be being torn
    # down, which are real changes.
    operator.stop()
    try:
        operator.start(namespaces=[namespace])
        time.sleep(8)
        assert operator.writes() == 0
    finally:
        operator.stop()
        operator.start()
