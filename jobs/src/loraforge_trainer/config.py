"""The training configuration: loaded, overridden and validated before any
model loads.

Inside Kubernetes the operator writes it: the FineTuneJob's spec resolved (every
default that depends on other fields or on the job's name made explicit, by
``finetunejob.model.resolve``), plus a ``run`` section saying where things are
in the pod. Such a configuration is taken as is: nothing is defaulted here, and
one that leaves a field unresolved is refused. Outside, ``loraforge-train``
also takes a FineTuneJob's spec (YAML) or a whole FineTuneJob manifest, and
resolves it with the same ``resolve``, so a job can be tried on a workstation
before it is submitted.

The shape of the configuration is the FineTuneJob API's, not a copy of it: this
package does not import the operator (the trainer image carries only the
trainer), so ``python -m loraforge_operator.crds`` writes the API models into
``loraforge_trainer/api/`` and a unit test fails when that copy is stale.
``TrainConfig`` is the API's spec model plus the ``run`` section and the
trainer's own helpers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from .api.finetunejob import model as api
from .errors import BASE_MODEL_INVALID, CONFIG_INVALID, DATASET_INVALID, SUITE_INVALID, InvalidInput

# The API's models under the names the trainer uses.
Suite = api.EvaluationSuite
EvaluationGate = api.EvaluationGate

RUN = "run"  # the section the operator adds (contract.RUN_SECTION); its presence marks a resolved config
# The adapter's name when a spec given on the command line names neither it nor a FineTuneJob.
STANDALONE_NAME = "adapter"

# FineTuneJob fields that only concern Kubernetes: the trainer reads them (they are part of the spec) but
# leaves them out of what it records with a published revision.
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


class Run(BaseModel):
    """Where things are. Written by the operator; on the command line it is
    derived from the flags (see cli.py)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    model_store: str = "."
    dataset_dir: str | None = None  # where a ConfigMap dataset is mounted
    suites_dir: str | None = None  # where ConfigMap suites are mounted, one folder per suite
    checkpoint_dir: str | None = None
    adapter_dir: str | None = None
    namespace: str | None = None
    fine_tune_job: str | None = None
    uid: str | None = None
    progress_config_map: str | None = None


class TrainConfig(api.FineTuneJobSpec):
    """A resolved FineTuneJob spec (its fields, limits and cross-field rules are the API's) and where
    things are."""

    run: Run = Field(default_factory=Run)

    @model_validator(mode="after")
    def _resolved(self) -> TrainConfig:
        left = api.unresolved(self)
        if left:
            raise ValueError(
                f"the configuration is not resolved ({', '.join(left)} not set): one with a `{RUN}` section "
                "is taken as the operator writes it, every default explicit; without `run` a FineTuneJob "
                "spec is resolved here"
            )
        return self

    # --- derived -----------------------------------------------------------------

    @property
    def adapter_name(self) -> str:
        assert self.adapter.name is not None  # resolved
        return self.adapter.name

    @property
    def loss_gate(self) -> bool:
        """A threshold on the held-out loss is set (the held-out loss is then needed)."""
        return self.evaluation.max_eval_loss is not None or self.evaluation.min_improvement is not None

    # --- where things are -------------------------------------------------------

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
        """What was asked for, as recorded with the published revision (no run paths, nothing that only
        concerns Kubernetes)."""
        exclude = {RUN, *(n for n, f in type(self).model_fields.items() if (f.alias or n) in KUBERNETES_ONLY)}
        return self.model_dump(by_alias=True, exclude_none=True, mode="json", exclude=exclude)


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


def _validated(model: type[BaseModel], doc: dict[str, Any]) -> Any:
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        raise InvalidInput(CONFIG_INVALID, _describe(e)) from None


def from_document(doc: Any, overrides: list[tuple[str, Any]] = ()) -> TrainConfig:
    """A configuration from a document: the operator's resolved configuration (it has a ``run`` section),
    taken as is; or a FineTuneJob's spec or a whole FineTuneJob manifest, resolved by the API's
    ``resolve``. ``overrides`` (dotted keys) apply to the document before either."""
    if not isinstance(doc, dict):
        raise InvalidInput(CONFIG_INVALID, "the configuration must be a mapping")
    resolved = RUN in doc and doc.get("kind") != "FineTuneJob"
    if doc.get("kind") == "FineTuneJob":
        spec = doc.get("spec")
        if not isinstance(spec, dict):
            raise InvalidInput(CONFIG_INVALID, "the FineTuneJob has no spec")
        name = (doc.get("metadata") or {}).get("name")
        doc = {**spec, RUN: {"fineTuneJob": name} if name else {}}
    doc = copy.deepcopy(doc)  # the overrides change a copy
    for key, value in overrides:
        _set_dotted(doc, key, value)
    if resolved:
        return _validated(TrainConfig, doc)
    run = doc.pop(RUN, None) or {}
    if not isinstance(run, dict):
        raise InvalidInput(CONFIG_INVALID, f"{RUN}: must be a mapping")
    spec = _validated(api.FineTuneJobSpec, doc)
    name = run.get("fineTuneJob") or STANDALONE_NAME
    body = api.resolve(spec, name).model_dump(by_alias=True, exclude_none=True, mode="json")
    return _validated(TrainConfig, {**body, RUN: run})


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
