"""The fictional-facts example dataset is what its generator writes, and its
held-out questions are phrasings never used in training."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

FACTS = Path(__file__).resolve().parents[2] / "examples" / "datasets" / "fictional-facts"


def load_generator():
    spec = importlib.util.spec_from_file_location("generate_facts", FACTS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_files_match_the_generator() -> None:
    gen = load_generator()
    train, held_out = gen.build()
    assert (FACTS / "train.jsonl").read_text() == gen.render(train)
    assert (FACTS / "validation.jsonl").read_text() == gen.render(held_out)
    assert (FACTS / "held-out-facts.jsonl").read_text() == gen.render(gen.suite())


def test_the_facts_suite_asks_each_held_out_question_for_the_fact_its_answer_names() -> None:
    from loraforge_operator import scoring

    held_out = [
        json.loads(line)["messages"] for line in (FACTS / "validation.jsonl").read_text().splitlines()
    ]
    data = (FACTS / "held-out-facts.jsonl").read_bytes()
    records = scoring.parse_suite(data, "held-out-facts.jsonl", "contains", None)
    assert [r.shown for r in records] == [m[0]["content"] for m in held_out]
    for r, m in zip(records, held_out, strict=True):
        assert scoring.correct("contains", m[1]["content"], r.expected), (r.expected, m[1]["content"])


def test_every_held_out_question_is_new_but_its_answer_was_taught() -> None:
    def pairs(name: str) -> list[tuple[str, str]]:
        rows = [json.loads(line) for line in (FACTS / name).read_text().splitlines()]
        return [(r["messages"][0]["content"], r["messages"][1]["content"]) for r in rows]

    train, held_out = pairs("train.jsonl"), pairs("validation.jsonl")
    questions = {q for q, _ in train}
    answers = {a for _, a in train}
    assert len(held_out) == 72 and len(train) == 216
    assert all(q not in questions and a in answers for q, a in held_out)
