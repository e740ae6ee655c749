"""The rollout state machine of one ModelDeployment. Pure: from the spec, the
resolved revisions, the last status and what is observed (Deployment and
pods), it decides which revisions the Deployment's template carries and
computes the new status and the events to post.

A rollout starts when the revisions to serve differ from the template's; it
completes when every replica runs the new template and is Ready (Ready needs
the smoke-test readiness gate); it is rolled back (template restored to the
revisions every replica served before, the new ones marked rejected) when a
new pod fails its smoke test, keeps crashing, or the deadline passes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from ..conditions import EventType, merge_conditions
from . import builders, runtime, vocabulary
from .model import ModelDeploymentSpec, ServedAdapter, ServingRevision
from .resolve import Problem, Resolution

T, R, E = vocabulary.Type, vocabulary.Reason, vocabulary.EventReason
CRASH_RESTARTS = 3  # restarts of a new pod's container that count as a failed rollout
FAILING_WAIT_REASONS = {"CrashLoopBackOff", "ErrImagePull", "ImagePullBackOff", "CreateContainerConfigError"}


@dataclass
class Observed:
    generation: int
    deployment: dict[str, Any] | None
    pods: list[dict[str, Any]]
    now: dt.datetime
    # Adapter -> why its smoke test cannot run (an invalid smokeTest.suite): a spec problem. While there is
    # one, no pod is verified, so no rollout starts and a running one does not count its deadline.
    smoke_problems: dict[str, Problem] = field(default_factory=dict)
    # The deadline of a running rollout counts from here where later than its start: when smoke tests were
    # last held by a smoke problem (the time they could not run is not the rollout's).
    deadline_from: dt.datetime | None = None


@dataclass
class Event:
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class Failure:
    """Why a rollout fails: the reason (vocabulary.Reason) with the message for people."""

    reason: str
    message: str


@dataclass
class Plan:
    template: dict[str, ServingRevision] | None  # revisions for the Deployment; None: create nothing
    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)


def _parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def _fmt(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _describe(revisions: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(revisions.items())) or "nothing"


def pod_template_key(pod: dict[str, Any]) -> dict[str, str] | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    return builders.decode_revisions(annotations.get(builders.REVISIONS_ANNOTATION))


def pod_condition(pod: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    return next(
        (c for c in (pod.get("status") or {}).get("conditions") or [] if c.get("type") == ctype), None
    )


def _failing(pod: dict[str, Any]) -> Failure | None:
    """Why a new pod counts as failed, if it does: its smoke test failed, or it crashes or cannot start."""
    gate = pod_condition(pod, builders.VERIFIED_CONDITION)
    if gate and gate.get("status") == "False":
        return Failure(
            R.SMOKE_TEST_FAILED,
            f"pod {pod['metadata']['name']}: {gate.get('message') or 'smoke test failed'}",
        )
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if cs.get("restartCount", 0) >= CRASH_RESTARTS or waiting.get("reason") in FAILING_WAIT_REASONS:
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message", "")
            detail = waiting.get("message") or last or waiting.get("reason") or "restarting"
            return Failure(
                R.PODS_FAILING, f"pod {pod['metadata']['name']} container {cs.get('name')}: {detail}"[:1000]
            )
    return None


def _complete(deployment: dict[str, Any] | None, key: dict[str, str]) -> bool:
    if deployment is None:
        return False
    tmpl = (((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}).get(
        "annotations"
    ) or {}
    if builders.decode_revisions(tmpl.get(builders.REVISIONS_ANNOTATION)) != key:
        return False
    st = deployment.get("status") or {}
    want = (deployment.get("spec") or {}).get("replicas", 1)
    return (
        st.get("observedGeneration", 0) >= (deployment.get("metadata") or {}).get("generation", 0)
        and st.get("updatedReplicas", 0) == want
        and st.get("readyReplicas", 0) == want
        and st.get("availableReplicas", 0) == want
        and st.get("replicas", 0) == want
    )


def serving_of(status: dict[str, Any]) -> dict[str, ServingRevision]:
    return {s["name"]: ServingRevision.model_validate(s) for s in status.get("serving") or []}


def rejected_of(status: dict[str, Any]) -> dict[str, set[str]]:
    return {a["name"]: set(a.get("rejected") or []) for a in status.get("adapters") or []}


def approvals_of(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {a["name"]: a["approval"] for a in status.get("adapters") or [] if a.get("approval")}


def approval(
    spec: ModelDeploymentSpec, adapter: ServedAdapter, old: dict[str, Any] | None, now: str
) -> tuple[dict[str, Any] | None, Event | None]:
    """The approval record of one adapter: under Manual promotion, the pin of a followed adapter and who
    approved it, with the time it was first seen (kept from ``old`` while the pin and the approver stay the
    same); and the event to post when it is new."""
    src = adapter.from_
    if spec.promotion.policy != "Manual" or src.adapter is None or src.revision is None:
        return None, None
    by = src.approved_by or ""
    seen = (old or {}).get("approvedAt")
    if seen and (old or {}).get("revision") == src.revision and (old or {}).get("approvedBy", "") == by:
        return {"revision": src.revision, "approvedBy": by, "approvedAt": seen}, None
    who = f"approved by {by}" if by else "pinned (from.approvedBy names no one)"
    return (
        {"revision": src.revision, "approvedBy": by, "approvedAt": now},
        Event(
            EventType.NORMAL, E.REVISION_APPROVED, f"adapter {adapter.name}: revision {src.revision} {who}"
        ),
    )


def compute(
    spec: ModelDeploymentSpec,
    old: dict[str, Any],
    resolution: Resolution,
    obs: Observed,
    endpoint: str,
    deployment_name: str,
) -> Plan:
    events: list[Event] = []
    now = _fmt(obs.now)
    serving = serving_of(old)
    rejected = rejected_of(old)
    rollout: dict[str, Any] | None = dict(old["rollout"]) if old.get("rollout") else None
    history: list[dict[str, Any]] = list(old.get("history") or [])

    # What to serve: the resolved revision, or (if it cannot be resolved) what is served now.
    target: dict[str, ServingRevision] = {}
    missing: list[str] = []
    for a in spec.adapters:
        rev = resolution.revisions.get(a.name) or serving.get(a.name)
        if rev is None:
            missing.append(a.name)
        else:
            target[a.name] = rev
    target_key = builders.revisions_key(target)

    def finish(phase: str, reason: str, message: str) -> None:
        nonlocal rollout
        assert rollout is not None
        rollout = {**rollout, "phase": phase, "reason": reason, "message": message, "completionTime": now}
        history.insert(0, rollout)

    template: dict[str, ServingRevision] | None = None
    if rollout is not None and rollout.get("phase") == "Progressing":
        key = rollout.get("revisions") or {}
        full = {r["name"]: ServingRevision.model_validate(r) for r in rollout.get("adapters") or []}
        if builders.revisions_key(full) != key:
            full = target  # a record without its revisions (written by an older operator)
        new_pods = [
            p for p in obs.pods if pod_template_key(p) == key and not p["metadata"].get("deletionTimestamp")
        ]
        failure = next((why for p in new_pods if (why := _failing(p))), None)
        started = _parse_time(rollout["startTime"])
        if obs.deadline_from is not None:
            started = max(started, obs.deadline_from)
        overdue = (
            not obs.smoke_problems
            and (obs.now - started).total_seconds() > spec.rollout.progress_deadline_seconds
        )
        if failure is None and overdue:
            failure = Failure(
                R.PROGRESS_DEADLINE_EXCEEDED,
                f"not every replica ran {_describe(key)} and passed its smoke tests within "
                f"{spec.rollout.progress_deadline_seconds}s",
            )
        if failure is not None:
            changed = {n: v for n, v in key.items() if builders.revisions_key(serving).get(n) != v}
            for name, value in changed.items():
                rejected.setdefault(name, set()).add(value)
            if serving:
                template = serving
                finish(
                    "RolledBack",
                    failure.reason,
                    f"{failure.message}; rolled back to {_describe(builders.revisions_key(serving))}",
                )
                events.append(Event(EventType.WARNING, E.ROLLED_BACK, rollout["message"]))
            else:
                template = full
                finish("Failed", failure.reason, f"{failure.message}; no earlier revisions to roll back to")
                events.append(Event(EventType.WARNING, E.ROLLOUT_FAILED, rollout["message"]))
        elif _complete(obs.deployment, key):
            template = full
            serving = full
            finish("Complete", R.ROLLOUT_COMPLETE, f"every replica serves {_describe(key)}")
            events.append(Event(EventType.NORMAL, E.ROLLOUT_COMPLETE, rollout["message"]))
        else:
            template = full
    if template is None:
        last = history[0] if history else None
        tried_and_failed = (
            last is not None
            and last.get("phase") in ("RolledBack", "Failed")
            and last.get("revisions") == target_key
            and last.get("generation") == obs.generation
        )
        serving_key = builders.revisions_key(serving)
        if not missing and target_key != serving_key and not tried_and_failed and not obs.smoke_problems:
            template = target
            rollout = {
                "revisions": target_key,
                "previous": serving_key,
                "adapters": [r.model_dump(by_alias=True) for _, r in sorted(target.items())],
                "phase": "Progressing",
                "reason": R.ROLLOUT_STARTED,
                "message": f"rolling to {_describe(target_key)} from {_describe(serving_key)}",
                "startTime": now,
                "generation": obs.generation,
            }
            events.append(Event(EventType.NORMAL, E.ROLLOUT_STARTED, rollout["message"]))
        elif serving:
            template = serving
        elif not missing and obs.deployment is not None:
            template = target  # a first rollout that failed: left as it is, for inspection
        # else: nothing can be served yet; no Deployment rather than a broken one

    # --- status ------------------------------------------------------------------
    dep_status = (obs.deployment or {}).get("status") or {}
    want = ((obs.deployment or {}).get("spec") or {}).get("replicas", 0) if obs.deployment else 0
    ready_replicas = dep_status.get("readyReplicas", 0)
    progressing = rollout is not None and rollout.get("phase") == "Progressing"
    # Waiting for approval is the PromotionPending condition's news, not a degradation.
    problems = {
        n: p
        for n, p in resolution.problems.items()
        if not (n in resolution.pending and p.reason == R.PROMOTION_PENDING)
    }
    problems.update({n: p for n, p in obs.smoke_problems.items() if n not in problems})
    first_problem = next(iter(problems.values()), None)
    # The last finished rollout, if it failed (rolled back, or a first rollout with nothing to go back to).
    failed = history[0] if history and history[0].get("phase") in ("RolledBack", "Failed") else None
    # While a new rollout runs, an earlier failure no longer degrades the deployment.
    failure_now = failed if not progressing else None

    ready = bool(serving) and want > 0 and ready_replicas >= want
    conds = [
        {
            "type": T.READY,
            "status": "True" if ready else "False",
            "reason": R.ALL_REPLICAS_READY
            if ready
            else (R.NO_SERVING_REVISION if not serving else R.REPLICAS_NOT_READY),
            "message": f"{ready_replicas}/{want} replicas ready, serving "
            f"{_describe(builders.revisions_key(serving))}",
        },
        {
            "type": T.PROGRESSING,
            "status": "True" if progressing else "False",
            "reason": (rollout or {}).get("reason") or R.NO_ROLLOUT,
            "message": (rollout or {}).get("message", ""),
        },
        {
            "type": T.DEGRADED,
            "status": "True" if first_problem or failure_now else "False",
            "reason": first_problem.reason
            if first_problem
            else (failure_now or {}).get("reason", R.AS_EXPECTED),
            "message": "; ".join(f"{n}: {p.message}" for n, p in problems.items())
            or (failure_now or {}).get("message", ""),
        },
        {
            "type": T.ROLLED_BACK,
            "status": "True" if failed and failed.get("phase") == "RolledBack" else "False",
            "reason": (failed or {}).get("reason") or R.NOT_ROLLED_BACK,
            "message": (failed or {}).get("message", ""),
        },
        {
            "type": T.PROMOTION_PENDING,
            "status": "True" if resolution.pending else "False",
            "reason": R.APPROVAL_REQUIRED if resolution.pending else R.NOTHING_PENDING,
            "message": "; ".join(
                f"{n}: {r} passed its gate; pin it in from.revision (loraforge approve) to serve it"
                for n, r in sorted(resolution.pending.items())
            ),
        },
    ]
    for c in conds:
        c["observedGeneration"] = obs.generation
    old_approvals = approvals_of(old)
    approvals: dict[str, dict[str, Any]] = {}
    for a in spec.adapters:
        record, event = approval(spec, a, old_approvals.get(a.name), now)
        if record is not None:
            approvals[a.name] = record
        if event is not None:
            events.append(event)
    phase = (
        "Progressing"
        if progressing
        else ("Degraded" if conds[2]["status"] == "True" else ("Ready" if ready else "Pending"))
    )
    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "phase": phase,
        "conditions": merge_conditions(old.get("conditions") or [], conds, now),
        "replicas": want,
        "readyReplicas": ready_replicas,
        "serving": [r.model_dump(by_alias=True) for _, r in sorted(serving.items())],
        "adapters": [
            {
                "name": a.name,
                "serving": (serving.get(a.name).revision or serving[a.name].path)
                if a.name in serving
                else "",
                "available": resolution.available.get(a.name, ""),
                "rejected": sorted(rejected.get(a.name, set()), key=lambda r: (len(r), r)),
                **({"approval": approvals[a.name]} if a.name in approvals else {}),
            }
            for a in spec.adapters
        ],
        "rollout": rollout,
        "history": history[: spec.rollout.history_limit],
        "endpoint": endpoint,
        "deploymentName": deployment_name if template is not None or obs.deployment is not None else "",
        "runtime": runtime.of(spec).name,
        "baseModelName": runtime.of(spec).base_model_name(spec),
    }
    return Plan(template=template, status=status, events=events)
