"""The CustomResourceDefinitions, generated from the API models.

    python -m loraforge_operator.crds            # rewrite crds/ and the chart's copy
    python -m loraforge_operator.crds --check    # exit 1 if they are stale

`make crds` runs the first; a unit test runs the second.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import api
from .finetunejob.model import MUTABLE_AFTER_START, FineTuneJobSpec, FineTuneJobStatus
from .schema import cel, structural_schema


def _frozen_after_start_rule(spec_model: type, mutable: tuple[str, ...]) -> dict[str, str]:
    checks = []
    for name, field in spec_model.model_fields.items():
        if name in mutable:
            continue
        f = field.alias or name
        same_presence = f"has(self.spec.{f}) == has(oldSelf.spec.{f})"
        same_value = f"(!has(self.spec.{f}) || self.spec.{f} == oldSelf.spec.{f})"
        checks.append(f"({same_presence} && {same_value})")
    allowed = ", ".join(f"spec.{m}" for m in mutable)
    return cel(
        "!has(oldSelf.status) || !has(oldSelf.status.startTime) || (" + " && ".join(checks) + ")",
        f"the spec cannot change once training has started (status.startTime is set), except {allowed}; "
        "create a new FineTuneJob instead",
        reason="FieldValueForbidden",
    )


def finetunejob_crd() -> dict[str, Any]:
    spec = structural_schema(FineTuneJobSpec)
    status = structural_schema(FineTuneJobStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"finetunejobs.{api.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "loraforge"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": "FineTuneJob",
                "listKind": "FineTuneJobList",
                "plural": "finetunejobs",
                "singular": "finetunejob",
                "shortNames": ["ftj"],
                "categories": [api.CATEGORY],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Progress",
                            "type": "integer",
                            "jsonPath": ".status.progress.percent",
                            "description": "Training progress in percent",
                        },
                        {
                            "name": "Step",
                            "type": "integer",
                            "jsonPath": ".status.progress.step",
                            "priority": 1,
                        },
                        {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
                        {
                            "name": "Eval-Loss",
                            "type": "number",
                            "jsonPath": ".status.progress.evalLoss",
                            "priority": 1,
                        },
                        {"name": "Adapter", "type": "string", "jsonPath": ".status.adapter.revision"},
                        {"name": "Method", "type": "string", "jsonPath": ".spec.method", "priority": 1},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "A FineTuneJob fine-tunes a base model with LoRA or QLoRA on a dataset "
                                "and publishes an immutable, versioned adapter revision to the model "
                                "store. The operator runs it as a batch Job on GPU nodes and reports "
                                "progress, evaluation and the published revision in its status."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "API version: loraforge.io/v1alpha1.",
                                },
                                "kind": {"type": "string", "description": "FineTuneJob."},
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                            "x-kubernetes-validations": [
                                _frozen_after_start_rule(FineTuneJobSpec, MUTABLE_AFTER_START),
                            ],
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD."""
    return {"finetunejobs.loraforge.io.yaml": finetunejob_crd()}


HEADER = (
    "# Generated by `python -m loraforge_operator.crds` from operator/src/loraforge_operator; do not edit.\n"
)


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraforge_operator.crds", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    parser.add_argument("--out", action="append", type=Path, help="output folder (repeatable)")
    args = parser.parse_args(argv)
    outs = args.out or [Path("crds")]
    stale = []
    for folder in outs:
        for name, crd in all_crds().items():
            path = folder / name
            text = render(crd)
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(str(path))
            else:
                folder.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    if stale:
        print(f"stale (run `make crds`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
