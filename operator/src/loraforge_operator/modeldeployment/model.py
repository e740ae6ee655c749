"""The ModelDeployment API (loraforge.io/v1alpha1): spec and status.

A ModelDeployment serves a base model and LoRA adapters with a serving runtime
(TGI or vLLM), autoscaled, and rolls every replica to each newly promoted adapter
revision, verifying the new pods before old ones go and rolling back by
itself when they fail. Same conventions as the FineTuneJob API: descriptions
are `kubectl explain` text, cross-field rules are ``schema.Rule``s (the CEL on
the CRD and the model's check, from one definition).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field

from ..conditions import Condition
from ..finetunejob.model import (
    DNS_LABEL,
    BaseModelSource,
    ConfigMapKey,
    ModelStore,
    NodeSelector,
    Quantity,
    RelativePath,
    Scorer,
    Toleration,
)
from ..schema import ApiModel, ExtendedResourceName, Rule, annotation_map, label_map

REVISION = r"^v[0-9]+$"
# Maps that become labels or annotations of children (resources.nodeSelector is the FineTuneJob's).
ServiceAnnotations = annotation_map("service.annotations", 64)
MonitorLabels = label_map("monitoring.labels", 16)
VLLM_RAW_SMOKE_TEST = (
    "smokeTest.chat: false needs runtime.tgi (vLLM serves chat completions, not TGI's raw route)"
)
DEFAULT_TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
APPROVED_BY_NEEDS_REVISION = "from.approvedBy names who approved the pin in from.revision: set both"


class SmokeTestSuite(ApiModel):
    """A suite of questions each new pod must answer right with the adapter (`smokeTest.suite`). Read and
    checked by the operator (modeldeployment/smoke.py) before it verifies any pod with it."""

    config_map: ConfigMapKey
    """The suite file: a key of a ConfigMap in the ModelDeployment's namespace (read by the operator, at most
    1 MiB)."""

    scorer: Scorer = Field(default_factory=Scorer)
    """How answers are judged (as in a FineTuneJob's `evaluation.suites[].scorer`)."""

    min_accuracy: Annotated[float, Field(ge=0.0, le=1.0)]
    """The fraction of questions the adapter must answer right on the pod, e.g. 0.9. Below it the pod fails
    its smoke test and the rollout is rolled back."""

    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    """The longest answer generated per question (keep it within the runtime's token limits)."""

    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    """Questions in flight at once against the pod."""


class SmokeTest(ApiModel):
    """What a new pod must answer with this adapter before it may take traffic. Runs with huggingface_hub's
    InferenceClient against each new pod, selecting the adapter by its name (`model` in chat completions,
    `adapter_id` in TGI's raw generation)."""

    prompt: Annotated[str, Field(min_length=1, max_length=4096)] = "Hello"
    """Prompt sent with the adapter (raw text; use `chat: true` for the model's chat template)."""

    chat: bool = True
    """Send the prompt as one user turn through the chat completions API (the model's chat template), the
    way most adapters are trained. vLLM serves chat completions only: raw text (`false`) needs TGI."""

    max_new_tokens: Annotated[int, Field(ge=1, le=512)] = 32
    """Tokens to generate (greedy)."""

    must_contain: Annotated[str, Field(max_length=1024)] | None = None
    """The answer must contain this text (case-insensitive)."""

    must_match: Annotated[str, Field(max_length=1024)] | None = None
    """The answer must match this regular expression (Python syntax, searched anywhere)."""

    differs_from_base: bool = False
    """The answer must differ from the base model's answer to the same prompt: proves the adapter changes
    answers (TGI answers with the base model when an adapter is missing; vLLM refuses an unknown adapter, so
    there a missing adapter fails the smoke test without this)."""

    suite: SmokeTestSuite | None = None
    """A whole suite of questions the pod must also answer right, besides the prompt above: proof that
    serving gives the answers training measured. A JSONL file in a ConfigMap, in the format of a
    FineTuneJob's evaluation suites (`{"prompt": "...", "expected": "..."}` a line, or `messages` ending with
    the user's turn); each question is asked as a chat completion with the adapter, greedily, and judged by
    `scorer`. Below `minAccuracy` the pod fails its smoke test (the rollout is rolled back). A missing
    ConfigMap or key or a bad record fails no pod: no new pod is verified and no rollout starts until it is
    fixed, and the `Degraded` condition (reason `SmokeTestSuiteInvalid`) names configmap/name[key]:line."""


class AdapterSource(ApiModel):
    """Where an adapter's weights come from. Exactly one of `adapter`, `fineTuneJob` or `path`."""

    rules = (
        Rule(
            "(has(self.adapter) ? 1 : 0) + (has(self.fineTuneJob) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1",
            "set exactly one of from.adapter, from.fineTuneJob or from.path",
            lambda a: sum(x is not None for x in (a.adapter, a.fine_tune_job, a.path)) == 1,
        ),
        Rule(
            "!has(self.revision) || has(self.adapter)",
            "from.revision pins a revision of from.adapter",
            lambda a: a.revision is None or a.adapter is not None,
            field_path=".revision",
        ),
        Rule(
            "!has(self.approvedBy) || has(self.revision)",
            APPROVED_BY_NEEDS_REVISION,
            lambda a: a.approved_by is None or a.revision is not None,
            field_path=".approvedBy",
        ),
    )

    adapter: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)] | None = None
    """Follow an adapter lineage: the newest promoted revision that FineTuneJobs in this namespace published
    under this adapter name (`spec.adapter.name`). A new revision rolls out by itself."""

    revision: Annotated[str, Field(pattern=REVISION, max_length=16)] | None = None
    """With `adapter`: serve this revision instead of following the newest (pin; also how a revision is
    approved under `promotion.policy: Manual`, and how to pin back to an earlier one)."""

    approved_by: Annotated[str, Field(min_length=1, max_length=253)] | None = None
    """With `revision`: the user who approved this pin (`loraforge approve` sets both). Checked at admission
    against the requester's identity by the chart's ValidatingAdmissionPolicy (`admission.approvalIdentity`):
    only that user may set or change it, while anyone may edit other fields later. Recorded with the time
    the operator first saw the pin in `status.adapters[].approval`."""

    fine_tune_job: Annotated[str, Field(pattern=DNS_LABEL, max_length=253)] | None = None
    """Serve exactly the revision this FineTuneJob published."""

    path: RelativePath | None = None
    """A peft adapter folder in the model store, e.g. `adapters/team/support/v3`. Not checked against a
    FineTuneJob (no base-model or evaluation check)."""


class ServedAdapter(ApiModel):
    """One adapter the deployment serves."""

    name: Annotated[str, Field(pattern=DNS_LABEL, max_length=63)]
    """The name clients select it by: `model` in chat completions (both runtimes), or TGI's `adapter_id`."""

    from_: AdapterSource = Field(alias="from")
    """Where its weights come from."""

    smoke_test: SmokeTest | None = None
    """What each new pod must answer with this adapter. Without one, a generation with the adapter must
    succeed."""


class TGISettings(ApiModel):
    """text-generation-inference settings."""

    rules = (
        # TGI's launcher refuses this at start (ArgumentValidation), so the pod would crash-loop.
        Rule(
            "self.maxInputTokens < self.maxTotalTokens",
            "runtime.tgi.maxInputTokens must be < runtime.tgi.maxTotalTokens (TGI's launcher refuses it)",
            lambda t: t.max_input_tokens < t.max_total_tokens,
            field_path=".maxInputTokens",
        ),
    )

    image: Annotated[str, Field(max_length=512, pattern=r"^\S+$")] | None = None
    """TGI image, mirrored into your registry. Default: the operator's setting (the chart's values)."""

    quantize: Literal["bitsandbytes", "bitsandbytes-nf4", "bitsandbytes-fp4", "eetq", "fp8"] | None = None
    """Quantization of the base model weights at load time (TGI `--quantize`)."""

    max_input_tokens: Annotated[int, Field(ge=1, le=1_048_576)] = 2048
    """Longest prompt accepted (TGI `--max-input-tokens`). Must be below `maxTotalTokens`."""

    max_total_tokens: Annotated[int, Field(ge=2, le=1_048_576)] = 4096
    """Prompt plus generated tokens per request (TGI `--max-total-tokens`)."""

    max_batch_size: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Most requests batched together (TGI `--max-batch-size`)."""

    max_concurrent_requests: Annotated[int, Field(ge=1, le=100_000)] = 128
    """Requests held at once before new ones are refused with 429 (TGI `--max-concurrent-requests`)."""

    num_shard: Annotated[int, Field(ge=1, le=16)] | None = None
    """Tensor-parallel shards; default one per GPU of the pod."""


# The ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py, MaxLoRARanks).
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM's own default --max-lora-rank, assumed for a `from.path` adapter whose rank the operator cannot know.
VLLM_DEFAULT_LORA_RANK = 16


class VLLMSettings(ApiModel):
    """vLLM settings (its OpenAI-compatible server, `vllm serve`). Unset fields take vLLM's defaults unless
    said otherwise."""

    rules = (
        # vLLM's scheduler refuses a token budget smaller than the number of sequences at start.
        Rule(
            "!has(self.maxNumBatchedTokens) || !has(self.maxNumSeqs) || "
            "self.maxNumBatchedTokens >= self.maxNumSeqs",
            "runtime.vllm.maxNumBatchedTokens must be >= runtime.vllm.maxNumSeqs (vLLM refuses it)",
            lambda v: (
                v.max_num_batched_tokens is None
                or v.max_num_seqs is None
                or v.max_num_batched_tokens >= v.max_num_seqs
            ),
            field_path=".maxNumBatchedTokens",
        ),
    )

    image: Annotated[str, Field(max_length=512, pattern=r"^\S+$")] | None = None
    """vLLM image (`vllm/vllm-openai`, or vLLM's CPU image), mirrored into your registry. Default: the
    operator's setting (the chart's values)."""

    max_model_len: Annotated[int, Field(ge=16, le=1_048_576)] | None = None
    """Longest sequence, prompt plus generated tokens (vLLM `--max-model-len`). Default: the base model's
    context length."""

    max_loras: Annotated[int, Field(ge=1, le=256)] | None = None
    """Adapters held in one batch on the GPU at once (vLLM `--max-loras`). Default: the number of adapters."""

    max_lora_rank: Literal[1, 8, 16, 32, 64, 128, 256, 320, 512] | None = None
    """Largest LoRA rank the server can load (vLLM `--max-lora-rank`; it reserves memory for it). Default: the
    smallest allowed value at or above the largest rank of the revisions served (16 for a `from.path`
    adapter, whose rank the operator cannot read). A revision above an explicit value is not rolled out: the
    Degraded condition names the revision, its rank and this limit."""

    max_num_seqs: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Most sequences in one batch (vLLM `--max-num-seqs`)."""

    max_num_batched_tokens: Annotated[int, Field(ge=1, le=1_048_576)] | None = None
    """Most tokens in one scheduler step (vLLM `--max-num-batched-tokens`); at least `maxNumSeqs`."""

    gpu_memory_utilization: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Share of each GPU's memory vLLM may take, weights and KV cache (vLLM `--gpu-memory-utilization`,
    default 0.9)."""

    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Data type of weights and activations (vLLM `--dtype`); `auto` follows the base model's config."""

    quantization: Literal["bitsandbytes", "fp8"] | None = None
    """Quantize the base model's weights at load time (vLLM `--quantization`): `bitsandbytes` (4-bit) or `fp8`
    (GPUs with FP8 support). Adapters stay as trained."""

    tensor_parallel_size: Annotated[int, Field(ge=1, le=16)] | None = None
    """GPUs one replica shards the model over (vLLM `--tensor-parallel-size`). Default: the pod's GPUs."""


class Runtime(ApiModel):
    """The serving runtime: TGI or vLLM. Set at most one; neither is TGI with its defaults."""

    rules = (
        Rule(
            "!(has(self.tgi) && has(self.vllm))",
            "set at most one of runtime.tgi or runtime.vllm",
            lambda r: r.tgi is None or r.vllm is None,
        ),
    )

    tgi: TGISettings | None = None
    """text-generation-inference settings (the default runtime)."""

    vllm: VLLMSettings | None = None
    """vLLM settings: serve with vLLM's OpenAI-compatible server instead of TGI."""

    @property
    def name(self) -> Literal["tgi", "vllm"]:
        return "vllm" if self.vllm is not None else "tgi"

    @property
    def tgi_settings(self) -> TGISettings:
        return self.tgi or TGISettings()


class ServingResources(ApiModel):
    """Resources and placement of each serving pod."""

    gpus: Annotated[int, Field(ge=0, le=16)] = 1
    """GPUs per pod."""

    gpu_resource_name: ExtendedResourceName = "nvidia.com/gpu"
    """Extended resource that counts GPUs on your nodes."""

    cpu: Quantity = "2"
    """CPU request per pod."""

    memory: Quantity = "16Gi"
    """Memory request and limit per pod."""

    shm_size: Quantity = "1Gi"
    """Size of /dev/shm (NCCL between shards needs more than the 64Mi default)."""

    node_selector: NodeSelector = Field(default_factory=dict)
    """Labels a node must have to run serving pods. Keys are label keys (an optional DNS-subdomain prefix and
    '/', then a name of at most 63 characters); values are label values (at most 63 letters, digits, '-', '_'
    or '.', starting and ending with a letter or digit, or empty)."""

    tolerations: Annotated[list[Toleration], Field(max_length=32)] = Field(
        default_factory=lambda: [Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")]
    )
    """Tolerations of the serving pods. The default tolerates the usual `nvidia.com/gpu` taint."""

    priority_class_name: Annotated[str, Field(max_length=253, pattern=DNS_LABEL)] | None = None
    """PriorityClass of the serving pods."""


class ScalingBehavior(ApiModel):
    """How fast the HorizontalPodAutoscaler may scale."""

    scale_up_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 0
    """Look-back window before scaling up."""

    scale_down_stabilization_seconds: Annotated[int, Field(ge=0, le=3600)] = 300
    """Look-back window before scaling down (keeps replicas through short lulls)."""

    scale_down_pods_per_minute: Annotated[int, Field(ge=1, le=1000)] = 1
    """At most this many pods removed per minute."""


# A Kubernetes quantity above zero (its suffix or exponent cannot change the sign). `[+]`, not an escaped
# plus: the same text is a Python regex, an RE2 pattern and a CEL string literal.
POSITIVE_QUANTITY = "^[+]?[0-9.]*[1-9]"


class Autoscaling(ApiModel):
    """An autoscaling/v2 HorizontalPodAutoscaler for the serving Deployment. Set at least one target."""

    rules = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must be <= maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
        ),
        # The HPA refuses a zero or negative target, which would leave the operator retrying.
        Rule(
            # A regex, not quantity(): parsing a huge exponent can take the API server past its timeout.
            f"!has(self.queueSizeTarget) || self.queueSizeTarget.matches('{POSITIVE_QUANTITY}')",
            "autoscaling.queueSizeTarget must be positive",
            lambda a: (
                a.queue_size_target is None or re.match(POSITIVE_QUANTITY, a.queue_size_target) is not None
            ),
            field_path=".queueSizeTarget",
        ),
        Rule(
            "has(self.queueSizeTarget) || has(self.cpuUtilization)",
            "set autoscaling.queueSizeTarget, autoscaling.cpuUtilization, or both",
            lambda a: a.queue_size_target is not None or a.cpu_utilization is not None,
        ),
    )

    min_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    """Fewest replicas."""

    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 4
    """Most replicas."""

    queue_size_target: Annotated[Quantity, Field()] | None = None
    """Target average of requests waiting per pod, as a Pods metric: TGI's `tgi_queue_size`, vLLM's
    `vllm:num_requests_waiting`. Needs a custom metrics adapter (e.g. prometheus-adapter) exposing it."""

    cpu_utilization: Annotated[int, Field(ge=1, le=1000)] | None = None
    """Target average CPU utilization in percent of the request (needs metrics-server)."""

    behavior: ScalingBehavior = Field(default_factory=ScalingBehavior)
    """Scaling speed."""


class Rollout(ApiModel):
    """How a new adapter revision reaches every replica."""

    max_surge: Annotated[int, Field(ge=1, le=100)] = 1
    """Extra pods started during a rollout (each needs its GPUs). Old pods go only after new ones passed
    their smoke tests (maxUnavailable 0), so serving capacity never drops."""

    no_surge_fallback: bool = False
    """Opt-in for clusters with no room to surge (GPU quota or full nodes): roll with maxSurge 0 and
    maxUnavailable 1 instead, replacing one pod at a time. Capacity drops by one pod during the rollout;
    with a single replica, requests fail while it restarts."""

    progress_deadline_seconds: Annotated[int, Field(ge=30, le=86_400)] = 900
    """A rollout that has not finished after this long is rolled back (model loading included)."""

    history_limit: Annotated[int, Field(ge=1, le=50)] = 5
    """Rollouts kept in `status.history`."""


class Promotion(ApiModel):
    """Which revisions of a followed adapter (`from.adapter`) are served."""

    policy: Literal["Automatic", "Manual"] = "Automatic"
    """`Automatic`: the newest revision whose FineTuneJob succeeded and passed its evaluation gate.
    `Manual`: only a revision pinned in `from.revision`; a newer passing one is shown in
    `status.adapters[].available` and the `PromotionPending` condition until you pin it."""


class ServiceSettings(ApiModel):
    """The Service in front of the serving pods."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Service type."""

    port: Annotated[int, Field(ge=1, le=65535)] = 80
    """Port the Service listens on (the runtime listens on 8080 in the pod)."""

    annotations: ServiceAnnotations = Field(default_factory=dict)
    """Annotations for the Service (e.g. for an internal load balancer). Keys are annotation keys (an optional
    DNS-subdomain prefix and '/', then a name of at most 63 characters); values up to 2048 characters."""


class Monitoring(ApiModel):
    """Prometheus scraping of the serving pods' metrics (the runtime's `/metrics`: queue size, latencies,
    tokens)."""

    service_monitor: bool = False
    """Create a ServiceMonitor (monitoring.coreos.com/v1, the Prometheus Operator's API) named like the
    deployment, selecting its Service's `http` port. Needs that API installed; without it the operator reports
    a `ServiceMonitorUnavailable` event and serves on."""

    interval: Annotated[str, Field(pattern=r"^[0-9]+(s|m)$", max_length=8)] = "30s"
    """Scrape interval."""

    labels: MonitorLabels = Field(default_factory=dict)
    """Extra labels on the ServiceMonitor, for your Prometheus's `serviceMonitorSelector`
    (e.g. `release: prometheus`). Keys are label keys, values label values (as `resources.nodeSelector`)."""


class ModelDeploymentSpec(ApiModel):
    """Desired state of a ModelDeployment."""

    rules = (
        Rule(
            "!has(self.autoscaling) || !has(self.replicas)",
            "set either replicas or autoscaling, not both",
            lambda s: s.autoscaling is None or s.replicas is None,
        ),
        Rule(
            "!has(self.runtime) || !has(self.runtime.vllm) || "
            "self.adapters.all(a, !has(a.smokeTest) || !has(a.smokeTest.chat) || a.smokeTest.chat)",
            VLLM_RAW_SMOKE_TEST,
            lambda s: (
                s.runtime.vllm is None or all(a.smoke_test is None or a.smoke_test.chat for a in s.adapters)
            ),
            field_path=".adapters",
        ),
    )

    base_model: BaseModelSource
    """The base model the adapters were trained on, from the model store."""

    model_store: ModelStore = Field(default_factory=ModelStore)
    """The PersistentVolumeClaim holding the base model and the adapters (mounted read-only)."""

    adapters: Annotated[list[ServedAdapter], Field(min_length=1, max_length=64)] = Field(
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}
    )
    """The adapters served, each by the name clients select it with."""

    runtime: Runtime = Field(default_factory=Runtime)
    """Serving runtime settings."""

    resources: ServingResources = Field(default_factory=ServingResources)
    """Resources and placement of each pod."""

    replicas: Annotated[int, Field(ge=0, le=1000)] | None = None
    """Fixed number of replicas (default 1) when `autoscaling` is not set."""

    autoscaling: Autoscaling | None = None
    """Scale with a HorizontalPodAutoscaler instead of a fixed count."""

    rollout: Rollout = Field(default_factory=Rollout)
    """Rolling updates to new adapter revisions."""

    promotion: Promotion = Field(default_factory=Promotion)
    """Which revisions are served."""

    service: ServiceSettings = Field(default_factory=ServiceSettings)
    """The Service."""

    monitoring: Monitoring = Field(default_factory=Monitoring)
    """Metrics scraping."""


class ServingRevision(ApiModel):
    """An adapter revision as served."""

    name: str
    """The adapter's name (its `adapter_id`)."""

    revision: str = ""
    """Revision (`v3`); empty for a `from.path` adapter."""

    path: str
    """Folder in the model store."""

    digest: str = ""
    """sha256 of the weights, from the FineTuneJob that published it."""

    fine_tune_job: str = ""
    """The FineTuneJob that published it."""

    rank: Annotated[int, Field(ge=0)] = 0
    """LoRA rank, from the FineTuneJob's `lora.r`; 0 where unknown (a `from.path` adapter)."""


class Approval(ApiModel):
    """The pin that serves an adapter under `promotion.policy: Manual`, and who approved it."""

    revision: str
    """The pinned revision (`from.revision`)."""

    approved_by: str = ""
    """Who approved it (`from.approvedBy`, checked against the requester at admission); empty when the pin
    names no one."""

    approved_at: str
    """When the operator first saw this revision pinned by this approver (RFC 3339)."""


class AdapterStatus(ApiModel):
    """What is known of one adapter."""

    name: str
    """The adapter's name."""

    serving: str = ""
    """Revision every replica serves (empty until the first rollout completes)."""

    available: str = ""
    """Newest promotable revision (under Manual promotion: waiting for approval)."""

    rejected: Annotated[list[str], Field(max_length=64)] = Field(default_factory=list)
    """Revisions rolled back because they failed; never rolled out again by following (pin to retry)."""

    approval: Approval | None = None
    """Under Manual promotion, the pin in `from.revision`: who approved it (`from.approvedBy`) and when the
    operator first saw it. Absent under Automatic promotion and for adapters not followed by name."""


class RolloutRecord(ApiModel):
    """One rollout: the adapter revisions it moved to, and how it ended."""

    revisions: dict[str, str] = Field(default_factory=dict)
    """Adapter name -> revision (or path) it rolls to."""

    previous: dict[str, str] = Field(default_factory=dict)
    """Adapter name -> what was served before."""

    phase: Literal["Progressing", "Complete", "RolledBack", "Failed"]
    """Progressing, Complete, RolledBack (it failed and the previous revisions were restored) or Failed (a
    first rollout that failed, with nothing to go back to)."""

    reason: str = ""
    """CamelCase cause, e.g. SmokeTestFailed or ProgressDeadlineExceeded."""

    message: str = ""
    """Detail."""

    start_time: str
    """When it started (RFC 3339)."""

    completion_time: str | None = None
    """When it ended (RFC 3339)."""

    generation: Annotated[int, Field(ge=0)] = 0
    """The ModelDeployment's `.metadata.generation` when it started. A rolled-back set of revisions is not
    tried again until the spec changes."""

    adapters: Annotated[list[ServingRevision], Field(max_length=64)] = Field(default_factory=list)
    """The adapter revisions it rolls to, in full."""


class ModelDeploymentStatus(ApiModel):
    """Observed state of a ModelDeployment, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` the status reflects."""

    phase: Literal["Pending", "Progressing", "Ready", "Degraded"] | None = None
    """Summary for `kubectl get`; automation should read `conditions`."""

    conditions: Annotated[list[Condition], Field(max_length=16)] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    """Ready, Progressing, Degraded, RolledBack and PromotionPending, each with a reason and a message."""

    replicas: Annotated[int, Field(ge=0)] = 0
    """Desired replicas (the Deployment's, so the HPA's choice)."""

    ready_replicas: Annotated[int, Field(ge=0)] = 0
    """Replicas ready to serve (their smoke tests passed)."""

    serving: Annotated[list[ServingRevision], Field(max_length=64)] = Field(default_factory=list)
    """The adapter revisions every replica serves."""

    adapters: Annotated[list[AdapterStatus], Field(max_length=64)] = Field(default_factory=list)
    """Per adapter: serving, available and rejected revisions."""

    rollout: RolloutRecord | None = None
    """The current or last rollout."""

    history: Annotated[list[RolloutRecord], Field(max_length=50)] = Field(default_factory=list)
    """Earlier rollouts, newest first (up to `rollout.historyLimit`): what to pin back to."""

    endpoint: str = ""
    """In-cluster URL of the Service (the runtime's API; use it as InferenceClient's base URL)."""

    deployment_name: str = ""
    """Name of the Deployment."""

    runtime: str = ""
    """The serving runtime: `tgi` or `vllm`."""

    base_model_name: str = ""
    """The `model` that selects the base model, without an adapter, in chat completions."""
