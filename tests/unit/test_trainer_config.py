"""The trainer's configuration is the FineTuneJob API's: the trainer reads it
with a generated copy of the API models (fresh, importing only what the trainer
image installs), defaults are resolved once (``model.resolve``, for the
operator and the command line alike), the operator's resolved config loads as
is and an unresolved one is refused, and bad configurations fail naming the
field. (No torch: config.py imports only pydantic and PyYAML.)"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from loraforge_operator import crds
from loraforge_operator.finetunejob import builders, contract, model
from loraforge_trainer import config, errors
from loraforge_trainer.api.finetunejob import model as trainer_api

REPO = Path(__file__).resolve().parents[2]
TRAINER = REPO / "jobs" / "src" / "loraforge_trainer"
MINIMAL = {"baseModel": {"path": "base/m"}, "dataset": {"path": "d/train.jsonl"}}
OWNER = builders.Owner(name="tune", namespace="team-a", uid="0123456789abcdef")


def aliases(cls) -> set[str]:
    return {f.alias or name for name, f in cls.model_fields.items()}


def dump(spec) -> dict:
    return spec.model_dump(by_alias=True, exclude_none=True, mode="json")


def test_the_trainers_api_models_are_the_generated_copy() -> None:
    """One definition: loraforge_trainer/api/ is written from the operator's API modules by `make crds`."""
    generated = crds.trainer_api()
    assert {"finetunejob/model.py", "schema.py", "scoring.py"} <= {str(p) for p in generated}
    for rel, text in generated.items():
        assert (TRAINER / "api" / rel).read_text() == text, f"stale: {rel} (run `make crds`)"
    files = {p: "" for p in (TRAINER / "api" / rel for rel in generated)}
    assert crds.leftovers(TRAINER, files) == [], "modules no longer generated (run `make crds`)"


def test_the_api_copy_imports_only_what_the_trainer_image_installs() -> None:
    """The copy runs in the trainer image: the standard library and jobs/requirements.txt, nothing else."""
    pinned = {
        re.match(r"[A-Za-z0-9._-]+", line).group().lower().replace("_", "-")
        for line in (REPO / "jobs" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    distributions = md.packages_distributions()
    for rel in crds.trainer_api():
        tree = ast.parse((TRAINER / "api" / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [(node.module or "").split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                dists = {d.lower().replace("_", "-") for d in distributions.get(top, [])}
                assert dists & pinned, f"api/{rel} imports {top}: not in jobs/requirements.txt"


def test_the_trainers_config_is_the_api_spec_and_its_run_section() -> None:
    assert issubclass(config.TrainConfig, trainer_api.FineTuneJobSpec)
    assert aliases(config.TrainConfig) == aliases(model.FineTuneJobSpec) | {config.RUN}
    assert config.RUN == contract.RUN_SECTION
    assert config.Suite is trainer_api.EvaluationSuite
    assert aliases(model.FineTuneJobSpec) > config.KUBERNETES_ONLY


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        {**MINIMAL, "method": "qlora"},
        {**MINIMAL, "method": "qlora", "quantization": {"type": "fp4"}, "training": {"maxSteps": 7}},
        {**MINIMAL, "adapter": {"name": "mine"}, "training": {"epochs": 3}},
    ],
    ids=["lora", "qlora", "qlora-set", "named"],
)
def test_defaults_are_resolved_once_for_the_operator_and_the_command_line(spec: dict) -> None:
    parsed = model.FineTuneJobSpec.model_validate(spec)
    resolved = model.resolve(parsed, OWNER.name)
    assert (model.unresolved(parsed) == []) == (resolved == parsed)
    assert model.unresolved(resolved) == [] and model.resolve(resolved, "other") == resolved
    t = resolved.training
    assert (t.epochs is None) != (t.max_steps is None)
    assert (resolved.quantization is not None) == (resolved.method == "qlora")
    assert resolved.adapter.name == (spec.get("adapter") or {}).get("name", OWNER.name)
    # The operator writes exactly the resolved spec; the command line resolves a spec the same way.
    body = builders.resolved_config(OWNER, parsed)
    assert {k: v for k, v in body.items() if k != contract.RUN_SECTION} == dump(resolved)
    standalone = config.from_document(spec)
    expected = dump(model.resolve(parsed, config.STANDALONE_NAME))
    assert standalone.for_manifest() == {k: v for k, v in expected.items() if k not in config.KUBERNETES_ONLY}


def test_the_operators_resolved_config_loads_as_is() -> None:
    spec = model.FineTuneJobSpec.model_validate(
        {**MINIMAL, "method": "qlora", "resources": {"gpusPerNode": 2}, "evaluation": {"minImprovement": 0.1}}
    )
    cm = builders.config_map(OWNER, spec)
    doc = json.loads(cm["data"][contract.CONFIG_KEY])
    cfg = config.from_document(doc)
    assert cfg.model_dump(by_alias=True, exclude_none=True, mode="json") == doc
    assert cfg.adapter_name == "tune"
    assert cfg.run.uid == "0123456789abcdef" and cfg.run.model_store == contract.MODEL_STORE_MOUNT
    assert cfg.dataset_file() == Path("/models/d/train.jsonl")
    assert str(cfg.adapter_dir()) == "/models/adapters/team-a/tune"
    assert str(cfg.checkpoint_dir()).startswith("/models/checkpoints/team-a/tune-")
    assert cfg.evaluation.min_improvement == 0.1 and cfg.quantization is not None
    assert cfg.resources.gpus_per_node == 2  # the whole spec, Kubernetes' part too
    assert "resources" not in cfg.for_manifest() and "run" not in cfg.for_manifest()


@pytest.mark.parametrize(
    ("drop", "field"),
    [
        (("training", "epochs"), "training.epochs"),
        (("quantization",), "quantization"),
        (("adapter", "name"), "adapter.name"),
    ],
)
def test_a_resolved_config_that_leaves_a_default_open_is_refused(drop: tuple[str, ...], field: str) -> None:
    """The trainer applies no default of its own: what the operator did not resolve is an error."""
    spec = model.FineTuneJobSpec.model_validate({**MINIMAL, "method": "qlora"})
    doc = builders.resolved_config(OWNER, spec)
    *parents, last = drop
    node = doc
    for key in parents:
        node = node[key]
    del node[last]
    with pytest.raises(errors.InvalidInput) as e:
        config.from_document(doc)
    assert e.value.reason == errors.CONFIG_INVALID
    assert f"the configuration is not resolved ({field} not set)" in e.value.message


def test_a_spec_on_the_command_line_is_resolved_with_the_run_section_from_the_flags() -> None:
    cfg = config.from_document(MINIMAL, [("run.modelStore", "/store"), ("training.maxSteps", 5)])
    assert cfg.run.model_store == "/store" and cfg.training.max_steps == 5 and cfg.training.epochs is None
    assert cfg.adapter_name == config.STANDALONE_NAME
    assert cfg.checkpoint_dir() == Path("/store/checkpoints/adapter")


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
            {**MINIMAL, "quantization": {"type": "nf4"}},
            "quantization applies only to method qlora",
        ),
        (
            {**MINIMAL, "resources": {"memory": "lots"}},
            "resources.memory: String should match pattern",
        ),
        ({**MINIMAL, "run": {"modelStore": "/m", "where": "x"}}, "run.where: unknown field"),
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


def test_suite_defaults_are_the_apis() -> None:
    doc = {
        **MINIMAL,
        "evaluation": {"suites": [{"name": "qa", "heldOut": True}, {"name": "s", "path": "s.jsonl"}]},
    }
    api = model.FineTuneJobSpec.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json")
    assert config.from_document(doc).for_manifest()["evaluation"] == api["evaluation"]


def test_a_loss_threshold_without_held_out_records_is_refused_by_the_api_not_the_trainer() -> None:
    """Once the trainer's own rule, unknown to the API: admitted, the job failed in its pod. The API's rule
    now refuses it at admission; the trainer's configuration refuses it by that same rule."""
    doc = {**MINIMAL, "dataset": {"path": "d", "validationSplit": 0}, "evaluation": {"maxEvalLoss": 1}}
    with pytest.raises(ValidationError, match="held-out records"):
        model.FineTuneJobSpec.model_validate(doc)
    with pytest.raises(errors.InvalidInput, match="held-out records"):
        config.from_document(doc)
