"""Smoke tests of a new serving pod, with huggingface_hub's InferenceClient,
as a client of the deployment would talk to it. Blocking; the reconciler runs
them in a thread.

A ``smokeTest.suite`` is a JSONL file in a ConfigMap, in the trainer's suite
format (loraforge_trainer/answers.py): the reconciler reads and checks it
(``suite_from_configmap``) before any pod is tested, so a bad file is a spec
problem naming configmap/name[key]:line, never a failed pod; ``run_suite``
asks a pod every question, ``concurrency`` at a time, and scores the answers
with ``loraforge_operator.scoring``, the trainer's own rules."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from .. import scoring
from .model import SmokeTest, SmokeTestSuite

EXCERPT = 160
MESSAGE_LIMIT = 900  # a smoke test's message goes into a pod condition and events


@dataclass
class Result:
    ok: bool
    message: str
    suite: str = ""  # with a suite: its summary ("suite cm[key]: 70/72 right (97.2%) >= minAccuracy 90%")


# --- suites --------------------------------------------------------------------------------------------


class SuiteInvalid(ValueError):
    """The suite cannot be used: a spec problem (configmap/name[key]:line: why), not a pod's failure."""


# A question of a suite: file:line, the chat to answer, the expected answer (or pattern).
Question = scoring.SuiteRecord


@dataclass
class Suite:
    """A suite read from its ConfigMap and checked."""

    spec: SmokeTestSuite
    questions: list[Question] = field(default_factory=list)

    @property
    def name(self) -> str:
        return suite_name(self.spec)


def suite_name(spec: SmokeTestSuite) -> str:
    return f"{spec.config_map.name}[{spec.config_map.key}]"


def suite_source(spec: SmokeTestSuite) -> str:
    """How messages name the file: configmap/name[key]."""
    return f"configmap/{suite_name(spec)}"


def parse_suite(text: bytes | str, spec: SmokeTestSuite) -> list[Question]:
    """A suite file's questions, by the trainer's rules (``scoring.parse_suite``, one definition); raises
    SuiteInvalid naming configmap/name[key]:line."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    try:
        return scoring.parse_suite(data, suite_source(spec), spec.scorer.type, spec.scorer.pattern)
    except scoring.SuiteError as e:
        raise SuiteInvalid(str(e)) from None


def suite_from_configmap(config_map: dict[str, Any] | None, spec: SmokeTestSuite) -> Suite:
    """The suite in ``config_map`` (None: it does not exist); raises SuiteInvalid."""
    ref = spec.config_map
    if config_map is None:
        raise SuiteInvalid(f"configmap/{ref.name} not found (smokeTest.suite.configMap)")
    data = config_map.get("data") or {}
    binary = config_map.get("binaryData") or {}
    if ref.key in data:
        text: bytes | str = data[ref.key]
    elif ref.key in binary:
        try:
            text = base64.b64decode(binary[ref.key], validate=True)
        except (binascii.Error, ValueError):
            raise SuiteInvalid(f"{suite_source(spec)}: binaryData is not base64") from None
    else:
        keys = sorted({*data, *binary})
        raise SuiteInvalid(
            f"{suite_source(spec)}: configmap/{ref.name} has no key {ref.key!r}"
            + (f" (it has {', '.join(keys[:8])}{', ...' if len(keys) > 8 else ''})" if keys else " (no keys)")
        )
    return Suite(spec, parse_suite(text, spec))


def _pct(x: float) -> str:
    """A fraction as a percentage with at most one decimal, rounded down (never overstates an accuracy)."""
    return f"{math.floor(x * 1000 + 1e-6) / 10:g}%"


def _quoted(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return json.dumps(text if len(text) <= limit else text[: limit - 1] + "…", ensure_ascii=False)


def run_suite(client, adapter: str, suite: Suite) -> Result:
    """Ask every question of ``suite`` with ``adapter``, ``concurrency`` at a time; judge by its scorer.
    Blocking. A question the pod fails to answer (an error, not a wrong answer) fails the suite at once."""
    spec = suite.spec

    def ask(q: Question) -> str:
        out = client.chat_completion(
            q.messages,
            model=adapter,  # both runtimes select the adapter by `model`
            max_tokens=spec.max_new_tokens,
            temperature=0.0,  # greedy
            seed=0,
        )
        return out.choices[0].message.content or ""

    with ThreadPoolExecutor(max_workers=min(spec.concurrency, len(suite.questions))) as pool:
        futures = [pool.submit(ask, q) for q in suite.questions]
        wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((i for i, f in enumerate(futures) if f.done() and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            e = futures[failed].exception()
            where = suite.questions[failed].where
            return Result(
                False,
                f"smoke test of adapter {adapter}: suite {suite.name}: asking {where} failed: "
                f"{type(e).__name__}: {str(e)[:300]}",
            )
        answers = [f.result() for f in futures]
    right = [
        scoring.correct(spec.scorer.type, a, q.expected, spec.scorer.min_f1)
        for q, a in zip(suite.questions, answers, strict=True)
    ]
    n, correct = len(right), sum(right)
    accuracy = correct / n
    ok = accuracy >= spec.min_accuracy
    summary = (
        f"suite {suite.name}: {correct}/{n} right ({_pct(accuracy)}) "
        f"{'>=' if ok else '<'} minAccuracy {spec.min_accuracy * 100:g}%"
    )
    if ok:
        return Result(True, f"adapter {adapter}: {summary}", suite=summary)
    wrong = next(i for i, r in enumerate(right) if not r)
    q = suite.questions[wrong]
    head = f"smoke test of adapter {adapter}: {summary}; e.g. line {q.where.rsplit(':', 1)[1]} asked "
    # Share what is left of the limit between the question, the expected and the answer given.
    room = max(40, (MESSAGE_LIMIT - len(head) - 30) // 3)
    message = (
        f"{head}{_quoted(q.shown, room)} expected {_quoted(q.expected, room)}, "
        f"got {_quoted(answers[wrong], room)}"
    )
    return Result(False, message[:MESSAGE_LIMIT], suite=summary)


def _ask(client, model: str, adapter: str | None, test: SmokeTest) -> str:
    """``model``: the name of the base model in chat completions (the runtime's); ``adapter`` selects one."""
    if test.chat:
        out = client.chat_completion(
            [{"role": "user", "content": test.prompt}],
            model=adapter or model,  # both runtimes select the adapter by `model`
            max_tokens=test.max_new_tokens,
            temperature=0.0,  # greedy
            seed=0,
        )
        return out.choices[0].message.content or ""
    kwargs = {"adapter_id": adapter} if adapter else {}
    return client.text_generation(test.prompt, max_new_tokens=test.max_new_tokens, do_sample=False, **kwargs)


def check(
    base_url: str,
    base_model: str,
    adapter: str,
    test: SmokeTest | None,
    timeout: float,
    suite: Suite | None = None,
) -> Result:
    """Ask the pod at ``base_url`` with ``adapter``; judge the answer by ``test``. ``base_model``: the `model`
    that means the base model (for `differsFromBase`). ``suite``: ``test.suite`` as read and checked (the
    reconciler reads it before any pod is tested); asked after the prompt passed."""
    from huggingface_hub import InferenceClient

    test = test or SmokeTest()
    if test.suite is not None and suite is None:
        raise ValueError("smokeTest.suite is set but was not read: pass it as `suite`")
    client = InferenceClient(base_url=base_url, timeout=timeout)
    try:
        answer = _ask(client, base_model, adapter, test)
    except Exception as e:  # any failure to answer is a failed smoke test, with its reason
        return Result(False, f"smoke test of adapter {adapter} failed: {type(e).__name__}: {str(e)[:300]}")
    shown = answer.strip().replace("\n", " ")[:EXCERPT]
    if not answer.strip():
        return Result(False, f"smoke test of adapter {adapter}: empty answer")
    if test.must_contain and test.must_contain.lower() not in answer.lower():
        return Result(
            False, f"smoke test of adapter {adapter}: answer lacks {test.must_contain!r}: {shown!r}"
        )
    if test.must_match:
        try:
            matched = re.search(test.must_match, answer) is not None
        except re.error as e:
            return Result(False, f"smoke test of adapter {adapter}: bad mustMatch pattern: {e}")
        if not matched:
            return Result(
                False,
                f"smoke test of adapter {adapter}: answer does not match {test.must_match!r}: {shown!r}",
            )
    if test.differs_from_base:
        try:
            base = _ask(client, base_model, None, test)
        except Exception as e:
            return Result(
                False, f"smoke test of adapter {adapter}: base model failed: {type(e).__name__}: {e}"
            )
        if base.strip() == answer.strip():
            return Result(False, f"smoke test of adapter {adapter}: same answer as the base model: {shown!r}")
    if suite is not None:
        try:
            return run_suite(client, adapter, suite)
        except Exception as e:  # a failure to answer is a failed smoke test, with its reason
            return Result(
                False,
                f"smoke test of adapter {adapter}: suite {suite.name}: {type(e).__name__}: {str(e)[:300]}",
            )
    return Result(True, f"adapter {adapter} answered: {shown!r}")
