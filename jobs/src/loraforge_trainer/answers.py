"""Evaluation by answers: the base model and the adapter each answer every
question of a suite, greedily, and a scorer judges each answer against the
expected one (``scoring``, the same rules the operator applies to a serving
pod's answers).

A suite is the held-out records of the dataset (the question is the record up
to its last assistant turn, the expected answer that turn) or a JSONL file of
its own, read and validated before training starts, one record a line:

    {"prompt": "What is the capital of Veloria?", "expected": "Marnhold"}
    {"messages": [{"role": "system", ...}, {"role": "user", ...}], "expected": "..."}
    {"prompt": "I have crushing chest pain", "expected": "(?i)emergency|call 911"}   # scorer regex

``expected`` may be left out when the suite's scorer has a ``pattern``.

Generation is batched: prompts sorted by length and left-padded, so a batch
wastes little on padding, and a batch stops as soon as all its answers ended.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import data
from .api import scoring
from .config import Suite, TrainConfig
from .errors import SUITE_INVALID, InvalidInput

log = logging.getLogger("loraforge_trainer")

EXAMPLES = 3  # right and wrong answers of each suite shown in the model card and the manifest


@dataclass(frozen=True)
class Question:
    where: str  # file:line of the record
    prompt: str  # as rendered for the model (chat template applied)
    shown: str  # the question as a person reads it
    expected: str  # expected answer, or the pattern of a regex scorer


@dataclass
class SuiteResult:
    suite: Suite
    answers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def records(self) -> int:
        return len(self.answers)

    @property
    def correct(self) -> int:
        return sum(a["adapterCorrect"] for a in self.answers)

    @property
    def base_correct(self) -> int:
        return sum(a["baseCorrect"] for a in self.answers)

    @property
    def accuracy(self) -> float:
        return self.correct / self.records if self.records else 0.0

    @property
    def base_accuracy(self) -> float:
        return self.base_correct / self.records if self.records else 0.0

    @property
    def gain(self) -> float:
        return self.accuracy - self.base_accuracy

    def gate(self) -> list[str]:
        """Why the suite fails its thresholds (empty: it passes)."""
        s, why = self.suite, []
        if s.min_accuracy is not None and self.accuracy < s.min_accuracy:
            why.append(f"suite {s.name}: accuracy {self.accuracy:.1%} < minAccuracy {s.min_accuracy:.1%}")
        if s.min_gain is not None and self.gain < s.min_gain:
            why.append(
                f"suite {s.name}: gain {self.gain:+.1%} over the base model "
                f"({self.base_accuracy:.1%}) < minGain {s.min_gain:+.1%}"
            )
        return why

    def summary(self) -> dict[str, Any]:
        """What the manifest, the result and FineTuneJob status record of the suite."""
        s = self.suite
        right = [a for a in self.answers if a["adapterCorrect"]][:EXAMPLES]
        wrong = [a for a in self.answers if not a["adapterCorrect"]][:EXAMPLES]
        return {
            "name": self.suite.name,
            "scorer": self.suite.scorer.type,
            "records": self.records,
            "correct": self.correct,
            "baseCorrect": self.base_correct,
            "accuracy": round(self.accuracy, 4),
            "baseAccuracy": round(self.base_accuracy, 4),
            "passed": not self.gate(),
            **{k: v for k, v in (("minAccuracy", s.min_accuracy), ("minGain", s.min_gain)) if v is not None},
            "seconds": round(self.seconds, 1),
            "examples": {"right": right, "wrong": wrong},
        }


# --- questions ---------------------------------------------------------------------------------------------


def from_record(encoder: data.Encoder, record: data.Record) -> Question | None:
    """A held-out dataset record as a question (None for a format with no question: text)."""
    f = record.fields
    if encoder.fmt == "chat":
        messages = f["messages"]
        last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"].strip())
        before = messages[:last]
        if not any(m["role"] == "user" for m in before):
            return None
        shown = next(m["content"] for m in reversed(before) if m["role"] == "user")
        return Question(record.where, encoder.prompt(before), shown, messages[last]["content"])
    if encoder.fmt == "instruction":
        prompt = encoder.instruction_prompt(f)
        return Question(
            record.where, encoder.prompt([{"role": "user", "content": prompt}]), prompt, f["output"]
        )
    if encoder.fmt == "completion":
        return Question(record.where, f["prompt"], f["prompt"], f["completion"])
    return None


def read_suite(path: Path, display: str, suite: Suite, encoder: data.Encoder) -> list[Question]:
    """A suite file's questions, by the rules the serving smoke test reads it with too
    (``scoring.parse_suite``); raises InvalidInput naming file:line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InvalidInput(
            SUITE_INVALID, f"evaluation suite {suite.name}: {display}: cannot read: {e.strerror}"
        ) from None
    try:
        records = scoring.parse_suite(raw, display, suite.scorer.type, suite.scorer.pattern)
    except scoring.SuiteError as e:
        raise InvalidInput(SUITE_INVALID, f"{e} (evaluation suite {suite.name})") from None
    return [Question(r.where, encoder.prompt(r.messages), r.shown, r.expected) for r in records]


def questions(
    cfg: TrainConfig, encoder: data.Encoder, held_out: list[data.Record]
) -> list[tuple[Suite, list[Question]]]:
    """Every suite's questions, before training: a bad suite fails the run before it costs anything."""
    out = []
    for suite in cfg.evaluation.suites:
        if suite.held_out:
            qs = [q for q in (from_record(encoder, r) for r in held_out) if q is not None]
            if not qs:
                raise InvalidInput(
                    SUITE_INVALID,
                    f"evaluation suite {suite.name}: the held-out records hold no question to ask "
                    f"(dataset.format {cfg.dataset.format})",
                )
            if suite.scorer.pattern is not None:
                qs = [Question(q.where, q.prompt, q.shown, suite.scorer.pattern) for q in qs]
        else:
            qs = read_suite(cfg.suite_file(suite), cfg.suite_display(suite), suite, encoder)
        out.append((suite, qs))
    return out


# --- answers ---------------------------------------------------------------------------------------------


def generate(
    model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int, batch_size: int
) -> list[str]:
    """Greedy answers to ``prompts``, in their order."""
    import torch
    from transformers import GenerationConfig

    device = next(p for p in model.parameters()).device
    eos = model.generation_config.eos_token_id if model.generation_config is not None else None
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=eos if eos is not None else tokenizer.eos_token_id,
        use_cache=True,
    )
    # A chat template writes its own special tokens; a plain prompt gets the tokenizer's (e.g. BOS).
    special = not bool(getattr(tokenizer, "chat_template", None))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # decoder-only generation continues from the right end
    encoded = [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    answers = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
                out = model.generate(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    generation_config=config,
                )
                new = out[:, batch["input_ids"].shape[1] :]
                for i, text in zip(chunk, tokenizer.batch_decode(new, skip_special_tokens=True), strict=True):
                    answers[i] = text.strip()
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    return answers


def _shard_answers(
    model: Any, tokenizer: Any, prompts: list[str], suite: Suite, batch: int, dist: Any
) -> list[str]:
    """Each process answers its share; every process gets all the answers back."""
    import torch

    if dist.world == 1:
        return generate(model, tokenizer, prompts, suite.max_new_tokens, batch)
    mine = generate(model, tokenizer, prompts[dist.rank :: dist.world], suite.max_new_tokens, batch)
    gathered: list[Any] = [None] * dist.world
    torch.distributed.all_gather_object(gathered, mine)
    out = [""] * len(prompts)
    for rank, part in enumerate(gathered):
        out[rank :: dist.world] = part
    return out


def evaluate(
    model: Any, tokenizer: Any, suites: list[tuple[Suite, list[Question]]], batch_size: int, dist: Any
) -> list[SuiteResult]:
    """Base model and adapter answer every suite; each answer is scored."""
    results = []
    for suite, qs in suites:
        began = time.monotonic()
        prompts = [q.prompt for q in qs]
        tuned = _shard_answers(model, tokenizer, prompts, suite, batch_size, dist)
        with model.disable_adapter():
            base = _shard_answers(model, tokenizer, prompts, suite, batch_size, dist)
        result = SuiteResult(suite)
        s = suite.scorer
        for q, a, b in zip(qs, tuned, base, strict=True):
            result.answers.append(
                {
                    "where": q.where,
                    "question": q.shown,
                    "expected": q.expected,
                    "adapter": a,
                    "adapterCorrect": scoring.correct(s.type, a, q.expected, s.min_f1),
                    "base": b,
                    "baseCorrect": scoring.correct(s.type, b, q.expected, s.min_f1),
                }
            )
        result.seconds = time.monotonic() - began
        results.append(result)
        if dist.main:
            log.info(
                "suite %s (%s, %d questions, %.0fs): adapter %d/%d (%.1f%%), base model %d/%d (%.1f%%)",
                suite.name,
                s.type,
                result.records,
                result.seconds,
                result.correct,
                result.records,
                100 * result.accuracy,
                result.base_correct,
                result.records,
                100 * result.base_accuracy,
            )
    return results


def answers_file(result: SuiteResult) -> str:
    """Every answer of a suite, one JSON line each: what a reviewer reads before approving a revision."""
    return "".join(json.dumps(a, ensure_ascii=False) + "\n" for a in result.answers)
