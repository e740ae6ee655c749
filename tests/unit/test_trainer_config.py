"""The trainer's configuration against the FineTuneJob API it mirrors: the
operator's resolved config loads, shared fields agree on names and defaults,
and bad configurations fail naming the field. (No torch: config.py imports
only pydantic and PyYAML.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from loraforge_operator.finetunejob import builders, contract, model
from loraforge_trainer import config, errors

REPO = Path(__file__).resolve().parents[2]
MINIMAL = {"baseModel": {"path": "base/m"}, "dataset": {"path": "d/train.jsonl"}}

# (trainer section model, operator section model)
SECTIONS = [
    (config.BaseModelSource, model.BaseModelSource),
    (config.Dataset, model.Dataset),
    (config.LoraSettings, model.LoraSettings),
    (config.Quantization, model.Quantization),
    (config.TrainingSettings, model.TrainingSettings),
    (config.Checkpoints, model.Checkpoints),
    (config.EvaluationGate, model.EvaluationGate),
    (config.Adapter, model.Adapter),
    (config.Suite, model.EvaluationSuite),
    (config.Scorer, model.Scorer),
    (config.ModelCard, model.ModelCard),
]


def aliases(cls) -> set[str]:
    return {f.alias or name for name, f in cls.model_fields.items()}


@pytest.mark.parametrize(("trainer", "operator"), SECTIONS, ids=lambda c: c.__name__)
def test_each_section_has_the_same_fields_as_the_api(trainer, operator) -> None:
    assert aliases(trainer) == aliases(operator)


def test_top_level_fields_are_the_api_fields_the_trainer_uses() -> None:
    api = aliases(model.FineTuneJobSpec)
    used = aliases(config.TrainConfig) - {"run"}
    assert used | config.KUBERNETES_ONLY == api
    assert not used & config.KUBERNETES_ONLY


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_defaults_agree_with_the_api(method: str) -> None:
    spec = model.FineTuneJobSpec.model_validate({**MINIMAL, "method": method})
    api = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    mine = config.from_document({**MINIMAL, "method": method}).for_manifest()
    for section in ("dataset", "lora", "checkpoints", "evaluation", "adapter"):
        assert mine.get(section, {}) == api.get(section, {}), section
    # the trainer fills in what the operator resolves: 1 epoch, QLoRA's quantization defaults
    assert mine["training"] == {**api["training"], "epochs": 1}
    if method == "qlora":
        assert mine["quantization"] == model.Quantization().model_dump(by_alias=True, mode="json")


def test_the_operators_resolved_config_loads() -> None:
    spec = model.FineTuneJobSpec.model_validate(
        {**MINIMAL, "method": "qlora", "resources": {"gpusPerNode": 2}, "evaluation": {"minImprovement": 0.1}}
    )
    owner = builders.Owner(name="tune", namespace="team-a", uid="0123456789abcdef")
    cm = builders.config_map(owner, spec)
    cfg = config.from_document(json.loads(cm["data"][contract.CONFIG_KEY]))
    assert cfg.adapter_name == "tune"
    assert cfg.run.uid == "0123456789abcdef" and cfg.run.model_store == contract.MODEL_STORE_MOUNT
    assert cfg.dataset_file() == Path("/models/d/train.jsonl")
    assert str(cfg.adapter_dir()) == "/models/adapters/team-a/tune"
    assert str(cfg.checkpoint_dir()).startswith("/models/checkpoints/team-a/tune-")
    assert cfg.evaluation.min_improvement == 0.1 and cfg.quantization is not None


def test_exit_code_for_bad_input_is_the_one_the_job_fails_fast_on() -> None:
    assert errors.EXIT_INVALID_INPUT == contract.EXIT_INVALID_INPUT


def test_a_finetunejob_manifest_is_accepted_as_is() -> None:
    path = REPO / "examples" / "finetunejob-qlora.yaml"
    doc = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "FineTuneJob")
    cfg = config.load(path)
    assert cfg.method == "qlora"
    assert cfg.adapter_name == (doc["spec"].get("adapter") or {}).get("name", doc["metadata"]["name"])


def test_overrides_are_yaml_values_at_dotted_keys() -> None:
    cfg = config.from_document(
        MINIMAL,
        [config.parse_override("training.maxSteps=20"), config.parse_override("lora.targetModules=[q_proj]")],
    )
    assert cfg.training.max_steps == 20 and cfg.lora.target_modules == ["q_proj"]
    with pytest.raises(errors.InvalidInput, match="expected key=value"):
        config.parse_override("training.maxSteps")


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        (
            {**MINIMAL, "training": {"epochs": 1, "maxSteps": 5}},
            "set either training.epochs or training.maxSteps",
        ),
        (
            {**MINIMAL, "training": {"learningRate": 0}},
            "training.learningRate: Input should be greater than 0",
        ),
        ({**MINIMAL, "lora": {"rank": 8}}, "lora.rank: unknown field"),
        ({"dataset": MINIMAL["dataset"]}, "baseModel: Field required"),
        (
            {**MINIMAL, "method": "qlora", "quantization": {"type": "int8"}},
            "quantization.type: Input should be",
        ),
        (
            {**MINIMAL, "dataset": {"path": "d", "validationSplit": 0}, "evaluation": {"maxEvalLoss": 1}},
            "the evaluation gate needs held-out records",
        ),
    ],
)
def test_bad_configurations_name_the_field(doc: dict, says: str) -> None:
    with pytest.raises(errors.InvalidInput) as e:
        config.from_document(doc)
    assert e.value.reason == errors.CONFIG_INVALID
    assert says in e.value.message


def test_an_unreadable_or_malformed_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(errors.InvalidInput, match="cannot read the configuration"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(errors.InvalidInput, match="not valid JSON"):
        config.load(bad)


def test_suite_defaults_agree_with_the_api() -> None:
    doc = {
        **MINIMAL,
        "evaluation": {"suites": [{"name": "qa", "heldOut": True}, {"name": "s", "path": "s.jsonl"}]},
    }
    api = model.FineTuneJobSpec.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert config.from_document(doc).for_manifest()["evaluation"] == api["evaluation"]
