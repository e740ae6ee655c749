"""Fixtures of the integration tier."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loraforge_operator.finetunejob import builders, contract
from loraforge_trainer.report import ProgressReporter
from tests.finetunejob_cases import VALID_SPEC
from tests.kube import Kube

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def trainer_channel(kube: Kube, namespace: str, tmp_path: Path) -> tuple[ProgressReporter, str]:
    """A FineTuneJob `chan`, its progress ConfigMap and trainer RBAC as the operator builds them, and the
    trainer's reporter authenticated with that ServiceAccount's token."""
    kube.install_crds(REPO / "crds")
    ftj = {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "chan"},
        "spec": VALID_SPEC,
    }
    kube.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(ftj))
    uid = kube.get("ftj", "chan", "-n", namespace)["metadata"]["uid"]
    owner = builders.Owner(name="chan", namespace=namespace, uid=uid)
    kube.apply([builders.progress_map(owner), *builders.trainer_rbac(owner)], namespace=namespace)
    server, ca = kube.server_and_ca(tmp_path)
    token = kube.token(namespace, contract.trainer_identity("chan"))
    reporter = ProgressReporter(
        server=server,
        namespace=namespace,
        config_map=contract.progress_map_name("chan"),
        token=token,
        ca_file=ca,
        attempts=2,
    )
    return reporter, namespace


def progress_data(kube: Kube, namespace: str) -> dict[str, str]:
    return kube.get("configmap", contract.progress_map_name("chan"), "-n", namespace).get("data") or {}


@pytest.fixture(scope="module")
def crds(kube: Kube) -> None:
    """loraforge's CRDs installed and established."""
    kube.install_crds(REPO / "crds")
