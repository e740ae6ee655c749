"""FineTuneJob → children, as pure functions: each example in examples/ has
its expected children in tests/unit/golden/ (regenerate with
LORAFORGE_UPDATE_GOLDEN=1 and review the diff), plus the properties that
matter spelled out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from loraforge_operator.finetunejob import builders, contract, model
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.settings import Settings
from loraforge_operator.writes import is_subset
from tests.finetunejob_cases import VALID_SPEC

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted((REPO / "examples").glob("finetunejob-*.yaml"))
SETTINGS = Settings(trainer_image="registry.example/loraforge/trainer:0.1.0")
UID = "6f1c2d3e-0000-4000-8000-00000000abcd"


def _example(path: Path) -> tuple[builders.Owner, FineTuneJobSpec]:
    ftj = next(d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "FineTuneJob")
    return builders.Owner(ftj["metadata"]["name"], "team-a", UID), FineTuneJobSpec.model_validate(ftj["spec"])


def _build(spec: dict | None = None, name: str = "demo") -> dict[str, dict]:
    owner = builders.Owner(name, "team-a", UID)
    children = builders.children(owner, FineTuneJobSpec.model_validate(spec or VALID_SPEC), SETTINGS)
    return {f"{c['kind']}/{c['metadata']['name']}": c for c in children}


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_children_of_each_example_match_the_golden_file(example: Path) -> None:
    owner, spec = _example(example)
    children = builders.children(owner, spec, SETTINGS)
    for child in children:  # the embedded config, as YAML rather than an escaped string, for review
        if contract.CONFIG_KEY in child.get("data", {}):
            child["data"] = {contract.CONFIG_KEY: json.loads(child["data"][contract.CONFIG_KEY])}
    rendered = yaml.safe_dump_all(children, sort_keys=True)
    golden = GOLDEN / f"{example.stem}.children.yaml"
    if os.environ.get("LORAFORGE_UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"no golden file; run with LORAFORGE_UPDATE_GOLDEN=1 to create {golden.name}"
    assert rendered == golden.read_text()


def test_single_gpu_job_requests_its_gpu_and_runs_the_trainer_offline() -> None:
    job = _build()["Job/demo-train"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["loraforge-train", "--config", "/etc/loraforge/config.json"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["TRANSFORMERS_OFFLINE"] == "1"
    assert env[contract.ENV_PROGRESS_CONFIGMAP] == "demo-progress"
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["spec"]["completionMode"] == "NonIndexed" and job["spec"]["completions"] == 1
    assert "Service/demo-rdzv" not in _build()


def test_training_pods_meet_pod_security_restricted() -> None:
    pod = _build()["Job/demo-train"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = pod["containers"][0]["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True


def test_bad_input_fails_the_job_at_once_and_evictions_do_not_count() -> None:
    rules = _build()["Job/demo-train"]["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob"
    assert rules[0]["onExitCodes"]["values"] == [contract.EXIT_INVALID_INPUT]
    assert rules[1] == {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    }


def test_several_nodes_make_an_indexed_job_with_torchrun_rendezvous() -> None:
    children = _build({**VALID_SPEC, "resources": {"nodes": 3, "gpusPerNode": 8}}, name="big")
    job = children["Job/big-train"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 3
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == "big-rdzv"
    command = pod["containers"][0]["command"]
    assert command[:2] == ["torchrun", "--nproc-per-node=8"]
    assert "--nnodes=3" in command and "--node-rank=$(JOB_COMPLETION_INDEX)" in command
    assert "--master-addr=big-train-0.big-rdzv" in command
    svc = children["Service/big-rdzv"]
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True


def test_several_gpus_on_one_node_use_standalone_torchrun() -> None:
    command = _build({**VALID_SPEC, "resources": {"gpusPerNode": 4}})["Job/demo-train"]["spec"]["template"][
        "spec"
    ]["containers"][0]["command"]
    assert command[:3] == ["torchrun", "--nproc-per-node=4", "--standalone"]


def test_trainer_role_grants_only_its_own_progress_configmap() -> None:
    (rule,) = _build()["Role/demo-trainer"]["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["demo-progress"],
        "verbs": ["get", "patch"],
    }


def test_every_child_is_owned_by_the_finetunejob_and_labelled() -> None:
    for child in _build().values():
        (ref,) = child["metadata"]["ownerReferences"]
        assert ref["uid"] == UID and ref["controller"] is True and ref["kind"] == "FineTuneJob"
        assert child["metadata"]["labels"]["loraforge.io/finetunejob"] == "demo"


def test_resolved_config_makes_defaults_explicit() -> None:
    config = json.loads(
        _build({**VALID_SPEC, "method": "qlora"})["ConfigMap/demo-config"]["data"]["config.json"]
    )
    assert config["training"]["epochs"] == 1  # neither epochs nor maxSteps given
    assert config["quantization"] == {"type": "nf4", "doubleQuant": True, "computeDtype": "bfloat16"}
    assert config["adapter"]["name"] == "demo"
    assert config["run"]["adapterDir"] == "/models/adapters/team-a/demo"
    assert config["run"]["checkpointDir"].startswith("/models/checkpoints/team-a/demo-6f1c2d3e")
    # Resolved by the API's one function, and nothing left to it: the trainer applies no default itself.
    spec = FineTuneJobSpec.model_validate({k: v for k, v in config.items() if k != contract.RUN_SECTION})
    assert model.unresolved(spec) == []
    assert spec == model.resolve(FineTuneJobSpec.model_validate({**VALID_SPEC, "method": "qlora"}), "demo")


def test_resolved_config_keeps_what_the_spec_sets() -> None:
    spec = {**VALID_SPEC, "training": {"maxSteps": 9}, "adapter": {"name": "mine"}}
    config = json.loads(_build(spec)["ConfigMap/demo-config"]["data"]["config.json"])
    assert config["training"]["maxSteps"] == 9 and "epochs" not in config["training"]
    assert "quantization" not in config  # method lora
    assert config["adapter"]["name"] == "mine"
    assert config["run"]["adapterDir"] == "/models/adapters/team-a/mine"


def test_configmap_dataset_is_mounted_read_only() -> None:
    spec = {**VALID_SPEC, "dataset": {"configMap": {"name": "data", "key": "train.jsonl"}}}
    pod = _build(spec)["Job/demo-train"]["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "dataset")
    assert mount == {"name": "dataset", "mountPath": "/data", "readOnly": True}
    volume = next(v for v in pod["volumes"] if v["name"] == "dataset")
    assert volume["configMap"]["items"] == [{"key": "train.jsonl", "path": "train.jsonl"}]


def test_pod_metadata_is_added_but_cannot_replace_the_operators_labels() -> None:
    spec = {**VALID_SPEC, "podMetadata": {"labels": {"team": "nlp"}, "annotations": {"a": "b"}}}
    meta = _build(spec)["Job/demo-train"]["spec"]["template"]["metadata"]
    assert meta["labels"]["team"] == "nlp" and meta["labels"]["loraforge.io/finetunejob"] == "demo"
    assert meta["annotations"] == {"a": "b"}


@pytest.mark.parametrize(
    ("desired", "observed", "expected"),
    [
        ({"a": 1}, {"a": 1, "b": 2}, True),  # fields added by the server are ignored
        ({"a": {"b": [1, 2]}}, {"a": {"b": [1, 2], "c": 3}}, True),
        ({"a": [1, 2]}, {"a": [1, 2, 3]}, False),  # lists must match in length
        ({"a": "4"}, {"a": 4}, False),
        ({"a": {"b": 1}}, {"a": None}, False),
        ({"a": [{"x": 1}]}, {"a": [{"x": 1, "y": 2}]}, True),
    ],
)
def test_is_subset(desired: dict, observed: dict, expected: bool) -> None:
    assert is_subset(desired, observed) is expected


def test_write_memo_answers_only_while_the_watch_still_shows_the_old_object() -> None:
    from loraforge_operator.writes import WriteMemo

    memo = WriteMemo()
    manifest = {"kind": "ConfigMap", "data": {"a": "1"}}
    answer = {"kind": "ConfigMap", "data": {"a": "1"}, "metadata": {"resourceVersion": "8"}}
    memo.sent("k", manifest, "7", answer)
    assert memo.answer_to("k", manifest, "7") == answer  # the watch has not caught up: do not send again
    assert memo.answer_to("k", {**manifest, "data": {"a": "2"}}, "7") is None  # a different payload is sent
    assert memo.answer_to("k", manifest, "9") is None  # a newer object is observed: judge it afresh
    assert memo.answer_to("k", manifest, "7") is None  # and the entry is gone
