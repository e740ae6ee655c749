"""The chart's ValidatingAdmissionPolicies, for tests that need them without
installing the chart: rendered from the chart's own template by the real helm
binary (one source, no copy), applied, and removed after."""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from tests.kube import Kube, wait_for

CHART = Path(__file__).resolve().parents[1] / "charts" / "loraforge"
APPROVAL_TEMPLATE = "templates/admission.yaml"


def rendered(kube: Kube, release: str, template: str = APPROVAL_TEMPLATE) -> list[dict[str, Any]]:
    """The documents `helm template` renders from ``template`` of the chart with its default values."""
    out = kube.helm("template", release, str(CHART), "--show-only", template).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def _refused_now(kube: Kube, namespace: str) -> bool:
    """Whether the API server now refuses a ModelDeployment approved by someone else (a dry run)."""
    md = {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}"},
        "spec": {
            "baseModel": {"path": "base/probe"},
            "adapters": [
                {"name": "a", "from": {"adapter": "a", "revision": "v1", "approvedBy": "nobody-at-all"}}
            ],
        },
    }
    proc = kube.kubectl(
        "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(md), check=False
    )
    return proc.returncode != 0 and "approvedBy must be the name of the user" in proc.stderr


@contextlib.contextmanager
def approval_policy(kube: Kube, release: str, namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The approval-identity policy and its binding (named after ``release``) in force, checked with a dry
    run in ``namespace`` (the CRDs must be installed); yields the documents and deletes them after."""
    docs = rendered(kube, release)
    assert {d["kind"] for d in docs} == {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}
    kube.apply(docs)
    try:
        # The API server enforces a new policy once its informers have it (about a second).
        wait_for(lambda: _refused_now(kube, namespace), timeout=30, what="the approval policy to be enforced")
        yield docs
    finally:
        for d in reversed(docs):
            kube.kubectl("delete", d["kind"], d["metadata"]["name"], "--wait=false", check=False)
