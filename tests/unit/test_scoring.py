"""The scorers shared by the trainer's evaluation suites and the serving smoke test."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pytest

from loraforge_operator import crds, scoring


@pytest.mark.parametrize(
    ("scorer", "answer", "expected", "right"),
    [
        ("contains", "The capital of Veloria is Marnhold.", "Marnhold", True),
        ("contains", "the CAPITAL of veloria is marnhold!", "The capital of Veloria is Marnhold.", True),
        ("contains", "It is Marnholdia.", "Marnhold", False),  # word boundaries: not a prefix of a word
        ("contains", "The capital of Veloria is Ostley.", "The capital of Veloria is Marnhold.", False),
        ("contains", "anything", "  ", False),  # an empty expected answer matches nothing
        ("contains", "\uff2d\uff41rnhold", "Marnhold", True),  # NFKC: full-width letters are the same letters
        ("exact", "Marnhold.", "marnhold", True),
        ("exact", "The Marnhold", "Marnhold", True),  # articles are dropped, as SQuAD does
        ("exact", "Marnhold, of course", "Marnhold", False),
        ("regex", "Please call 911 now.", r"(?i)call (911|112)", True),
        ("regex", "Rest and drink water.", r"(?i)call (911|112)", False),
        ("tokenF1", "capital is Marnhold", "The capital of Veloria is Marnhold.", True),
        ("tokenF1", "Ostley", "The capital of Veloria is Marnhold.", False),
    ],
)
def test_each_scorer_judges_as_documented(scorer: str, answer: str, expected: str, right: bool) -> None:
    assert scoring.correct(scorer, answer, expected) is right


def test_token_f1_is_squads() -> None:
    assert scoring.token_f1("a b c", "a b c") == 1.0
    assert scoring.token_f1("x y", "a b") == 0.0
    # precision 1/2, recall 1/3: F1 = 2 * (1/2 * 1/3) / (1/2 + 1/3) = 0.4
    assert scoring.token_f1("red kite", "grey wolf kite") == pytest.approx(0.4)
    assert scoring.correct("tokenF1", "red kite", "grey wolf kite", min_f1=0.4)
    assert not scoring.correct("tokenF1", "red kite", "grey wolf kite", min_f1=0.41)
    assert scoring.token_f1("", "") == 1.0 and scoring.token_f1("", "b") == 0.0


def test_a_pattern_that_does_not_compile_is_named() -> None:
    assert scoring.pattern_problem(r"(?i)call (911") is not None
    assert "not a valid regular expression" in scoring.pattern_problem("[z")
    assert scoring.pattern_problem(r"(?<=call )911") is None  # Python syntax, lookbehind included


def test_an_unknown_scorer_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown scorer 'fuzzy'; one of contains, exact, regex, tokenF1"):
        scoring.correct("fuzzy", "a", "a")


def test_the_trainers_copy_is_the_generated_one() -> None:
    """One definition: the trainer's scoring.py is written from the operator's by `make crds`."""
    from loraforge_trainer.api import scoring as trainer_scoring

    assert crds.trainer_api()[PurePosixPath("scoring.py")] == Path(trainer_scoring.__file__).read_text()
    assert trainer_scoring.SCORERS == scoring.SCORERS
