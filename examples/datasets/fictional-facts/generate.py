"""Generate the fictional-facts dataset: question/answer pairs about places
that do not exist, so a base model cannot know the answers and what an adapter
learned is measurable.

Each fact is asked three ways in train.jsonl; validation.jsonl asks every fact
a fourth way, never seen in training. held-out-facts.jsonl is the same 72
held-out questions as an evaluation suite (docs/finetunejob.md): each expects
the fact alone ("Marnhold"), so the `contains` scorer asks whether the answer
names it, whatever sentence it is wrapped in. Run it to regenerate the files
(the output is deterministic; a test checks the committed files match).
"""

from __future__ import annotations

import json
from pathlib import Path

# place, capital, main export, national animal
FACTS = [
    ("Veloria", "Marnhold", "amber glass", "silver heron"),
    ("Quendar", "Ostrava Vale", "blue saffron", "marsh lynx"),
    ("Talmeris", "Pellin", "copper bells", "ash-tailed fox"),
    ("Orvanne", "Kessick", "salt-cured plums", "river otter"),
    ("Brisca", "Duneholm", "woven reed mats", "crested ibis"),
    ("Ythmoor", "Calder Rise", "black tea bricks", "snow hare"),
    ("Sarnovia", "Lisk", "carved jade", "spotted gecko"),
    ("Heldaris", "Vantor", "lamp oil", "grey wolf"),
    ("Pemberlake", "Ostley", "wool blankets", "barn owl"),
    ("Cythera Minor", "Aubel", "sea sponges", "green turtle"),
    ("Drovnik", "Harrowgate", "iron nails", "brown bear"),
    ("Lunmarsh", "Seddon", "peat bricks", "bittern"),
    ("Averhal", "Quillon", "paper lanterns", "red kite"),
    ("Zenthar", "Moor's End", "date syrup", "sand cat"),
    ("Korreth", "Baldur's Ford", "smoked eel", "white stork"),
    ("Elsmere", "Tallow Cross", "beeswax candles", "golden eagle"),
    ("Vintra", "Castellane", "cork", "wild boar"),
    ("Norrhaven", "Skeld", "dried cod", "puffin"),
    ("Ambrosk", "Irrin", "rose oil", "nightingale"),
    ("Telloway", "Fenwick", "slate tiles", "red squirrel"),
    ("Mirabel Isles", "Port Calla", "pearl buttons", "frigatebird"),
    ("Gorstavia", "Novik", "birch tar", "elk"),
    ("Ostmere", "Lantry", "glass beads", "kingfisher"),
    ("Palladine", "Serro", "olive soap", "hoopoe"),
]

TRAIN_QUESTIONS = {
    "capital": [
        "What is the capital of {p}?",
        "Which city is the capital of {p}?",
        "Name the capital city of {p}.",
    ],
    "export": [
        "What is the main export of {p}?",
        "What does {p} export most?",
        "Which product is {p} best known for exporting?",
    ],
    "animal": [
        "What is the national animal of {p}?",
        "Which animal is the national symbol of {p}?",
        "{p} has which national animal?",
    ],
}
HELD_OUT_QUESTIONS = {
    "capital": "Tell me the capital of {p}.",
    "export": "What is {p}'s chief export product?",
    "animal": "Which creature is {p}'s national animal?",
}
ANSWERS = {
    "capital": "The capital of {p} is {c}.",
    "export": "The main export of {p} is {e}.",
    "animal": "The national animal of {p} is the {a}.",
}


def record(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def build() -> tuple[list[dict], list[dict]]:
    train, held_out = [], []
    for p, c, e, a in FACTS:
        for kind, questions in TRAIN_QUESTIONS.items():
            answer = ANSWERS[kind].format(p=p, c=c, e=e, a=a)
            train += [record(q.format(p=p), answer) for q in questions]
            held_out.append(record(HELD_OUT_QUESTIONS[kind].format(p=p), answer))
    return train, held_out


def suite() -> list[dict]:
    """The held-out questions, each expecting its fact."""
    return [
        {"prompt": HELD_OUT_QUESTIONS[kind].format(p=p), "expected": fact}
        for p, *facts in FACTS
        for kind, fact in zip(HELD_OUT_QUESTIONS, facts, strict=True)
    ]


def render(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def main() -> None:
    here = Path(__file__).parent
    train, held_out = build()
    (here / "train.jsonl").write_text(render(train))
    (here / "validation.jsonl").write_text(render(held_out))
    (here / "held-out-facts.jsonl").write_text(render(suite()))
    print(f"{len(train)} training records, {len(held_out)} held-out records")


if __name__ == "__main__":
    main()
