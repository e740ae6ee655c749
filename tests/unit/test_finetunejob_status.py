"""What the FineTuneJob's status says for each observed situation, and that
an unchanged world yields an identical status (so nothing is written)."""

from __future__ import annotations

import json

import pytest

from loraforge_operator.finetunejob import contract, status
from tests.statuses import checked_statuses  # noqa: F401 (a fixture)

# Every status computed here parses in its status model and speaks its kind's vocabulary.
pytestmark = pytest.mark.usefixtures("checked_statuses")


def _job(**st) -> dict:
    return {"metadata": {"name": "demo-train"}, "spec": {"suspend": st.pop("suspend", False)}, "status": st}


def _cond(st: dict, ctype: str) -> dict:
    return next(c for c in st["conditions"] if c["type"] == ctype)


RESULT = {
    "adapter": {
        "name": "demo",
        "revision": "r3",
        "path": "adapters/ns/demo/r3",
        "digest": "sha256:" + "a" * 64,
    },
    "metrics": {"evalLoss": 1.0, "baseEvalLoss": 1.5},
    "evaluationPassed": True,
}
COMPLETE = [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T01:00:00Z"}]


def test_without_a_job_the_finetunejob_is_accepted_and_pending() -> None:
    st, events = status.compute({}, status.Observed(generation=3))
    assert st["phase"] == "Pending" and st["observedGeneration"] == 3
    assert _cond(st, "Accepted")["status"] == "True"
    assert _cond(st, "Accepted")["observedGeneration"] == 3
    assert [e.reason for e in events] == ["Accepted"]


def test_recomputing_an_unchanged_world_gives_the_identical_status_and_no_events() -> None:
    obs = status.Observed(generation=1, job=_job(ready=1, active=1, startTime="2026-01-01T00:00:00Z"))
    first, _ = status.compute({}, obs)
    again, events = status.compute(first, obs)
    assert again == first
    assert events == []


def test_ready_pods_mean_running_and_progress_is_reported() -> None:
    progress = {"step": 40, "totalSteps": 160, "epoch": 0.5, "loss": 1.2, "time": "2026-01-01T00:10:00Z"}
    obs = status.Observed(
        generation=1,
        job=_job(ready=1, active=1, startTime="2026-01-01T00:00:00Z"),
        progress_data={contract.PROGRESS_KEY: json.dumps(progress)},
    )
    st, _ = status.compute({}, obs)
    assert st["phase"] == "Running" and st["startTime"] == "2026-01-01T00:00:00Z"
    assert st["progress"] == {
        "step": 40,
        "totalSteps": 160,
        "percent": 25,
        "epoch": 0.5,
        "loss": 1.2,
        "updateTime": "2026-01-01T00:10:00Z",
    }


def test_garbage_in_the_progress_configmap_is_ignored_not_fatal() -> None:
    obs = status.Observed(
        generation=1,
        job=_job(ready=1, active=1),
        progress_data={contract.PROGRESS_KEY: "{not json", contract.RESULT_KEY: json.dumps({"adapter": "x"})},
    )
    st, _ = status.compute({}, obs)
    assert st["phase"] == "Running" and "progress" not in st and "adapter" not in st


def test_completed_job_with_a_passing_adapter_succeeds() -> None:
    obs = status.Observed(
        generation=1,
        job=_job(
            startTime="2026-01-01T00:00:00Z", completionTime="2026-01-01T01:00:00Z", conditions=COMPLETE
        ),
        progress_data={contract.RESULT_KEY: json.dumps(RESULT)},
    )
    st, events = status.compute({}, obs)
    assert st["phase"] == "Succeeded"
    assert st["adapter"]["revision"] == "r3" and st["adapter"]["metrics"] == {
        "evalLoss": 1.0,
        "baseEvalLoss": 1.5,
    }
    assert _cond(st, "Succeeded")["reason"] == "AdapterPublished"
    assert _cond(st, "Evaluated")["status"] == "True"
    assert st["completionTime"] == "2026-01-01T01:00:00Z"
    assert "AdapterPublished" in {e.reason for e in events}


def test_adapter_that_fails_the_gate_is_recorded_but_the_finetunejob_fails() -> None:
    result = {**RESULT, "evaluationPassed": False}
    obs = status.Observed(
        generation=1, job=_job(conditions=COMPLETE), progress_data={contract.RESULT_KEY: json.dumps(result)}
    )
    st, events = status.compute({}, obs)
    assert st["phase"] == "Failed" and st["adapter"]["evaluationPassed"] is False
    assert _cond(st, "Evaluated")["status"] == "False"
    assert _cond(st, "Failed")["reason"] == "EvaluationGateFailed"
    assert "evalLoss=1" in _cond(st, "Failed")["message"]
    assert any(e.type == "Warning" and e.reason == "EvaluationGateFailed" for e in events)


def test_completed_job_without_a_result_fails_saying_so() -> None:
    st, _ = status.compute({}, status.Observed(generation=1, job=_job(conditions=COMPLETE)))
    assert st["phase"] == "Failed" and _cond(st, "Failed")["reason"] == "NoResultReported"


def test_failed_job_uses_the_trainers_termination_message_and_exit_code() -> None:
    job = _job(
        failed=1,
        conditions=[
            {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "message": "Container trainer failed with exit code 3",
            }
        ],
    )
    pod = {"exitCode": 3, "message": "DatasetInvalid: data/train.jsonl:17: missing key 'messages'"}
    st, events = status.compute({}, status.Observed(generation=1, job=job, last_failed_pod=pod))
    failed = _cond(st, "Failed")
    assert failed["reason"] == "DatasetInvalid"
    assert failed["message"] == "data/train.jsonl:17: missing key 'messages' (exit code 3)"
    assert st["failedAttempts"] == 1
    assert any(e.type == "Warning" and e.reason == "DatasetInvalid" for e in events)


def test_failure_document_from_the_channel_wins_over_the_termination_message() -> None:
    job = _job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    obs = status.Observed(
        generation=1,
        job=job,
        progress_data={contract.FAILURE_KEY: json.dumps({"reason": "ModelNotFound", "message": "no base/x"})},
        last_failed_pod={"exitCode": 3, "message": "Traceback ..."},
    )
    failed = _cond(status.compute({}, obs)[0], "Failed")
    assert failed["reason"] == "ModelNotFound" and failed["message"].startswith("no base/x")


def test_deadline_and_backoff_are_named() -> None:
    deadline = _job(conditions=[{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}])
    assert (
        _cond(status.compute({}, status.Observed(1, job=deadline))[0], "Failed")["reason"]
        == "DeadlineExceeded"
    )
    backoff = _job(conditions=[{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}])
    pod = {"exitCode": 137, "message": "OOMKilled"}
    failed = _cond(status.compute({}, status.Observed(1, job=backoff, last_failed_pod=pod))[0], "Failed")
    assert failed["reason"] == "BackoffLimitExceeded" and failed["message"] == "OOMKilled (exit code 137)"


def test_a_recorded_failure_is_kept_when_the_pods_are_gone() -> None:
    job = _job(conditions=[{"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}])
    first, _ = status.compute(
        {}, status.Observed(1, job=job, last_failed_pod={"exitCode": 3, "message": "X: y"})
    )
    later, events = status.compute(
        first, status.Observed(1, job=job, recorded_failure=status.recorded_failure(first))
    )
    assert later == first and events == []


def test_suspended_then_resumed() -> None:
    st, _ = status.compute({}, status.Observed(1, job=_job(suspend=True)))
    assert st["phase"] == "Suspended" and _cond(st, "Suspended")["status"] == "True"
    resumed, _ = status.compute(st, status.Observed(1, job=_job(ready=1, active=1)))
    assert resumed["phase"] == "Running" and _cond(resumed, "Suspended")["status"] == "False"


def test_between_retries_a_running_job_stays_running() -> None:
    running, _ = status.compute({}, status.Observed(1, job=_job(ready=1, active=1)))
    between, events = status.compute(running, status.Observed(1, job=_job(failed=1, active=0)))
    assert between["phase"] == "Running"
    assert "retrying after 1 failed attempt" in _cond(between, "Running")["message"]
    assert events == []


def test_transition_time_changes_only_with_the_status() -> None:
    pending, _ = status.compute({}, status.Observed(1))
    t0 = _cond(pending, "Accepted")["lastTransitionTime"]
    running, _ = status.compute(pending, status.Observed(1, job=_job(ready=1, active=1)))
    assert _cond(running, "Accepted")["lastTransitionTime"] == t0


def test_a_stuck_pod_is_explained_and_warned_about() -> None:
    obs = status.Observed(1, job=_job(active=1), pod_problem=("Unschedulable", "0/3 nodes are available"))
    st, events = status.compute({}, obs)
    running = _cond(st, "Running")
    assert st["phase"] == "Pending" and running["reason"] == "Unschedulable"
    assert running["message"] == "training pods cannot start: 0/3 nodes are available"
    assert any(e.type == "Warning" and e.reason == "Unschedulable" for e in events)
    # Waiting first, stuck later: the new reason is news even though Running stays False.
    waiting, _ = status.compute({}, status.Observed(1, job=_job(active=1)))
    _, later = status.compute(waiting, obs)
    assert [(e.type, e.reason) for e in later] == [("Warning", "Unschedulable")]


def test_pod_problems_are_read_from_the_scheduler_and_the_kubelet() -> None:
    from loraforge_operator.finetunejob.reconcile import _pod_problem

    unschedulable = {
        "status": {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "Insufficient nvidia.com/gpu",
                }
            ],
        }
    }
    no_image = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                {
                    "name": "trainer",
                    "state": {"waiting": {"reason": "ImagePullBackOff", "message": "not found"}},
                }
            ],
        }
    }
    creating = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}],
        }
    }
    assert _pod_problem([unschedulable]) == ("Unschedulable", "Insufficient nvidia.com/gpu")
    assert _pod_problem([no_image]) == ("ImagePullBackOff", "container trainer: not found")
    assert _pod_problem([creating]) is None
    assert _pod_problem([{"status": {"phase": "Running"}}]) is None


SUITE = {
    "name": "held-out",
    "scorer": "contains",
    "records": 72,
    "correct": 70,
    "baseCorrect": 0,
    "accuracy": 0.9722,
    "baseAccuracy": 0.0,
    "passed": True,
}


def test_answer_suites_reach_status_with_a_line_for_kubectl_get() -> None:
    result = {
        **RESULT,
        "suites": [SUITE, {**SUITE, "name": "safety", "scorer": "regex"}],
        "explanation": "ok",
    }
    obs = status.Observed(
        generation=1, job=_job(conditions=COMPLETE), progress_data={contract.RESULT_KEY: json.dumps(result)}
    )
    st, _ = status.compute({}, obs)
    assert st["adapter"]["suites"] == [SUITE, {**SUITE, "name": "safety", "scorer": "regex"}]
    assert st["adapter"]["answers"] == "held-out 70/72 (base 0/72)"
    assert st["adapter"]["explanation"] == "ok"
    assert status.compute(st, obs)[0] == st  # unchanged world, unchanged status


def test_a_failed_suite_is_why_the_gate_failed_and_garbage_suites_are_dropped() -> None:
    why = "suite held-out: accuracy 4.2% < minAccuracy 90.0%"
    failed = {**SUITE, "correct": 3, "accuracy": 0.0417, "passed": False}
    result = {**RESULT, "evaluationPassed": False, "suites": [failed, {"name": 3}, "x"], "explanation": why}
    obs = status.Observed(
        generation=1, job=_job(conditions=COMPLETE), progress_data={contract.RESULT_KEY: json.dumps(result)}
    )
    st, _ = status.compute({}, obs)
    assert st["adapter"]["suites"] == [failed]
    assert _cond(st, "Failed")["reason"] == "EvaluationGateFailed"
    assert why in _cond(st, "Failed")["message"]
