"""The statuses the operator computes, checked as the API server and users read them: each one parses in its
kind's status model (what the CRD's status schema is generated from), and every condition type and reason in
it is a word of the kind's vocabulary, or a reason passed on from what was observed (the trainer's own, or
Kubernetes' for pods that do not start).

Test modules use the ``checked_statuses`` fixture (autouse there): every ``status.compute`` and
``plan.compute`` a test calls, directly or through a reconciler, is checked this way.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from loraforge_operator.conditions import EventType
from loraforge_operator.finetunejob import contract, status
from loraforge_operator.finetunejob import vocabulary as ftj_words
from loraforge_operator.finetunejob.model import FineTuneJobStatus
from loraforge_operator.modeldeployment import plan
from loraforge_operator.modeldeployment import vocabulary as md_words
from loraforge_operator.modeldeployment.model import ModelDeploymentStatus

EVENT_TYPES = {EventType.NORMAL, EventType.WARNING}


def passed_on(obs: status.Observed) -> set[str]:
    """The reasons a FineTuneJob's status may carry that are not the operator's: the trainer's (its failure
    report, its termination message) and Kubernetes' (why pods do not start), as observed."""
    out = set(ftj_words.TRAINER_REASONS | ftj_words.POD_PROBLEM_REASONS)
    for pair in (obs.pod_problem, obs.recorded_failure):
        if pair:
            out.add(pair[0])
    try:
        failure = json.loads(obs.progress_data.get(contract.FAILURE_KEY) or "null")
    except ValueError:
        failure = None
    if isinstance(failure, dict) and isinstance(failure.get("reason"), str):
        out.add(failure["reason"])
    termination = str((obs.last_failed_pod or {}).get("message") or "")
    if ":" in termination:
        out.add(termination.split(":", 1)[0].strip())
    return out


def check_finetunejob(
    new: dict[str, Any], transitions: list[status.Transition], obs: status.Observed
) -> None:
    FineTuneJobStatus.model_validate(new)
    conds = new.get("conditions") or []
    types = [c["type"] for c in conds]
    assert len(types) == len(set(types)), f"a condition type twice: {types}"
    assert set(types) <= ftj_words.TYPES, (
        f"condition types outside the vocabulary: {set(types) - ftj_words.TYPES}"
    )
    allowed = ftj_words.REASONS | passed_on(obs)
    for c in conds:
        assert c["reason"] in allowed, f"{c['type']}: reason {c['reason']!r} is in no vocabulary"
        assert c["observedGeneration"] == obs.generation
    for t in transitions:
        assert t.type in EVENT_TYPES, t
        assert t.reason in {c["reason"] for c in conds}, f"event {t.reason!r} is no condition's reason"


def check_modeldeployment_status(new: dict[str, Any]) -> None:
    ModelDeploymentStatus.model_validate(new)
    conds = new.get("conditions") or []
    types = [c["type"] for c in conds]
    assert len(types) == len(set(types)), f"a condition type twice: {types}"
    assert set(types) <= md_words.TYPES, (
        f"condition types outside the vocabulary: {set(types) - md_words.TYPES}"
    )
    for c in conds:
        assert c["reason"] in md_words.REASONS, (
            f"{c['type']}: reason {c['reason']!r} is not in the vocabulary"
        )
    for record in [new.get("rollout"), *(new.get("history") or [])]:
        if record:
            assert record["reason"] in md_words.REASONS, f"rollout reason {record['reason']!r}"


def check_plan(p: plan.Plan) -> None:
    check_modeldeployment_status(p.status)
    assert {c["type"] for c in p.status["conditions"]} == md_words.TYPES  # every condition, every time
    for e in p.events:
        assert e.type in EVENT_TYPES, e
        assert e.reason in md_words.EVENT_REASONS, f"event reason {e.reason!r} is not in the vocabulary"


@pytest.fixture
def checked_statuses(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Check every status computed while the test runs; yields the kinds checked, in order."""
    computed: list[str] = []
    ftj_compute, md_compute = status.compute, plan.compute

    def ftj(old: dict[str, Any], obs: status.Observed) -> tuple[dict[str, Any], list[status.Transition]]:
        new, transitions = ftj_compute(old, obs)
        check_finetunejob(new, transitions, obs)
        computed.append("FineTuneJob")
        return new, transitions

    def md(*args: Any, **kwargs: Any) -> plan.Plan:
        p = md_compute(*args, **kwargs)
        check_plan(p)
        computed.append("ModelDeployment")
        return p

    monkeypatch.setattr(status, "compute", ftj)
    monkeypatch.setattr(plan, "compute", md)
    yield computed
