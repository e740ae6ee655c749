"""Approval under `promotion.policy: Manual`: the `from.approvedBy` rule of the
model, the approval record in status (who, which revision, first seen when)
and its event, and the JSON patch `loraforge approve` sends."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from pydantic import ValidationError

from loraforge_operator import cli
from loraforge_operator.modeldeployment import plan, resolve
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec
from tests.statuses import checked_statuses  # noqa: F401 (a fixture)

# Every status computed here parses in its status model and speaks its kind's vocabulary.
pytestmark = pytest.mark.usefixtures("checked_statuses")

BASE = {"path": "base/smollm2"}
T0 = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def spec(source: dict[str, Any], policy: str = "Manual") -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "baseModel": BASE,
            "promotion": {"policy": policy},
            "adapters": [{"name": "facts", "from": source}, {"name": "raw", "from": {"path": "a/raw/v1"}}],
        }
    )


def ftj(name: str, revision: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"baseModel": BASE, "adapter": {"name": "facts"}},
        "status": {
            "phase": "Succeeded",
            "adapter": {
                "name": "facts",
                "revision": revision,
                "path": f"adapters/ns/facts/{revision}",
                "digest": f"sha256:{revision}",
                "evaluationPassed": True,
            },
        },
    }


JOBS = [ftj("f1", "v1"), ftj("f2", "v2")]


def step(
    s: ModelDeploymentSpec, old: dict[str, Any], now: dt.datetime, jobs: list[dict[str, Any]] = JOBS
) -> plan.Plan:
    res = resolve.resolve(s, jobs, plan.rejected_of(old), plan.serving_of(old))
    obs = plan.Observed(generation=1, deployment=None, pods=[], now=now)
    return plan.compute(s, old, res, obs, "http://assistant.ns.svc", "assistant")


def approval_of(p: plan.Plan, name: str = "facts") -> dict[str, Any] | None:
    return next(a for a in p.status["adapters"] if a["name"] == name).get("approval")


# --- the model --------------------------------------------------------------------------


def test_approved_by_goes_only_with_a_pinned_revision() -> None:
    with pytest.raises(ValidationError, match=re.escape("from.approvedBy names who approved the pin")):
        spec({"adapter": "facts", "approvedBy": "alice"})
    with pytest.raises(ValidationError, match=re.escape("from.revision pins a revision of from.adapter")):
        spec({"fineTuneJob": "f1", "revision": "v1", "approvedBy": "alice"})
    with pytest.raises(ValidationError):
        spec({"adapter": "facts", "revision": "v1", "approvedBy": ""})
    with pytest.raises(ValidationError):
        spec({"adapter": "facts", "revision": "v1", "approvedBy": "x" * 254})
    ok = spec({"adapter": "facts", "revision": "v1", "approvedBy": "system:serviceaccount:ci:release"})
    assert ok.adapters[0].from_.approved_by == "system:serviceaccount:ci:release"
    assert ok.model_dump(by_alias=True, exclude_none=True)["adapters"][0]["from"]["approvedBy"]


def test_the_crd_carries_the_same_rule() -> None:
    from loraforge_operator import crds

    schema = crds.modeldeployment_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    source = schema["properties"]["spec"]["properties"]["adapters"]["items"]["properties"]["from"]
    assert source["properties"]["approvedBy"]["maxLength"] == 253
    assert {
        "rule": "!has(self.approvedBy) || has(self.revision)",
        "fieldPath": ".approvedBy",
    }.items() <= next(
        r for r in source["x-kubernetes-validations"] if r.get("fieldPath") == ".approvedBy"
    ).items()
    approval = schema["properties"]["status"]["properties"]["adapters"]["items"]["properties"]["approval"]
    assert set(approval["properties"]) == {"revision", "approvedBy", "approvedAt"}


# --- status -----------------------------------------------------------------------------


def test_a_pin_is_recorded_with_its_approver_and_the_time_first_seen_and_kept_after() -> None:
    s = spec({"adapter": "facts", "revision": "v2", "approvedBy": "alice"})
    first = step(s, {}, T0)
    assert approval_of(first) == {
        "revision": "v2",
        "approvedBy": "alice",
        "approvedAt": "2026-11-22T12:00:00Z",
    }
    approved = [e for e in first.events if e.reason == "RevisionApproved"]
    assert [(e.type, e.message) for e in approved] == [
        ("Normal", "adapter facts: revision v2 approved by alice")
    ]
    assert approval_of(first, "raw") is None  # a from.path adapter has nothing to approve

    # Later passes: the same record, first-seen time kept, no new event; nothing else changes either, so
    # the operator writes nothing.
    again = step(s, first.status, T1)
    assert approval_of(again) == approval_of(first)
    assert not [e for e in again.events if e.reason == "RevisionApproved"]
    settled = step(s, again.status, T1 + dt.timedelta(minutes=1))
    assert settled.status == again.status and settled.events == []


def test_a_new_pin_or_a_new_approver_is_a_new_approval() -> None:
    first = step(spec({"adapter": "facts", "revision": "v1", "approvedBy": "alice"}), {}, T0)
    moved = step(spec({"adapter": "facts", "revision": "v2", "approvedBy": "alice"}), first.status, T1)
    assert approval_of(moved) == {
        "revision": "v2",
        "approvedBy": "alice",
        "approvedAt": "2026-11-22T12:05:00Z",
    }
    assert "adapter facts: revision v2 approved by alice" in [e.message for e in moved.events]

    later = T1 + dt.timedelta(minutes=1)
    by_bob = step(spec({"adapter": "facts", "revision": "v2", "approvedBy": "bob"}), moved.status, later)
    assert approval_of(by_bob) == {
        "revision": "v2",
        "approvedBy": "bob",
        "approvedAt": "2026-11-22T12:06:00Z",
    }

    # A pin without approvedBy is recorded too, with no approver.
    anonymous = step(spec({"adapter": "facts", "revision": "v2"}), by_bob.status, later)
    assert approval_of(anonymous) == {
        "revision": "v2",
        "approvedBy": "",
        "approvedAt": "2026-11-22T12:06:00Z",
    }
    assert "adapter facts: revision v2 pinned (from.approvedBy names no one)" in [
        e.message for e in anonymous.events
    ]


def test_no_approval_under_automatic_promotion_or_without_a_pin() -> None:
    auto = step(
        spec({"adapter": "facts", "revision": "v2", "approvedBy": "alice"}, policy="Automatic"), {}, T0
    )
    assert approval_of(auto) is None
    assert not [e for e in auto.events if e.reason == "RevisionApproved"]

    # Manual, nothing pinned: v2 waits for approval, nothing is recorded; a record from an earlier pin goes.
    pinned = step(spec({"adapter": "facts", "revision": "v1", "approvedBy": "alice"}), {}, T0)
    unpinned = step(spec({"adapter": "facts"}), pinned.status, T1)
    assert approval_of(unpinned) is None
    pending = next(c for c in unpinned.status["conditions"] if c["type"] == "PromotionPending")
    assert pending["status"] == "True" and unpinned.status["adapters"][0]["available"] == "v2"


def condition(p: plan.Plan, ctype: str) -> dict[str, Any]:
    return next(c for c in p.status["conditions"] if c["type"] == ctype)


def test_a_newer_passing_revision_than_the_approved_pin_waits_for_approval() -> None:
    pinned = step(spec({"adapter": "facts", "revision": "v1", "approvedBy": "alice"}), {}, T0)
    assert pinned.template is not None and pinned.template["facts"].revision == "v1"
    assert pinned.status["adapters"][0]["available"] == "v2"
    pending = condition(pinned, "PromotionPending")
    assert pending["status"] == "True" and pending["message"].startswith("facts: v2 passed its gate")
    assert condition(pinned, "Degraded")["status"] == "False"

    approved = step(spec({"adapter": "facts", "revision": "v2", "approvedBy": "alice"}), {}, T0)
    assert condition(approved, "PromotionPending")["status"] == "False"
    assert approved.status["adapters"][0]["available"] == "v2"

    # A pin that does not resolve still degrades the deployment, whatever waits.
    missing = step(
        spec({"adapter": "facts", "revision": "v1"}), {}, T0, jobs=[ftj("f2", "v2"), ftj("f3", "v3")]
    )
    assert condition(missing, "Degraded")["reason"] == "RevisionNotFound"
    assert condition(missing, "PromotionPending")["status"] == "True"


# --- loraforge approve ------------------------------------------------------------------


def md(policy: str | None = "Manual", adapters: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "baseModel": BASE,
        "adapters": adapters
        or [
            {"name": "raw", "from": {"path": "a/raw/v1"}},
            {"name": "facts", "from": {"adapter": "facts", "revision": "v1"}},
        ],
    }
    if policy:
        spec["promotion"] = {"policy": policy}
    return {"metadata": {"name": "assistant", "namespace": "ns"}, "spec": spec}


def test_approve_patches_revision_and_approver_of_that_adapter_guarded_by_its_name() -> None:
    assert cli.approval_patch(md(), "facts", "v2", "alice") == [
        {"op": "test", "path": "/spec/adapters/1/name", "value": "facts"},
        {"op": "add", "path": "/spec/adapters/1/from/revision", "value": "v2"},
        {"op": "add", "path": "/spec/adapters/1/from/approvedBy", "value": "alice"},
    ]


@pytest.mark.parametrize(
    ("obj", "adapter", "revision", "message"),
    [
        (md(policy=None), "facts", "v2", "promotion.policy Automatic"),
        (md(policy="Automatic"), "facts", "v2", "promotion.policy Automatic"),
        (md(), "nope", "v2", 'serves no adapter "nope" (it serves raw, facts)'),
        (md(), "raw", "v2", "comes from from.path, not from.adapter"),
        (
            md(adapters=[{"name": "job", "from": {"fineTuneJob": "f1"}}]),
            "job",
            "v2",
            "comes from from.fineTuneJob",
        ),
        (md(), "facts", "latest", '"latest" is not a revision'),
    ],
)
def test_approve_refuses_what_is_no_approval(obj: dict, adapter: str, revision: str, message: str) -> None:
    with pytest.raises(cli.CliError, match=re.escape(message)):
        cli.approval_patch(obj, adapter, revision, "alice")


def test_a_servers_refusal_reaches_the_user_as_its_own_message(monkeypatch, capsys) -> None:
    """The serving runtime's message (huggingface_hub's server_message) and the API server's (kube.ApiError)
    are what `loraforge generate` / `approve` print, not the bare HTTP status line."""
    from httpx2 import Request, Response
    from huggingface_hub.errors import HfHubHTTPError

    from loraforge_operator.kube import ApiError

    url = "http://10.0.0.7:8080/v1/chat/completions"
    refusals = [
        HfHubHTTPError(
            f"Client error '404 Not Found' for url '{url}'",
            response=Response(404, request=Request("POST", url)),
            server_message="The model `nope` does not exist.",
        ),
        ApiError("POST", "/apis/x", 403, "Forbidden", '{"message": "selfsubjectreviews is forbidden"}', {}),
    ]
    said_by_each = ["The model `nope` does not exist.", "selfsubjectreviews is forbidden"]
    for refusal, said in zip(refusals, said_by_each, strict=True):

        def run(_args, refusal=refusal):
            raise refusal

        monkeypatch.setattr(cli, "generate", run)
        assert cli.main(["generate", "assistant", "hello"]) == 1
        assert capsys.readouterr().err.strip().endswith(said)
