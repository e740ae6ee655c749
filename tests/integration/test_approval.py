"""`spec.adapters[].from.approvedBy` at admission, against the real API
server: the CRD's rule (only with a pinned revision), and the chart's
ValidatingAdmissionPolicy (rendered from the chart by helm) that lets only the
user named there set or change it, while anyone may edit other fields later.
Users are played by impersonation (`--as`, with the group system:masters so
RBAC lets them write; admission policies apply to that group too)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.admission import approval_policy
from tests.kube import Kube

RELEASE = "lf-approval-it"


@pytest.fixture(scope="module")
def policy_ns(kube: Kube, crds: None) -> Iterator[str]:
    from tests.conftest import restricted_namespace

    ns = restricted_namespace(kube, prefix="lf-approval")
    try:
        with approval_policy(kube, RELEASE, ns):
            yield ns
    finally:
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def _md(name: str, source: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"path": "base/smollm2-135m-instruct"},
            "promotion": {"policy": "Manual"},
            "replicas": 0,
            "adapters": [
                {"name": "facts", "from": source},
                {"name": "style", "from": {"adapter": "style"}},
            ],
        },
    }


def _as(user: str) -> tuple[str, ...]:
    return (f"--as={user}", "--as-group=system:masters")


def _create(kube: Kube, ns: str, md: dict[str, Any], user: str):
    return kube.kubectl("create", "-n", ns, "-f", "-", *_as(user), input=json.dumps(md), check=False)


def _patch(kube: Kube, ns: str, name: str, patch: list[dict[str, Any]], user: str, *extra: str):
    return kube.kubectl(
        "patch", "md", name, "-n", ns, "--type=json", "-p", json.dumps(patch), *_as(user), *extra, check=False
    )


REFUSAL = "spec.adapters[].from.approvedBy must be the name of the user making the change"


def test_approved_by_needs_a_pinned_revision(kube: Kube, crds: None, namespace: str) -> None:
    proc = _create(kube, namespace, _md("nopin", {"adapter": "facts", "approvedBy": "alice"}), "alice")
    assert proc.returncode != 0
    assert "spec.adapters[0].from.approvedBy" in proc.stderr
    assert "from.approvedBy names who approved the pin in from.revision" in proc.stderr


def test_only_the_user_named_in_approved_by_may_set_it(kube: Kube, policy_ns: str) -> None:
    pinned = _md("assistant", {"adapter": "facts", "revision": "v2", "approvedBy": "alice"})
    refused = _create(kube, policy_ns, pinned, "bob")
    assert refused.returncode != 0
    assert REFUSAL in refused.stderr and "(bob)" in refused.stderr and "adapter facts" in refused.stderr

    admitted = _create(kube, policy_ns, pinned, "alice")
    assert admitted.returncode == 0, admitted.stderr
    stored = kube.get("md", "assistant", "-n", policy_ns)["spec"]["adapters"][0]["from"]
    assert stored == {"adapter": "facts", "revision": "v2", "approvedBy": "alice"}


def test_others_may_edit_other_fields_but_not_the_approved_pin(kube: Kube, policy_ns: str) -> None:
    pinned = _md("shared", {"adapter": "facts", "revision": "v2", "approvedBy": "alice"})
    assert _create(kube, policy_ns, pinned, "alice").returncode == 0

    # bob changes the replicas and another adapter's source: alice's approval is untouched, admitted.
    edit = [
        {"op": "replace", "path": "/spec/replicas", "value": 1},
        {"op": "add", "path": "/spec/adapters/1/from/revision", "value": "v1"},
    ]
    proc = _patch(kube, policy_ns, "shared", edit, "bob")
    assert proc.returncode == 0, proc.stderr
    # A merge patch of metadata (as kopf writes its annotations) too.
    meta = kube.kubectl(
        "annotate", "md", "shared", "-n", policy_ns, "example.org/note=reviewed", *_as("bob"), check=False
    )
    assert meta.returncode == 0, meta.stderr

    # bob moves alice's pin while it still names her: refused.
    moved = _patch(
        kube,
        policy_ns,
        "shared",
        [{"op": "replace", "path": "/spec/adapters/0/from/revision", "value": "v3"}],
        "bob",
    )
    assert moved.returncode != 0 and REFUSAL in moved.stderr and "(bob)" in moved.stderr

    # bob approves v3 himself: admitted, and so is dropping the approver altogether.
    own = [
        {"op": "replace", "path": "/spec/adapters/0/from/revision", "value": "v3"},
        {"op": "replace", "path": "/spec/adapters/0/from/approvedBy", "value": "bob"},
    ]
    assert (proc := _patch(kube, policy_ns, "shared", own, "bob")).returncode == 0, proc.stderr
    assert (
        proc := _patch(
            kube, policy_ns, "shared", [{"op": "remove", "path": "/spec/adapters/0/from/approvedBy"}], "carol"
        )
    ).returncode == 0, proc.stderr
    md = kube.get("md", "shared", "-n", policy_ns)
    assert md["spec"]["replicas"] == 1
    assert md["spec"]["adapters"][0]["from"] == {"adapter": "facts", "revision": "v3"}


def test_status_writes_are_not_checked(kube: Kube, policy_ns: str) -> None:
    # The operator writes status under its own identity; the policy matches only the main resource.
    assert (
        _create(
            kube,
            policy_ns,
            _md("statusw", {"adapter": "facts", "revision": "v1", "approvedBy": "alice"}),
            "alice",
        ).returncode
        == 0
    )
    status = {
        "status": {
            "adapters": [
                {
                    "name": "facts",
                    "approval": {
                        "revision": "v1",
                        "approvedBy": "alice",
                        "approvedAt": "2026-01-01T00:00:00Z",
                    },
                }
            ]
        }
    }
    proc = kube.kubectl(
        "patch",
        "md",
        "statusw",
        "-n",
        policy_ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(status),
        *_as("system:serviceaccount:loraforge:operator"),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
