"""Fixtures for the trainer tier: real models on the CPU, run offline
(``base_model_dir`` and ``tiny_model_dir`` are in tests/conftest.py).

- ``train``: runs ``python -m loraforge_trainer`` as a real process on the tiny model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
FACTS = REPO / "examples" / "datasets" / "fictional-facts"
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class Result:
    code: int
    output: str
    store: Path

    def adapter_dir(self, name: str = "facts") -> Path:
        return self.store / "adapters" / name

    def revisions(self, name: str = "facts") -> list[str]:
        d = self.adapter_dir(name)
        return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def make_store(tmp: Path, model_dir: Path) -> Path:
    """A model store laid out as in the cluster: base/, datasets/."""
    store = tmp / "store"
    (store / "base").mkdir(parents=True, exist_ok=True)
    (store / "datasets").mkdir(exist_ok=True)
    link = store / "base" / "model"
    if not link.exists():
        link.symlink_to(model_dir, target_is_directory=True)
    facts = store / "datasets" / "facts"
    if not facts.exists():
        shutil.copytree(FACTS, facts)
    return store


def small_config(**sections: Any) -> dict[str, Any]:
    """A short run of the tiny model on the fictional facts."""
    cfg: dict[str, Any] = {
        "baseModel": {"path": "base/model"},
        "dataset": {
            "path": "datasets/facts/train.jsonl",
            "validationPath": "datasets/facts/validation.jsonl",
        },
        "adapter": {"name": "facts"},
        "lora": {"r": 4, "alpha": 8},
        "training": {
            "maxSteps": 4,
            "batchSize": 4,
            "gradientAccumulationSteps": 1,
            "learningRate": 0.005,
            "loggingSteps": 1,
            "maxSeqLength": 128,
            "gradientCheckpointing": False,
        },
        "checkpoints": {"everySteps": 2, "keep": 2},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def run_trainer(
    tmp: Path,
    model_dir: Path,
    cfg: dict[str, Any],
    *extra: str,
    env: dict[str, str] | None = None,
    timeout: float = 900,
    launcher: list[str] | None = None,
) -> Result:
    store = make_store(tmp, model_dir)
    config = tmp / "run.yaml"
    config.write_text(yaml.safe_dump(cfg))
    cmd = [
        *(launcher or [sys.executable, "-m"]),
        "loraforge_trainer",
        "--config",
        str(config),
        "--model-store",
        str(store),
        *extra,
    ]
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp,
        env={**os.environ, **OFFLINE, **(env or {})},
    )
    return Result(proc.returncode, proc.stdout + proc.stderr, store)


@pytest.fixture
def train(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Result]:
    def go(cfg: dict[str, Any] | None = None, *extra: str, **kw: Any) -> Result:
        return run_trainer(tmp_path, kw.pop("model_dir", tiny_model_dir), cfg or small_config(), *extra, **kw)

    return go


def manifest(revision_dir: Path) -> dict[str, Any]:
    return json.loads((revision_dir / "manifest.json").read_text())
