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
    named = any(p == case.field or p.startswith(case.field + ".") for p in paths)
    named_by_rule = bool(case.message) and any(case.field.startswith(p) for p in paths)
    assert named or named_by_rule, (paths, case.field)
    if case.message:
        assert any(case.message in e["msg"] for e in errors), errors


def test_committed_crds_match_the_models() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "loraforge_operator.crds", "--check", "--out", "crds"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
