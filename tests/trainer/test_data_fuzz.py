"""Damaged dataset files: the trainer names the first bad line, never crashes
on one and never hangs.

A dataset is a JSONL file that people produce with their own tools, so it can
arrive cut short (an interrupted upload or copy), with one damaged line, or as
something else entirely (a binary file under the wrong name). The promise is
that the dataset reader either accepts the file, and then every record it
returns is a valid record of the format, or raises InvalidInput with reason
DatasetInvalid and a message that begins with ``<file>:<line>:``, the first bad
line. Any other exception would surface as TrainerFailed, exit code 1, which
the operator retries although the file will not change.

Hypothesis generates the damage, derandomized so that every run checks the
same examples. The expected outcome is worked out here, not by the trainer's
code: for a truncated copy of the example dataset
(``examples/datasets/fictional-facts``), from where the cut falls; for
random bytes and a damaged line, with ``expected()``, a plain reading of the
format's rules (UTF-8 JSON, one object a line, blank lines allowed, the
format's fields). Records that are accepted also go through the real
tokenizer, which is where a record the reader should have refused (say, a
string with a lone UTF-16 surrogate) would fail.

Two runs of the real trainer process, one on a truncated validation file and
one on random bytes, check what a user sees: exit code 3 (bad input, not
retried), the ``file:line`` in the termination message and the log, and
nothing published. A subprocess timeout guards against a hang.
"""

from __future__ import annotations

import hashlib
import json
import random
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from loraforge_trainer import data
from loraforge_trainer.errors import DATASET_INVALID, EXIT_INVALID_INPUT, InvalidInput

from .conftest import FACTS, Result, run_trainer, small_config

SEED = (FACTS / "train.jsonl").read_bytes()
SEED_LINES = SEED.split(b"\n")[:-1]  # the file ends with a newline
assert SEED.endswith(b"\n") and SEED_LINES and all(SEED_LINES)
ROLES = ("system", "user", "assistant")
FUZZ = settings(
    derandomize=True,  # the same examples every run: a failure reproduces, CI does not flake
    database=None,
    deadline=None,
    max_examples=400,
)


def _strings(obj: Any) -> list[str]:
    """Every string in a parsed JSON value, keys included (iteratively: values may nest deeply)."""
    out, todo = [], [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, str):
            out.append(o)
        elif isinstance(o, dict):
            todo += [*o.keys(), *o.values()]
        elif isinstance(o, list):
            todo += o
    return out


def _is_record(obj: Any, fmt: str) -> bool:
    if not isinstance(obj, dict):
        return False
    if fmt == "text":
        return isinstance(obj.get("text"), str) and bool(obj["text"].strip())
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    for m in messages:
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            return False
    return any(m["role"] == "assistant" and m["content"].strip() for m in messages)


def parse(line: bytes, fmt: str) -> Any | None:
    """The record one line holds, or None when it is not a valid record of `fmt`."""
    try:
        obj = json.loads(line.decode("utf-8"))  # strict UTF-8; no BOM (RFC 8259: "MUST NOT add a BOM")
    except (ValueError, RecursionError):  # also: numbers past Python's digit limit, deep nesting
        return None
    try:
        for s in _strings(obj):
            s.encode("utf-8")  # a "\ud800" escape parses to a lone surrogate: not text
    except UnicodeEncodeError:
        return None
    return obj if _is_record(obj, fmt) else None


def expected(blob: bytes, fmt: str) -> tuple[str, Any]:
    """("bad", line number of the first bad line), ("ok", {line number: record}), or ("empty", None)."""
    records = {}
    for n, line in enumerate(blob.split(b"\n"), start=1):
        if not line.strip():  # blank (ASCII whitespace only), or the end of a file that ends with "\n"
            continue
        obj = parse(line, fmt)  # (lines here are far below data.MAX_LINE_BYTES)
        if obj is None:
            return "bad", n
        records[n] = obj
    return ("ok", records) if records else ("empty", None)


def check(path: Path, fmt: str, tok: Any) -> str:
    """Read `path` as the trainer does; assert the outcome `expected()` says. Returns the outcome."""
    kind, detail = expected(path.read_bytes(), fmt)
    try:
        read = data.read_jsonl(path, "datasets/x.jsonl", fmt)
    except InvalidInput as e:
        assert e.reason == DATASET_INVALID
        if kind == "bad":
            assert e.message.startswith(f"datasets/x.jsonl:{detail}: "), (e.message, detail)
        else:
            assert kind == "empty", (e.message, kind)
            assert e.message == "datasets/x.jsonl: no records"
        return kind
    assert kind == "ok", (kind, detail)
    assert [r.where for r in read.records] == [f"datasets/x.jsonl:{n}" for n in detail]
    # the very records of the file (compared as JSON text: NaN != NaN)
    assert [json.dumps(r.fields) for r in read.records] == [json.dumps(o) for o in detail.values()]
    assert read.digest == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    if tok is not None:
        encoder = data.Encoder(tok, fmt, 64)
        for r in read.records:  # the tokenizer takes every accepted record
            encoder.encode(r)
    return kind


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "d.jsonl"


def test_the_seed_dataset_is_valid_by_the_oracle_too(scratch: Path) -> None:
    scratch.write_bytes(SEED)
    assert check(scratch, "chat", None) == "ok"
    assert expected(SEED, "chat") == ("ok", {n: json.loads(line) for n, line in enumerate(SEED_LINES, 1)})


@FUZZ
@given(blob=st.binary(max_size=4096), fmt=st.sampled_from(["chat", "text"]))
@example(blob=b"", fmt="chat")
@example(blob=b"\x00" * 100, fmt="text")
@example(blob=b"\xef\xbb\xbf" + SEED_LINES[0], fmt="chat")  # a BOM
@example(blob=b"\r" * 10, fmt="text")
def test_random_bytes_fail_naming_the_first_bad_line(scratch: Path, blob: bytes, fmt: str) -> None:
    scratch.write_bytes(blob)
    event(check(scratch, fmt, None))


TEXT = st.text(max_size=20)
GOOD_LINES = {
    "chat": st.one_of(
        st.sampled_from(SEED_LINES),
        st.tuples(st.sampled_from(ROLES), TEXT).map(
            lambda rc: json.dumps({"messages": [{"role": rc[0], "content": rc[1]}]}).encode()
        ),
    ),
    "text": st.one_of(
        TEXT.map(lambda s: json.dumps({"text": s}).encode()),
        TEXT.map(lambda s: json.dumps({"text": s}, ensure_ascii=False).encode("utf-8", "surrogatepass")),
    ),
}
ODD_LINES = [  # some are valid records, most are not
    b"",
    b"  \t",
    b"\r",
    b"\x0b\x0c",
    b"\x00",
    b"null",
    b"[]",
    b"{}",
    b'"text"',
    b'{"text": "a"}\r',  # a CRLF line ending
    b'{"text": "a"}\r{"text": "b"}',  # a bare CR is not a line break in JSONL
    b'{"text": "a"} {"text": "b"}',
    b'{"text": "\xff"}',
    b'{"text": "\\ud800"}',
    b'{"text": "ok", "extra": "\\udfff"}',
    b'{"text": "\\ud83d\\ude00"}',  # a surrogate pair: an emoji, valid
    b'{"text": "\\u0000"}',
    b'{"text": NaN}',
    b'{"text": "a", "n": NaN}',
    b'{"text": "a", "n": ' + b"9" * 5000 + b"}",  # over Python's int digit limit
    b'{"text": "a", "n": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # nested deeper than the recursion limit
    b'{"text": "a", "n": ' + b"[" * 50 + b"]" * 50 + b"}",
    b'{"messages": [{"role": "assistant", "content": "\\ud800"}]}',
    b'{"messages": [{"role": ["assistant"], "content": "x"}]}',
    b'{"messages": [{"role": "assistant", "content": "   "}]}',
    b'{"messages": "x"}',
]
ANY_LINE = st.one_of(st.sampled_from(ODD_LINES), st.binary(max_size=40), *GOOD_LINES.values())


@st.composite
def jsonl_files(draw: st.DrawFn) -> tuple[str, bytes]:
    """A format, and a file of its records with up to two odd lines among them
    (random bytes, a nasty case, or a record of the other format)."""
    fmt = draw(st.sampled_from(["chat", "text"]))
    lines = draw(st.lists(GOOD_LINES[fmt], max_size=10))
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(ANY_LINE))
    end = draw(st.sampled_from([b"", b"\n", b"\r\n"])) if lines else b""
    return fmt, b"\n".join(lines) + end


@FUZZ
@given(file=jsonl_files())
def test_files_of_random_lines_are_read_or_fail_at_the_first_bad_one(
    scratch: Path, tok: Any, file: tuple[str, bytes]
) -> None:
    fmt, blob = file
    scratch.write_bytes(blob)
    event(check(scratch, fmt, tok))


@FUZZ
@given(cut=st.integers(0, len(SEED)))
@example(cut=0)
@example(cut=1)
@example(cut=len(SEED_LINES[0]))  # just before the first newline: line 1 is whole
@example(cut=len(SEED_LINES[0]) + 1)  # just after it
@example(cut=len(SEED) - 1)  # the last line without its newline
@example(cut=len(SEED))
def test_a_truncated_file_fails_at_the_line_the_cut_falls_in(scratch: Path, cut: int) -> None:
    blob = SEED[:cut]
    scratch.write_bytes(blob)
    line = blob.count(b"\n") + 1  # the line the cut falls in
    partial = blob[blob.rfind(b"\n") + 1 :]
    whole_lines = line - 1 + (partial == SEED_LINES[line - 1] if line <= len(SEED_LINES) else 0)
    try:
        read = data.read_jsonl(scratch, "datasets/x.jsonl", "chat")
    except InvalidInput as e:
        if whole_lines == 0 and not partial:
            assert e.message == "datasets/x.jsonl: no records"
        else:
            assert partial and whole_lines == line - 1, e.message  # a part of a line, not all of it
            assert e.message.startswith(f"datasets/x.jsonl:{line}: not valid JSON"), e.message
        return
    assert not partial or whole_lines == line, "a part of a line was accepted"
    assert [r.where for r in read.records] == [f"datasets/x.jsonl:{n}" for n in range(1, whole_lines + 1)]
    assert [r.fields for r in read.records] == [json.loads(x) for x in SEED_LINES[:whole_lines]]


def _corrupt(line: bytes, how: str, at: int, byte: int, junk: bytes) -> bytes:
    at %= len(line) + 1
    return {
        "replace": junk,
        "overwrite": line[:at] + bytes([byte]) + line[at + 1 :],
        "insert": line[:at] + bytes([byte]) + line[at:],
        "delete": line[:at] + line[at + 1 :],
        "cut": line[:at],
    }[how]


@FUZZ
@given(
    index=st.integers(0, len(SEED_LINES) - 1),
    how=st.sampled_from(["replace", "overwrite", "insert", "delete", "cut"]),
    at=st.integers(0, 400),
    byte=st.integers(0, 255).filter(lambda b: b != ord("\n")),
    junk=st.binary(max_size=200).map(lambda b: b.replace(b"\n", b"")),
)
def test_one_damaged_line_is_named_or_still_a_valid_record(
    scratch: Path, tok: Any, index: int, how: str, at: int, byte: int, junk: bytes
) -> None:
    damaged = _corrupt(SEED_LINES[index], how, at, byte, junk)
    lines = [*SEED_LINES[:index], damaged, *SEED_LINES[index + 1 :]]
    scratch.write_bytes(b"\n".join(lines) + b"\n")
    still = parse(damaged, "chat")
    try:
        read = data.read_jsonl(scratch, "datasets/x.jsonl", "chat")
    except InvalidInput as e:
        assert still is None and damaged.strip(), f"a valid line was refused: {e.message}"
        assert e.reason == DATASET_INVALID
        assert e.message.startswith(f"datasets/x.jsonl:{index + 1}: "), e.message
        event("bad")
        return
    event("ok")
    assert still is not None or not damaged.strip(), f"line {index + 1} was accepted: {damaged!r}"
    assert len(read.records) == len(SEED_LINES) - (still is None)
    if still is not None:
        (record,) = [r for r in read.records if r.where == f"datasets/x.jsonl:{index + 1}"]
        assert record.fields == still
        data.Encoder(tok, "chat", 64).encode(record)


def test_an_overlong_line_is_refused_without_being_held_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a 1 MiB limit, a 24 MiB line (no newline anywhere: say, a binary file) is refused
    # while the reader never holds more than a few MiB; the Skip policy reads past it.
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 1 << 20)
    good = b'{"text": "fine"}\n'
    huge = b"x" * (24 << 20)
    p = tmp_path / "d.jsonl"
    for blob, policy in ((huge, "Fail"), (good + huge + b"\n" + good, "Skip"), (good + huge, "Skip")):
        p.write_bytes(blob)
        tracemalloc.start()
        try:
            read = data.read_jsonl(p, "d.jsonl", "text", policy, 1)
        except InvalidInput as e:
            read, failure = None, e.message
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert peak < 8 << 20, f"the reader held {peak >> 20} MiB"
        if read is None:
            assert policy == "Fail" and failure.startswith("d.jsonl:1: line longer than 1 MiB"), failure
            continue
        assert policy == "Skip"
        assert read.skipped == ["d.jsonl:2: line longer than 1 MiB"]
        assert [r.where for r in read.records] == ["d.jsonl:1", "d.jsonl:3"][: blob.count(b"\n")]
        assert read.digest == "sha256:" + hashlib.sha256(blob).hexdigest()
        assert read.lines == blob.count(b"\n") + (not blob.endswith(b"\n"))


# --- the trainer process --------------------------------------------------------------------


def damaged_run(tmp: Path, damage: str) -> tuple[dict[str, Any], bytes]:
    """A configuration and the damaged file it reads as datasets/upload.jsonl."""
    if damage == "random bytes":  # as the training file
        blob = random.Random(3).randbytes(20_000)  # noqa: S311 (reproducible, not secret)
        cfg = small_config(dataset={"path": UPLOAD, "validationPath": None, "validationSplit": 0.1})
    else:  # as the validation file, cut 57 bytes into its line 41
        valid = (FACTS / "validation.jsonl").read_bytes()
        blob = valid[: sum(len(x) + 1 for x in valid.split(b"\n")[:40]) + 57]
        cfg = small_config(dataset={"validationPath": UPLOAD})
    (tmp / "store" / "datasets").mkdir(parents=True)
    (tmp / "store" / UPLOAD).write_bytes(blob)
    return cfg, blob


UPLOAD = "datasets/upload.jsonl"
DAMAGES = ("truncated validation file", "random bytes")


def test_the_trainer_exits_3_naming_file_and_line_and_publishes_nothing(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    def run(damage: str) -> tuple[Result, int]:
        tmp = tmp_path / damage.replace(" ", "-")
        cfg, blob = damaged_run(tmp, damage)
        kind, line = expected(blob, "chat")
        assert kind == "bad", kind
        env = {"LORAFORGE_TERMINATION_LOG": str(tmp / "termination-log")}
        return run_trainer(tmp, tiny_model_dir, cfg, env=env, timeout=300), line  # the timeout: a hang guard

    with ThreadPoolExecutor(len(DAMAGES)) as pool:  # two processes at once, on two cores: half the time
        results = dict(zip(DAMAGES, pool.map(run, DAMAGES), strict=True))
    assert results["truncated validation file"][1] == 41
    for damage, (r, line) in results.items():
        assert r.code == EXIT_INVALID_INPUT, (damage, r.output)
        message = (r.store.parent / "termination-log").read_text()
        assert message.startswith(f"DatasetInvalid: {UPLOAD}:{line}: "), message
        assert f"{UPLOAD}:{line}: " in r.output
        assert "Traceback" not in r.output
        assert r.revisions() == []
        assert not (r.store / "checkpoints").exists()  # it failed before training started
