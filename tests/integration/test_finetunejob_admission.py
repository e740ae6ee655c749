"""The API server, with loraforge's CRD installed, rejects invalid
FineTuneJobs with a message that names the field, accepts valid ones with
their defaults, and freezes the spec (but `suspend`) once training started."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.finetunejob_cases import INVALID, VALID_SPEC, Invalid
from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[2]


def _ftj(name: str, spec: dict) -> str:
    return json.dumps(
        {
            "apiVersion": "loraforge.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.name)
def test_invalid_finetunejob_is_rejected_naming_the_field(
    kube: Kube, crds: None, namespace: str, case: Invalid
) -> None:
    proc = kube.kubectl(
        "create", "--validate=strict", "-n", namespace, "-f", "-", input=_ftj("bad", case.spec()), check=False
    )
    assert proc.returncode != 0, "the API server accepted an invalid FineTuneJob"
    assert case.field in proc.stderr, proc.stderr
    if case.message:
        assert case.message in proc.stderr, proc.stderr


def test_valid_finetunejob_is_stored_with_defaults(kube: Kube, crds: None, namespace: str) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=_ftj("ok", VALID_SPEC))
    spec = kube.get("finetunejob", "ok", "-n", namespace)["spec"]
    assert spec["method"] == "lora" and spec["lora"]["r"] == 16
    assert spec["resources"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert (
        kube.kubectl("get", "loraforge", "-n", namespace, "-o", "name").stdout.strip()
        == "finetunejob.loraforge.io/ok"
    )


def test_spec_is_frozen_once_training_started_except_suspend(kube: Kube, crds: None, namespace: str) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=_ftj("frozen", VALID_SPEC))
    # Before training starts the spec may still change.
    kube.kubectl("patch", "ftj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec":{"lora":{"r":8}}}')
    kube.kubectl(
        "patch",
        "ftj",
        "frozen",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"startTime":"2026-01-01T00:00:00Z"}}',
    )
    wait_for(
        lambda: kube.get("ftj", "frozen", "-n", namespace).get("status", {}).get("startTime"),
        10,
        "the status to be stored",
    )
    proc = kube.kubectl(
        "patch",
        "ftj",
        "frozen",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec":{"lora":{"r":32}}}',
        check=False,
    )
    assert proc.returncode != 0
    assert "the spec cannot change once training has started" in proc.stderr
    kube.kubectl("patch", "ftj", "frozen", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspend":true}}')
    assert kube.get("ftj", "frozen", "-n", namespace)["spec"]["suspend"] is True


# Every manifest in examples/, the demo's included (chart values files are not manifests).
EXAMPLES = sorted(p for p in (REPO / "examples").rglob("*.yaml") if not p.name.startswith("values"))


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_every_example_is_accepted_by_the_api_server(
    kube: Kube, crds: None, namespace: str, example: Path
) -> None:
    kube.kubectl("apply", "--dry-run=server", "--validate=strict", "-n", namespace, "-f", str(example))


def test_a_name_too_long_for_the_training_jobs_names_is_rejected(
    kube: Kube, crds: None, namespace: str
) -> None:
    proc = kube.kubectl("create", "-n", namespace, "-f", "-", input=_ftj("x" * 53, VALID_SPEC), check=False)
    assert proc.returncode != 0
    assert "metadata.name may be at most 52 characters" in proc.stderr
    kube.kubectl("create", "-n", namespace, "-f", "-", input=_ftj("x" * 52, VALID_SPEC))
