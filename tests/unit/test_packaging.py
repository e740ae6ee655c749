"""The operator and the trainer install separately, and the operator never
pulls the training stack (torch alone is gigabytes)."""

from __future__ import annotations

import importlib.metadata as md
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ML_STACK = {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "trl"}


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", requirement).group().lower().replace("_", "-")


def _installed_closure(dist: str) -> set[str]:
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = _name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [r for r in reqs if "extra ==" not in r]
    return seen


def _declared_requirements(project: Path, out: Path) -> set[str]:
    """Build the project's metadata with setuptools' PEP 517 hook (offline)."""
    code = (
        "import sys; from setuptools import build_meta;"
        "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(out)], cwd=project, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    dist_info = out / proc.stdout.strip().splitlines()[-1]
    lines = (dist_info / "METADATA").read_text().splitlines()
    return {_name(line.split(":", 1)[1].strip()) for line in lines if line.startswith("Requires-Dist:")}


def test_installed_operator_pulls_no_ml_framework() -> None:
    closure = _installed_closure("loraforge-operator")
    assert "kopf" in closure  # the walk really followed the dependencies
    assert not closure & ML_STACK, closure & ML_STACK


def test_operator_declares_no_ml_framework(tmp_path: Path) -> None:
    assert not _declared_requirements(REPO / "operator", tmp_path) & ML_STACK


def test_trainer_declares_the_training_stack_from_its_shared_requirements_file(tmp_path: Path) -> None:
    declared = _declared_requirements(REPO / "jobs", tmp_path)
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= declared
    pinned = {
        _name(line)
        for line in (REPO / "jobs" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert declared == pinned


def test_the_trainer_package_carries_its_copy_of_the_api_models() -> None:
    """jobs/pyproject.toml finds packages under src/: the generated API models must be packages of their
    own (an __init__.py in each folder), or the trainer image would install the trainer without them."""
    from setuptools import find_packages

    packages = set(find_packages(REPO / "jobs" / "src"))
    assert {"loraforge_trainer", "loraforge_trainer.api", "loraforge_trainer.api.finetunejob"} <= packages
