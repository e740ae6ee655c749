"""FineTuneJob specs shared by the unit tests (pydantic models) and the
integration tests (the real API server): one valid spec, and invalid variants,
each with the field path the rejection must name."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

VALID_SPEC: dict[str, Any] = {
    "baseModel": {"path": "base/smollm2-135m-instruct"},
    "dataset": {"path": "datasets/support/train.jsonl", "format": "chat"},
}


@dataclass(frozen=True)
class Invalid:
    name: str
    patch: dict[str, Any]  # deep-merged into VALID_SPEC; None deletes a key
    field: str  # the field path the API server's message must name
    message: str = ""  # and, for CEL rules, this text

    def spec(self) -> dict[str, Any]:
        return merge(copy.deepcopy(VALID_SPEC), self.patch)


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = value
    return base


INVALID = [
    Invalid("no base model", {"baseModel": None}, "spec.baseModel"),
    Invalid(
        "base model path and hub id together",
        {"baseModel": {"huggingFaceId": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
        "spec.baseModel",
        "set exactly one of baseModel.path or baseModel.huggingFaceId",
    ),
    Invalid(
        "base model path escapes the store", {"baseModel": {"path": "../etc/passwd"}}, "spec.baseModel.path"
    ),
    Invalid("absolute base model path", {"baseModel": {"path": "/models/x"}}, "spec.baseModel.path"),
    Invalid(
        "malformed hub id",
        {"baseModel": {"path": None, "huggingFaceId": "no-slash"}},
        "spec.baseModel.huggingFaceId",
    ),
    Invalid(
        "dataset path and ConfigMap together",
        {"dataset": {"configMap": {"name": "data", "key": "train.jsonl"}}},
        "spec.dataset",
        "set exactly one of dataset.path or dataset.configMap",
    ),
    Invalid("unknown dataset format", {"dataset": {"format": "csv"}}, "spec.dataset.format"),
    Invalid(
        "validation split above one half",
        {"dataset": {"validationSplit": 0.9}},
        "spec.dataset.validationSplit",
    ),
    Invalid(
        "skipped records without the Skip policy",
        {"dataset": {"maxSkippedRecords": 5}},
        "spec.dataset.maxSkippedRecords",
        "maxSkippedRecords applies only with onInvalidRecord: Skip",
    ),
    Invalid("unknown method", {"method": "full"}, "spec.method"),
    Invalid(
        "quantization with plain LoRA",
        {"method": "lora", "quantization": {"type": "nf4"}},
        "spec.quantization",
        "quantization applies only to method qlora",
    ),
    Invalid(
        "unknown 4-bit type", {"method": "qlora", "quantization": {"type": "int8"}}, "spec.quantization.type"
    ),
    Invalid("LoRA rank zero", {"lora": {"r": 0}}, "spec.lora.r"),
    Invalid("LoRA dropout of one", {"lora": {"dropout": 1.0}}, "spec.lora.dropout"),
    Invalid("no target modules", {"lora": {"targetModules": []}}, "spec.lora.targetModules"),
    Invalid(
        "epochs and max steps together",
        {"training": {"epochs": 2, "maxSteps": 100}},
        "spec.training",
        "set either training.epochs or training.maxSteps, not both",
    ),
    Invalid("zero learning rate", {"training": {"learningRate": 0}}, "spec.training.learningRate"),
    Invalid(
        "several nodes without GPUs",
        {"resources": {"nodes": 2, "gpusPerNode": 0}},
        "spec.resources.gpusPerNode",
        "training on several nodes needs resources.gpusPerNode >= 1",
    ),
    Invalid("memory that is not a quantity", {"resources": {"memory": "lots"}}, "spec.resources.memory"),
    Invalid("a quantity with a fractional exponent", {"resources": {"cpu": ".0E0."}}, "spec.resources.cpu"),
    Invalid(
        "a quantity with a huge exponent",
        {"resources": {"memory": "1e61119634809086"}},
        "spec.resources.memory",
    ),
    Invalid(
        "a GPU resource name the API server refuses",
        {"resources": {"gpuResourceName": "0/."}},
        "spec.resources.gpuResourceName",
    ),
    Invalid(
        "a GPU resource name in kubernetes.io",
        {"resources": {"gpuResourceName": "kubernetes.io/gpu"}},
        "spec.resources.gpuResourceName",
    ),
    Invalid(
        "toleration with an unknown operator",
        {"resources": {"tolerations": [{"key": "a", "operator": "Maybe"}]}},
        "spec.resources.tolerations[0].operator",
    ),
    Invalid("adapter name that is not a DNS label", {"adapter": {"name": "Bad_Name"}}, "spec.adapter.name"),
    Invalid("deadline under a minute", {"activeDeadlineSeconds": 10}, "spec.activeDeadlineSeconds"),
    Invalid("unknown field", {"epochs": 3}, "spec.epochs"),
]

INVALID.append(
    Invalid(
        "pod label with a reserved prefix",
        {"podMetadata": {"labels": {"loraforge.io/finetunejob": "other"}}},
        "spec.podMetadata.labels",
        "reserved prefixes",
    )
)

# Maps that become labels and annotations of the training pods, and toleration keys and values: what the API
# server would refuse on the Job is refused at admission (docs/reliability.md, "Bad input").
INVALID += [
    Invalid(
        "empty pod label key",
        {"podMetadata": {"labels": {"": "x"}}},
        "spec.podMetadata.labels",
        "podMetadata.labels keys must be label keys",
    ),
    Invalid(
        "pod label key with a capitalised prefix",
        {"podMetadata": {"labels": {"Example.com/team": "x"}}},
        "spec.podMetadata.labels",
        "podMetadata.labels keys must be label keys",
    ),
    Invalid(
        "pod label value with a space",
        {"podMetadata": {"labels": {"team": "a b"}}},
        "spec.podMetadata.labels.team",
    ),
    Invalid(
        "pod annotation key with two slashes",
        {"podMetadata": {"annotations": {"a/b/c": "x"}}},
        "spec.podMetadata.annotations",
        "podMetadata.annotations keys must be annotation keys",
    ),
    Invalid(
        "node selector key with a name over 63 characters",
        {"resources": {"nodeSelector": {"example.com/" + "x" * 64: "true"}}},
        "spec.resources.nodeSelector",
        "resources.nodeSelector keys must be label keys",
    ),
    Invalid(
        "node selector key with a prefix over 253 characters",
        {"resources": {"nodeSelector": {"p" * 254 + "/gpu": "true"}}},
        "spec.resources.nodeSelector",
        "resources.nodeSelector keys must be label keys",
    ),
    Invalid(
        "node selector value ending in a dash",
        {"resources": {"nodeSelector": {"gpu": "h100-"}}},
        "spec.resources.nodeSelector.gpu",
    ),
    Invalid(
        "toleration key with a space",
        {"resources": {"tolerations": [{"key": "a b", "operator": "Exists"}]}},
        "spec.resources.tolerations[0].key",
    ),
    Invalid(
        "toleration with operator Exists and a value",
        {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
        "spec.resources.tolerations[0].value",
        "a toleration with operator Exists takes no value",
    ),
]

# Evaluation suites: admitted only when the trainer can ask them (docs/finetunejob.md, "Evaluation").
HELD_OUT = {"name": "held-out", "heldOut": True}
INVALID += [
    Invalid(
        "suite with two sources",
        {"evaluation": {"suites": [{**HELD_OUT, "path": "datasets/qa.jsonl"}]}},
        "spec.evaluation.suites[0]",
        "set exactly one of heldOut: true, path or configMap",
    ),
    Invalid(
        "suite with no source",
        {"evaluation": {"suites": [{"name": "qa"}]}},
        "spec.evaluation.suites[0]",
        "set exactly one of heldOut: true, path or configMap",
    ),
    Invalid(
        "two suites of one name",
        {"evaluation": {"suites": [HELD_OUT, {"name": "held-out", "path": "datasets/qa.jsonl"}]}},
        "spec.evaluation.suites",
        "each suite needs a name of its own",
    ),
    Invalid(
        "suite name that is not a DNS label",
        {"evaluation": {"suites": [{**HELD_OUT, "name": "Held Out"}]}},
        "spec.evaluation.suites[0].name",
    ),
    Invalid(
        "a pattern for a scorer that is not regex",
        {"evaluation": {"suites": [{**HELD_OUT, "scorer": {"type": "contains", "pattern": "x"}}]}},
        "spec.evaluation.suites[0].scorer.pattern",
        "scorer.pattern applies only to scorer type regex",
    ),
    Invalid(
        "an unknown scorer",
        {"evaluation": {"suites": [{**HELD_OUT, "scorer": {"type": "fuzzy"}}]}},
        "spec.evaluation.suites[0].scorer.type",
    ),
    Invalid(
        "minimum accuracy above one",
        {"evaluation": {"suites": [{**HELD_OUT, "minAccuracy": 1.5}]}},
        "spec.evaluation.suites[0].minAccuracy",
    ),
    Invalid(
        "held-out questions of a text dataset",
        {"dataset": {"format": "text"}, "evaluation": {"suites": [HELD_OUT]}},
        "spec.evaluation.suites",
        "dataset.format text has none",
    ),
    Invalid(
        "held-out questions without held-out records",
        {"dataset": {"validationPath": None, "validationSplit": 0.0}, "evaluation": {"suites": [HELD_OUT]}},
        "spec.evaluation.suites",
        "needs held-out records",
    ),
    # The trainer refused these with exit code 3 once the pod ran; the API refuses them at admission.
    Invalid(
        "a loss threshold without held-out records",
        {"dataset": {"validationSplit": 0}, "evaluation": {"maxEvalLoss": 2.5}},
        "spec.dataset.validationSplit",
        "evaluation.maxEvalLoss and evaluation.minImprovement judge the loss on held-out records",
    ),
    Invalid(
        "an improvement threshold without held-out records",
        {"dataset": {"validationSplit": 0.0}, "evaluation": {"minImprovement": 0.05}},
        "spec.dataset.validationSplit",
        "set dataset.validationSplit > 0 or dataset.validationPath",
    ),
    Invalid(
        "a model card section over 8192 characters",
        {"adapter": {"modelCard": {"limitations": "x" * 8193}}},
        "spec.adapter.modelCard.limitations",
    ),
]
