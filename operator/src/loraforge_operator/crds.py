"""The CustomResourceDefinitions, generated from the API models.

    python -m loraforge_operator.crds            # rewrite crds/, docs/reference/ and the trainer's API copy
    python -m loraforge_operator.crds --check    # exit 1 if they are stale

`make crds` runs the first; a unit test runs the second.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from . import api
from .finetunejob.model import MUTABLE_AFTER_START, FineTuneJobSpec, FineTuneJobStatus
from .modeldeployment.model import ModelDeploymentSpec, ModelDeploymentStatus
from .schema import cel, structural_schema
from .settings import LABEL_PART_OF, PART_OF

# `<name>-train-<index>` (an Indexed Job's pod hostname) must fit a DNS label.
MAX_NAME_LENGTH = 52
# A Deployment's pods are named <name>-<10-char hash>-<5 chars>; labels hold the name (63).
MAX_MD_NAME_LENGTH = 47


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


def _crd(
    kind: str,
    short_name: str,
    description: str,
    spec_model: type,
    status_model: type,
    columns: list[dict[str, Any]],
    rules: list[dict[str, str]],
    subresources: dict[str, Any],
) -> dict[str, Any]:
    """A namespaced CRD of loraforge's group with one served, stored version."""
    plural = api.KINDS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{api.GROUP}",
            "labels": {LABEL_PART_OF: PART_OF},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short_name],
                "categories": [api.CATEGORY],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": subresources,
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"API version: {api.API_VERSION}.",
                                },
                                "kind": {"type": "string", "description": f"{kind}."},
                                "metadata": {"type": "object"},
                                "spec": structural_schema(spec_model),
                                "status": structural_schema(status_model),
                            },
                            "x-kubernetes-validations": rules,
                        }
                    },
                }
            ],
        },
    }


def finetunejob_crd() -> dict[str, Any]:
    return _crd(
        "FineTuneJob",
        "ftj",
        "A FineTuneJob fine-tunes a base model with LoRA or QLoRA on a dataset and publishes an immutable, "
        "versioned adapter revision to the model store. The operator runs it as a batch Job on GPU nodes and "
        "reports progress, evaluation and the published revision in its status.",
        FineTuneJobSpec,
        FineTuneJobStatus,
        [
            {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Progress",
                "type": "integer",
                "jsonPath": ".status.progress.percent",
                "description": "Training progress in percent",
            },
            {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step", "priority": 1},
            {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
            {"name": "Eval-Loss", "type": "number", "jsonPath": ".status.progress.evalLoss", "priority": 1},
            {"name": "Adapter", "type": "string", "jsonPath": ".status.adapter.revision"},
            {
                "name": "Answers",
                "type": "string",
                "jsonPath": ".status.adapter.answers",
                "description": "The first evaluation suite: right answers of the adapter (of the base model)",
                "priority": 1,
            },
            {"name": "Method", "type": "string", "jsonPath": ".spec.method", "priority": 1},
        ],
        [
            _frozen_after_start_rule(FineTuneJobSpec, MUTABLE_AFTER_START),
            cel(
                f"size(self.metadata.name) <= {MAX_NAME_LENGTH}",
                f"metadata.name may be at most {MAX_NAME_LENGTH} characters: the "
                "training Job and its pods are named after it",
            ),
        ],
        {"status": {}},
    )


def modeldeployment_crd() -> dict[str, Any]:
    return _crd(
        "ModelDeployment",
        "md",
        "A ModelDeployment serves a base model and LoRA adapters with a serving runtime (TGI or vLLM), "
        "autoscaled, and rolls every replica to each newly promoted adapter revision without downtime: new "
        "pods are smoke-tested with the adapter before old ones go, and a revision that fails is rolled back "
        "by itself.",
        ModelDeploymentSpec,
        ModelDeploymentStatus,
        [
            {"name": "Status", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
            {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
            {
                "name": "Serving",
                "type": "string",
                "jsonPath": ".status.serving[*].revision",
                "description": "Adapter revisions every replica serves",
            },
            {"name": "Rollout", "type": "string", "jsonPath": ".status.rollout.phase"},
            {"name": "Runtime", "type": "string", "jsonPath": ".status.runtime", "priority": 1},
            {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint", "priority": 1},
        ],
        [
            cel(
                f"size(self.metadata.name) <= {MAX_MD_NAME_LENGTH}",
                f"metadata.name may be at most {MAX_MD_NAME_LENGTH} characters: the "
                "Deployment, Service and autoscaler are named after it",
            ),
        ],
        # `kubectl scale md` (without autoscaling) and what an HPA could target.
        {
            "status": {},
            "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"},
        },
    )


def all_crds() -> dict[str, dict[str, Any]]:
    """File name -> CRD."""
    return {
        "finetunejobs.loraforge.io.yaml": finetunejob_crd(),
        "modeldeployments.loraforge.io.yaml": modeldeployment_crd(),
    }


def reference_markdown(crd: dict[str, Any]) -> str:
    """A field-by-field reference of a CRD, from the same schema `kubectl explain` reads."""
    names = crd["spec"]["names"]
    version = crd["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    lines = [
        f"# {names['kind']} reference",
        "",
        "<!-- Generated by `python -m loraforge_operator.crds` from the API models; do not edit. -->",
        "",
        f"`{crd['spec']['group']}/{version['name']}`, kind `{names['kind']}`, short name "
        f"`{', '.join(names.get('shortNames', []))}`, category `{', '.join(names.get('categories', []))}`.",
        "",
        schema["description"],
        "",
    ]
    for rule in schema.get("x-kubernetes-validations", []):
        lines += [f"Whole-object rule: {rule['message']}.", ""]

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    def walk(node: dict[str, Any], path: str, required: bool) -> None:
        kind = node.get("type", "object")
        if kind == "array":
            kind = f"[]{node.get('items', {}).get('type', 'object')}"
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            kind = f"map[string]{node['additionalProperties'].get('type', 'object')}"
        limits = []
        if "enum" in node:
            limits.append("one of " + ", ".join(f"`{v}`" for v in node["enum"]))
        if "minimum" in node:
            limits.append(f"{'>' if node.get('exclusiveMinimum') else '≥'} {node['minimum']}")
        if "maximum" in node:
            limits.append(f"{'<' if node.get('exclusiveMaximum') else '≤'} {node['maximum']}")
        if "pattern" in node:
            limits.append(f"pattern `{node['pattern']}`")
        for key, text in (("maxLength", "at most {} characters"), ("maxItems", "at most {} items")):
            if key in node:
                limits.append(text.format(node[key]))
        if node.get("minItems"):
            limits.append(f"at least {node['minItems']} items")
        limits += [f"rule: {r['message']}" for r in node.get("x-kubernetes-validations", [])]
        default = f"`{json.dumps(node['default'])}`" if "default" in node else ""
        desc = node.get("description", "")
        if limits:
            desc += " <br>" + "; ".join(limits)
        lines.append(f"| `{path}` | {kind} | {'yes' if required else ''} | {cell(default)} | {cell(desc)} |")
        items = node.get("items") or {}
        children = node.get("properties") or items.get("properties") or {}
        needed = set(node.get("required") or items.get("required") or [])
        prefix = f"{path}[]" if node.get("type") == "array" else path
        for name in sorted(children):
            walk(children[name], f"{prefix}.{name}", name in needed)

    for section in ("spec", "status"):
        lines += [
            f"## {section}",
            "",
            "| field | type | required | default | description |",
            "| --- | --- | --- | --- | --- |",
        ]
        node = schema["properties"][section]
        needed = set(node.get("required") or [])
        for name in sorted(node.get("properties", {})):
            walk(node["properties"][name], f"{section}.{name}", name in needed)
        lines.append("")
    return "\n".join(lines)


# --- the trainer's copy of the API models ------------------------------------------------------------------
# The trainer image carries no operator code, yet reads the operator's configuration by the API's own
# definition: these modules, and every module they import (relatively), are copied into the trainer's
# package under ``loraforge_trainer/api/`` in the same layout, so their relative imports hold there too.
TRAINER_API_ROOTS = ("finetunejob/model.py", "scoring.py")
TRAINER_API_DIR = "api"
PACKAGE = Path(__file__).resolve().parent


def _imported_modules(rel: PurePosixPath) -> list[PurePosixPath]:
    """The package's modules that the module at ``rel`` imports (relative imports; an absolute import of the
    operator's package could not resolve in the trainer's copy)."""
    tree = ast.parse((PACKAGE / rel).read_text(), str(rel))
    found = []
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        if any(n.split(".")[0] == PACKAGE.name for n in names):
            raise ValueError(
                f"{rel}: imports {PACKAGE.name} by name; the trainer's copy needs relative imports"
            )
        if not isinstance(node, ast.ImportFrom) or node.level == 0:
            continue
        if node.level > len(rel.parts):
            raise ValueError(f"{rel}: a relative import above {PACKAGE.name}")
        base = rel.parent
        for _ in range(node.level - 1):
            base = base.parent
        if node.module:
            targets = [base.joinpath(*node.module.split("."))]
        else:  # `from .. import scoring`: each name must be a module (package __init__s are not copied)
            targets = [base / a.name for a in node.names]
        for target in targets:
            module = target.with_suffix(".py")
            if not (PACKAGE / module).is_file():
                raise ValueError(f"{rel}: imports {target}, which is not a module file of {PACKAGE.name}")
            found.append(module)
    return found


def _module_closure(roots: tuple[str, ...]) -> list[PurePosixPath]:
    seen: list[PurePosixPath] = []
    todo = [PurePosixPath(r) for r in roots]
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen.append(rel)
            todo += _imported_modules(rel)
    return sorted(seen)


API_INIT = '''"""The FineTuneJob API models as the operator defines them, generated from loraforge_operator by
`python -m loraforge_operator.crds`; do not edit. The trainer image carries no operator code: this copy is
how the trainer reads its configuration by the API's own definition (fields, limits, defaults, cross-field
rules and ``finetunejob.model.resolve``), and a unit test fails when it is stale."""
'''


def trainer_api() -> dict[PurePosixPath, str]:
    """The trainer's copy of the API models (path inside ``loraforge_trainer/api/`` -> content): one
    definition, two packages."""
    files: dict[PurePosixPath, str] = {}
    for rel in _module_closure(TRAINER_API_ROOTS):
        header = (
            f"# Generated by `python -m loraforge_operator.crds` from {PACKAGE.name}/{rel}; do not edit.\n"
        )
        files[rel] = header + (PACKAGE / rel).read_text()
        for folder in rel.parents:
            files.setdefault(folder / "__init__.py", API_INIT)
    return dict(sorted(files.items()))


def outputs(
    crd_dirs: list[Path], reference_dir: Path | None, trainer_dir: Path | None = None
) -> dict[Path, str]:
    """Every generated file and its content."""
    files: dict[Path, str] = {}
    for name, crd in all_crds().items():
        for folder in crd_dirs:
            files[folder / name] = render(crd)
        if reference_dir is not None:
            files[reference_dir / f"{crd['spec']['names']['singular']}.md"] = reference_markdown(crd)
    if trainer_dir is not None:
        for rel, text in trainer_api().items():
            files[trainer_dir / TRAINER_API_DIR / rel] = text
    return files


def leftovers(trainer_dir: Path, files: dict[Path, str]) -> list[Path]:
    """Modules in the trainer's copy that are no longer generated (the API stopped importing them)."""
    folder = trainer_dir / TRAINER_API_DIR
    return sorted(p for p in folder.rglob("*.py") if p not in files) if folder.is_dir() else []


HEADER = (
    "# Generated by `python -m loraforge_operator.crds` from operator/src/loraforge_operator; do not edit.\n"
)


def render(crd: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(crd, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loraforge_operator.crds", description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if the files on disk are stale")
    parser.add_argument("--out", action="append", type=Path, help="CRD output folder (repeatable)")
    parser.add_argument(
        "--reference", type=Path, default=Path("docs/reference"), help="field reference folder"
    )
    parser.add_argument(
        "--trainer",
        type=Path,
        default=Path("jobs/src/loraforge_trainer"),
        help="the trainer's package folder (its copy of the API models goes to api/ in it)",
    )
    args = parser.parse_args(argv)
    stale = []
    files = outputs(args.out or [Path("crds")], args.reference, args.trainer)
    for path, text in files.items():
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in leftovers(args.trainer, files) if args.trainer else []:
        if args.check:
            stale.append(f"{path} (no longer generated)")
        else:
            path.unlink()
    if stale:
        print(f"stale (run `make crds`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
