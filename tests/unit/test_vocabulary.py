"""The words of the operator's statuses: each kind's condition types and reasons are named constants
(finetunejob/vocabulary.py, modeldeployment/vocabulary.py), valid as the status model's Condition demands,
spelt once where both kinds share them, and read in their old spelling on objects written before. The code
that writes conditions and events names them through the constants, never as literals."""

from __future__ import annotations

import ast
import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

import loraforge_operator
from loraforge_operator import conditions
from loraforge_operator.conditions import Condition, canonical_reason
from loraforge_operator.finetunejob import builders, status
from loraforge_operator.finetunejob import vocabulary as ftj_words
from loraforge_operator.finetunejob.reconcile import Reconciler
from loraforge_operator.modeldeployment import vocabulary as md_words
from loraforge_operator.settings import Settings
from loraforge_trainer import errors
from tests.finetunejob_cases import INVALID
from tests.statuses import check_finetunejob, checked_statuses  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("checked_statuses")

PACKAGE = Path(loraforge_operator.__file__).parent
T = "2026-01-01T00:00:00Z"


# --- the words --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "types", "reasons"),
    [
        ("FineTuneJob", ftj_words.TYPES, ftj_words.REASONS | ftj_words.TRAINER_REASONS),
        (
            "ModelDeployment",
            md_words.TYPES,
            md_words.REASONS | md_words.EVENT_REASONS | md_words.GATE_REASONS,
        ),
    ],
)
def test_every_word_of_a_vocabulary_is_a_valid_condition_type_or_reason(
    kind: str, types: frozenset[str], reasons: frozenset[str]
) -> None:
    assert types and reasons
    for ctype in types:
        Condition(type=ctype, status="True", reason="AsExpected", last_transition_time=T)
    for reason in reasons:
        Condition(type="Ready", status="True", reason=reason, last_transition_time=T)
    # Kubernetes' reason pattern is looser; the operator's are CamelCase words.
    assert all(re.fullmatch(r"[A-Z][A-Za-z0-9]*", w) for w in types | reasons), kind


def test_the_condition_model_refuses_what_is_no_reason() -> None:
    for bad in ("", "two words", "Ends:", "1Digit"):
        with pytest.raises(ValidationError):
            Condition(type="Ready", status="True", reason=bad, last_transition_time=T)


def test_the_spec_invalid_reason_is_one_word_for_both_kinds() -> None:
    assert ftj_words.Reason.SPEC_INVALID == md_words.Reason.SPEC_INVALID == conditions.SPEC_INVALID
    assert conditions.SPEC_INVALID == "SpecInvalid"
    # A word both kinds use means the same and is spelt the same: one constant, not two that happen to agree.
    shared = ftj_words.REASONS & md_words.REASONS
    assert shared == {conditions.SPEC_INVALID}, shared


def test_old_spellings_are_read_as_the_reason_written_now() -> None:
    assert canonical_reason("InvalidSpec") == "SpecInvalid"
    assert canonical_reason("SpecInvalid") == "SpecInvalid"
    assert canonical_reason("DatasetInvalid") == "DatasetInvalid"
    every_word = ftj_words.REASONS | md_words.REASONS | md_words.EVENT_REASONS | ftj_words.TRAINER_REASONS
    for old, new in conditions.REASON_ALIASES.items():
        assert old not in every_word, f"{old} is an old spelling: nothing writes it"
        assert new in ftj_words.REASONS | md_words.REASONS


def test_the_trainers_reasons_are_the_ones_its_errors_name() -> None:
    named = {v for k, v in vars(errors).items() if k.isupper() and isinstance(v, str)}
    assert named == ftj_words.TRAINER_REASONS


# --- statuses that say the spec is invalid ------------------------------------------------------------------


def _spec_error(spec: dict[str, Any]) -> str:
    rec = Reconciler(kube=None, settings=Settings(), post_event=lambda *a: None)  # type: ignore[arg-type]
    owner = builders.Owner(name="demo", namespace="ns", uid="u-1")
    desired = rec._desired(owner, {"spec": spec}, 1)
    assert isinstance(desired, str), "the spec parsed"
    return desired


def _cond(st: dict[str, Any], ctype: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == ctype)


@pytest.mark.parametrize("case", INVALID, ids=[c.name for c in INVALID])
def test_an_invalid_finetunejob_spec_fails_it_with_spec_invalid_naming_the_field(case) -> None:
    error = _spec_error(case.spec())
    st, events = status.compute({}, status.Observed(generation=1, spec_error=error))
    assert st["phase"] == "Failed"
    for ctype in (ftj_words.Type.ACCEPTED, ftj_words.Type.FAILED):
        assert _cond(st, ctype)["reason"] == "SpecInvalid"
        assert "spec." in _cond(st, ctype)["message"]
    assert [(e.type, e.reason) for e in events] == [("Warning", "SpecInvalid")] * 2


def test_a_finetunejob_written_with_the_old_spelling_is_rewritten_without_news() -> None:
    """A FineTuneJob whose status says InvalidSpec (written before the reason had one spelling): the next
    status says SpecInvalid, keeps the transition times (nothing changed but the word) and posts no event."""
    error = "spec.epochs: Extra inputs are not permitted"
    old_conds = [
        {"type": t, "status": s, "reason": "InvalidSpec", "message": error, "observedGeneration": 1}
        for t, s in (("Accepted", "False"), ("Failed", "True"))
    ]
    old = {"observedGeneration": 1, "phase": "Failed", "failedAttempts": 0}
    old["conditions"] = [{**c, "lastTransitionTime": T} for c in old_conds]
    new, events = status.compute(old, status.Observed(generation=1, spec_error=error))
    assert [(c["type"], c["reason"], c["lastTransitionTime"]) for c in new["conditions"]] == [
        ("Accepted", "SpecInvalid", T),
        ("Failed", "SpecInvalid", T),
    ]
    assert events == []
    # A recorded failure is read in today's words.
    assert status.recorded_failure(old) == ("SpecInvalid", error)


def test_a_reconciled_finetunejob_with_the_old_spelling_posts_no_event() -> None:
    posted: list[tuple[str, str]] = []
    written: list[dict[str, Any]] = []

    class Kube:
        async def patch_status(self, api_version, kind, namespace, name, new) -> dict[str, Any]:
            written.append(new)
            return {"metadata": {"resourceVersion": "2"}, "status": new}

    rec = Reconciler(kube=Kube(), settings=Settings(), post_event=lambda b, t, r, m: posted.append((t, r)))  # type: ignore[arg-type]
    spec = INVALID[-1].spec()
    error = _spec_error(spec)
    conds = [
        {"type": t, "status": s, "reason": "InvalidSpec", "message": error}
        for t, s in (("Accepted", "False"), ("Failed", "True"))
    ]
    old = {"observedGeneration": 1, "phase": "Failed", "failedAttempts": 0}
    old["conditions"] = [{**c, "observedGeneration": 1, "lastTransitionTime": T} for c in conds]
    meta = {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": 1, "resourceVersion": "1"}
    new = asyncio.run(rec.reconcile({"metadata": meta, "spec": spec, "status": old}, {}))
    assert {c["reason"] for c in new["conditions"]} == {"SpecInvalid"}
    assert len(written) == 1 and posted == []


def test_the_checks_of_a_status_catch_a_word_outside_the_vocabulary() -> None:
    obs = status.Observed(generation=1, spec_error="spec.epochs: Extra inputs are not permitted")
    st, events = status.compute({}, obs)
    check_finetunejob(st, events, obs)
    for bad in ({"reason": "InvalidSpec"}, {"type": "Broken"}, {"reason": "Not A Reason"}):
        wrong = {**st, "conditions": [{**st["conditions"][0], **bad}, *st["conditions"][1:]]}
        with pytest.raises((AssertionError, ValidationError)):
            check_finetunejob(wrong, events, obs)


# --- no literal words where conditions and events are written -------------------------------------------

# Calls that write a condition's or an event's type and reason: the positions of those arguments.
WRITERS = {
    "cond": (0, 2),  # (type, status, reason, message)
    "Event": (0, 1),  # (type, reason, message)
    "Transition": (0, 1),
    "post_event": (1, 2),  # (body, type, reason, message)
    "Problem": (0,),  # (reason, message)
    "Incompatible": (0,),
    "Failure": (0,),
    "finish": (1,),  # (rollout phase, reason, message)
}
WORD = re.compile(r"[A-Z][A-Za-z0-9]+")


def _literal_word(node: ast.AST | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and WORD.fullmatch(node.value):
        return node.value
    return None


def _is_type_or_reason(node: ast.AST) -> bool:
    """`x.reason`, `x["type"]`, `x.get("reason")`: a condition's type or reason, read."""
    if isinstance(node, ast.Attribute):
        return node.attr == "reason"
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value in ("type", "reason")
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
        return (
            bool(node.args)
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value in ("type", "reason")
        )
    return False


def literal_words(source: str) -> list[tuple[int, str]]:
    """(line, word) of each condition type or reason written as a literal: in a condition-shaped dict (one
    with a "reason"), as an argument of a call that writes a condition or an event, or compared with one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict):
            keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
            if "reason" in keys:
                for k, v in zip(node.keys, node.values, strict=True):
                    if (
                        isinstance(k, ast.Constant)
                        and k.value in ("type", "reason")
                        and (w := _literal_word(v))
                    ):
                        found.append((v.lineno, w))
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in WRITERS:
                args = [a for i, a in enumerate(node.args) if i in WRITERS[name]]
                args += [k.value for k in node.keywords if k.arg in ("type", "type_", "ctype", "reason")]
                for arg in args:
                    for sub in ast.walk(arg):
                        if w := _literal_word(sub):
                            found.append((sub.lineno, w))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(_is_type_or_reason(s) for s in sides):
                found += [(s.lineno, w) for s in sides if (w := _literal_word(s))]
    return found


def test_conditions_and_events_are_written_with_named_words() -> None:
    modules = sorted({*PACKAGE.glob("finetunejob/*.py"), *PACKAGE.glob("modeldeployment/*.py")})
    modules = [m for m in modules if m.name != "vocabulary.py"]
    assert any(m.name == "plan.py" for m in modules) and any(m.name == "status.py" for m in modules)
    literals = [
        f"{m.relative_to(PACKAGE)}:{line}: {word!r}"
        for m in modules
        for line, word in literal_words(m.read_text())
    ]
    assert literals == [], "name these in the kind's vocabulary.py:\n" + "\n".join(literals)


def test_the_literal_finder_finds_literal_words() -> None:
    source = """
cond("Running", False, "Completed", "training finished")
x = {"type": T.READY, "status": "True", "reason": "AllReplicasReady", "message": ""}
if p.reason == "PromotionPending" or c.get("type") == "Degraded":
    post_event(body, "Warning", reason="SmokeTestFailed", message=f"pod {name}: failed")
ok = {"type": "RuntimeDefault"}, cond(T.RUNNING, False, R.WAITING_FOR_PODS, "creating the training Job")
"""
    assert sorted(w for _, w in literal_words(source)) == sorted(
        [
            "Running",
            "Completed",
            "AllReplicasReady",
            "PromotionPending",
            "Degraded",
            "Warning",
            "SmokeTestFailed",
        ]
    )
