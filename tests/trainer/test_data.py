"""Datasets: validation with file:line, the skip policy, label masks per
format, the seeded split, and packing. Real tokenizer (SmolLM2's)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from loraforge_trainer import data
from loraforge_trainer.errors import DATASET_INVALID, InvalidInput


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text("".join(line + "\n" for line in lines))
    return p


CHAT = json.dumps(
    {
        "messages": [
            {"role": "user", "content": "What is the capital of Veloria?"},
            {"role": "assistant", "content": "Marnhold."},
            {"role": "user", "content": "And its main export?"},
            {"role": "assistant", "content": "Amber glass."},
        ]
    }
)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"messages": [', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"text": "hi"}', "missing key 'messages'"),
        ('{"messages": []}', "'messages' must be a non-empty list"),
        ('{"messages": [{"role": "robot", "content": "x"}]}', "messages[0].role must be one of"),
        ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant message"),
        ('{"messages": [{"role": "assistant", "content": 5}]}', "messages[0].content must be a string"),
    ],
)
def test_a_bad_chat_record_fails_naming_file_and_line(tmp_path: Path, line: str, problem: str) -> None:
    p = write(tmp_path, [CHAT, "", CHAT, line, CHAT])
    with pytest.raises(InvalidInput) as e:
        data.read_jsonl(p, "datasets/x.jsonl", "chat")
    assert e.value.reason == DATASET_INVALID
    assert e.value.message.startswith("datasets/x.jsonl:4: ")
    assert problem in e.value.message


@pytest.mark.parametrize(
    ("fmt", "line", "problem"),
    [
        ("instruction", '{"instruction": "x"}', "missing key 'output'"),
        ("instruction", '{"instruction": "x", "input": 3, "output": "y"}', "'input' must be a string"),
        ("completion", '{"prompt": "x", "completion": ""}', "'completion' is empty"),
        ("text", '{"text": 1}', "'text' must be a string"),
    ],
)
def test_each_format_checks_its_fields(tmp_path: Path, fmt: str, line: str, problem: str) -> None:
    with pytest.raises(InvalidInput, match=rf"d\.jsonl:1: .*{re.escape(problem)}"):
        data.read_jsonl(write(tmp_path, [line]), "d.jsonl", fmt)


def test_invalid_utf8_is_named(tmp_path: Path) -> None:
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(InvalidInput, match=r"d.jsonl:2: not UTF-8"):
        data.read_jsonl(p, "d.jsonl", "text")


def test_an_empty_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"d\.jsonl: no records"):
        data.read_jsonl(write(tmp_path, ["", "  "]), "d.jsonl", "text")


def test_skip_policy_counts_and_is_bounded(tmp_path: Path) -> None:
    good, bad = '{"text": "a"}', "{nope"
    read = data.read_jsonl(write(tmp_path, [good, bad, good, bad]), "d.jsonl", "text", "Skip", 2)
    assert len(read.records) == 2
    assert [s.split(":")[1] for s in read.skipped] == ["2", "4"]
    with pytest.raises(InvalidInput, match=r"more than dataset.maxSkippedRecords=1 .*first: d.jsonl:2"):
        data.read_jsonl(write(tmp_path, [good, bad, good, bad]), "d.jsonl", "text", "Skip", 1)


def test_the_digest_is_of_the_file_bytes(tmp_path: Path) -> None:
    import hashlib

    p = write(tmp_path, ['{"text": "a"}'])
    assert data.read_jsonl(p, "d", "text").digest == "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()


def trained_text(tok, ex: data.Example) -> str:
    return tok.decode([t for t, label in zip(ex.input_ids, ex.labels, strict=True) if label != data.IGNORE])


def test_chat_trains_only_the_assistant_turns_and_their_end_marker(tok) -> None:
    ex = data.Encoder(tok, "chat", 512).encode(data.Record("x:1", json.loads(CHAT)))
    assert ex is not None
    trained = trained_text(tok, ex)
    assert "Marnhold." in trained and "Amber glass." in trained
    assert "capital" not in trained and "export" not in trained and "system" not in trained
    assert trained.count("<|im_end|>") == 2  # the model learns to stop
    # the input is exactly the chat template's rendering
    assert tok.decode(ex.input_ids) == tok.apply_chat_template(json.loads(CHAT)["messages"], tokenize=False)


def test_instruction_and_completion_train_only_the_answer(tok) -> None:
    ins = data.Encoder(tok, "instruction", 512).encode(
        data.Record("x:1", {"instruction": "Translate", "input": "bonjour", "output": "hello"})
    )
    assert ins is not None and trained_text(tok, ins).strip().startswith("hello")
    assert "bonjour" in tok.decode(ins.input_ids) and "bonjour" not in trained_text(tok, ins)
    comp = data.Encoder(tok, "completion", 512).encode(
        data.Record("x:1", {"prompt": "Q: sky colour? A:", "completion": " blue"})
    )
    assert comp is not None and trained_text(tok, comp) == " blue" + tok.eos_token


def test_text_trains_every_token_but_the_first(tok) -> None:
    ex = data.Encoder(tok, "text", 512).encode(data.Record("x:1", {"text": "one two three"}))
    assert ex is not None
    assert ex.labels[0] == data.IGNORE and all(label != data.IGNORE for label in ex.labels[1:])


def test_truncation_and_records_with_nothing_left_to_learn(tok) -> None:
    enc = data.Encoder(tok, "chat", 16)
    long_prompt = {
        "messages": [{"role": "user", "content": "word " * 50}, {"role": "assistant", "content": "ok"}]
    }
    assert enc.encode(data.Record("x:1", long_prompt)) is None
    with pytest.raises(
        InvalidInput, match=r"every training record is longer than training.maxSeqLength=16 .*x:1"
    ):
        enc.encode_all([data.Record("x:1", long_prompt)], "training")
    short = data.Encoder(tok, "text", 16).encode(data.Record("x:2", {"text": "word " * 50}))
    assert short is not None and len(short.input_ids) == 16


def test_split_is_seeded_and_disjoint() -> None:
    records = [data.Record(f"x:{i}", {"text": str(i)}) for i in range(100)]
    a_train, a_val = data.split(records, 0.1, seed=7)
    b_train, b_val = data.split(records, 0.1, seed=7)
    _, c_val = data.split(records, 0.1, seed=8)
    assert a_val == b_val and a_train == b_train
    assert a_val != c_val
    assert len(a_val) == 10 and len(a_train) == 90
    assert not {r.where for r in a_val} & {r.where for r in a_train}


def test_packing_keeps_examples_apart(tok) -> None:
    enc = data.Encoder(tok, "text", 64)
    examples = [enc.encode(data.Record(f"x:{i}", {"text": "a b c d e f"[: 2 * i + 1]})) for i in range(1, 6)]
    rows = data.pack([e for e in examples if e], 20)
    assert sum(len(r["input_ids"]) for r in rows) == sum(len(e.input_ids) for e in examples if e)
    assert all(len(r["input_ids"]) <= 20 for r in rows)
    for r in rows:
        starts = [i for i, p in enumerate(r["position_ids"]) if p == 0]
        for s in starts:  # nothing is learned across a boundary
            assert r["labels"][s] == data.IGNORE
    batch = data.Collator(tok.pad_token_id)(rows)
    assert batch["position_ids"].shape == batch["input_ids"].shape
    assert batch["lengths"].tolist() == [len(r["input_ids"]) for r in rows]
    mask = batch["attention_mask"]  # (rows, 1, width, width): causal, within one example
    width = batch["input_ids"].shape[1]
    assert mask.shape == (len(rows), 1, width, width)
    first = rows[0]["segments"]
    for q in range(len(first)):
        for k in range(len(first)):
            assert bool(mask[0, 0, q, k]) == (k <= q and first[k] == first[q])


def test_a_packed_row_computes_exactly_what_each_example_would_alone(tok, tiny_model_dir: Path) -> None:
    """Loss and LoRA gradients of packed rows (plain, and with the shared
    prefix computed once) equal those of the examples one by one."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loraforge_trainer import training

    facts = Path(__file__).resolve().parents[2] / "examples" / "datasets" / "fictional-facts" / "train.jsonl"
    records = data.read_jsonl(facts, "train.jsonl", "chat").records[:12]
    examples, _ = data.Encoder(tok, "chat", 512).encode_all(records, "training")
    prefix = data.shared_prefix_length(examples)
    assert tok.decode(examples[0].input_ids[:prefix]).endswith(
        "<|im_start|>user\n"
    )  # the template's system turn

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    collate = data.Collator(tok.pad_token_id)

    def run(rows: list, per_row: bool = True) -> tuple[float, int, dict]:
        model.zero_grad()
        total, count = 0.0, 0
        for i in range(0, len(rows), 3):
            loss, n = training.label_loss(model, collate(rows[i : i + 3]), per_row=per_row)
            loss.backward()
            total, count = total + float(loss), count + n
        return total, count, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    alone = run(data.unpacked(examples))
    shared_rows = data.pack(examples, 200, prefix)
    assert (
        len(shared_rows) < len(examples)
        and shared_rows[0]["input_ids"][:prefix] == examples[0].input_ids[:prefix]
    )
    assert sum(r["tokens"][0] for r in shared_rows) == sum(len(e.input_ids) for e in examples)
    for rows, per_row in ((data.pack(examples, 200), True), (shared_rows, True), (shared_rows, False)):
        total, count, grads = run(rows, per_row)
        assert count == alone[1]
        assert total == pytest.approx(alone[0], rel=1e-5)
        for k, g in alone[2].items():
            torch.testing.assert_close(grads[k], g, rtol=1e-4, atol=1e-5)


def test_no_prefix_is_shared_when_a_trained_token_would_follow_it(tok) -> None:
    enc = data.Encoder(tok, "completion", 64)
    same_prompt = [
        enc.encode(data.Record(f"x:{i}", {"prompt": "Q: same question? A:", "completion": f" {w}"}))
        for i, w in enumerate(["yes", "no", "maybe"])
    ]
    p = data.shared_prefix_length([e for e in same_prompt if e])
    assert p >= 4
    # the prompt is shared, but the token after it is trained in every record: the shared part stops before
    for e in same_prompt:
        assert e is not None and all(label == data.IGNORE for label in e.labels[: p + 1])


@pytest.mark.parametrize("template", [True, False], ids=["chat template", "no template"])
def test_a_question_is_rendered_exactly_as_training_rendered_what_precedes_its_answer(tok, template) -> None:
    """Evaluation by answers asks the model to continue the very text it learned to answer after."""
    chat = [{"role": "user", "content": "Tell me the capital of Veloria."}]
    fields = {"instruction": "Tell me the capital of Veloria.", "input": "Briefly.", "output": "Marnhold."}
    enc = data.Encoder(tok, "instruction", 512)
    enc.has_template = template  # the same tokenizer, as one without a chat template would render
    text, spans = enc.text_and_spans(fields)
    prompt = enc.prompt([{"role": "user", "content": data.Encoder.instruction_prompt(fields)}])
    assert text.startswith(prompt) and spans[0][0] == len(prompt), (text, prompt)
    if template:
        text, spans = data.Encoder(tok, "chat", 512).text_and_spans(
            {"messages": [*chat, {"role": "assistant", "content": "Marnhold."}]}
        )
        prompt = data.Encoder(tok, "chat", 512).prompt(chat)
        assert text.startswith(prompt) and spans[0][0] == len(prompt)
