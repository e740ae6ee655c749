"""Smoke tests of a new serving pod, with huggingface_hub's InferenceClient,
as a client of the deployment would talk to it. Blocking; the reconciler runs
them in a thread."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .model import SmokeTest

EXCERPT = 160


@dataclass
class Result:
    ok: bool
    message: str


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


def check(base_url: str, base_model: str, adapter: str, test: SmokeTest | None, timeout: float) -> Result:
    """Ask the pod at ``base_url`` with ``adapter``; judge the answer by ``test``. ``base_model``: the `model`
    that means the base model (for `differsFromBase`)."""
    from huggingface_hub import InferenceClient

    test = test or SmokeTest()
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
    return Result(True, f"adapter {adapter} answered: {shown!r}")
