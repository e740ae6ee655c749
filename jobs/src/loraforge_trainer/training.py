"""One training run: data, model, LoRA/QLoRA training with transformers'
Trainer (checkpoints, resume, DDP under torchrun), evaluation against the base
model, the gate, and publishing.

Several processes (GPUs or nodes) are PyTorch distributed as torchrun sets it
up (RANK, WORLD_SIZE, LOCAL_RANK); transformers' Trainer wraps the model in
DDP. Rank 0 alone reports and publishes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from . import __version__, answers, data, modeling, publish
from .config import TrainConfig, check_inputs_exist
from .errors import CONFIG_INVALID, InvalidInput

log = logging.getLogger("loraforge_trainer")

# Fault injection for crash-safety tests: SIGKILL this process at the end of the given optimizer step.
FAULT_KILL_AT_STEP = "LORAFORGE_FAULT_KILL_AT_STEP"

CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")


class Reporter(Protocol):
    def progress(self, step: int, **fields: Any) -> bool: ...
    def result(
        self,
        adapter: dict[str, str],
        metrics: dict[str, float],
        evaluation_passed: bool,
        suites: list[dict[str, Any]] = (),
        explanation: str = "",
    ) -> None: ...


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Dist:
        return cls(
            int(os.environ.get("RANK", "0")),
            int(os.environ.get("WORLD_SIZE", "1")),
            int(os.environ.get("LOCAL_RANK", "0")),
        )

    @property
    def main(self) -> bool:
        return self.rank == 0


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


RUN_STATE = "run.json"


def claim_run_dir(folder: Path, fingerprint: str) -> None:
    """Make `folder` the run directory of this run. Checkpoints of an
    unfinished run with the same fingerprint are resumed; those of a finished
    run (its adapter published) are cleared; an unfinished run with other
    settings is never resumed into, nor deleted."""
    import shutil

    state_file = folder / RUN_STATE
    try:
        state = json.loads(state_file.read_text())
    except (OSError, ValueError):
        state = None
    if state and state.get("published"):
        for p in folder.iterdir():
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif state and state.get("fingerprint") != fingerprint:
        raise InvalidInput(
            CONFIG_INVALID,
            f"{folder} holds the checkpoints of an unfinished run with other settings, base model or data; "
            "resume it with the same configuration, or choose another checkpoint folder (--checkpoint-dir)",
        )
    folder.mkdir(parents=True, exist_ok=True)
    state_file.write_text(json.dumps({"fingerprint": fingerprint, "published": None}) + "\n")


def finish_run_dir(folder: Path, revision: str) -> None:
    """The adapter is published: its checkpoints are no longer needed (TensorBoard logs stay)."""
    import shutil

    for p in folder.glob("checkpoint-*"):
        shutil.rmtree(p, ignore_errors=True)
    state_file = folder / RUN_STATE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "published": revision}) + "\n")


def newest_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint with every file a resume needs (a pod killed
    while saving leaves an incomplete one behind, which is passed over)."""
    found = []
    if folder.is_dir():
        for p in folder.glob("checkpoint-*"):
            suffix = p.name.removeprefix("checkpoint-")
            if suffix.isdigit() and all((p / f).is_file() for f in CHECKPOINT_FILES):
                found.append((int(suffix), p))
            elif suffix.isdigit():
                log.warning("ignoring incomplete checkpoint %s", p.name)
    return max(found)[1] if found else None


def label_loss(model: Any, batch: dict[str, Any], per_row: bool) -> tuple[Any, int]:
    """(sum of cross-entropy, number of trained tokens) over a batch, with
    logits computed only where a token is trained (``logits_to_keep``): the
    language-model head over the whole vocabulary is a large part of a small
    model's cost, and most tokens of instruction data are prompt.

    ``per_row`` runs each row on its own at its real length, so padding costs
    nothing; under DDP (one forward per step) the rows run together and keep the
    positions any row trains."""
    import torch.nn.functional as F

    ids, labels = batch["input_ids"], batch["labels"]
    target = labels[:, 1:]
    if per_row:
        total: Any = 0.0
        count = 0
        for i in range(ids.shape[0]):
            n = int(batch["lengths"][i])
            t = target[i, : n - 1]
            keep = (t != data.IGNORE).nonzero().squeeze(-1)
            if keep.numel() == 0:
                continue
            kwargs = {"input_ids": ids[i : i + 1, :n]}
            if "position_ids" in batch:
                kwargs["position_ids"] = batch["position_ids"][i : i + 1, :n]
            if "attention_mask" in batch and batch["attention_mask"].dim() == 4:  # a shared prefix
                kwargs["attention_mask"] = batch["attention_mask"][i : i + 1, :, :n, :n]
            logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits[0].float()
            total = total + F.cross_entropy(logits, t[keep], reduction="sum")
            count += keep.numel()
        return total, count
    keep = (target != data.IGNORE).any(0).nonzero().squeeze(-1)
    extra = {k: batch[k] for k in ("position_ids", "attention_mask") if k in batch}
    logits = model(input_ids=ids, **extra, logits_to_keep=keep, use_cache=False).logits.float()
    t = target[:, keep]
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), t.reshape(-1), ignore_index=data.IGNORE, reduction="sum"
    )
    return loss, int((t != data.IGNORE).sum())


def evaluate(
    model: Any, rows: list[dict[str, list[int]]], batch_size: int, pad_id: int, dist: Dist
) -> float | None:
    """Mean loss per trained token over the held-out rows (shared out across
    processes and summed), or None without held-out rows."""
    import torch

    if not rows:
        return None
    collator = data.Collator(pad_id)
    device = next(p for p in model.parameters()).device
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            shard = rows[dist.rank :: dist.world]
            for i in range(0, len(shard), batch_size):
                batch = {k: v.to(device) for k, v in collator(shard[i : i + batch_size]).items()}
                loss, count = label_loss(model, batch, per_row=True)
                totals += torch.tensor([float(loss), float(count)], dtype=torch.float64, device=device)
        if dist.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
    finally:
        model.train(was_training)
    return float(totals[0] / totals[1]) if totals[1] > 0 else None


def _trainer_class() -> Any:
    from transformers import Trainer

    class LabelTokenTrainer(Trainer):
        """transformers' Trainer with ``label_loss`` as its loss, normalised by
        the trained tokens of the whole (accumulated, all-process) batch."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = True  # so the Trainer counts num_items_in_batch
            self.loss_is_scaled_for_ga = True  # compute_loss below normalises for accumulation

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = dict(inputs)
            total, count = label_loss(model, inputs, per_row=self.args.world_size == 1)
            if num_items_in_batch is None:
                loss = total / max(count, 1) / self.current_gradient_accumulation_steps
            else:
                loss = total / num_items_in_batch
                if self.args.average_tokens_across_devices and self.args.world_size > 1:
                    loss = loss * self.args.world_size  # DDP averages gradients over processes
            return (loss, None) if return_outputs else loss

    return LabelTokenTrainer


def improvement(base_loss: float, eval_loss: float) -> float:
    """How much lower the adapter's held-out loss is than the base model's, as a fraction."""
    return (base_loss - eval_loss) / base_loss if base_loss > 0 else 0.0


def gate(
    cfg: TrainConfig,
    eval_loss: float | None,
    base_loss: float | None,
    suites: list[answers.SuiteResult] = (),
) -> tuple[bool, str]:
    g = cfg.evaluation
    thresholds = any(s.min_accuracy is not None or s.min_gain is not None for s in g.suites)
    if not cfg.loss_gate and not thresholds:
        return True, "no gate set; metrics recorded only"
    why = [w for r in suites for w in r.gate()]
    if not cfg.loss_gate:
        return (not why), ("; ".join(why) or "every condition of the gate holds")
    if eval_loss is None or base_loss is None:
        return False, "; ".join(["no held-out records to evaluate", *why])
    if g.max_eval_loss is not None and eval_loss > g.max_eval_loss:
        why.append(f"evalLoss {eval_loss:.4f} > maxEvalLoss {g.max_eval_loss}")
    if g.min_improvement is not None:
        better = improvement(base_loss, eval_loss)
        if better < g.min_improvement:
            why.append(
                f"improvement {better:.1%} over the base model < minImprovement {g.min_improvement:.1%}"
            )
    return (not why), ("; ".join(why) or "every condition of the gate holds")


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"loraforge-trainer": __version__}
    for dist_name in ("torch", "transformers", "peft", "bitsandbytes"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist_name] = version(dist_name)
    return out


def _callbacks(
    cfg: TrainConfig, reporter: Reporter, collator: data.Collator, eval_rows: list, dist: Dist, tb: Any
) -> Any:
    from transformers import TrainerCallback

    every = cfg.checkpoints.every_steps
    batch_size = cfg.training.batch_size

    class Progress(TrainerCallback):
        """Progress to the FineTuneJob (rank 0), eval loss at every checkpoint
        (all ranks take part), plain log lines when no progress bar shows."""

        def __init__(self) -> None:
            self.last = (time.monotonic(), 0)
            self.paused = 0.0  # seconds spent evaluating since the last log (not training)
            self.tokens_per_second: float | None = None
            self.eval_loss: float | None = None

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == state.max_steps:
                control.should_log = True  # the last step's loss is reported, whatever logging_steps says
            if os.environ.get(FAULT_KILL_AT_STEP) == str(state.global_step):
                log.warning("%s=%d: killing this process", FAULT_KILL_AT_STEP, state.global_step)
                os.kill(os.getpid(), signal.SIGKILL)
            if eval_rows and state.global_step % every == 0 and state.global_step < state.max_steps:
                began = time.monotonic()
                self.eval_loss = evaluate(model, eval_rows, batch_size, collator.pad_id, dist)
                state.log_history.append({"eval_loss": self.eval_loss, "step": state.global_step})
                self.paused += time.monotonic() - began
                if tb is not None:
                    tb.add_scalar("eval/loss", self.eval_loss, state.global_step)
                if dist.main:
                    log.info("step %d/%d: eval loss %.4f", state.global_step, state.max_steps, self.eval_loss)
                    reporter.progress(
                        state.global_step,
                        total_steps=state.max_steps,
                        epoch=state.epoch,
                        eval_loss=self.eval_loss,
                    )

        def on_train_end(self, args, state, control, **kw):
            # The last step is rarely a logging step: report where training ended.
            if not dist.main:
                return
            last_loss = next((h["loss"] for h in reversed(state.log_history) if "loss" in h), None)
            reporter.progress(
                state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch,
                loss=last_loss,
                eval_loss=self.eval_loss,
                tokens_per_second=self.tokens_per_second,
            )

        def on_log(self, args, state, control, logs=None, **kw):
            logs = logs or {}
            now = time.monotonic()
            then, tokens_then = self.last
            busy = now - then - self.paused
            if busy > 0 and collator.tokens > tokens_then:
                self.tokens_per_second = (collator.tokens - tokens_then) * dist.world / busy
            self.last, self.paused = (now, collator.tokens), 0.0
            if not dist.main or "loss" not in logs:
                return
            if tb is not None and self.tokens_per_second:
                tb.add_scalar("train/tokens_per_second", self.tokens_per_second, state.global_step)
            reporter.progress(
                state.global_step,
                total_steps=state.max_steps,
                epoch=state.epoch,
                loss=logs.get("loss"),
                eval_loss=self.eval_loss,
                learning_rate=logs.get("learning_rate"),
                tokens_per_second=self.tokens_per_second,
            )
            if args.disable_tqdm:
                log.info(
                    "step %d/%d epoch %.2f loss %.4f lr %.3g %s",
                    state.global_step,
                    state.max_steps,
                    state.epoch or 0.0,
                    logs["loss"],
                    logs.get("learning_rate", 0.0),
                    f"{self.tokens_per_second:.0f} tokens/s" if self.tokens_per_second else "",
                )

    callbacks: list[Any] = [Progress()]
    if tb is not None:
        from transformers.integrations import TensorBoardCallback

        callbacks.append(TensorBoardCallback(tb_writer=tb))
    return callbacks


def _tensorboard(folder: Path, dist: Dist) -> Any:
    if not dist.main:
        return None
    try:
        from tensorboardX import SummaryWriter
    except ImportError:  # optional: the run does not depend on it
        log.info("tensorboardX is not installed; no TensorBoard event logs")
        return None
    folder.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(logdir=str(folder))


def prepare_data(cfg: TrainConfig, tokenizer: Any) -> dict[str, Any]:
    """Read, validate, split and tokenize; raises InvalidInput with file:line."""
    d = cfg.dataset
    train_read = data.read_jsonl(
        cfg.dataset_file(), cfg.dataset_display(), d.format, d.on_invalid_record, d.max_skipped_records
    )
    skipped = list(train_read.skipped)
    validation_file = cfg.validation_file()
    if validation_file is not None:
        assert d.validation_path is not None
        val_read = data.read_jsonl(
            validation_file,
            d.validation_path,
            d.format,
            d.on_invalid_record,
            d.max_skipped_records - len(skipped),
        )
        skipped += val_read.skipped
        train_records, val_records = train_read.records, val_read.records
        source, val_digest = d.validation_path, val_read.digest
    else:
        train_records, val_records = data.split(train_read.records, d.validation_split, cfg.training.seed)
        source, val_digest = f"{d.validation_split:.0%} of the records, seed {cfg.training.seed}", None
    encoder = data.Encoder(tokenizer, d.format, cfg.training.max_seq_length)
    suites = answers.questions(cfg, encoder, val_records)  # a bad suite fails here, before training
    train_ex, dropped = encoder.encode_all(train_records, "training")
    val_ex, val_dropped = encoder.encode_all(val_records, "validation")
    for where in skipped[:20]:
        log.warning("skipped invalid record %s", where)
    if dropped or val_dropped:
        log.warning(
            "%d records dropped: nothing to learn left after truncation to %d tokens (e.g. %s)",
            len(dropped) + len(val_dropped),
            cfg.training.max_seq_length,
            (dropped or val_dropped)[0],
        )
    prefix = 0
    if cfg.training.packing:
        order = list(train_ex)
        random.Random(cfg.training.seed).shuffle(order)
        prefix = data.shared_prefix_length(order)
        if prefix:
            log.info(
                "every record starts with the same %d untrained tokens: computed once per packed row", prefix
            )
        rows = data.pack(order, cfg.training.max_seq_length, prefix)
    else:
        rows = data.unpacked(train_ex)
    return {
        "rows": rows,
        "eval_rows": data.unpacked(val_ex),
        "suites": suites,
        "summary": {
            "path": cfg.dataset_display(),
            "format": d.format,
            "digest": train_read.digest,
            **({"validationDigest": val_digest} if val_digest else {}),
            "trainRecords": len(train_ex),
            "validationRecords": len(val_ex),
            "validationSource": source,
            "skippedRecords": len(skipped),
            "truncatedAway": len(dropped) + len(val_dropped),
            "trainTokens": sum(len(e.input_ids) for e in train_ex),
            "trainedTokens": sum(e.trained_tokens for e in train_ex),
            "sharedPrefixTokens": prefix,
        },
    }


def run(cfg: TrainConfig, reporter: Reporter) -> publish.Published:
    """The whole run. Raises TrainerError subclasses with a reason."""
    started = _now()
    dist = Dist.from_env()
    check_inputs_exist(cfg)
    where = modeling.model_dir(cfg)
    tokenizer = modeling.load_tokenizer(cfg, where)
    modeling.check_target_modules(cfg, modeling.linear_module_names(cfg, where))
    prepared = prepare_data(cfg, tokenizer)
    summary = prepared["summary"]
    if dist.main:
        log.info(
            "dataset %s: %d training records (%d tokens), %d held out (%s), %d skipped",
            summary["path"],
            summary["trainRecords"],
            summary["trainTokens"],
            summary["validationRecords"],
            summary["validationSource"],
            summary["skippedRecords"],
        )

    adapter_dir = cfg.adapter_dir()
    done = publish.find_by_source(adapter_dir, cfg.run.uid)
    if done is not None:
        log.info("this FineTuneJob already published %s/%s; reporting it again", done.name, done.revision)
        if dist.main:
            _report(cfg, reporter, done)
        return done

    import torch
    from transformers import PrinterCallback, TrainingArguments, set_seed

    set_seed(cfg.training.seed)
    t = cfg.training
    prec = modeling.precision(cfg)
    checkpoints = cfg.checkpoint_dir()
    identity = modeling.identity(cfg, where)
    fingerprint = hashlib.sha256(
        json.dumps([cfg.for_manifest(), summary, identity, dist.world], sort_keys=True).encode()
    ).hexdigest()
    args = TrainingArguments(
        output_dir=str(checkpoints),
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=t.epochs or 1,  # ignored with maxSteps set (resolved: one of the two is)
        max_steps=t.max_steps or -1,
        logging_steps=t.logging_steps,
        logging_first_step=True,  # progress shows at once, and a short run's loss curve has a start
        save_strategy="steps",
        save_steps=cfg.checkpoints.every_steps,
        save_total_limit=cfg.checkpoints.keep,
        seed=t.seed,
        data_seed=t.seed,
        bf16=prec == "bf16",
        fp16=prec == "fp16",
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if dist.world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        remove_unused_columns=False,
        dataloader_num_workers=0,
        report_to="none",
        disable_tqdm=not sys.stderr.isatty(),
    )
    # TrainingArguments set up the process group: the other ranks wait until the folder is claimed.
    if dist.main:
        claim_run_dir(checkpoints, fingerprint)
    _barrier()
    model = modeling.load_model(cfg, where, dist.local_rank)
    if dist.main:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log.info(
            "%s on %s (%s): %d trainable parameters of %d (%.2f%%)",
            cfg.method,
            modeling.device_kind(),
            prec,
            trainable,
            total,
            100 * trainable / total,
        )

    collator = data.Collator(tokenizer.pad_token_id)
    eval_rows = prepared["eval_rows"]
    with model.disable_adapter():
        base_loss = evaluate(model, eval_rows, t.batch_size, tokenizer.pad_token_id, dist)
    if base_loss is not None and dist.main:
        log.info("base model eval loss %.4f (perplexity %.2f)", base_loss, math.exp(min(base_loss, 50)))

    tb = _tensorboard(checkpoints / "tensorboard", dist)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=prepared["rows"],
        data_collator=collator,
        callbacks=_callbacks(cfg, reporter, collator, eval_rows, dist, tb),
    )
    trainer.remove_callback(PrinterCallback)  # our own log lines say the same, once
    resume = newest_checkpoint(checkpoints)
    if resume is not None and dist.main:
        log.info("resuming from %s", resume.name)
    t0 = time.monotonic()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.monotonic() - t0
    state = trainer.state
    peft_model = trainer.model
    eval_loss = evaluate(peft_model, eval_rows, t.batch_size, tokenizer.pad_token_id, dist)
    suites = answers.evaluate(
        peft_model, tokenizer, prepared["suites"], cfg.evaluation.generation_batch_size, dist
    )
    summaries = [r.summary() for r in suites]
    if tb is not None:
        if eval_loss is not None:
            tb.add_scalar("eval/loss", eval_loss, state.global_step)
        for r in suites:
            tb.add_scalar(f"eval/accuracy/{r.suite.name}", r.accuracy, state.global_step)
            tb.add_scalar(f"eval/base_accuracy/{r.suite.name}", r.base_accuracy, state.global_step)
        if suites:
            tb.add_text("eval/answers", publish.suites_table(summaries), state.global_step)
        tb.close()

    metrics: dict[str, float] = {"trainLoss": float(output.training_loss)}
    if seconds > 0 and collator.tokens:  # since this process started (a resumed run counts from the resume)
        metrics["tokensPerSecond"] = round(collator.tokens * dist.world / seconds, 1)
    if eval_loss is not None and base_loss is not None:
        metrics.update(
            evalLoss=eval_loss,
            baseEvalLoss=base_loss,
            perplexity=math.exp(min(eval_loss, 50)),
            basePerplexity=math.exp(min(base_loss, 50)),
            improvement=improvement(base_loss, eval_loss),
        )
    passed, explanation = gate(cfg, eval_loss, base_loss, suites)
    if not dist.main:
        _barrier()
        return publish.Published(cfg.adapter_name, "", adapter_dir, "", {})

    if suites:
        log.info("answers, base model against adapter:\n%s", publish.suites_table(summaries))
    log.info(
        "evaluation: %s; gate %s: %s",
        ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()),
        "passed" if passed else "FAILED",
        explanation,
    )
    history = state.log_history
    manifest = {
        "baseModel": identity,
        "dataset": summary,
        "settings": cfg.for_manifest(),
        "metrics": metrics,
        "evaluation": {
            "gate": cfg.evaluation.model_dump(by_alias=True, exclude_none=True),
            "passed": passed,
            "explanation": explanation,
            "suites": summaries,
        },
        "steps": state.global_step,
        "epochs": round(state.epoch or 0.0, 4),
        "worldSize": dist.world,
        "precision": prec,
        "startedAt": started,
        "finishedAt": _now(),
        "trainingSeconds": round(seconds, 1),
        "source": {
            k: v
            for k, v in {
                "namespace": cfg.run.namespace,
                "fineTuneJob": cfg.run.fine_tune_job,
                "uid": cfg.run.uid,
            }.items()
            if v
        },
        "software": _versions(),
    }
    train_curve = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    eval_curve = [
        (h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and h.get("eval_loss") is not None
    ]
    if base_loss is not None:
        eval_curve = [(0, base_loss), *eval_curve]
    if eval_loss is not None:
        eval_curve.append((state.global_step, eval_loss))

    def card(revision: str, m: dict[str, Any]) -> dict[str, str]:
        title = f"{m['adapter']} {revision}: loss by optimizer step"
        return {
            "README.md": publish.model_card(revision, m),
            "loss.svg": publish.loss_svg(train_curve, eval_curve, title),
            **{f"answers-{r.suite.name}.jsonl": answers.answers_file(r) for r in suites},
        }

    published = publish.publish(adapter_dir, cfg.adapter_name, peft_model.save_pretrained, manifest, card)
    log.info(
        "published %s revision %s at %s (%s)",
        published.name,
        published.revision,
        published.path,
        published.digest,
    )
    finish_run_dir(checkpoints, published.revision)
    _report(cfg, reporter, published)
    _barrier()
    return published


def _barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _report(cfg: TrainConfig, reporter: Reporter, p: publish.Published) -> None:
    try:
        path = str(p.path.relative_to(Path(cfg.run.model_store)))
    except ValueError:
        path = str(p.path)
    evaluation = p.manifest.get("evaluation") or {}
    reporter.result(
        {"name": p.name, "revision": p.revision, "path": path, "digest": p.digest},
        dict(p.manifest.get("metrics") or {}),
        bool(evaluation.get("passed")),
        [{k: v for k, v in s.items() if k in RESULT_SUITE_KEYS} for s in evaluation.get("suites") or []],
        str(evaluation.get("explanation") or ""),
    )


# What the result (and so FineTuneJob status) carries of each suite; the answers stay in the revision.
RESULT_SUITE_KEYS = (
    "name",
    "scorer",
    "records",
    "correct",
    "baseCorrect",
    "accuracy",
    "baseAccuracy",
    "passed",
)
