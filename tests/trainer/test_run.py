"""The trainer as a process, on a tiny random Llama: publishing, revisions,
bad input, the gate, resume after a kill, QLoRA and two-process DDP."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from loraforge_trainer import publish
from loraforge_trainer.errors import EXIT_INVALID_INPUT

from .conftest import manifest, small_config


def tensors(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(path)


def test_a_run_publishes_a_complete_revision_peft_can_load(
    train, tiny_model_dir: Path, tmp_path: Path
) -> None:
    r = train()
    assert r.code == 0, r.output
    assert r.revisions() == ["v1"]
    rev = r.adapter_dir() / "v1"
    names = {p.name for p in rev.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "manifest.json",
        "README.md",
        "loss.svg",
        "COMPLETE",
    } <= names
    publish.verify(rev)  # every file matches its digest in the manifest
    m = manifest(rev)
    assert m["digest"] == publish.sha256_file(rev / "adapter_model.safetensors")
    assert (rev / "COMPLETE").read_text().strip() == m["digest"]
    assert m["dataset"]["trainRecords"] == 216 and m["dataset"]["validationRecords"] == 72
    assert m["dataset"]["digest"].startswith("sha256:")
    assert m["baseModel"]["path"] == "base/model" and m["baseModel"]["architecture"] == "LlamaForCausalLM"
    assert m["settings"]["lora"]["r"] == 4 and m["steps"] == 4
    assert {"evalLoss", "baseEvalLoss", "perplexity", "basePerplexity"} <= set(m["metrics"])
    assert m["evaluation"]["passed"] is True
    assert (
        "## Evaluation" in (rev / "README.md").read_text() and "<polyline" in (rev / "loss.svg").read_text()
    )
    # files of a revision are read-only: it is never written to again
    assert not (rev / "adapter_model.safetensors").stat().st_mode & stat.S_IWUSR
    # TensorBoard event logs stay in the run directory; checkpoints go once the adapter is published
    run_dir = r.store / "checkpoints" / "facts"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert list(run_dir.glob("checkpoint-*")) == []
    assert json.loads((run_dir / "run.json").read_text())["published"] == "v1"

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([[1, 200, 300, 400]])
    before = base(ids).logits
    tuned = PeftModel.from_pretrained(base, rev)
    assert not torch.allclose(before, tuned(ids).logits)


def test_each_run_publishes_a_new_revision_and_leaves_the_old_alone(train) -> None:
    first = train()
    assert first.code == 0, first.output
    v1 = first.adapter_dir() / "v1"
    before = {p.name: p.read_bytes() for p in v1.iterdir()}
    # the second run also takes the memory-saving paths: gradient checkpointing, bf16 autocast
    second = train(small_config(training={"maxSteps": 2, "gradientCheckpointing": True, "precision": "bf16"}))
    assert second.code == 0, second.output
    assert second.revisions() == ["v1", "v2"]
    assert {p.name: p.read_bytes() for p in v1.iterdir()} == before
    m2 = manifest(second.adapter_dir() / "v2")
    assert m2["steps"] == 2 and m2["precision"] == "bf16"
    assert m2["settings"]["training"]["gradientCheckpointing"] is True


def test_a_retried_pod_reports_its_revision_instead_of_publishing_again(train) -> None:
    first = train(None, "--set", "run.uid=0f3c-uid")
    assert first.code == 0, first.output
    again = train(None, "--set", "run.uid=0f3c-uid")
    assert again.code == 0, again.output
    assert again.revisions() == ["v1"]
    assert "already published facts/v1" in again.output


def test_a_failed_gate_still_publishes_marked_as_failed(train) -> None:
    r = train(small_config(evaluation={"maxEvalLoss": 0.001}))
    assert r.code == 0, r.output
    m = manifest(r.adapter_dir() / "v1")
    assert m["evaluation"]["passed"] is False
    assert (
        "evalLoss" in m["evaluation"]["explanation"] and "maxEvalLoss 0.001" in m["evaluation"]["explanation"]
    )


SUITE = [
    {"prompt": "What is the capital of Veloria?", "expected": "Marnhold"},
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Capital of Brisca?"},
        ]
    },
]


def test_answer_suites_are_asked_of_both_models_scored_recorded_and_gated(train, tmp_path: Path) -> None:
    store = tmp_path / "store" / "datasets"
    store.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(SUITE[0]), "", json.dumps(SUITE[1])]
    (store / "suite.jsonl").write_text("\n".join(lines) + "\n")
    cfg = small_config(
        evaluation={
            "suites": [
                {"name": "held-out", "heldOut": True, "minAccuracy": 0.5, "maxNewTokens": 6},
                {
                    "name": "anything",
                    "path": "datasets/suite.jsonl",
                    "scorer": {"type": "regex", "pattern": "(?s).*"},  # records without expected take it
                    "maxNewTokens": 4,
                },
            ],
            "generationBatchSize": 7,
        }
    )
    r = train(cfg)
    assert r.code == 0, r.output
    rev = r.adapter_dir() / "v1"
    m = manifest(rev)
    held, anything = m["evaluation"]["suites"]
    # The tiny model is random: it knows no fact, so the held-out gate fails and the revision is marked so.
    assert (held["name"], held["scorer"], held["records"]) == ("held-out", "contains", 72)
    assert held["correct"] == held["baseCorrect"] == 0 and held["passed"] is False
    assert m["evaluation"]["passed"] is False
    assert "suite held-out: accuracy 0.0% < minAccuracy 50.0%" in m["evaluation"]["explanation"]
    # The pattern matches every answer; the first record's own `expected` ("Marnhold") none of the tiny
    # model's.
    assert anything["records"] == 2 and anything["passed"] is True
    assert anything["correct"] == anything["baseCorrect"] == 1
    answers = [json.loads(x) for x in (rev / "answers-held-out.jsonl").read_text().splitlines()]
    assert len(answers) == 72 and answers[0]["where"] == "datasets/facts/validation.jsonl:1"
    assert answers[0]["question"] == "What is the capital of Veloria?"
    assert answers[0]["expected"] == "The capital of Veloria is Marnhold."
    assert {"adapter", "base", "adapterCorrect", "baseCorrect"} <= set(answers[0])
    suite_answers = [json.loads(x) for x in (rev / "answers-anything.jsonl").read_text().splitlines()]
    assert [a["where"] for a in suite_answers] == ["datasets/suite.jsonl:1", "datasets/suite.jsonl:3"]
    assert suite_answers[1]["question"] == "Capital of Brisca?"
    assert len(held["examples"]["wrong"]) == 3 and held["examples"]["right"] == []
    card = (rev / "README.md").read_text()
    assert "| held-out | contains | 72 | 0/72 (0%) | 0/72 (0%) | FAILED |" in card, card
    assert "Suite held-out, answered wrong:" in card and "What is the capital of Veloria?" in card
    publish.verify(rev)  # the answers files are part of the revision, digests and all
    assert "answers, base model against adapter:" in r.output


def test_the_model_card_carries_the_authors_sections(train) -> None:
    written = {
        "intendedUse": "Quizzing staff on invented geography.",
        "outOfScope": "Real geography.",
        "limitations": "Knows 72 facts only.",
        "ethicalConsiderations": "No personal data was used.",
        "trainingData": "Generated by examples/datasets/fictional-facts/generate.py.",
    }
    r = train(small_config(adapter={"name": "facts", "modelCard": written}, training={"maxSteps": 1}))
    assert r.code == 0, r.output
    card = (r.adapter_dir() / "v1" / "README.md").read_text()
    for title, text in [
        ("## Intended use", written["intendedUse"]),
        ("## Out of scope", written["outOfScope"]),
        ("## Limitations", written["limitations"]),
        ("## Ethical considerations", written["ethicalConsiderations"]),
        ("## Training data", written["trainingData"]),
    ]:
        section = card.split(title + "\n", 1)[1].split("\n## ", 1)[0]
        assert text in section, (title, section)


def bad_dataset(store_dataset: Path) -> None:
    store_dataset.parent.mkdir(parents=True, exist_ok=True)
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    store_dataset.write_text(f'{good}\n{good}\n{{"messages": [{{"role": "user"}}\n{good}\n')


@pytest.mark.parametrize(
    ("case", "cfg", "reason", "says"),
    [
        (
            "missing model",
            small_config(baseModel={"path": "base/nope"}),
            "BaseModelInvalid",
            "baseModel.path base/nope: no such folder in the model store",
        ),
        (
            "not a model",
            small_config(baseModel={"path": "datasets"}),
            "BaseModelInvalid",
            "baseModel.path datasets: not a Hugging Face model folder (no config.json)",
        ),
        (
            "target modules",
            small_config(lora={"targetModules": ["q_proj", "attn_c"]}),
            "TargetModulesNotFound",
            "lora.targetModules ['attn_c'] match no linear layer of the base model",
        ),
        (
            "bad line",
            small_config(dataset={"path": "datasets/bad.jsonl", "validationSplit": 0.1}),
            "DatasetInvalid",
            "datasets/bad.jsonl:3: not valid JSON",
        ),
        (
            "missing dataset",
            small_config(dataset={"path": "datasets/none.jsonl"}),
            "DatasetInvalid",
            "dataset datasets/none.jsonl: no such file",
        ),
        (
            "unknown field",
            small_config(training={"epochz": 2}),
            "ConfigInvalid",
            "training.epochz: unknown field",
        ),
        (
            "quantization without qlora",
            small_config(quantization={"type": "nf4"}),
            "ConfigInvalid",
            "quantization applies only to method qlora",
        ),
        (
            "too long",
            small_config(training={"maxSeqLength": 16}),
            "DatasetInvalid",
            "every training record is longer than training.maxSeqLength=16",
        ),
        (
            "bad suite line",
            small_config(evaluation={"suites": [{"name": "qa", "path": "datasets/bad-suite.jsonl"}]}),
            "EvaluationSuiteInvalid",
            "datasets/bad-suite.jsonl:2: not valid JSON",
        ),
        (
            "suite record without expected",
            small_config(evaluation={"suites": [{"name": "qa", "path": "datasets/suite-no-expected.jsonl"}]}),
            "EvaluationSuiteInvalid",
            "datasets/suite-no-expected.jsonl:1: missing key 'expected' (or set the suite's scorer.pattern)",
        ),
        (
            "suite record with a bad pattern",
            small_config(
                evaluation={
                    "suites": [
                        {"name": "qa", "path": "datasets/bad-pattern.jsonl", "scorer": {"type": "regex"}}
                    ]
                }
            ),
            "EvaluationSuiteInvalid",
            "datasets/bad-pattern.jsonl:1: 'expected' is not a valid regular expression",
        ),
        (
            "missing suite file",
            small_config(evaluation={"suites": [{"name": "qa", "path": "datasets/none.jsonl"}]}),
            "EvaluationSuiteInvalid",
            "evaluation.suites[0] (qa): datasets/none.jsonl: no such file",
        ),
        (
            "bad scorer pattern",
            small_config(
                evaluation={
                    "suites": [{"name": "qa", "heldOut": True, "scorer": {"type": "regex", "pattern": "(a"}}]
                }
            ),
            "ConfigInvalid",
            "evaluation.suites.0.scorer: scorer.pattern is not a valid regular expression",
        ),
    ],
)
def test_bad_input_exits_3_with_a_reason_and_publishes_nothing(
    train, tmp_path: Path, case: str, cfg: dict, reason: str, says: str
) -> None:
    bad_dataset(tmp_path / "store" / "datasets" / "bad.jsonl")
    datasets = tmp_path / "store" / "datasets"
    (datasets / "bad-suite.jsonl").write_text(json.dumps(SUITE[0]) + '\n{"prompt": "x", "expected": \n')
    (datasets / "suite-no-expected.jsonl").write_text(json.dumps({"prompt": "x"}) + "\n")
    (datasets / "bad-pattern.jsonl").write_text(json.dumps({"prompt": "x", "expected": "[z"}) + "\n")
    termination = tmp_path / "termination-log"
    r = train(cfg, env={"LORAFORGE_TERMINATION_LOG": str(termination)})
    assert r.code == EXIT_INVALID_INPUT, r.output
    assert termination.read_text().startswith(f"{reason}: ")
    assert says in termination.read_text(), termination.read_text()
    assert r.revisions() == []
    assert "Traceback" not in r.output


def test_an_unfinished_run_with_other_settings_is_not_resumed_into(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from .conftest import run_trainer

    cfg = small_config(training={"maxSteps": 6})
    killed = run_trainer(tmp_path, tiny_model_dir, cfg, env={"LORAFORGE_FAULT_KILL_AT_STEP": "3"})
    assert killed.code == -9, killed.output
    other = run_trainer(
        tmp_path, tiny_model_dir, small_config(training={"maxSteps": 6, "learningRate": 0.01})
    )
    assert other.code == EXIT_INVALID_INPUT, other.output
    assert "holds the checkpoints of an unfinished run with other settings" in other.output
    assert (killed.store / "checkpoints" / "facts" / "checkpoint-2").is_dir()  # nothing of it was deleted


def test_check_validates_without_training(train) -> None:
    r = train(None, "--check")
    assert r.code == 0, r.output
    assert "ok: 216 training records" in r.output and "72 held out" in r.output
    assert r.revisions() == [] and not (r.store / "checkpoints").exists()


def test_killed_and_resumed_ends_with_the_same_weights(tmp_path: Path, tiny_model_dir: Path) -> None:
    from .conftest import run_trainer

    cfg = small_config(training={"maxSteps": 6}, checkpoints={"everySteps": 2, "keep": 3})
    straight = run_trainer(tmp_path / "straight", tiny_model_dir, cfg)
    assert straight.code == 0, straight.output

    killed = run_trainer(tmp_path / "killed", tiny_model_dir, cfg, env={"LORAFORGE_FAULT_KILL_AT_STEP": "5"})
    assert killed.code == -9, killed.output  # SIGKILL, as a node loss or OOM kill would
    assert killed.revisions() == []
    # at most `keep` checkpoints, the newest complete one is resumed
    run_dir = killed.store / "checkpoints" / "facts"
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    resumed = run_trainer(tmp_path / "killed", tiny_model_dir, cfg)
    assert resumed.code == 0, resumed.output
    assert "resuming from checkpoint-4" in resumed.output

    import torch

    a = tensors(straight.adapter_dir() / "v1" / "adapter_model.safetensors")
    b = tensors(resumed.adapter_dir() / "v1" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # and training did move the weights (lora_B starts at zero)
    assert any(k.endswith("lora_B.weight") and a[k].abs().sum() > 0 for k in a)


def test_qlora_trains_a_4bit_base_on_cpu(train) -> None:
    r = train(small_config(method="qlora", quantization={"computeDtype": "float32"}))
    assert r.code == 0, r.output
    m = manifest(r.adapter_dir() / "v1")
    assert m["settings"]["method"] == "qlora" and m["settings"]["quantization"]["type"] == "nf4"
    assert m["settings"]["quantization"]["doubleQuant"] is True
    assert "qlora on cpu" in r.output


def test_two_processes_train_with_ddp_and_publish_once(train) -> None:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m"]
    r = train(None, launcher=launcher, env={"OMP_NUM_THREADS": "1"})
    assert r.code == 0, r.output
    assert r.revisions() == ["v1"]
    m = manifest(r.adapter_dir() / "v1")
    assert m["worldSize"] == 2
    assert m["metrics"]["evalLoss"] < m["metrics"]["baseEvalLoss"]
    assert "[rank 1]" in r.output  # both ranks ran and logged
