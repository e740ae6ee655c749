"""A person in the loop under `promotion.policy: Manual`, with the operator
running and the chart's approval policy in force: two FineTuneJobs publish v1
and v2 of one adapter (kwok stands in for the trainer's container; the test
plays the trainer through the real progress channel, as test_finetunejob.py
does), the ModelDeployment shows v2 waiting for approval, `loraforge approve`
pins it in the name the API server knows the test by, and status records who
approved which revision and when, with a RevisionApproved event. The
deployment runs no replicas: this is about the decision, not serving."""

from __future__ import annotations

import calendar
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from loraforge_operator.finetunejob import contract
from loraforge_trainer.report import ProgressReporter
from tests.admission import approval_policy
from tests.e2e.conftest import OperatorProcess
from tests.finetunejob_cases import VALID_SPEC
from tests.kube import Kube, wait_for

pytestmark = pytest.mark.usefixtures("model_store")

BASE_MODEL = VALID_SPEC["baseModel"]
# The fake training pod runs this long: time to report a result before the Job completes.
HOLD = {"annotations": {"job-pod-complete.stage.kwok.x-k8s.io/delay": "20s"}}


@pytest.fixture(autouse=True)
def _local_only(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("kwok plays the training container here; a real cluster would run the trainer image")


def _publish(
    kube: Kube, ns: str, name: str, revision: str, tmp_path: Path, suite: dict[str, Any] | None = None
) -> None:
    """FineTuneJob ``name`` publishing ``revision`` of adapter `facts`, passing its gate; with ``suite`` (an
    evaluation suite's result, as the trainer reports it) failing the gate on that suite's accuracy."""
    spec = {**json.loads(json.dumps(VALID_SPEC)), "adapter": {"name": "facts"}, "podMetadata": HOLD}
    kube.apply(
        {
            "apiVersion": "loraforge.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        },
        namespace=ns,
    )
    wait_for(
        lambda: (
            kube.kubectl("get", "sa", contract.trainer_identity(name), "-n", ns, check=False).returncode == 0
            and kube.kubectl("get", "cm", contract.progress_map_name(name), "-n", ns, check=False).returncode
            == 0
        ),
        60,
        f"the progress channel of {name}",
    )
    server, ca = kube.server_and_ca(tmp_path)
    reporter = ProgressReporter(
        server=server,
        namespace=ns,
        config_map=contract.progress_map_name(name),
        token=kube.token(ns, contract.trainer_identity(name)),
        ca_file=ca,
    )
    adapter = {
        "name": "facts",
        "revision": revision,
        "path": f"adapters/{ns}/facts/{revision}",
        "digest": "sha256:" + revision[1:] * 64,
    }
    passed = suite is None or suite["passed"]
    why = "" if passed else f"suite {suite['name']}: accuracy {suite['accuracy']:.1%} < minAccuracy 90.0%"
    reporter.result(
        adapter, {"evalLoss": 0.9, "baseEvalLoss": 1.6}, passed, [suite] if suite else [], why or "all held"
    )
    phase = "Succeeded" if passed else "Failed"
    wait_for(
        lambda: (kube.get("ftj", name, "-n", ns).get("status") or {}).get("phase") == phase,
        90,
        f"FineTuneJob {name} to end {phase} with {revision}",
    )


def _md(kube: Kube, ns: str) -> dict[str, Any]:
    return kube.get("md", "assistant", "-n", ns)


def _cond(md: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next((c for c in (md.get("status") or {}).get("conditions") or [] if c["type"] == ctype), {})


def _adapter(md: dict[str, Any]) -> dict[str, Any]:
    return next((a for a in (md.get("status") or {}).get("adapters") or [] if a["name"] == "facts"), {})


def _cli(kube: Kube, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(kube.kubeconfig)}
    cmd = [sys.executable, "-m", "loraforge_operator.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def test_a_reviewer_approves_v2_with_loraforge_approve_and_status_records_who_and_when(
    kube: Kube, namespace: str, operator: OperatorProcess, tmp_path: Path
) -> None:
    me = json.loads(kube.kubectl("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]["username"]
    with approval_policy(kube, "lf-approval-e2e", namespace):
        _publish(kube, namespace, "facts-1", "v1", tmp_path)
        _publish(kube, namespace, "facts-2", "v2", tmp_path)
        # v3 lowers the loss further but answers too few questions right: published, failed, never offered.
        missed = {
            "name": "facts",
            "scorer": "contains",
            "records": 72,
            "correct": 30,
            "baseCorrect": 0,
            "accuracy": 0.4167,
            "baseAccuracy": 0.0,
            "passed": False,
        }
        _publish(kube, namespace, "facts-3", "v3", tmp_path, suite=missed)
        failed_ftj = kube.get("ftj", "facts-3", "-n", namespace)
        failed = failed_ftj["status"]
        assert (
            failed["adapter"]["suites"] == [missed]
            and failed["adapter"]["answers"] == "facts 30/72 (base 0/72)"
        )
        gate = _cond(failed_ftj, "Failed")
        assert gate["reason"] == "EvaluationGateFailed", gate
        assert "suite facts: accuracy 41.7% < minAccuracy 90.0%" in gate["message"], gate
        kube.apply(
            {
                "apiVersion": "loraforge.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "assistant"},
                "spec": {
                    "baseModel": BASE_MODEL,
                    "promotion": {"policy": "Manual"},
                    "replicas": 0,
                    "adapters": [{"name": "facts", "from": {"adapter": "facts"}}],
                },
            },
            namespace=namespace,
        )
        waiting = wait_for(
            lambda: (
                (m := _md(kube, namespace)) and _cond(m, "PromotionPending").get("status") == "True" and m
            ),
            60,
            "v2 to wait for approval",
        )
        # v2, not the newer v3 that failed its gate.
        assert _adapter(waiting)["available"] == "v2" and "approval" not in _adapter(waiting)
        assert _cond(waiting, "PromotionPending")["reason"] == "ApprovalRequired"
        assert "facts: v2 passed its gate" in _cond(waiting, "PromotionPending")["message"]

        # Refusals name the cause and change nothing.
        wrong = _cli(kube, "approve", "assistant", "nope", "v2", "-n", namespace)
        assert wrong.returncode == 1 and 'serves no adapter "nope"' in wrong.stderr, wrong.stderr
        # Someone else's name is refused by the chart's policy.
        forged = kube.kubectl(
            "patch", "md", "assistant", "-n", namespace, "--type=json", "-p",
            json.dumps([
                {"op": "add", "path": "/spec/adapters/0/from/revision", "value": "v2"},
                {"op": "add", "path": "/spec/adapters/0/from/approvedBy", "value": f"not-{me}"},
            ]),
            check=False,
        )  # fmt: skip
        assert forged.returncode != 0 and "approvedBy must be the name of the user" in forged.stderr

        before = time.time()
        done = _cli(kube, "approve", "assistant", "facts", "v2", "-n", namespace)
        assert done.returncode == 0, done.stderr
        assert f"adapter facts pinned to v2, approved by {me}" in done.stdout, done.stdout
        spec_from = _md(kube, namespace)["spec"]["adapters"][0]["from"]
        assert spec_from == {"adapter": "facts", "revision": "v2", "approvedBy": me}

        approved = wait_for(
            lambda: (m := _md(kube, namespace)) and _adapter(m).get("approval") and m,
            60,
            "the approval in status",
        )
        record = _adapter(approved)["approval"]
        assert record["revision"] == "v2" and record["approvedBy"] == me
        at = calendar.timegm(time.strptime(record["approvedAt"], "%Y-%m-%dT%H:%M:%SZ"))
        assert before - 5 <= at <= time.time() + 5, record
        assert _cond(approved, "PromotionPending")["status"] == "False"

        events = wait_for(
            lambda: [
                e
                for e in kube.get(
                    "events", "-n", namespace, "--field-selector", "involvedObject.name=assistant"
                )["items"]
                if e["reason"] == "RevisionApproved"
            ],
            30,
            "a RevisionApproved event",
        )
        assert events[0]["message"] == f"adapter facts: revision v2 approved by {me}"
        assert events[0]["type"] == "Normal"
        described = kube.kubectl("describe", "md", "assistant", "-n", namespace).stdout
        assert "Approved By:" in described and me in described

        # Later passes keep the record as it is.
        kube.kubectl("annotate", "md", "assistant", "-n", namespace, "example.org/poke=1")
        time.sleep(3)
        assert _adapter(_md(kube, namespace))["approval"] == record
