"""The real trainer (a short run of the tiny Llama, in this process) reports
through the real channel: its progress and result, written with the
per-FineTuneJob ServiceAccount's token, are what the operator's status
computation turns into a Succeeded FineTuneJob with the published revision;
a bad dataset line becomes the Failed reason, with file:line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from loraforge_operator.finetunejob import builders, contract, model, status
from loraforge_trainer import config, training
from loraforge_trainer.errors import InvalidInput
from loraforge_trainer.report import ProgressReporter
from tests.integration.conftest import progress_data
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]
FACTS = REPO / "examples" / "datasets" / "fictional-facts"


def resolved(tmp_path: Path, model_dir: Path, namespace: str, uid: str, dataset: str) -> config.TrainConfig:
    """The configuration exactly as the operator writes it, with the pod's /models pointed at a temp store."""
    store = tmp_path / "models"
    (store / "base").mkdir(parents=True)
    (store / "base" / "tiny").symlink_to(model_dir, target_is_directory=True)
    shutil.copytree(FACTS, store / "datasets" / "facts")
    spec = model.FineTuneJobSpec.model_validate(
        {
            "baseModel": {"path": "base/tiny"},
            "dataset": {"path": dataset, "validationSplit": 0.1},
            "lora": {"r": 4, "alpha": 8},
            "training": {
                "maxSteps": 4,
                "batchSize": 4,
                "gradientAccumulationSteps": 1,
                "loggingSteps": 1,
                "maxSeqLength": 128,
                "gradientCheckpointing": False,
            },
            "checkpoints": {"everySteps": 2},
        }
    )
    doc = builders.resolved_config(builders.Owner(name="chan", namespace=namespace, uid=uid), spec)
    run = doc["run"]
    for key in ("modelStore", "checkpointDir", "adapterDir"):
        run[key] = run[key].replace(contract.MODEL_STORE_MOUNT, str(store), 1)
    return config.from_document(doc)


def job(condition: str) -> dict:
    return {
        "metadata": {"name": "chan-train"},
        "spec": {},
        "status": {"conditions": [{"type": condition, "status": "True"}]},
    }


def test_a_real_run_reports_progress_and_its_revision(
    kube: Kube, trainer_channel: tuple[ProgressReporter, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    reporter, ns = trainer_channel
    uid = kube.get("ftj", "chan", "-n", ns)["metadata"]["uid"]
    cfg = resolved(tmp_path, tiny_model_dir, ns, uid, "datasets/facts/train.jsonl")
    published = training.run(cfg, reporter)
    assert published.revision == "v1"

    data = progress_data(kube, ns)
    progress = json.loads(data[contract.PROGRESS_KEY])
    assert progress["step"] == 4 and progress["totalSteps"] == 4
    assert progress["tokensPerSecond"] > 0 and progress["loss"] > 0
    new, _ = status.compute({}, status.Observed(generation=1, job=job("Complete"), progress_data=data))
    assert new["phase"] == "Succeeded"
    assert new["adapter"]["revision"] == "v1"
    assert new["adapter"]["path"] == f"adapters/{ns}/chan/v1"
    assert new["adapter"]["digest"] == published.digest
    assert new["progress"]["tokensPerSecond"] > 0
    assert {"evalLoss", "baseEvalLoss"} <= set(new["adapter"]["metrics"])


def test_a_bad_record_becomes_the_failed_reason_with_file_and_line(
    kube: Kube, trainer_channel: tuple[ProgressReporter, str], tiny_model_dir: Path, tmp_path: Path
) -> None:
    reporter, ns = trainer_channel
    cfg = resolved(tmp_path, tiny_model_dir, ns, "uid-bad", "datasets/facts/bad.jsonl")
    lines = (FACTS / "train.jsonl").read_text().splitlines()
    lines[6] = '{"messages": "not a list"}'
    Path(cfg.dataset_file()).write_text("\n".join(lines) + "\n")
    with pytest.raises(InvalidInput) as e:
        training.run(cfg, reporter)
    reporter.failure(e.value.reason, e.value.message)  # what cli.main does with it

    new, _ = status.compute(
        {}, status.Observed(generation=1, job=job("Failed"), progress_data=progress_data(kube, ns))
    )
    failed = next(c for c in new["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DatasetInvalid"
    assert failed["message"].startswith("datasets/facts/bad.jsonl:7: 'messages' must be a non-empty list")
    assert not (Path(cfg.adapter_dir())).exists()
