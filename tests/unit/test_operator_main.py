"""What the chart relies on in the operator process: its flags become kopf's
run arguments (standalone, or peering for HA), and the image pull settings
reach the pods it creates."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from loraforge_operator import __main__ as entry
from loraforge_operator import peering
from loraforge_operator.finetunejob import builders as ftj_builders
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.modeldeployment import builders as md_builders
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.settings import Settings
from tests.finetunejob_cases import VALID_SPEC


@pytest.fixture
def kopf_run(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    ensured: list[tuple[str, list[str]]] = []

    async def fake_ensure(name: str, namespaces: list[str]) -> None:
        ensured.append((name, list(namespaces)))

    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    monkeypatch.setattr(kopf, "configure", lambda **kw: None)
    monkeypatch.setattr(peering, "ensure", fake_ensure)
    seen["_ensured"] = ensured
    return seen


def test_by_default_the_operator_runs_standalone_cluster_wide(kopf_run: dict[str, Any]) -> None:
    entry.main(["--liveness=http://0.0.0.0:9000/healthz"])
    assert kopf_run["standalone"] is True
    assert "peering_name" not in kopf_run
    assert kopf_run["clusterwide"] is True and kopf_run["namespaces"] == []
    assert kopf_run["liveness_endpoint"] == "http://0.0.0.0:9000/healthz"
    assert kopf_run["_ensured"] == []


def test_peering_makes_a_replica_of_several_and_creates_its_peering_objects(kopf_run: dict[str, Any]) -> None:
    entry.main(["--peering=lf", "--namespace=a", "--namespace=b", "--priority=7"])
    assert kopf_run["standalone"] is False
    assert kopf_run["peering_name"] == "lf" and kopf_run["priority"] == 7
    assert kopf_run["clusterwide"] is False and kopf_run["namespaces"] == ["a", "b"]
    assert kopf_run["_ensured"] == [("lf", ["a", "b"])]


def test_without_a_priority_the_newest_replica_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    ticks = iter([1_700_000_000_000_000_000, 1_700_000_000_500_000_000])
    monkeypatch.setattr(peering.time, "time_ns", lambda: next(ticks))
    older = peering.run_args("lf", None)["priority"]
    newer = peering.run_args("lf", None)["priority"]
    assert newer > older  # equal priorities would pause every replica
    assert peering.run_args(None, 5) == {"standalone": True}


def test_peering_objects_are_cluster_wide_or_one_per_watched_namespace() -> None:
    assert peering.objects("lf", []) == [
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "lf"}}
    ]
    namespaced = peering.objects("lf", ["a", "b"])
    assert [(o["kind"], o["metadata"]["namespace"]) for o in namespaced] == [
        ("KopfPeering", "a"),
        ("KopfPeering", "b"),
    ]


def test_pull_secrets_and_policies_reach_training_and_serving_pods() -> None:
    s = Settings(
        image_pull_secrets=("mirror-creds",), image_pull_policy="Always", tgi_image_pull_policy="Never"
    )
    owner = ftj_builders.Owner(name="ftj", namespace="ns", uid="0123456789abcdef")
    job = ftj_builders.job(owner, FineTuneJobSpec.model_validate(VALID_SPEC), s)
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "mirror-creds"}]
    assert pod["containers"][0]["imagePullPolicy"] == "Always"

    md = ModelDeploymentSpec.model_validate(
        {"baseModel": {"path": "base/m"}, "adapters": [{"name": "a", "from": {"path": "adapters/ns/a/v1"}}]}
    )
    revs = {"a": ServingRevision(name="a", path="adapters/ns/a/v1")}
    dep = md_builders.deployment(md_builders.Owner(name="md", namespace="ns", uid="u" * 16), md, s, revs)
    spec = dep["spec"]["template"]["spec"]
    assert spec["imagePullSecrets"] == [{"name": "mirror-creds"}]
    assert spec["containers"][0]["imagePullPolicy"] == "Never"

    # None configured: the field is absent (the golden manifests stay as they are).
    assert (
        "imagePullSecrets"
        not in ftj_builders.job(owner, FineTuneJobSpec.model_validate(VALID_SPEC), Settings())["spec"][
            "template"
        ]["spec"]
    )
