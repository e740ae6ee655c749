"""What a FineTuneJob's status should say, from what is observed. Pure.

Inputs are the observed objects (the Job, the trainer's progress ConfigMap,
the last failed pod's termination); the output is the complete status. Equal
inputs give an equal status (transition times are carried over), so the
caller writes only when something really changed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..conditions import EventType, canonical_reason, merge_conditions
from . import contract, vocabulary
from .model import SuiteResult

# Reasons and condition types: vocabulary.py (documented in docs/finetunejob.md, "Failure reasons").
T, R = vocabulary.Type, vocabulary.Reason


_REASON = re.compile(r"[A-Z][A-Za-z0-9]{0,80}")
# The trainer's termination message: "<Reason>: <message>" (contract.py).
_TERMINATION = re.compile(r"^([A-Z][A-Za-z0-9]{0,80}): (.+)$", re.S)


@dataclass
class Observed:
    """What the operator saw of the FineTuneJob's world."""

    generation: int
    spec_error: str | None = None  # the spec failed to parse (the CRD should have stopped it)
    job: dict[str, Any] | None = None
    progress_data: dict[str, str] = field(default_factory=dict)  # the progress ConfigMap's data
    last_failed_pod: dict[str, Any] | None = None  # {"exitCode", "message", "reason"} of a trainer container
    recorded_failure: tuple[str, str] | None = None  # (reason, message) already in the status
    pod_problem: tuple[str, str] | None = None  # (reason, message) why pods are stuck before running


@dataclass
class Transition:
    """A condition that changed, to be announced as an Event."""

    type: str  # Normal or Warning
    reason: str
    message: str


def _json(data: dict[str, str], key: str) -> dict[str, Any] | None:
    raw = data.get(key)
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _job_condition(job: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == ctype and cond.get("status") == "True":
            return cond
    return None


def is_failed_job(job: dict[str, Any] | None) -> bool:
    return _job_condition(job, vocabulary.Job.FAILED) is not None


def _progress(data: dict[str, str]) -> dict[str, Any] | None:
    p = _json(data, contract.PROGRESS_KEY)
    if p is None:
        return None
    out: dict[str, Any] = {}
    for key in ("step", "totalSteps"):
        if isinstance(p.get(key), int) and p[key] >= 0:
            out[key] = p[key]
    # Rounded for people (`kubectl get ftj` prints them as they are); the metrics keep full precision.
    digits = {"epoch": 2, "loss": 4, "evalLoss": 4, "tokensPerSecond": 1}
    for key in ("epoch", "loss", "evalLoss", "learningRate", "tokensPerSecond"):
        if isinstance(p.get(key), int | float) and not isinstance(p.get(key), bool):
            value = float(p[key])
            out[key] = round(value, digits[key]) if key in digits else float(f"{value:.4g}")
    if isinstance(p.get("time"), str):
        out["updateTime"] = p["time"]
    if out.get("totalSteps"):
        out["percent"] = min(100, int(100 * out.get("step", 0) / out["totalSteps"]))
    out.setdefault("step", 0)
    return out


def _published(result: dict[str, Any] | None) -> dict[str, Any] | None:
    if not result or not isinstance(result.get("adapter"), dict):
        return None
    a = result["adapter"]
    if not all(isinstance(a.get(k), str) and a.get(k) for k in ("name", "revision", "path", "digest")):
        return None
    metrics = {
        k: float(v)
        for k, v in (result.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    out = {
        "name": a["name"],
        "revision": a["revision"],
        "path": a["path"],
        "digest": a["digest"],
        "evaluationPassed": bool(result.get("evaluationPassed")),
        "metrics": metrics,
    }
    suites = [s for s in (_suite(x) for x in (result.get("suites") or [])[:16]) if s]
    if suites:
        out["suites"] = suites
        first = suites[0]
        out["answers"] = (
            f"{first['name']} {first['correct']}/{first['records']} "
            f"(base {first['baseCorrect']}/{first['records']})"
        )
    if isinstance(result.get("explanation"), str) and result["explanation"]:
        out["explanation"] = result["explanation"][:2000]
    return out


def _suite(x: Any) -> dict[str, Any] | None:
    """One suite of the trainer's result, as status records it (None if the trainer wrote something else)."""
    try:
        suite = SuiteResult.model_validate(x)
    except ValueError:
        return None
    return suite.model_dump(by_alias=True, mode="json")


def recorded_failure(old_status: dict[str, Any]) -> tuple[str, str] | None:
    """The (reason, message) of a Failed condition already in the status."""
    for c in old_status.get("conditions") or []:
        if c.get("type") == T.FAILED and c.get("status") == "True":
            return canonical_reason(c.get("reason") or R.TRAINER_FAILED), c.get("message") or ""
    return None


def _failure_detail(obs: Observed) -> tuple[str, str]:
    """(reason, message) for a failed Job: the trainer's own words first."""
    if obs.recorded_failure:
        return obs.recorded_failure
    failure = _json(obs.progress_data, contract.FAILURE_KEY)
    job_failed = _job_condition(obs.job, vocabulary.Job.FAILED) or {}
    pod = obs.last_failed_pod or {}
    exit_code = pod.get("exitCode")
    termination = (pod.get("message") or "").strip()
    said = _TERMINATION.match(termination)
    if failure and isinstance(failure.get("reason"), str) and _REASON.fullmatch(failure["reason"]):
        reason = failure["reason"]
        message = str(failure.get("message") or termination or "the trainer reported a failure")
    elif said:
        reason, message = said.group(1), said.group(2).strip()
    elif job_failed.get("reason") == vocabulary.Job.DEADLINE_EXCEEDED:
        reason, message = R.DEADLINE_EXCEEDED, "training ran past spec.activeDeadlineSeconds"
    else:
        backoff = job_failed.get("reason") == vocabulary.Job.BACKOFF_LIMIT_EXCEEDED
        reason = R.BACKOFF_LIMIT_EXCEEDED if backoff else R.TRAINER_FAILED
        message = termination or job_failed.get("message") or "the training pod failed"
    if exit_code is not None and f"exit code {exit_code}" not in message:
        message = f"{message} (exit code {exit_code})"
    return reason, message[:4000]


def compute(old_status: dict[str, Any], obs: Observed) -> tuple[dict[str, Any], list[Transition]]:
    """Return the new status and the transitions worth an Event."""
    gen = obs.generation
    conds: list[dict[str, Any]] = []

    def cond(ctype: str, status: bool | None, reason: str, message: str) -> None:
        s = "Unknown" if status is None else ("True" if status else "False")
        conds.append(
            {"type": ctype, "status": s, "reason": reason, "message": message, "observedGeneration": gen}
        )

    status: dict[str, Any] = {
        "observedGeneration": gen,
        "failedAttempts": int(((obs.job or {}).get("status") or {}).get("failed") or 0),
    }
    for keep in ("startTime", "completionTime", "jobName"):
        if old_status.get(keep):
            status[keep] = old_status[keep]

    if obs.spec_error:
        cond(T.ACCEPTED, False, R.SPEC_INVALID, obs.spec_error)
        status["phase"] = "Failed"
        cond(T.FAILED, True, R.SPEC_INVALID, obs.spec_error)
        return _finish(old_status, status, conds)

    cond(T.ACCEPTED, True, R.ACCEPTED, "the spec is valid; training resources are created")
    job = obs.job
    if job is None:
        status["phase"] = "Pending"
        cond(T.RUNNING, False, R.WAITING_FOR_PODS, "creating the training Job")
        return _finish(old_status, status, conds)

    status["jobName"] = job["metadata"]["name"]
    js = job.get("status") or {}
    if js.get("startTime") and not status.get("startTime"):
        status["startTime"] = js["startTime"]
    progress = _progress(obs.progress_data)
    if progress:
        status["progress"] = progress
    published = _published(_json(obs.progress_data, contract.RESULT_KEY))
    if published:
        status["adapter"] = published

    complete = _job_condition(job, vocabulary.Job.COMPLETE)
    failed = _job_condition(job, vocabulary.Job.FAILED)
    suspended = bool((job.get("spec") or {}).get("suspend"))

    if complete:
        status.setdefault("completionTime", js.get("completionTime") or complete.get("lastTransitionTime"))
        cond(T.RUNNING, False, R.COMPLETED, "training finished")
        if published is None:
            status["phase"] = "Failed"
            msg = f"the trainer exited successfully but reported no adapter in {contract.RESULT_KEY}"
            cond(T.SUCCEEDED, False, R.NO_RESULT_REPORTED, msg)
            cond(T.FAILED, True, R.NO_RESULT_REPORTED, msg)
        elif published["evaluationPassed"]:
            status["phase"] = "Succeeded"
            where = f"{published['name']} revision {published['revision']} at {published['path']}"
            cond(T.EVALUATED, True, R.EVALUATION_GATE_PASSED, f"{where} passed the evaluation gate")
            cond(T.SUCCEEDED, True, R.ADAPTER_PUBLISHED, f"published {where}")
            cond(T.FAILED, False, R.ADAPTER_PUBLISHED, "")
        else:
            status["phase"] = "Failed"
            metrics = ", ".join(f"{k}={v:.4g}" for k, v in sorted(published["metrics"].items()))
            why = published.get("explanation") or metrics
            msg = (
                f"revision {published['revision']} did not pass the evaluation gate ({why}); "
                "it is published but will not be promoted"
            )
            cond(T.EVALUATED, False, R.EVALUATION_GATE_FAILED, msg)
            cond(T.SUCCEEDED, False, R.EVALUATION_GATE_FAILED, msg)
            cond(T.FAILED, True, R.EVALUATION_GATE_FAILED, msg)
    elif failed:
        status.setdefault("completionTime", failed.get("lastTransitionTime"))
        reason, message = _failure_detail(obs)
        status["phase"] = "Failed"
        cond(T.RUNNING, False, reason, message)
        cond(T.SUCCEEDED, False, reason, message)
        cond(T.FAILED, True, reason, message)
    elif suspended:
        status["phase"] = "Suspended"
        cond(T.RUNNING, False, R.SUSPENDED, "spec.suspend is true; progress is kept in checkpoints")
        cond(T.SUSPENDED, True, R.SUSPENDED, "spec.suspend is true")
    else:
        ready = int(js.get("ready") or 0)
        was_running = any(
            c.get("type") == T.RUNNING and c.get("status") == "True"
            for c in old_status.get("conditions") or []
        )
        if ready:
            status["phase"] = "Running"
            cond(T.RUNNING, True, R.TRAINING_RUNNING, f"{ready} training pod(s) running")
        elif was_running:
            # Between a pod's end and the Job's verdict, or between retries.
            status["phase"] = "Running"
            failed_so_far = status["failedAttempts"]
            detail = f"retrying after {failed_so_far} failed attempt(s)" if failed_so_far else "finishing"
            cond(T.RUNNING, True, R.TRAINING_RUNNING, f"training pods {detail}")
        elif obs.pod_problem:
            status["phase"] = "Pending"
            reason, message = obs.pod_problem
            cond(T.RUNNING, False, reason, f"training pods cannot start: {message}"[:4000])
        else:
            status["phase"] = "Pending"
            cond(
                T.RUNNING,
                False,
                R.WAITING_FOR_PODS,
                "waiting for the training pods to be scheduled and started",
            )
        if old_status.get("phase") == "Suspended" or any(
            c.get("type") == T.SUSPENDED for c in old_status.get("conditions") or []
        ):
            cond(T.SUSPENDED, False, R.NOT_SUSPENDED, "resumed")
    return _finish(old_status, status, conds)


_WARNING_WHEN_TRUE = {T.FAILED}
_WARNING_WHEN_FALSE = {T.ACCEPTED, T.EVALUATED}
# Running=False for these reasons needs a person (a missing image, no GPU that fits).
_WARNING_REASONS = vocabulary.POD_PROBLEM_REASONS


def _finish(
    old_status: dict[str, Any], status: dict[str, Any], conds: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[Transition]]:
    old_conds = old_status.get("conditions") or []
    status["conditions"] = merge_conditions(old_conds, conds)
    before = {c.get("type"): c.get("status") for c in old_conds}
    reason_before = {c.get("type"): canonical_reason(c.get("reason") or "") for c in old_conds}
    transitions = []
    for c in conds:
        stuck = c["reason"] in _WARNING_REASONS
        # News: a new status, or a new reason why pods are stuck.
        new_stuck_reason = stuck and reason_before.get(c["type"]) != c["reason"]
        if (before.get(c["type"]) == c["status"] and not new_stuck_reason) or c["status"] == "Unknown":
            continue
        if (
            c["status"] == "False"
            and c["type"] not in _WARNING_WHEN_FALSE
            and c["type"] not in before
            and not stuck
        ):
            continue  # a condition that starts out False is not news
        warning = (
            stuck
            or (c["type"] in _WARNING_WHEN_TRUE and c["status"] == "True")
            or (c["type"] in _WARNING_WHEN_FALSE and c["status"] == "False")
        )
        transitions.append(
            Transition(
                EventType.WARNING if warning else EventType.NORMAL,
                c["reason"],
                c["message"] or f"{c['type']}={c['status']}",
            )
        )
    return status, transitions
