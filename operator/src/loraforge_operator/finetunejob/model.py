"""The FineTuneJob API (loraforge.io/v1alpha1): spec and status.

These models generate the CRD schema (descriptions are what
`kubectl explain finetunejob.spec...` prints) and parse objects at the edge
of the operator. Cross-field rules are ``schema.Rule``s, each both the CEL on
the CRD and the check the model makes, so bad specs are stopped at admission
and the operator never acts on one.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from .. import scoring
from ..conditions import Condition
from ..schema import (
    LABEL_KEY,
    LABEL_KEY_RULE,
    LABEL_VALUE,
    MAX_KEY_LENGTH,
    MAX_KEY_PREFIX,
    ApiModel,
    ExtendedResourceName,
    Rule,
    annotation_map,
    field_error,
    key_prefix_fits,
    label_map,
)

# A relative path inside the model store. Segments may not start with a dot,
# so neither `..` nor hidden folders can be named.
RELATIVE_PATH = r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*$"
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# Kubernetes resource.Quantity as apimachinery's parser takes it, without the minus sign: every quantity
# loraforge takes (memory, CPU, shared memory, a queue target) is a size, and pods refuse < 0. The exponent
# is a whole number of at most two digits: the pattern in apimachinery's OpenAPI also allows "1e0.5", which
# its parser refuses, and "1e61119634809086", on which the API server spent its whole request timeout when
# the operator applied the Job (both found by tests/integration/test_property_specs.py).
QUANTITY = r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$"
HF_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$"

RelativePath = Annotated[str, Field(pattern=RELATIVE_PATH, max_length=512)]
Quantity = Annotated[str, Field(pattern=QUANTITY, max_length=64)]
# Maps that become labels or annotations of children: keys and values as the API server demands them.
NodeSelector = label_map("resources.nodeSelector", 32)
PodLabels = label_map("podMetadata.labels", 64)
PodAnnotations = annotation_map("podMetadata.annotations", 64)


class BaseModelSource(ApiModel):
    """The base model to fine-tune. Exactly one of `path` or `huggingFaceId`."""

    rules = (
        Rule(
            "has(self.path) != has(self.huggingFaceId)",
            "set exactly one of baseModel.path or baseModel.huggingFaceId",
            lambda s: (s.path is None) != (s.hugging_face_id is None),
        ),
    )

    path: RelativePath | None = None
    """Folder of a Hugging Face model (config.json, tokenizer, safetensors weights) relative to the model
    store, e.g. `base/smollm2-135m-instruct`. Staged there in advance: nothing is downloaded."""

    hugging_face_id: Annotated[str, Field(pattern=HF_ID, max_length=256)] | None = None
    """A Hugging Face model id, e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`, resolved only from the pre-staged
    offline Hugging Face cache in the model store (folder `hf-cache`). The trainer runs with HF_HUB_OFFLINE=1
    and never contacts the hub."""

    revision: Annotated[str, Field(max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")] = "main"
    """With `huggingFaceId`: the revision (branch, tag or commit) to take from the offline cache."""


class ModelStore(ApiModel):
    """The shared volume that holds base models, datasets, checkpoints and published adapters."""

    claim_name: Annotated[str, Field(pattern=DNS_LABEL, max_length=253)] = "loraforge-model-store"
    """Name of a PersistentVolumeClaim in the FineTuneJob's namespace. ReadWriteMany if training uses several
    nodes."""


class ConfigMapKey(ApiModel):
    """A key of a ConfigMap in the FineTuneJob's namespace (for small datasets)."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=253)]
    """Name of the ConfigMap."""

    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key whose value is the JSONL file."""


DatasetFormat = Literal["chat", "instruction", "completion", "text"]


class Dataset(ApiModel):
    """Training data: a JSONL file, one record per line. Exactly one of `path` or `configMap`."""

    rules = (
        Rule(
            "has(self.path) != has(self.configMap)",
            "set exactly one of dataset.path or dataset.configMap",
            lambda d: (d.path is None) != (d.config_map is None),
        ),
        Rule(
            "!has(self.validationPath) || !has(self.configMap)",
            "dataset.validationPath needs dataset.path (the model store); "
            "a ConfigMap dataset is split with validationSplit",
            lambda d: d.validation_path is None or d.config_map is None,
        ),
        Rule(
            "self.onInvalidRecord == 'Skip' || self.maxSkippedRecords == 0",
            "dataset.maxSkippedRecords applies only with onInvalidRecord: Skip",
            lambda d: d.on_invalid_record == "Skip" or d.max_skipped_records == 0,
            field_path=".maxSkippedRecords",
        ),
    )

    path: RelativePath | None = None
    """The JSONL file relative to the model store, e.g. `datasets/support/train.jsonl`."""

    config_map: ConfigMapKey | None = None
    """The JSONL file as a ConfigMap key (ConfigMaps hold at most 1 MiB)."""

    format: DatasetFormat = "chat"
    """Record format. `chat`: {"messages": [{"role", "content"}...]}, loss on assistant turns only.
    `instruction`: {"instruction", "input"?, "output"}, loss on output.
    `completion`: {"prompt", "completion"}, loss on completion. `text`: {"text"}, loss on all tokens."""

    validation_path: RelativePath | None = None
    """A separate held-out JSONL file in the model store. When unset, `validationSplit` of the training
    records is held out (seeded, so the same records every run)."""

    validation_split: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1
    """Fraction of the training records held out for evaluation when `validationPath` is unset."""

    on_invalid_record: Literal["Fail", "Skip"] = "Fail"
    """What a malformed record does. `Fail`: the FineTuneJob fails naming the file and line. `Skip`: skipped
    and counted, up to `maxSkippedRecords`."""

    max_skipped_records: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    """With `onInvalidRecord: Skip`: more skipped records than this fail the job."""


class LoraSettings(ApiModel):
    """LoRA adapter shape (peft LoraConfig)."""

    r: Annotated[int, Field(ge=1, le=1024)] = 16
    """Rank of the update matrices."""

    alpha: Annotated[int, Field(ge=1, le=4096)] = 32
    """Scaling numerator: the update is scaled by alpha / r."""

    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    """Dropout on the LoRA path during training."""

    target_modules: Annotated[
        list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)]],
        Field(min_length=1, max_length=64),
    ] = Field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt, e.g. [q_proj, v_proj], or [all-linear]. The trainer checks they exist in the
    base model before training."""


class Quantization(ApiModel):
    """4-bit quantization of the frozen base model for QLoRA (bitsandbytes)."""

    type: Literal["nf4", "fp4"] = "nf4"
    """4-bit data type. nf4 (NormalFloat) is what QLoRA was introduced with."""

    double_quant: bool = True
    """Quantize the quantization constants too (saves about 0.4 bits per parameter)."""

    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    """Data type of the matrix multiplications."""


class TrainingSettings(ApiModel):
    """Optimisation settings. Set `epochs` or `maxSteps` (neither: 1 epoch)."""

    rules = (
        Rule(
            "!(has(self.epochs) && has(self.maxSteps))",
            "set either training.epochs or training.maxSteps, not both",
            lambda t: t.epochs is None or t.max_steps is None,
        ),
    )

    epochs: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Passes over the training records."""

    max_steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Optimizer steps to run instead of whole epochs."""

    learning_rate: Annotated[float, Field(gt=0.0, le=1.0)] = 2e-4
    """Peak learning rate."""

    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    """Learning-rate schedule after warmup."""

    warmup_ratio: Annotated[float, Field(ge=0.0, le=0.5)] = 0.03
    """Fraction of the steps spent warming the learning rate up from zero."""

    batch_size: Annotated[int, Field(ge=1, le=4096)] = 4
    """Records per device per step."""

    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=1024)] = 4
    """Steps whose gradients are summed before each optimizer update."""

    max_seq_length: Annotated[int, Field(ge=16, le=262_144)] = 1024
    """Records are truncated to this many tokens."""

    packing: bool = False
    """Pack several short records into each sequence of `maxSeqLength` tokens."""

    gradient_checkpointing: bool = True
    """Recompute activations in the backward pass: less memory, about 20% slower."""

    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """Mixed precision. `auto`: bf16 where the GPU supports it, else fp16 on GPUs, fp32 on CPU."""

    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 42
    """Seeds data order, the validation split and adapter initialisation."""

    logging_steps: Annotated[int, Field(ge=1, le=100_000)] = 10
    """Report progress (step, loss) every this many steps."""


class Toleration(ApiModel):
    """A toleration of the training pods (core/v1 Toleration)."""

    # What core/v1 requires of a Pod's toleration; unchecked here, the Job or Deployment would be refused.
    rules = (
        Rule(
            "has(self.key) || self.operator == 'Exists'",
            "a toleration without key needs operator Exists",
            lambda t: t.key is not None or t.operator == "Exists",
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds needs effect NoExecute",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
        Rule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists takes no value",
            lambda t: t.operator != "Exists" or not t.value,
            field_path=".value",
        ),
        Rule(
            # The pattern checks the key but for the length of its prefix.
            f"!has(self.key) || self.key.indexOf('/') <= {MAX_KEY_PREFIX}",
            f"a toleration key must be a label key: {LABEL_KEY_RULE}",
            lambda t: t.key is None or key_prefix_fits(t.key),
            field_path=".key",
        ),
    )

    key: Annotated[str, Field(max_length=MAX_KEY_LENGTH, pattern=LABEL_KEY)] | None = None
    """Taint key, a label key (an optional DNS-subdomain prefix and '/', then a name of at most 63
    characters); empty with operator Exists matches every taint."""

    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""

    value: Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)] | None = None
    """Taint value, with operator Equal: a label value (at most 63 letters, digits, '-', '_' or '.',
    starting and ending with a letter or digit, or empty)."""

    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all."""

    toleration_seconds: int | None = None
    """With NoExecute: how long the pod stays bound after the taint appears."""


class Resources(ApiModel):
    """Where and on what the training runs."""

    rules = (
        Rule(
            "self.nodes == 1 || self.gpusPerNode >= 1",
            "training on several nodes needs resources.gpusPerNode >= 1",
            lambda r: r.nodes == 1 or r.gpus_per_node >= 1,
            field_path=".gpusPerNode",
        ),
    )

    gpus_per_node: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per training pod (one pod per node). 0 trains on CPU (slow; for small tests)."""

    nodes: Annotated[int, Field(ge=1, le=64)] = 1
    """Training nodes. More than 1 runs an Indexed Job with torchrun rendezvous over a headless Service."""

    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    """Extended resource that counts GPUs on your nodes."""

    cpu: Quantity = "4"
    """CPU request per pod."""

    memory: Quantity = "32Gi"
    """Memory request and limit per pod."""

    node_selector: NodeSelector = Field(default_factory=dict)
    """Labels a node must have to run training pods, e.g. {nvidia.com/gpu.product: NVIDIA-H100-80GB-HBM3}.
    Keys are label keys (an optional DNS-subdomain prefix and '/', then a name of at most 63 characters);
    values are label values (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or
    digit, or empty)."""

    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    """Tolerations of the training pods. The default tolerates the usual `nvidia.com/gpu` taint of GPU
    nodes."""

    priority_class_name: Annotated[str, Field(max_length=253, pattern=DNS_LABEL)] | None = None
    """PriorityClass of the training pods."""


class Checkpoints(ApiModel):
    """Periodic checkpoints in the model store; a restarted pod resumes from the newest."""

    every_steps: Annotated[int, Field(ge=1, le=10_000_000)] = 100
    """Save a checkpoint every this many optimizer steps."""

    keep: Annotated[int, Field(ge=1, le=100)] = 2
    """Checkpoints kept; older ones are deleted."""


ScorerType = Literal["contains", "exact", "regex", "tokenF1"]


class Scorer(ApiModel):
    """How an answer is judged against the expected one (the rules: loraforge_operator/scoring.py)."""

    rules = (
        Rule(
            "!has(self.pattern) || self.type == 'regex'",
            "scorer.pattern applies only to scorer type regex",
            lambda s: s.pattern is None or s.type == "regex",
            field_path=".pattern",
        ),
    )

    type: ScorerType = "contains"
    """`contains`: the expected answer occurs in the answer, on word boundaries, after normalisation (lower
    case, punctuation and the articles a/an/the removed, whitespace collapsed). `exact`: the two are equal
    after normalisation. `regex`: a Python regular expression (the record's `expected`, else `pattern`) is
    found in the answer, e.g. for prompts that must be refused or escalated. `tokenF1`: the token F1 of answer
    and expected answer, normalised as SQuAD scores it, is at least `minF1`."""

    pattern: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    """With `regex`: the pattern every answer of the suite must match, for suites whose records carry no
    `expected` of their own, e.g. `(?i)(call|dial) (911|112|emergency)`. Checked before training."""

    min_f1: Annotated[float, Field(gt=0.0, le=1.0)] = scoring.DEFAULT_MIN_F1
    """With `tokenF1`: the F1 from which an answer counts as right."""

    @model_validator(mode="after")
    def _pattern_compiles(self) -> Scorer:
        # What CEL cannot state: that the pattern is a Python regular expression (checked after the rules).
        bad = scoring.pattern_problem(self.pattern) if self.pattern is not None else None
        if bad:
            raise field_error(self, ".pattern", f"scorer.pattern is {bad}")
        return self


class EvaluationSuite(ApiModel):
    """Questions the base model and the adapter both answer, greedily, after training; a scorer judges each
    answer. Exactly one source: `heldOut: true` (the held-out records: the question is a record up to its last
    assistant turn, the expected answer that turn), `path` or `configMap` (a JSONL file, one record a line:
    `{"prompt": "...", "expected": "..."}`, or `messages` in place of `prompt` ending with the user's turn;
    `expected` may be left out when `scorer.pattern` is set). A bad record fails the FineTuneJob naming
    file:line before training starts. Accuracy, base against adapter, goes to status, the revision's
    manifest and model card (every answer: `answers-<suite>.jsonl` in the revision's folder)."""

    rules = (
        Rule(
            "(self.heldOut ? 1 : 0) + (has(self.path) ? 1 : 0) + (has(self.configMap) ? 1 : 0) == 1",
            "set exactly one of heldOut: true, path or configMap",
            lambda s: s.held_out + (s.path is not None) + (s.config_map is not None) == 1,
        ),
    )

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    """Name of the suite, e.g. `held-out` or `safety`; unique in the FineTuneJob."""

    held_out: bool = False
    """Ask the dataset's held-out records (`dataset.validationPath`, or the `validationSplit`)."""

    path: RelativePath | None = None
    """A JSONL suite file relative to the model store."""

    config_map: ConfigMapKey | None = None
    """A JSONL suite file as a ConfigMap key in the FineTuneJob's namespace."""

    scorer: Scorer = Field(default_factory=Scorer)
    """How answers are judged."""

    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    """The gate: the adapter must answer at least this fraction right, e.g. 0.9."""

    min_gain: Annotated[float, Field(ge=-1.0, le=1.0)] | None = None
    """The gate: the adapter's accuracy must exceed the base model's by at least this much (0.5: fifty
    points); 0 means no worse than the base model."""

    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    """The longest answer generated per question."""


class EvaluationGate(ApiModel):
    """Conditions the adapter must meet to pass: on the held-out loss, and on the answers of each suite. With
    none set, the gate passes and the metrics are only recorded."""

    rules = (
        Rule(
            "self.suites.all(a, self.suites.exists_one(b, b.name == a.name))",
            "evaluation.suites: each suite needs a name of its own",
            lambda g: len({s.name for s in g.suites}) == len(g.suites),
            field_path=".suites",
        ),
    )

    max_eval_loss: Annotated[float, Field(gt=0.0)] | None = None
    """The adapter's eval loss must be at most this."""

    min_improvement: Annotated[float, Field(gt=0.0, lt=1.0)] | None = None
    """The adapter's eval loss must be lower than the base model's by at least this fraction, e.g. 0.05 for
    5%."""

    suites: Annotated[list[EvaluationSuite], Field(max_length=16)] = Field(default_factory=list)
    """Evaluation by answers (none by default). Each suite's `minAccuracy` and `minGain` are part of the
    gate."""

    generation_batch_size: Annotated[int, Field(ge=1, le=1024)] = 32
    """Questions answered together in one batch."""


CardText = Annotated[str, Field(min_length=1, max_length=8192)]


class ModelCard(ApiModel):
    """Sections of the revision's model card (README.md) that only you can write; loraforge writes the rest
    (training data, settings, evaluation) from what it measured. Markdown."""

    intended_use: CardText | None = None
    """What the adapter is for and who should use it, e.g. "Answering staff questions about the ward's
    discharge procedures; not for diagnosis"."""

    out_of_scope: CardText | None = None
    """Uses it must not be put to."""

    limitations: CardText | None = None
    """What it is known to get wrong, beyond what the evaluation shows."""

    ethical_considerations: CardText | None = None
    """Risks to people (privacy of the training data, bias, harm from wrong answers) and how they are
    handled."""

    training_data: CardText | None = None
    """Where the data came from, its licence and consent, and what was removed (loraforge adds the file,
    digest and record counts)."""


class Adapter(ApiModel):
    """The adapter that training publishes."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    """Adapter name; revisions are published under `adapters/<namespace>/<name>/` in the model store.
    Default: the FineTuneJob's name."""

    model_card: ModelCard = Field(default_factory=ModelCard)
    """Your sections of the model card."""


class PodMetadata(ApiModel):
    """Extra labels and annotations for the training pods (e.g. for cost attribution or sidecar injection
    policies). Keys under loraforge.io/ and batch.kubernetes.io/ are reserved."""

    rules = (
        Rule(
            "!self.labels.exists(k, k.startsWith('loraforge.io/') || k.startsWith('batch.kubernetes.io/'))",
            "podMetadata.labels may not use the reserved prefixes loraforge.io/ and batch.kubernetes.io/",
            lambda m: not any(k.startswith(("loraforge.io/", "batch.kubernetes.io/")) for k in m.labels),
            field_path=".labels",
        ),
    )

    labels: PodLabels = Field(default_factory=dict)
    """Labels added to each training pod. Keys are label keys (an optional DNS-subdomain prefix and '/',
    then a name of at most 63 characters); values are label values (at most 63 letters, digits, '-', '_' or
    '.', starting and ending with a letter or digit, or empty)."""

    annotations: PodAnnotations = Field(default_factory=dict)
    """Annotations added to each training pod. Keys are annotation keys (as label keys, but the prefix may
    hold capitals); values up to 2048 characters."""


def _asks_held_out(spec: FineTuneJobSpec) -> bool:
    return any(s.held_out for s in spec.evaluation.suites)


def _gates_on_loss(gate: EvaluationGate) -> bool:
    return gate.max_eval_loss is not None or gate.min_improvement is not None


def _holds_out(dataset: Dataset) -> bool:
    """The dataset has held-out records: a validation file, or a share of the training records."""
    return dataset.validation_path is not None or dataset.validation_split > 0.0


class FineTuneJobSpec(ApiModel):
    """Desired state of a FineTuneJob. Immutable once training has started, except `suspend`."""

    base_model: BaseModelSource
    """The model to fine-tune."""

    dataset: Dataset
    """The training (and optionally validation) data."""

    method: Literal["lora", "qlora"] = "lora"
    """`lora`: LoRA on the base model in its own precision. `qlora`: LoRA on the base model quantized to 4
    bits (see `quantization`): about a quarter of the memory."""

    lora: LoraSettings = Field(default_factory=LoraSettings)
    """The adapter's shape."""

    quantization: Quantization | None = None
    """With `method: qlora`: how the base model is quantized (defaults: nf4, double quantization,
    bfloat16). Not allowed with `method: lora`."""

    training: TrainingSettings = Field(default_factory=TrainingSettings)
    """Optimisation settings."""

    resources: Resources = Field(default_factory=Resources)
    """GPUs, nodes and placement."""

    model_store: ModelStore = Field(default_factory=ModelStore)
    """Where base models, datasets, checkpoints and adapters live."""

    checkpoints: Checkpoints = Field(default_factory=Checkpoints)
    """Checkpointing."""

    evaluation: EvaluationGate = Field(default_factory=EvaluationGate)
    """The evaluation gate the adapter must pass to be published as passing."""

    adapter: Adapter = Field(default_factory=Adapter)
    """The published adapter."""

    pod_metadata: PodMetadata = Field(default_factory=PodMetadata)
    """Extra labels and annotations for the training pods."""

    image: Annotated[str, Field(max_length=512, pattern=r"^\S+$")] | None = None
    """Trainer image. Default: the operator's configured trainer image (from your registry mirror)."""

    backoff_limit: Annotated[int, Field(ge=0, le=20)] = 2
    """Retries of a failed training pod before the FineTuneJob fails. A retry resumes from the newest
    checkpoint."""

    active_deadline_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] | None = None
    """Wall-clock limit for the whole training; past it the FineTuneJob fails with DeadlineExceeded."""

    suspend: bool = False
    """Suspend training: running pods are stopped (progress is kept in checkpoints); false resumes."""

    rules = (
        Rule(
            "self.method == 'qlora' || !has(self.quantization)",
            "quantization applies only to method qlora",
            lambda s: s.method == "qlora" or s.quantization is None,
            field_path=".quantization",
        ),
        Rule(
            "!self.evaluation.suites.exists(s, s.heldOut) || self.dataset.format != 'text'",
            "an evaluation suite with heldOut: true needs questions with answers; "
            "dataset.format text has none",
            lambda s: not _asks_held_out(s) or s.dataset.format != "text",
            field_path=".evaluation.suites",
        ),
        Rule(
            "!self.evaluation.suites.exists(s, s.heldOut) || has(self.dataset.validationPath) "
            "|| self.dataset.validationSplit > 0.0",
            "an evaluation suite with heldOut: true needs held-out records: "
            "set dataset.validationSplit > 0 "
            "or dataset.validationPath",
            lambda s: not _asks_held_out(s) or _holds_out(s.dataset),
            field_path=".evaluation.suites",
        ),
        Rule(
            # The trainer measures the loss on the held-out records, base model and adapter alike.
            "!(has(self.evaluation.maxEvalLoss) || has(self.evaluation.minImprovement)) "
            "|| has(self.dataset.validationPath) || self.dataset.validationSplit > 0.0",
            "evaluation.maxEvalLoss and evaluation.minImprovement judge the loss on held-out records: "
            "set dataset.validationSplit > 0 or dataset.validationPath",
            lambda s: not _gates_on_loss(s.evaluation) or _holds_out(s.dataset),
            field_path=".dataset.validationSplit",
        ),
    )


# Spec fields that may change after training started (everything else is frozen by CEL on the root).
MUTABLE_AFTER_START = ("suspend",)


# --- resolution: what the spec leaves implicit, decided once -------------------------------------------
# A few fields have no fixed default: they depend on other fields or on the FineTuneJob's name. They are
# decided here and nowhere else: the operator writes the resolved spec into the trainer's configuration
# (builders.resolved_config), the trainer's command line resolves a spec it is given with this same code
# (the trainer's copy of this module), and the trainer refuses a configuration that leaves one open.

DEFAULT_EPOCHS = 1


def resolve(spec: FineTuneJobSpec, name: str) -> FineTuneJobSpec:
    """``spec`` with nothing left to defaults that depend on other fields: `training.epochs` 1 when neither
    it nor `training.maxSteps` is set, `quantization` QLoRA's defaults with `method: qlora`, `adapter.name`
    ``name`` (the FineTuneJob's) when unset. A resolved spec resolves to itself."""
    resolved = spec.model_copy(deep=True)
    if resolved.training.epochs is None and resolved.training.max_steps is None:
        resolved.training.epochs = DEFAULT_EPOCHS
    if resolved.method == "qlora" and resolved.quantization is None:
        resolved.quantization = Quantization()
    if resolved.adapter.name is None:
        resolved.adapter.name = name
    return resolved


def unresolved(spec: FineTuneJobSpec) -> list[str]:
    """The fields ``resolve`` would still decide (dotted camelCase paths); empty for a resolved spec."""

    def paths(before: object, after: object, prefix: str) -> list[str]:
        if isinstance(before, dict) and isinstance(after, dict):
            keys = sorted(before.keys() | after.keys())
            return [p for k in keys for p in paths(before.get(k), after.get(k), f"{prefix}{k}.")]
        return [] if before == after else [prefix.rstrip(".")]

    def dump(s: FineTuneJobSpec) -> dict:
        return s.model_dump(by_alias=True, exclude_none=True, mode="json")

    return paths(dump(spec), dump(resolve(spec, "-")), "")


# --- status ------------------------------------------------------------------

Phase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


class Progress(ApiModel):
    """Training progress as the trainer last reported it."""

    step: Annotated[int, Field(ge=0)] = 0
    """Optimizer steps done."""

    total_steps: Annotated[int, Field(ge=0)] | None = None
    """Optimizer steps planned."""

    epoch: Annotated[float, Field(ge=0.0)] | None = None
    """Fractional epoch reached."""

    percent: Annotated[int, Field(ge=0, le=100)] | None = None
    """step / totalSteps, in percent."""

    loss: float | None = None
    """Latest training loss."""

    eval_loss: float | None = None
    """Latest loss on the held-out records."""

    learning_rate: float | None = None
    """Current learning rate."""

    tokens_per_second: float | None = None
    """Training throughput the trainer measured, in tokens per second over all its processes."""

    update_time: str | None = None
    """When the trainer reported this (RFC 3339)."""


class SuiteResult(ApiModel):
    """How the base model and the adapter answered one evaluation suite."""

    name: str
    """The suite's name."""

    scorer: ScorerType
    """The scorer that judged the answers."""

    records: Annotated[int, Field(ge=0)]
    """Questions asked."""

    correct: Annotated[int, Field(ge=0)]
    """Questions the adapter answered right."""

    base_correct: Annotated[int, Field(ge=0)]
    """Questions the base model answered right."""

    accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    """correct / records."""

    base_accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    """baseCorrect / records."""

    passed: bool
    """Whether the suite's minAccuracy and minGain hold (true when it sets neither)."""


class PublishedAdapter(ApiModel):
    """The adapter revision this FineTuneJob published."""

    name: str
    """Adapter name."""

    revision: str
    """Revision, unique and immutable within the adapter's name."""

    path: str
    """Folder of the revision, relative to the model store."""

    digest: str
    """sha256 of the adapter weights (`sha256:<hex>`)."""

    evaluation_passed: bool
    """Whether the adapter passed the evaluation gate."""

    metrics: dict[str, float] = Field(default_factory=dict)
    """Evaluation metrics, e.g. evalLoss, baseEvalLoss, perplexity."""

    suites: Annotated[list[SuiteResult], Field(max_length=16)] = Field(default_factory=list)
    """Evaluation by answers: each suite's accuracy, base model against adapter."""

    answers: str | None = None
    """The first suite in a line, for `kubectl get ftj -o wide`, e.g. `held-out 70/72 (base 0/72)`."""

    explanation: str | None = None
    """Why the gate passed or failed, as the trainer judged it."""


class FineTuneJobStatus(ApiModel):
    """Observed state of a FineTuneJob, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""

    phase: Phase | None = None
    """Summary for people and `kubectl get`: Pending, Running, Suspended, Succeeded or Failed. Automation
    should read `conditions`."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Accepted, Running, Suspended, Evaluated, Succeeded and Failed, each with a reason and a message."""

    job_name: str | None = None
    """Name of the batch Job that runs the training."""

    start_time: str | None = None
    """When training first started (RFC 3339). From then on the spec is frozen except `suspend`."""

    completion_time: str | None = None
    """When the FineTuneJob succeeded or failed."""

    failed_attempts: Annotated[int, Field(ge=0)] = 0
    """Training pods that failed (each retry resumes from the newest checkpoint)."""

    progress: Progress | None = None
    """Training progress."""

    adapter: PublishedAdapter | None = None
    """The published adapter revision."""
