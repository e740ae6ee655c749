"""The FineTuneJob models accept what the CRD accepts and reject, naming the
field, what the CRD rejects (the same cases run against the API server in
tests/integration/test_finetunejob_admission.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from loraforge_operator.finetunejob.model import FineTuneJobSpec
from tests.finetunejob_cases import INVALID, VALID_SPEC, Invalid

REPO = Path(__file__).resolve().parents[2]


def _path(loc: tuple) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = FineTuneJobSpec.model_validate(VALID_SPEC)
    assert spec.method == "lora"
    assert spec.lora.r == 16 and spec.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert spec.resources.gpus_per_node == 1
    assert spec.resources.tolerations[0].key == "nvidia.com/gpu"
    assert spec.model_store.claim_name == "loraforge-model-store"
    assert spec.training.epochs is None and spec.training.max_steps is None


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_spec_is_rejected_naming_the_field(case: Invalid) -> None:
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate(case.spec())
    errors = err.value.errors()
    paths = [_path(e["loc"]) for e in errors]
    # A cross-field rule is reported on the object holding the fields, its
    # message naming the field; anything else on the field itself.
    assert any(p == case.field or p.startswith(case.field + ".") for p in paths), (paths, case.field)
    if case.message:
        # A rule's error names the field and carries the message the API server gives for it, so the
        # operator's SpecInvalid message reads like the refusal at admission.
        assert any(_path(e["loc"]) == case.field and case.message in e["msg"] for e in errors), errors


KEYS = [
    # key, a label key?, an annotation key? (apimachinery's IsQualifiedName; annotation keys lower-cased)
    ("app", True, True),
    ("example.com/app", True, True),
    ("app.kubernetes.io/part-of", True, True),
    ("Example.com/app", False, True),
    ("example.com/App_1.x", True, True),
    ("a..b", True, True),  # dots are fine in the name part
    ("a..b/c", False, False),  # not in a DNS-subdomain prefix
    ("x" * 63, True, True),
    ("x" * 64, False, False),
    ("p/" + "x" * 63, True, True),
    ("p/" + "x" * 64, False, False),
    ("p" * 253 + "/x", True, True),
    ("p" * 254 + "/x", False, False),
    ("", False, False),
    ("/x", False, False),
    ("x/", False, False),
    ("a/b/c", False, False),
    ("-x", False, False),
    ("x_", False, False),
    ("a b", False, False),
    ("x\n", False, False),
]


def _parses(patch: dict) -> bool:
    try:
        FineTuneJobSpec.model_validate({**VALID_SPEC, **patch})
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("key", "label", "annotation"), KEYS, ids=lambda v: repr(v)[:24])
def test_label_and_annotation_keys_are_checked_as_kubernetes_checks_them(
    key: str, label: bool, annotation: bool
) -> None:
    assert _parses({"podMetadata": {"labels": {key: "v"}}}) is label
    assert _parses({"resources": {"nodeSelector": {key: "v"}}}) is label
    assert _parses({"podMetadata": {"annotations": {key: "v"}}}) is annotation
    assert _parses({"resources": {"tolerations": [{"key": key, "operator": "Exists"}]}}) is label


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("h100", True),
        ("a.b_c-D9", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("-a", False),
        ("a_", False),
        ("a b", False),
        ("a/b", False),
        ("é", False),
    ],
)
def test_label_values_are_checked_as_kubernetes_checks_them(value: str, ok: bool) -> None:
    assert _parses({"podMetadata": {"labels": {"k": value}}}) is ok
    assert _parses({"resources": {"nodeSelector": {"k": value}}}) is ok
    assert _parses({"resources": {"tolerations": [{"key": "k", "value": value}]}}) is ok
    assert _parses({"podMetadata": {"annotations": {"k": value}}}), "annotation values are free text"


def test_a_bad_key_is_reported_on_its_map_with_the_rule_and_the_key() -> None:
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate({**VALID_SPEC, "podMetadata": {"labels": {"team": "a", "a b": "x"}}})
    (error,) = err.value.errors()
    assert error["loc"] == ("podMetadata", "labels")
    assert "podMetadata.labels keys must be label keys: an optional prefix" in error["msg"]
    assert "(got 'a b')" in error["msg"]


def test_committed_crds_match_the_models() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loraforge_operator.crds", "--check", "--out", "crds"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


def test_a_scorer_pattern_that_does_not_compile_is_refused_naming_the_field() -> None:
    # CEL speaks RE2, the scorer Python: the pattern is checked where it will run, before any Job exists.
    suite = {
        "name": "safety",
        "path": "datasets/s.jsonl",
        "scorer": {"type": "regex", "pattern": "(?i)call (911"},
    }
    with pytest.raises(ValidationError) as err:
        FineTuneJobSpec.model_validate({**VALID_SPEC, "evaluation": {"suites": [suite]}})
    (error,) = err.value.errors()
    assert _path(error["loc"]) == "spec.evaluation.suites[0].scorer.pattern"
    assert "scorer.pattern is not a valid regular expression" in error["msg"]
    # Python syntax that RE2 lacks (a lookbehind) is fine: the trainer and the smoke test run Python's re.
    suite["scorer"]["pattern"] = r"(?<=call )911"
    spec = FineTuneJobSpec.model_validate({**VALID_SPEC, "evaluation": {"suites": [suite]}})
    assert spec.evaluation.suites[0].scorer.pattern == r"(?<=call )911"
