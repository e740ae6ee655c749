"""The training configuration: loaded, overridden and validated before any
model loads.

Inside Kubernetes the operator writes it (the FineTuneJob's spec with every
default explicit, plus a ``run`` section saying where things are in the pod).
Outside, the same file format works from the command line; a FineTuneJob
manifest is accepted as is (its ``spec`` is used), so a job can be tried on a
workstation before it is submitted.

The field names, meanings and defaults are those of the FineTuneJob API
(``loraforge_operator.finetunejob.model``, documented in
docs/reference/finetunejob.md). This package does not import the operator (the
trainer image carries only the trainer), so the subset the trainer reads is
declared here and a unit test holds the two in step.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from . import scoring
from .errors import BASE_MODEL_INVALID, CONFIG_INVALID, DATASET_INVALID, SUITE_INVALID, InvalidInput

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class BaseModelSource(_Model):
    path: str | None = None
    hugging_face_id: str | None = None
    revision: str = "main"

    @model_validator(mode="after")
    def _one(self) -> BaseModelSource:
        if (self.path is None) == (self.hugging_face_id is None):
            raise ValueError("set exactly one of baseModel.path or baseModel.huggingFaceId")
        return self


class ConfigMapKey(_Model):
    name: str
    key: str


class Dataset(_Model):
    path: str | None = None
    config_map: ConfigMapKey | None = None
    format: Literal["chat", "instruction", "completion", "text"] = "chat"
    validation_path: str | None = None
    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    on_invalid_record: Literal["Fail", "Skip"] = "Fail"
    max_skipped_records: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _rules(self) -> Dataset:
        if (self.path is None) == (self.config_map is None):
            raise ValueError("set exactly one of dataset.path or dataset.configMap")
        if self.on_invalid_record == "Fail" and self.max_skipped_records:
            raise ValueError("dataset.maxSkippedRecords applies only with onInvalidRecord: Skip")
        return self


class LoraSettings(_Model):
    r: Annotated[int, Field(ge=1)] = 16
    alpha: Annotated[int, Field(ge=1)] = 32
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    target_modules: Annotated[list[str], Field(min_length=1)] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class Quantization(_Model):
    type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class TrainingSettings(_Model):
    epochs: Annotated[int, Field(ge=1)] | None = None
    max_steps: Annotated[int, Field(ge=1)] | None = None
    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-4
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    batch_size: Annotated[int, Field(ge=1)] = 4
    gradient_accumulation_steps: Annotated[int, Field(ge=1)] = 4
    max_seq_length: Annotated[int, Field(ge=16)] = 1024
    packing: bool = False
    gradient_checkpointing: bool = True
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    logging_steps: Annotated[int, Field(ge=1)] = 10

    @model_validator(mode="after")
    def _steps_or_epochs(self) -> TrainingSettings:
        if self.epochs is not None and self.max_steps is not None:
            raise ValueError("set either training.epochs or training.maxSteps, not both")
        return self


class Checkpoints(_Model):
    every_steps: Annotated[int, Field(ge=1)] = 100
    keep: Annotated[int, Field(ge=1)] = 2


class Scorer(_Model):
    type: Literal["contains", "exact", "regex", "tokenF1"] = "contains"
    pattern: str | None = None
    min_f1: Annotated[float, Field(gt=0.0, le=1.0)] = scoring.DEFAULT_MIN_F1

    @model_validator(mode="after")
    def _pattern(self) -> Scorer:
        if self.pattern is not None:
            if self.type != "regex":
                raise ValueError("scorer.pattern applies only to scorer type regex")
            bad = scoring.pattern_problem(self.pattern)
            if bad:
                raise ValueError(f"scorer.pattern is {bad}")
        return self


class Suite(_Model):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    held_out: bool = False
    path: str | None = None
    config_map: ConfigMapKey | None = None
    scorer: Scorer = Field(default_factory=Scorer)
    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    min_gain: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64

    @model_validator(mode="after")
    def _one_source(self) -> Suite:
        if self.held_out + (self.path is not None) + (self.config_map is not None) != 1:
            raise ValueError("set exactly one of heldOut: true, path or configMap")
        return self


class EvaluationGate(_Model):
    max_eval_loss: Annotated[float, Field(gt=0.0)] | None = None
    min_improvement: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    suites: Annotated[list[Suite], Field(max_length=16)] = Field(default_factory=list)
    generation_batch_size: Annotated[int, Field(ge=1, le=1024)] = 32

    @model_validator(mode="after")
    def _unique(self) -> EvaluationGate:
        names = [s.name for s in self.suites]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"evaluation.suites: two suites are named {dup}")
        return self

    @property
    def is_set(self) -> bool:
        """A loss threshold is set (the held-out loss is then needed)."""
        return self.max_eval_loss is not None or self.min_improvement is not None


class ModelCard(_Model):
    intended_use: str | None = None
    out_of_scope: str | None = None
    limitations: str | None = None
    ethical_considerations: str | None = None
    training_data: str | None = None


class Adapter(_Model):
    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    model_card: ModelCard = Field(default_factory=ModelCard)


class Run(_Model):
    """Where things are. Written by the operator; on the command line it is
    derived from the flags (see cli.py)."""

    model_store: str = "."
    dataset_dir: str | None = None  # where a ConfigMap dataset is mounted
    suites_dir: str | None = None  # where ConfigMap suites are mounted, one folder per suite
    checkpoint_dir: str | None = None
    adapter_dir: str | None = None
    namespace: str | None = None
    fine_tune_job: str | None = None
    uid: str | None = None
    progress_config_map: str | None = None


# FineTuneJob fields that only concern Kubernetes; the trainer ignores them.
KUBERNETES_ONLY = frozenset(
    {
        "resources",
        "modelStore",
        "podMetadata",
        "image",
        "backoffLimit",
        "activeDeadlineSeconds",
        "suspend",
    }
)


class TrainConfig(_Model):
    base_model: BaseModelSource
    dataset: Dataset
    method: Literal["lora", "qlora"] = "lora"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    quantization: Quantization | None = None
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    adapter: Adapter = Field(default_factory=Adapter)
    run: Run = Field(default_factory=Run)

    @model_validator(mode="after")
    def _cross_field(self) -> TrainConfig:
        if self.method != "qlora" and self.quantization is not None:
            raise ValueError("quantization applies only to method qlora")
        if self.method == "qlora" and self.quantization is None:
            self.quantization = Quantization()
        if self.training.epochs is None and self.training.max_steps is None:
            self.training.epochs = 1
        if (
            self.evaluation.is_set
            and self.dataset.validation_path is None
            and self.dataset.validation_split == 0
        ):
            raise ValueError(
                "the evaluation gate needs held-out records: set dataset.validationSplit > 0 "
                "or dataset.validationPath"
            )
        if self.dataset.config_map is not None and self.dataset.validation_path is not None:
            raise ValueError("dataset.validationPath needs dataset.path (the model store)")
        held_out = [s.name for s in self.evaluation.suites if s.held_out]
        if held_out and self.dataset.format == "text":
            raise ValueError(
                f"evaluation suite {held_out[0]}: heldOut needs questions with answers; "
                "dataset.format text has none"
            )
        if held_out and self.dataset.validation_path is None and self.dataset.validation_split == 0:
            raise ValueError(
                f"evaluation suite {held_out[0]}: heldOut needs held-out records: "
                "set dataset.validationSplit > 0 "
                "or dataset.validationPath"
            )
        return self

    # --- where things are -------------------------------------------------------

    @property
    def adapter_name(self) -> str:
        return self.adapter.name or self.run.fine_tune_job or "adapter"

    def store_path(self, relative: str) -> Path:
        return Path(self.run.model_store) / relative

    def dataset_file(self) -> Path:
        if self.dataset.config_map is not None:
            return Path(self.run.dataset_dir or ".") / self.dataset.config_map.key
        assert self.dataset.path is not None
        return self.store_path(self.dataset.path)

    def dataset_display(self) -> str:
        """How errors name the dataset: as the user wrote it in the spec."""
        if self.dataset.config_map is not None:
            return f"configmap/{self.dataset.config_map.name}[{self.dataset.config_map.key}]"
        assert self.dataset.path is not None
        return self.dataset.path

    def validation_file(self) -> Path | None:
        return self.store_path(self.dataset.validation_path) if self.dataset.validation_path else None

    def suite_file(self, suite: Suite) -> Path:
        if suite.config_map is not None:
            return Path(self.run.suites_dir or ".") / suite.name / suite.config_map.key
        assert suite.path is not None
        return self.store_path(suite.path)

    def suite_display(self, suite: Suite) -> str:
        if suite.config_map is not None:
            return f"configmap/{suite.config_map.name}[{suite.config_map.key}]"
        assert suite.path is not None
        return suite.path

    def checkpoint_dir(self) -> Path:
        return Path(self.run.checkpoint_dir or self.store_path(f"checkpoints/{self.adapter_name}"))

    def adapter_dir(self) -> Path:
        return Path(self.run.adapter_dir or self.store_path(f"adapters/{self.adapter_name}"))

    def for_manifest(self) -> dict[str, Any]:
        """What was asked for, as recorded with the published revision (no run paths)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"run"})


def _set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = doc
    for key in keys[:-1]:
        nxt = node.setdefault(key, {})
        if not isinstance(nxt, dict):
            raise InvalidInput(CONFIG_INVALID, f"--set {dotted}: {key} is not a section")
        node = nxt
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`training.maxSteps=20` → ("training.maxSteps", 20); the value is YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise InvalidInput(CONFIG_INVALID, f"--set {text!r}: expected key=value, e.g. training.maxSteps=20")
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise InvalidInput(CONFIG_INVALID, f"--set {text!r}: the value is not valid YAML: {e}") from None


def _describe(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def from_document(doc: Any, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    if not isinstance(doc, dict):
        raise InvalidInput(CONFIG_INVALID, "the configuration must be a mapping")
    if doc.get("kind") == "FineTuneJob":
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise InvalidInput(CONFIG_INVALID, "the FineTuneJob has no spec")
        run = {"fineTuneJob": (doc.get("metadata") or {}).get("name")}
        doc = {**spec, "run": {k: v for k, v in run.items() if v}}
    doc = {k: v for k, v in doc.items() if k not in KUBERNETES_ONLY}
    for key, value in overrides:
        _set_dotted(doc, key, value)
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as e:
        raise InvalidInput(CONFIG_INVALID, _describe(e)) from None


def load(path: str | Path, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise InvalidInput(CONFIG_INVALID, f"cannot read the configuration {p}: {e.strerror}") from None
    try:
        docs = [json.loads(text)] if p.suffix == ".json" else [d for d in yaml.safe_load_all(text) if d]
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise InvalidInput(
            CONFIG_INVALID, f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}"
        ) from None
    if len(docs) > 1:  # a manifest file with several objects: take its FineTuneJob
        docs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
        if len(docs) != 1:
            raise InvalidInput(
                CONFIG_INVALID, f"{p}: holds several documents and not exactly one FineTuneJob"
            )
    if not docs:
        raise InvalidInput(CONFIG_INVALID, f"{p}: empty")
    return from_document(docs[0], overrides)


def check_inputs_exist(cfg: TrainConfig) -> None:
    """The files the run needs, before anything heavy loads."""
    if cfg.base_model.path is not None:
        model_dir = cfg.store_path(cfg.base_model.path)
        if not model_dir.is_dir():
            raise InvalidInput(
                BASE_MODEL_INVALID, f"baseModel.path {cfg.base_model.path}: no such folder in the model store"
            )
        if not (model_dir / "config.json").is_file():
            raise InvalidInput(
                BASE_MODEL_INVALID,
                f"baseModel.path {cfg.base_model.path}: not a Hugging Face model folder (no config.json)",
            )
    for file, field, shown in (
        (cfg.dataset_file(), "dataset", cfg.dataset_display()),
        (cfg.validation_file(), "dataset.validationPath", cfg.dataset.validation_path),
    ):
        if file is not None and not file.is_file():
            raise InvalidInput(DATASET_INVALID, f"{field} {shown}: no such file")
    for i, suite in enumerate(cfg.evaluation.suites):
        if not suite.held_out and not cfg.suite_file(suite).is_file():
            raise InvalidInput(
                SUITE_INVALID,
                f"evaluation.suites[{i}] ({suite.name}): {cfg.suite_display(suite)}: no such file",
            )
