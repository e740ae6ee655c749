"""Both ends of the trainer → operator channel against the real API server:
the trainer's reporter, authenticated as the per-FineTuneJob ServiceAccount the
operator's builders create, can write its own progress ConfigMap and nothing
else; what it writes is what the operator's status computation reads."""

from __future__ import annotations

import json

import pytest

from loraforge_operator.finetunejob import builders, contract, status
from loraforge_operator.settings import Settings
from loraforge_trainer.report import ProgressReporter, ReportError
from tests.integration.conftest import progress_data
from tests.kube import Kube


def test_trainer_reports_progress_and_result_that_the_operator_reads(
    kube: Kube, trainer_channel: tuple[ProgressReporter, str]
) -> None:
    reporter, ns = trainer_channel
    assert reporter.progress(step=30, total_steps=120, epoch=0.25, loss=1.75, learning_rate=1.5e-4)
    adapter = {
        "name": "chan",
        "revision": "r1",
        "path": f"adapters/{ns}/chan/r1",
        "digest": "sha256:" + "ab" * 32,
    }
    reporter.result(adapter, {"evalLoss": 1.1, "baseEvalLoss": 1.9}, evaluation_passed=True)

    job = {
        "metadata": {"name": "chan-train"},
        "spec": {},
        "status": {
            "startTime": "2026-01-01T00:00:00Z",
            "completionTime": "2026-01-01T01:00:00Z",
            "conditions": [{"type": "Complete", "status": "True"}],
        },
    }
    new, _ = status.compute({}, status.Observed(generation=1, job=job, progress_data=progress_data(kube, ns)))
    assert (
        new["progress"]["step"] == 30 and new["progress"]["percent"] == 25 and new["progress"]["loss"] == 1.75
    )
    assert new["adapter"]["revision"] == "r1" and new["adapter"]["metrics"]["baseEvalLoss"] == 1.9
    assert new["phase"] == "Succeeded"


def test_operator_field_manager_keeps_out_of_the_trainers_data(
    kube: Kube, trainer_channel: tuple[ProgressReporter, str]
) -> None:
    reporter, ns = trainer_channel
    reporter.progress(step=1)
    # The operator re-applies the ConfigMap as it does on every reconcile.
    owner_uid = kube.get("ftj", "chan", "-n", ns)["metadata"]["uid"]
    owner = builders.Owner(name="chan", namespace=ns, uid=owner_uid)
    kube.kubectl(
        "apply",
        "--server-side",
        f"--field-manager={Settings().field_manager}",
        "-n",
        ns,
        "-f",
        "-",
        input=json.dumps(builders.progress_map(owner)),
    )
    assert json.loads(progress_data(kube, ns)[contract.PROGRESS_KEY])["step"] == 1


def test_trainer_identity_can_touch_nothing_but_its_progress_configmap(
    kube: Kube, trainer_channel: tuple[ProgressReporter, str]
) -> None:
    reporter, ns = trainer_channel
    kube.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "someone-else"}}, namespace=ns)
    other = ProgressReporter(
        server=reporter.server,
        namespace=ns,
        config_map="someone-else",
        token=reporter.token,
        ca_file=reporter.ca_file,
        attempts=1,
    )
    with pytest.raises(ReportError, match="HTTP 403"):
        other.result({"name": "x"}, {}, evaluation_passed=True)

    sa = f"system:serviceaccount:{ns}:{contract.trainer_identity('chan')}"
    for verb, resource in [
        ("get", "secrets"),
        ("list", "configmaps"),
        ("create", "configmaps"),
        ("patch", "finetunejobs.loraforge.io"),
        ("create", "pods"),
    ]:
        proc = kube.kubectl("auth", "can-i", verb, resource, "-n", ns, f"--as={sa}", check=False)
        assert proc.stdout.strip() == "no", (verb, resource, proc.stdout)
    name = f"configmap/{contract.progress_map_name('chan')}"
    assert kube.kubectl("auth", "can-i", "patch", name, "-n", ns, f"--as={sa}").stdout.strip() == "yes"
