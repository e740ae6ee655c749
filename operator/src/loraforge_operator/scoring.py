"""How an answer is judged against what was expected: the scorers a
FineTuneJob's evaluation suites and a ModelDeployment's smoke-test suite name.

One definition for both ends. The trainer scores its held-out and suite
answers with these rules, and the operator scores a new serving pod's answers
with them, so "72/72 in training" and "72/72 on the pod" mean the same thing.
The trainer image does not carry the operator, so ``python -m
loraforge_operator.crds`` writes a copy of this file into the trainer's package
(``loraforge_trainer/api/scoring.py``, with the API models) and a unit test
fails when the copy is stale. Standard library only.

Scorers (``scorer.type``):

- ``contains``: the normalised expected answer occurs in the normalised answer,
  on word boundaries ("Marnhold" in "The capital is Marnhold.").
- ``exact``: the normalised answer equals the normalised expected answer.
- ``regex``: the pattern (the record's ``expected``, else the suite's
  ``scorer.pattern``) is found in the answer (Python ``re.search``); for answers
  that must refuse or escalate, e.g. ``(?i)emergency|call 911``.
- ``tokenF1``: the token F1 of answer and expected answer (normalised, as SQuAD
  scores it) is at least ``scorer.minF1``.

Normalisation, as SQuAD's official scorer does it: lower case, punctuation
removed, the articles a/an/the dropped, whitespace collapsed; Unicode is NFKC
first, so full-width and composed forms compare equal.

Suite files are read here too (``parse_suite``), so the trainer and the
operator accept exactly the same files: one JSON object a line,
``{"prompt": "...", "expected": "..."}`` or ``{"messages": [...], "expected":
"..."}`` with the messages ending in the user's turn; ``expected`` may be left
out when the scorer has a ``pattern``; blank lines are skipped.
"""

from __future__ import annotations

import collections
import json
import re
import string
import unicodedata
from dataclasses import dataclass

SCORERS = ("contains", "exact", "regex", "tokenF1")
DEFAULT_MIN_F1 = 0.5

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans(dict.fromkeys(string.punctuation + "\u2018\u2019\u201c\u201d\u2013\u2014", " "))


def normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(answer: str, expected: str) -> float:
    got, want = normalise(answer).split(), normalise(expected).split()
    if not got or not want:
        return float(got == want)
    common = sum((collections.Counter(got) & collections.Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a regular expression the scorer can use, or None."""
    try:
        re.compile(pattern)
    except re.error as e:
        return f"not a valid regular expression: {e}"
    return None


def correct(scorer: str, answer: str, expected: str, min_f1: float = DEFAULT_MIN_F1) -> bool:
    """Whether ``answer`` is right. ``expected``: the expected answer, or the pattern for ``regex``."""
    if scorer == "contains":
        want = normalise(expected)
        return bool(want) and f" {want} " in f" {normalise(answer)} "
    if scorer == "exact":
        return normalise(answer) == normalise(expected)
    if scorer == "regex":
        return re.search(expected, answer) is not None
    if scorer == "tokenF1":
        return token_f1(answer, expected) >= min_f1
    raise ValueError(f"unknown scorer {scorer!r}; one of {', '.join(SCORERS)}")


# --- suite files ---------------------------------------------------------------------------------------

ROLES = ("system", "user", "assistant")


class SuiteError(ValueError):
    """A suite file that cannot be used; the message starts with file:line."""


@dataclass(frozen=True)
class SuiteRecord:
    where: str  # file:line
    messages: list[dict[str, str]]  # the chat to answer, ending with the user's turn
    expected: str  # the expected answer, or the pattern of a regex scorer

    @property
    def shown(self) -> str:
        """The question as a person reads it: the user's last turn."""
        return self.messages[-1]["content"]


def record_problem(obj: object, scorer: str, pattern: str | None) -> str | None:
    """Why a parsed line is not a usable suite record, or None."""
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    unknown = sorted(set(obj) - {"prompt", "messages", "expected"})
    if unknown:
        return f"unknown key {unknown[0]!r} (a record has prompt or messages, and expected)"
    if ("prompt" in obj) == ("messages" in obj):
        return "set exactly one of 'prompt' or 'messages'"
    if "prompt" in obj and (not isinstance(obj["prompt"], str) or not obj["prompt"].strip()):
        return "'prompt' must be a non-empty string"
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list"
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                return f"messages[{i}] must be an object with a role ({', '.join(ROLES)}) and content"
        if msgs[-1]["role"] != "user":
            return "the last of 'messages' must be the user's: the model answers it"
    if "expected" not in obj:
        if pattern is None:
            return "missing key 'expected' (or set the suite's scorer.pattern)"
    elif not isinstance(obj["expected"], str) or not obj["expected"].strip():
        return "'expected' must be a non-empty string"
    elif scorer == "regex":
        bad = pattern_problem(obj["expected"])
        if bad:
            return f"'expected' is {bad}"
    return None


def parse_suite(data: bytes, source: str, scorer: str, pattern: str | None) -> list[SuiteRecord]:
    """The records of a suite file; raises SuiteError naming ``source``:line."""
    out = []
    for lineno, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"{source}:{lineno}"
        try:
            obj = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as e:
            problem: str | None = f"not UTF-8 ({e.reason} at byte {e.start})"
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            problem = f"not valid JSON ({getattr(e, 'msg', str(e))})"
        else:
            problem = record_problem(obj, scorer, pattern)
        if problem:
            raise SuiteError(f"{where}: {problem}")
        messages = obj.get("messages") or [{"role": "user", "content": obj["prompt"]}]
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        out.append(SuiteRecord(where, messages, obj.get("expected", pattern)))
    if not out:
        raise SuiteError(f"{source}: no records")
    return out
