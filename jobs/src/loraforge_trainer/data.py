"""Datasets: JSONL records validated as they stream, turned into token ids
with labels only on what the model should learn to write.

Formats (FineTuneJob ``dataset.format``):

- ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``,
  rendered with the tokenizer's chat template; loss on the assistant turns (their
  end-of-turn marker included, so the model learns to stop).
- ``instruction``: ``{"instruction", "input"?, "output"}``, rendered as a user/assistant
  exchange when the tokenizer has a chat template; loss on the output.
- ``completion``: ``{"prompt", "completion"}``, the two concatenated; loss on the completion.
- ``text``: ``{"text"}``, loss on every token.

Every problem names the file and line. Blank lines are allowed. With the
``Skip`` policy bad records are counted and skipped up to a bound.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BASE_MODEL_INVALID, DATASET_INVALID, InvalidInput

IGNORE = -100  # label of tokens the loss skips (transformers' convention)
ROLES = ("system", "user", "assistant")
MAX_LINE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    where: str  # "datasets/support/train.jsonl:17"
    fields: dict[str, Any]


@dataclass
class ReadResult:
    records: list[Record]
    digest: str  # sha256 of the file's bytes
    lines: int
    skipped: list[str] = field(default_factory=list)  # "file:line: why" of each skipped record


def _string(obj: dict[str, Any], key: str, required: bool = True, empty_ok: bool = False) -> str | None:
    if key not in obj:
        return f"missing key '{key}'" if required else None
    value = obj[key]
    if not isinstance(value, str):
        return f"'{key}' must be a string, got {type(value).__name__}"
    if not empty_ok and not value.strip():
        return f"'{key}' is empty"
    return None


def record_problem(obj: Any, fmt: str) -> str | None:
    """Why a parsed line is not a valid record of `fmt`, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    if fmt == "chat":
        messages = obj.get("messages")
        if "messages" not in obj:
            return "missing key 'messages'"
        if not isinstance(messages, list) or not messages:
            return "'messages' must be a non-empty list"
        for i, m in enumerate(messages):
            if not isinstance(m, dict):
                return f"messages[{i}] must be an object with 'role' and 'content'"
            if m.get("role") not in ROLES:
                return f"messages[{i}].role must be one of {', '.join(ROLES)}, got {m.get('role')!r}"
            if not isinstance(m.get("content"), str):
                return f"messages[{i}].content must be a string"
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            return "no assistant message with content: nothing to learn from this record"
        return None
    if fmt == "instruction":
        return _string(obj, "instruction") or _string(obj, "input", False, True) or _string(obj, "output")
    if fmt == "completion":
        return _string(obj, "prompt", empty_ok=True) or _string(obj, "completion")
    if fmt == "text":
        return _string(obj, "text")
    raise ValueError(f"unknown dataset format {fmt!r}")


def _read_past_line(fh: Any, digest: Any) -> None:
    """Consume the rest of an over-long line, a bounded piece at a time."""
    while piece := fh.readline(1 << 20):
        digest.update(piece)
        if piece.endswith(b"\n"):
            return


def read_jsonl(
    path: Path, display: str, fmt: str, on_invalid: str = "Fail", max_skipped: int = 0
) -> ReadResult:
    """Stream and validate a JSONL file. Raises InvalidInput naming file:line."""
    digest = hashlib.sha256()
    records: list[Record] = []
    skipped: list[str] = []
    lineno = 0
    try:
        fh = path.open("rb")
    except OSError as e:
        raise InvalidInput(DATASET_INVALID, f"{display}: cannot open: {e.strerror}") from None
    with fh:
        # A bounded read: a huge line (say, a file without newlines) is never held whole.
        while raw := fh.readline(MAX_LINE_BYTES + 1):
            lineno += 1
            digest.update(raw)
            if len(raw) <= MAX_LINE_BYTES and not raw.strip():
                continue
            problem = None
            obj = None
            if len(raw) > MAX_LINE_BYTES:
                problem = f"line longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB"
                if on_invalid == "Skip" and not raw.endswith(b"\n"):
                    _read_past_line(fh, digest)
            else:
                try:
                    obj = json.loads(raw.decode("utf-8"))
                    if b"\\u" in raw:  # an escape can make a lone surrogate, which no tokenizer takes
                        json.dumps(obj, ensure_ascii=False).encode("utf-8")
                except UnicodeDecodeError as e:
                    problem = f"not UTF-8 ({e.reason} at byte {e.start})"
                except UnicodeEncodeError:
                    problem = "not valid text (a \\u escape makes a lone UTF-16 surrogate)"
                except json.JSONDecodeError as e:
                    problem = f"not valid JSON ({e.msg} at column {e.colno})"
                except RecursionError:
                    problem = "not valid JSON (nested too deeply)"
                except ValueError as e:  # an integer longer than Python converts (sys.int_max_str_digits)
                    problem = f"not valid JSON ({str(e).partition(':')[0]})"
                else:
                    problem = record_problem(obj, fmt)
            where = f"{display}:{lineno}"
            if problem is None:
                records.append(Record(where, obj))
                continue
            if on_invalid != "Skip":
                raise InvalidInput(DATASET_INVALID, f"{where}: {problem} (dataset.format is {fmt})")
            skipped.append(f"{where}: {problem}")
            if len(skipped) > max_skipped:
                raise InvalidInput(
                    DATASET_INVALID,
                    f"{display}: more than dataset.maxSkippedRecords={max_skipped} invalid records; "
                    f"first: {skipped[0]}; latest: {skipped[-1]}",
                )
    if not records:
        why = f" ({len(skipped)} invalid, skipped)" if skipped else ""
        raise InvalidInput(DATASET_INVALID, f"{display}: no records{why}")
    return ReadResult(records, f"sha256:{digest.hexdigest()}", lineno, skipped)


def split(records: Sequence[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Seeded train/validation split: the same records every run with the same seed."""
    if fraction <= 0 or len(records) < 2:
        return list(records), []
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_val = min(len(records) - 1, max(1, round(len(records) * fraction)))
    held = set(order[:n_val])
    train = [r for i, r in enumerate(records) if i not in held]
    val = [r for i, r in enumerate(records) if i in held]
    return train, val


# --- tokenization --------------------------------------------------------------


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    where: str

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


class Encoder:
    """Turns records into token ids and labels for one tokenizer and format."""

    def __init__(self, tokenizer: Any, fmt: str, max_len: int) -> None:
        if not getattr(tokenizer, "is_fast", False):
            raise InvalidInput(
                BASE_MODEL_INVALID,
                "the base model's tokenizer has no fast version (tokenizer.json) to map labels",
            )
        self.tok = tokenizer
        self.fmt = fmt
        self.max_len = max_len
        self.has_template = bool(getattr(tokenizer, "chat_template", None))
        if fmt == "chat" and not self.has_template:
            raise InvalidInput(
                BASE_MODEL_INVALID,
                "dataset.format chat needs a tokenizer with a chat template, and the base model's has none; "
                "use format instruction, completion or text",
            )
        self.eos = tokenizer.eos_token or ""

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _chat(self, messages: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        text = self._render(messages)
        spans = []
        cursor = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            before = self._render(messages[:i], generation_prompt=True)
            through = self._render(messages[: i + 1])
            if text.startswith(through) and through.startswith(before):
                spans.append((len(before), len(through)))  # the turn and its end-of-turn marker
                cursor = len(through)
            else:  # a template that renders earlier turns differently later on
                start = text.find(m["content"], cursor)
                if start < 0:
                    continue
                cursor = start + len(m["content"])
                spans.append((start, cursor))
        return text, spans

    @staticmethod
    def instruction_prompt(fields: dict[str, Any]) -> str:
        """An instruction record's question: the instruction, then its input."""
        return fields["instruction"] + (f"\n\n{fields['input']}" if fields.get("input") else "")

    @staticmethod
    def _instruction_head(prompt: str) -> str:
        return f"### Instruction:\n{prompt}\n\n### Response:\n"

    def prompt(self, messages: list[dict[str, str]]) -> str:
        """What the model continues to answer ``messages`` (ending with the user's turn), rendered as
        training rendered the turns before an answer: the chat template with its generation prompt, else
        the instruction head (format instruction) or the bare text."""
        if self.has_template:
            return self._render([{"role": m["role"], "content": m["content"]} for m in messages], True)
        text = "\n\n".join(m["content"] for m in messages)
        return self._instruction_head(text) if self.fmt == "instruction" else text

    def text_and_spans(self, fields: dict[str, Any]) -> tuple[str, list[tuple[int, int]]]:
        if self.fmt == "chat":
            return self._chat(fields["messages"])
        if self.fmt == "instruction":
            prompt = self.instruction_prompt(fields)
            if self.has_template:
                return self._chat(
                    [{"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]}]
                )
            head = self._instruction_head(prompt)
            return head + fields["output"] + self.eos, [
                (len(head), len(head) + len(fields["output"]) + len(self.eos))
            ]
        if self.fmt == "completion":
            text = fields["prompt"] + fields["completion"] + self.eos
            return text, [(len(fields["prompt"]), len(text))]
        text = fields["text"] + self.eos
        return text, [(0, len(text))]

    def encode(self, record: Record) -> Example | None:
        """None when truncation to max_len leaves no token to learn from."""
        text, spans = self.text_and_spans(record.fields)
        # A chat template writes its own special tokens; plain text gets the tokenizer's (e.g. BOS).
        templated = self.fmt == "chat" or (self.fmt == "instruction" and self.has_template)
        enc = self.tok(text, add_special_tokens=not templated, return_offsets_mapping=True)
        ids = list(enc["input_ids"])[: self.max_len]
        labels = []
        for tid, (s, e) in zip(ids, enc["offset_mapping"], strict=False):
            trained = e > s and any(a <= s < b for a, b in spans)
            labels.append(tid if trained else IGNORE)
        if labels:
            labels[0] = IGNORE  # nothing predicts the first token
        if all(x == IGNORE for x in labels):
            return None
        return Example(ids, labels, record.where)

    def encode_all(self, records: Sequence[Record], what: str) -> tuple[list[Example], list[str]]:
        """Encoded examples and the records dropped because nothing trainable survived truncation."""
        out, dropped = [], []
        for r in records:
            ex = self.encode(r)
            if ex is None:
                dropped.append(r.where)
            else:
                out.append(ex)
        if records and not out:
            raise InvalidInput(
                DATASET_INVALID,
                f"every {what} record is longer than training.maxSeqLength={self.max_len} tokens before its "
                f"first trained token (e.g. {dropped[0]}); raise maxSeqLength or shorten the prompts",
            )
        return out, dropped


# --- batching --------------------------------------------------------------------


def shared_prefix_length(examples: Sequence[Example], minimum: int = 4) -> int:
    """Tokens every example starts with and learns nothing from (a chat
    template's system prompt, a fixed instruction), safe to compute once per
    packed row: no label inside it, and the token after it untrained in every
    example (its logits, at the prefix's last position, are shared). 0 when
    shorter than `minimum`."""
    if len(examples) < 2:
        return 0
    first = examples[0].input_ids
    p = min(len(e.input_ids) for e in examples) - 1
    for e in examples[1:]:
        ids = e.input_ids
        n = 0
        while n < p and ids[n] == first[n]:
            n += 1
        p = n
    while p > 0 and any(any(x != IGNORE for x in e.labels[: p + 1]) for e in examples):
        p -= 1
    return p if p >= minimum else 0


def pack(examples: Sequence[Example], max_len: int, prefix: int = 0) -> list[dict[str, list[int]]]:
    """Concatenate examples (in the given order) into rows of at most max_len
    tokens in which each example computes exactly what it would alone.

    Each token carries a segment number (0: the shared prefix, 1, 2, ...: the
    examples) from which the collator builds an explicit 4D causal mask: an
    example attends to the prefix and to itself, never to its neighbours, and
    its position ids continue from the prefix (from 0 without one). With a
    shared prefix (see shared_prefix_length) the row holds it once, and every
    example in the row uses it. The first label of each example is ignored
    (nothing before it in the row predicts it). ``tokens`` is how many tokens
    of the records a row stands for."""
    rows: list[dict[str, list[int]]] = []
    head = list(examples[0].input_ids[:prefix]) if prefix and examples else []

    def new_row() -> dict[str, list[int]]:
        return {
            "input_ids": list(head),
            "labels": [IGNORE] * len(head),
            "position_ids": list(range(len(head))),
            "segments": [0] * len(head),
            "tokens": [0],
        }

    row = new_row()
    for ex in examples:
        rest_ids, rest_labels = ex.input_ids[prefix:], ex.labels[prefix:]
        if len(row["input_ids"]) > len(head) and len(row["input_ids"]) + len(rest_ids) > max_len:
            rows.append(row)
            row = new_row()
        row["input_ids"] += rest_ids
        row["labels"] += [IGNORE, *rest_labels[1:]]
        row["position_ids"] += list(range(prefix, prefix + len(rest_ids)))
        row["tokens"][0] += len(ex.input_ids)
        segment = row["segments"][-1] + 1 if len(row["segments"]) > len(head) else 1
        row["segments"] += [segment] * len(rest_ids)
    if len(row["input_ids"]) > len(head):
        rows.append(row)
    return rows


def unpacked(examples: Sequence[Example]) -> list[dict[str, list[int]]]:
    return [{"input_ids": ex.input_ids, "labels": ex.labels} for ex in examples]


class Collator:
    """Pads a batch on the right to its longest row and says each row's real
    length (``lengths``). Plain rows get a 2D attention mask; packed rows
    position_ids, and, with a shared prefix, a 4D boolean mask (True: may
    attend). Counts the record tokens it hands out (``tokens``), for tokens/s."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id
        self.tokens = 0

    def __call__(self, rows: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(r["input_ids"]) for r in rows)
        packed = "position_ids" in rows[0]
        ids, labels, extra, lengths = [], [], [], []
        for r in rows:
            n = len(r["input_ids"])
            lengths.append(n)
            self.tokens += r["tokens"][0] if "tokens" in r else n
            ids.append(r["input_ids"] + [self.pad_id] * (width - n))
            labels.append(r["labels"] + [IGNORE] * (width - n))
            extra.append(
                r["position_ids"] + list(range(width - n)) if packed else [1] * n + [0] * (width - n)
            )
        batch = {
            "input_ids": torch.tensor(ids),
            "labels": torch.tensor(labels),
            "lengths": torch.tensor(lengths),
        }
        batch["position_ids" if packed else "attention_mask"] = torch.tensor(extra)
        if "segments" in rows[0]:
            seg = torch.tensor([r["segments"] + [-1] * (width - len(r["segments"])) for r in rows])
            q, k = seg[:, :, None], seg[:, None, :]
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            allowed = ((k == 0) | (k == q)) & (k >= 0) & causal
            allowed |= torch.eye(width, dtype=torch.bool)  # padding attends to itself: no empty rows
            batch["attention_mask"] = allowed[:, None]
        return batch
