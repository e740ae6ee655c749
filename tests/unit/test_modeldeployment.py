"""ModelDeployment: the API model's rules, the builders, which revisions are
resolved from FineTuneJobs, and the rollout state machine (pure parts; the
whole loop runs in tests/e2e/test_modeldeployment.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from loraforge_operator.modeldeployment import builders, plan, reconcile, resolve, runtime
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.settings import Settings
from tests.statuses import check_modeldeployment_status, checked_statuses  # noqa: F401 (a fixture)

# Every status computed here parses in its status model and speaks its kind's vocabulary.
pytestmark = pytest.mark.usefixtures("checked_statuses")

BASE = {"path": "base/smollm2"}
NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)


def spec(**extra: Any) -> ModelDeploymentSpec:
    body = {"baseModel": BASE, "adapters": [{"name": "facts", "from": {"adapter": "facts"}}], **extra}
    return ModelDeploymentSpec.model_validate(body)


def ftj(name: str, revision: str | None, passed: bool = True, base: dict | None = None, phase="Succeeded"):
    status: dict[str, Any] = {"phase": phase}
    if revision:
        status["adapter"] = {
            "name": "facts",
            "revision": revision,
            "path": f"adapters/ns/facts/{revision}",
            "digest": f"sha256:{revision}",
            "evaluationPassed": passed,
        }
    return {
        "metadata": {"name": name},
        "spec": {"baseModel": base or BASE, "adapter": {"name": "facts"}},
        "status": status,
    }


# --- the API model ----------------------------------------------------------------------


# Specs the model refuses, each with the text its message must hold.
INVALID_SPECS = [
    ({"adapters": [{"name": "a", "from": {"adapter": "a", "path": "x/y"}}]}, "exactly one of from"),
    ({"adapters": [{"name": "a", "from": {"fineTuneJob": "f", "revision": "v2"}}]}, "pins a revision"),
    ({"autoscaling": {"minReplicas": 3, "maxReplicas": 2, "cpuUtilization": 80}}, "minReplicas must be"),
    ({"autoscaling": {"maxReplicas": 2}}, "queueSizeTarget"),
    ({"replicas": 2, "autoscaling": {"maxReplicas": 2, "cpuUtilization": 50}}, "either replicas"),
    ({"adapters": []}, "at least 1"),
    ({"resources": {"gpuResourceName": "0/."}}, "should match pattern"),
    (
        {"resources": {"gpuResourceName": "example.kubernetes.io/gpu"}},
        "must be an extended resource name",
    ),
    ({"resources": {"nodeSelector": {"bad key": "x"}}}, "resources.nodeSelector keys must be label keys"),
    ({"resources": {"nodeSelector": {"gpu": "bad value"}}}, "should match pattern"),
    ({"service": {"annotations": {"a/b/c": "x"}}}, "service.annotations keys must be annotation keys"),
    (
        {"monitoring": {"labels": {"Example.com/release": "x"}}},
        "monitoring.labels keys must be label keys",
    ),
    ({"monitoring": {"labels": {"release": "-prom"}}}, "should match pattern"),
    (
        {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
        "operator Exists takes no value",
    ),
]


@pytest.mark.parametrize(("body", "message"), INVALID_SPECS)
def test_invalid_specs_are_refused_naming_the_rule(body: dict, message: str) -> None:
    full = {"baseModel": BASE, "adapters": [{"name": "a", "from": {"adapter": "a"}}], **body}
    with pytest.raises(ValidationError, match=message):
        ModelDeploymentSpec.model_validate(full)


@pytest.mark.parametrize(("body", "message"), INVALID_SPECS)
def test_an_invalid_spec_degrades_with_spec_invalid_in_a_status_the_model_accepts(
    body: dict, message: str
) -> None:
    full = {"baseModel": BASE, "adapters": [{"name": "a", "from": {"adapter": "a"}}], **body}
    with pytest.raises(ValidationError) as e:
        ModelDeploymentSpec.model_validate(full)
    rec = reconcile.ModelDeploymentReconciler(kube=None, settings=Settings(), post_event=print)  # type: ignore[arg-type]
    served = step(spec(), {}, [ftj("f1", "v1")], None, []).status  # a status from before the spec broke
    for old in ({}, served):
        st = rec._invalid(old, 2, reconcile._spec_error(e.value))
        check_modeldeployment_status(st)
        degraded = next(c for c in st["conditions"] if c["type"] == "Degraded")
        assert (degraded["status"], degraded["reason"], st["phase"]) == ("True", "SpecInvalid", "Degraded")
        assert "spec." in degraded["message"]
        assert [c["type"] for c in st["conditions"]].count("Degraded") == 1


# --- builders -------------------------------------------------------------------------------


def test_deployment_serves_the_chosen_revisions_offline_and_gated() -> None:
    owner = builders.Owner("assistant", "team", "uid-1")
    revs = {"facts": ServingRevision(name="facts", revision="v2", path="adapters/team/facts/v2")}
    dep = builders.deployment(owner, spec(replicas=3), Settings(), revs)
    pod = dep["spec"]["template"]
    c = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["LORA_ADAPTERS"] == "facts=/models/adapters/team/facts/v2"
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert c["args"][:2] == ["--model-id", "/models/base/smollm2"]
    assert c["image"] == Settings().tgi_image
    assert pod["spec"]["readinessGates"] == [{"conditionType": builders.VERIFIED_CONDITION}]
    assert pod["metadata"]["annotations"][builders.REVISIONS_ANNOTATION] == '{"facts":"v2"}'
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert dep["spec"]["replicas"] == 3
    assert c["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == runtime.PRESTOP_SECONDS
    fallback = builders.deployment(owner, spec(rollout={"noSurgeFallback": True}), Settings(), revs)
    assert fallback["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_autoscaling_builds_an_hpa_on_tgi_queue_size_and_cpu_and_leaves_replicas_to_it() -> None:
    owner = builders.Owner("assistant", "team", "uid-1")
    s = spec(autoscaling={"minReplicas": 2, "maxReplicas": 6, "queueSizeTarget": "4", "cpuUtilization": 70})
    hpa = builders.autoscaler(owner, s)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "assistant",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    pods_metric = hpa["spec"]["metrics"][0]["pods"]
    assert pods_metric["metric"]["name"] == "tgi_queue_size"
    assert pods_metric["target"] == {"type": "AverageValue", "averageValue": "4"}
    assert hpa["spec"]["metrics"][1]["resource"]["target"]["averageUtilization"] == 70
    dep = builders.deployment(owner, s, Settings(), {})
    assert "replicas" not in dep["spec"]
    assert builders.disruption_budget(owner, s) is not None
    assert builders.disruption_budget(owner, spec()) is None  # one fixed replica: no budget


def test_service_monitor_is_built_only_when_asked_and_scrapes_tgi_metrics_on_the_http_port() -> None:
    owner = builders.Owner("assistant", "team", "uid-1")
    assert builders.service_monitor(owner, spec()) is None
    s = spec(monitoring={"serviceMonitor": True, "interval": "15s", "labels": {"release": "prometheus"}})
    sm = builders.service_monitor(owner, s)
    assert sm is not None
    assert (sm["apiVersion"], sm["kind"]) == ("monitoring.coreos.com/v1", "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["metadata"]["labels"]["loraforge.io/modeldeployment"] == "assistant"
    assert sm["spec"]["selector"] == {"matchLabels": builders.service(owner, s)["spec"]["selector"]}
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["team"]}
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    # The Service's port the endpoint names exists.
    assert [p["name"] for p in builders.service(owner, s)["spec"]["ports"]] == ["http"]
    assert [c["kind"] for c in builders.children(owner, s, Settings(), {})][-1] == "ServiceMonitor"
    with pytest.raises(ValidationError, match="interval"):
        spec(monitoring={"serviceMonitor": True, "interval": "soon"})


# --- resolution ------------------------------------------------------------------------------


def test_following_takes_the_newest_revision_that_passed_and_was_not_rejected() -> None:
    jobs = [ftj("f1", "v1"), ftj("f2", "v2"), ftj("f3", "v3", passed=False), ftj("f4", None, phase="Running")]
    r = resolve.resolve(spec(), jobs, {}, {})
    assert r.revisions["facts"].revision == "v2" and r.revisions["facts"].fine_tune_job == "f2"
    r = resolve.resolve(spec(), jobs, {"facts": {"v2"}}, {})
    assert r.revisions["facts"].revision == "v1"
    # Revision numbers compare as numbers, not text.
    r = resolve.resolve(spec(), [ftj("a", "v9"), ftj("b", "v10")], {}, {})
    assert r.revisions["facts"].revision == "v10"


@pytest.mark.parametrize(
    ("adapter", "jobs", "reason"),
    [
        ({"adapter": "facts"}, [], "AdapterNotPublished"),
        ({"adapter": "facts"}, [ftj("f1", "v1", base={"path": "base/other"})], "BaseModelMismatch"),
        ({"adapter": "facts", "revision": "v7"}, [ftj("f1", "v1")], "RevisionNotFound"),
        ({"adapter": "facts"}, [ftj("f1", "v1", passed=False)], "NoPromotedRevision"),
        ({"fineTuneJob": "nope"}, [ftj("f1", "v1")], "FineTuneJobNotFound"),
        ({"fineTuneJob": "f1"}, [ftj("f1", None, phase="Failed")], "FineTuneJobFailed"),
    ],
)
def test_unresolvable_adapters_name_the_cause(adapter: dict, jobs: list, reason: str) -> None:
    s = spec(adapters=[{"name": "facts", "from": adapter}])
    r = resolve.resolve(s, jobs, {}, {})
    assert "facts" not in r.revisions
    assert r.problems["facts"].reason == reason


def test_manual_promotion_keeps_serving_and_reports_the_pending_revision() -> None:
    s = spec(promotion={"policy": "Manual"})
    current = {"facts": ServingRevision(name="facts", revision="v1", path="adapters/ns/facts/v1")}
    r = resolve.resolve(s, [ftj("f1", "v1"), ftj("f2", "v2")], {}, current)
    assert r.revisions["facts"].revision == "v1" and r.pending == {"facts": "v2"}
    pinned = spec(
        promotion={"policy": "Manual"},
        adapters=[{"name": "facts", "from": {"adapter": "facts", "revision": "v2"}}],
    )
    assert (
        resolve.resolve(pinned, [ftj("f1", "v1"), ftj("f2", "v2")], {}, current).revisions["facts"].revision
        == "v2"
    )


# --- the rollout state machine -------------------------------------------------------------


def deployment(key: dict[str, str], replicas: int = 2, ready: int = 2, updated: int = 2, total: int = 2):
    return {
        "metadata": {"generation": 3},
        "spec": {
            "replicas": replicas,
            "template": {
                "metadata": {"annotations": {builders.REVISIONS_ANNOTATION: builders.encode_revisions(key)}}
            },
        },
        "status": {
            "observedGeneration": 3,
            "replicas": total,
            "updatedReplicas": updated,
            "readyReplicas": ready,
            "availableReplicas": ready,
        },
    }


def pod(key: dict[str, str], gate: str | None = None, message: str = "") -> dict[str, Any]:
    conds = [{"type": "ContainersReady", "status": "True"}]
    if gate:
        conds.append({"type": builders.VERIFIED_CONDITION, "status": gate, "message": message})
    return {
        "metadata": {
            "name": "p",
            "uid": "u",
            "annotations": {builders.REVISIONS_ANNOTATION: builders.encode_revisions(key)},
        },
        "status": {"phase": "Running", "podIP": "127.0.0.5", "conditions": conds},
    }


def step(s, old, jobs, dep, pods, now=NOW):
    res = resolve.resolve(s, jobs, plan.rejected_of(old), plan.serving_of(old))
    obs = plan.Observed(generation=1, deployment=dep, pods=pods, now=now)
    return plan.compute(s, old, res, obs, "http://assistant.ns.svc", "assistant")


def test_a_new_revision_rolls_out_completes_and_a_failing_one_rolls_back() -> None:
    s = spec(replicas=2)
    # First rollout: v1.
    p = step(s, {}, [ftj("f1", "v1")], None, [])
    assert p.template["facts"].revision == "v1" and p.status["rollout"]["phase"] == "Progressing"
    assert [e.reason for e in p.events] == ["RolloutStarted"]
    p = step(s, p.status, [ftj("f1", "v1")], deployment({"facts": "v1"}), [])
    assert p.status["rollout"]["phase"] == "Complete" and p.status["serving"][0]["revision"] == "v1"
    assert p.status["phase"] == "Ready"
    v1_done = p.status

    # v2 published: a rollout starts from v1; not done while an old pod remains.
    jobs = [ftj("f1", "v1"), ftj("f2", "v2")]
    p = step(s, v1_done, jobs, deployment({"facts": "v1"}), [])
    assert p.template["facts"].revision == "v2" and p.status["rollout"]["previous"] == {"facts": "v1"}
    p2 = step(
        s, p.status, jobs, deployment({"facts": "v2"}, updated=1, total=3), [pod({"facts": "v2"}, "True")]
    )
    assert p2.status["rollout"]["phase"] == "Progressing" and p2.status["phase"] == "Progressing"

    # A new pod fails its smoke test: back to v1, v2 rejected, not retried.
    failed = pod({"facts": "v2"}, "False", "smoke test of adapter facts: same answer as the base model")
    p3 = step(s, p.status, jobs, deployment({"facts": "v2"}, updated=1, total=3), [failed])
    assert p3.template["facts"].revision == "v1"
    assert (
        p3.status["rollout"]["phase"] == "RolledBack" and p3.status["rollout"]["reason"] == "SmokeTestFailed"
    )
    assert p3.status["adapters"][0]["rejected"] == ["v2"]
    assert [e.reason for e in p3.events] == ["RolledBack"]
    rolled = {c["type"]: c for c in p3.status["conditions"]}
    assert rolled["RolledBack"]["status"] == "True" and rolled["Degraded"]["status"] == "True"
    p4 = step(s, p3.status, jobs, deployment({"facts": "v1"}), [])
    assert p4.template["facts"].revision == "v1" and p4.events == []


def test_why_a_rollout_failed_is_known_where_it_failed_not_guessed_from_the_message() -> None:
    """A failed readiness gate is a failed smoke test whatever its message says; a pod that keeps crashing is
    PodsFailing even when its log mentions smoke tests."""
    s = spec(replicas=1)
    done = step(s, {}, [ftj("f1", "v1")], None, []).status
    done = step(s, done, [ftj("f1", "v1")], deployment({"facts": "v1"}, 1, 1, 1, 1), []).status
    jobs = [ftj("f1", "v1"), ftj("f2", "v2")]
    started = step(s, done, jobs, deployment({"facts": "v1"}, 1, 1, 1, 1), []).status
    new = deployment({"facts": "v2"}, replicas=1, ready=1, updated=1, total=2)
    wrong = pod({"facts": "v2"}, "False", "adapter facts: answer lacks 'Paris': 'Lyon'")
    crashing = pod({"facts": "v2"})
    crashing["status"]["containerStatuses"] = [
        {
            "name": "tgi",
            "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"message": "loading the smoke-test adapter: CUDA out of memory"}},
        }
    ]
    for failing, reason in ((wrong, "SmokeTestFailed"), (crashing, "PodsFailing")):
        p = step(s, started, jobs, new, [failing])
        assert p.status["rollout"]["phase"] == "RolledBack" and p.status["rollout"]["reason"] == reason
        conds = {c["type"]: c for c in p.status["conditions"]}
        assert conds["RolledBack"]["reason"] == conds["Degraded"]["reason"] == reason


def test_a_rollout_past_its_deadline_is_rolled_back() -> None:
    s = spec(replicas=2, rollout={"progressDeadlineSeconds": 60})
    done = step(s, {}, [ftj("f1", "v1")], None, []).status
    done = step(s, done, [ftj("f1", "v1")], deployment({"facts": "v1"}), []).status
    jobs = [ftj("f1", "v1"), ftj("f2", "v2")]
    started = step(s, done, jobs, deployment({"facts": "v1"}), []).status
    stuck = deployment({"facts": "v2"}, updated=1, total=3, ready=2)
    assert (
        step(s, started, jobs, stuck, [], NOW + dt.timedelta(seconds=59)).status["rollout"]["phase"]
        == "Progressing"
    )
    late = step(s, started, jobs, stuck, [], NOW + dt.timedelta(seconds=61))
    assert late.status["rollout"]["reason"] == "ProgressDeadlineExceeded"
    assert late.template["facts"].revision == "v1"


def test_an_unresolvable_adapter_keeps_serving_and_creates_nothing_new() -> None:
    s = spec(adapters=[{"name": "facts", "from": {"fineTuneJob": "gone"}}])
    p = step(s, {}, [], None, [])
    assert p.template is None  # no Deployment rather than a broken one
    degraded = next(c for c in p.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "FineTuneJobNotFound"
    assert p.status["phase"] == "Degraded"


# --- the vLLM runtime ---------------------------------------------------------------------------

VLLM = {"runtime": {"vllm": {}}}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"runtime": {"tgi": {}, "vllm": {}}}, "at most one of runtime.tgi or runtime.vllm"),
        (
            {"runtime": {"tgi": {"maxInputTokens": 4096, "maxTotalTokens": 4096}}},
            "maxInputTokens must be < runtime.tgi.maxTotalTokens",
        ),
        (
            {"runtime": {"tgi": {"maxInputTokens": 4096}}},
            "maxInputTokens must be <",
        ),  # the default total: 4096
        (
            {"runtime": {"vllm": {"maxNumSeqs": 64, "maxNumBatchedTokens": 32}}},
            "maxNumBatchedTokens must be >= runtime.vllm.maxNumSeqs",
        ),
        ({"runtime": {"vllm": {"maxLoraRank": 24}}}, "maxLoraRank"),
        ({"runtime": {"vllm": {"gpuMemoryUtilization": 0}}}, "greater than 0"),
        ({"runtime": {"vllm": {"quantization": "awq"}}}, "quantization"),
        (
            {
                **VLLM,
                "adapters": [{"name": "a", "from": {"adapter": "a"}, "smokeTest": {"chat": False}}],
            },
            "smokeTest.chat: false needs runtime.tgi",
        ),
    ],
)
def test_invalid_runtime_settings_are_refused_naming_the_field(body: dict, message: str) -> None:
    full = {"baseModel": BASE, "adapters": [{"name": "a", "from": {"adapter": "a"}}], **body}
    with pytest.raises(ValidationError, match=message):
        ModelDeploymentSpec.model_validate(full)


def _vllm_container(s: ModelDeploymentSpec, revs: dict[str, ServingRevision]) -> dict[str, Any]:
    dep = builders.deployment(builders.Owner("assistant", "team", "uid-1"), s, Settings(), revs)
    return dep["spec"]["template"]["spec"]["containers"][0]


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def test_vllm_container_serves_the_revisions_with_lora_modules_offline_non_root_and_read_only() -> None:
    revs = {
        "facts": ServingRevision(name="facts", revision="v2", path="adapters/team/facts/v2", rank=8),
        "chat": ServingRevision(name="chat", revision="v1", path="adapters/team/chat/v1", rank=32),
    }
    s = spec(
        runtime={"vllm": {"maxModelLen": 2048, "maxNumSeqs": 8, "dtype": "bfloat16"}}, resources={"gpus": 2}
    )
    c = _vllm_container(s, revs)
    assert c["name"] == "vllm" and c["image"] == Settings().vllm_image
    assert c["command"] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    args = c["args"]
    assert _flag(args, "--model") == "/models/base/smollm2"
    assert _flag(args, "--served-model-name") == "base/smollm2"
    assert _flag(args, "--port") == str(runtime.PORT)
    assert "--enable-lora" in args
    i = args.index("--lora-modules")
    assert args[i + 1 : i + 3] == [
        "chat=/models/adapters/team/chat/v1",
        "facts=/models/adapters/team/facts/v2",
    ]
    assert _flag(args, "--max-loras") == "2"  # default: the number of adapters
    assert _flag(args, "--max-lora-rank") == "32"  # default: the largest rank served
    assert _flag(args, "--tensor-parallel-size") == "2"  # default: the pod's GPUs
    assert (_flag(args, "--max-model-len"), _flag(args, "--max-num-seqs")) == ("2048", "8")
    assert _flag(args, "--dtype") == "bfloat16"
    assert "--quantization" not in args and "--gpu-memory-utilization" not in args
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HUB_OFFLINE"] == "1" and env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"
    assert "LORA_ADAPTERS" not in env
    # Every cache vLLM writes goes under the writable /tmp: the root file system is read-only.
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp", "/data", "/dev/shm"}, writable  # noqa: S108 - the pod's own emptyDirs
    assert all(env[k].startswith("/tmp/") for k in ("VLLM_CACHE_ROOT", "VLLM_CONFIG_ROOT", "NUMBA_CACHE_DIR"))  # noqa: S108
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["runAsNonRoot"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # SIGTERM drains in-flight requests (vLLM's default aborts them) within the pod's grace period.
    assert c["lifecycle"]["preStop"]["sleep"]["seconds"] == runtime.PRESTOP_SECONDS
    drain = int(_flag(args, "--shutdown-timeout") or 0)
    pod = builders.deployment(builders.Owner("a", "t", "u"), s, Settings(), revs)["spec"]["template"]["spec"]
    assert drain > 0 and runtime.PRESTOP_SECONDS + drain < pod["terminationGracePeriodSeconds"]


def test_vllm_settings_reach_the_command_line() -> None:
    s = spec(
        runtime={
            "vllm": {
                "image": "registry.example/vllm-cpu:v0.32.0",
                "maxLoras": 4,
                "maxLoraRank": 64,
                "gpuMemoryUtilization": 0.8,
                "quantization": "bitsandbytes",
                "tensorParallelSize": 1,
                "maxNumBatchedTokens": 4096,
            }
        },
        resources={"gpus": 4},
        baseModel={"huggingFaceId": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"},
    )
    c = _vllm_container(s, {"facts": ServingRevision(name="facts", path="a/b", rank=8)})
    args = c["args"]
    assert c["image"] == "registry.example/vllm-cpu:v0.32.0"
    assert (_flag(args, "--model"), _flag(args, "--revision")) == (
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "main",
    )
    assert _flag(args, "--served-model-name") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (_flag(args, "--max-loras"), _flag(args, "--max-lora-rank")) == ("4", "64")
    assert _flag(args, "--gpu-memory-utilization") == "0.8"
    assert _flag(args, "--quantization") == "bitsandbytes"
    assert _flag(args, "--tensor-parallel-size") == "1"
    assert _flag(args, "--max-num-batched-tokens") == "4096"


@pytest.mark.parametrize(
    ("ranks", "expected"),
    [([8], "8"), ([8, 12], "16"), ([33], "64"), ([0], "16"), ([300], "320"), ([], "1")],
)
def test_vllm_max_lora_rank_defaults_to_the_smallest_allowed_value_covering_every_revision(
    ranks: list[int], expected: str
) -> None:
    revs = {f"a{i}": ServingRevision(name=f"a{i}", path=f"p/{i}", rank=r) for i, r in enumerate(ranks)}
    assert _flag(_vllm_container(spec(**VLLM), revs)["args"], "--max-lora-rank") == expected


def test_every_serving_container_turns_its_runtimes_usage_statistics_off() -> None:
    revs = {"facts": ServingRevision(name="facts", revision="v1", path="adapters/team/facts/v1")}
    for s in (spec(), spec(runtime={"tgi": {}}), spec(**VLLM)):
        c = _vllm_container(s, revs)
        env = {e["name"]: e["value"] for e in c["env"]}
        off = runtime.TELEMETRY_OFF[s.runtime.name]
        assert {k: env.get(k) for k in off} == off, (s.runtime.name, env)
        assert env["HF_HUB_DISABLE_TELEMETRY"] == "1" and env["DO_NOT_TRACK"] == "1"
    tgi = {e["name"]: e["value"] for e in _vllm_container(spec(), revs)["env"]}
    assert tgi["USAGE_STATS"] == "off"  # TGI's launcher: on unless told otherwise


def test_the_hpa_targets_each_runtimes_queue_metric() -> None:
    owner = builders.Owner("assistant", "team", "uid-1")
    scaling = {"autoscaling": {"maxReplicas": 3, "queueSizeTarget": "2"}}
    for s, metric in (
        (spec(**scaling), "tgi_queue_size"),
        (spec(**scaling, **VLLM), "vllm:num_requests_waiting"),
    ):
        hpa = builders.autoscaler(owner, s)
        assert hpa is not None and hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == metric


def _ranked(name: str, revision: str, r: int) -> dict[str, Any]:
    job = ftj(name, revision)
    job["spec"]["lora"] = {"r": r}
    return job


def test_a_revision_above_an_explicit_max_lora_rank_is_not_rolled_out_and_degrades_naming_both() -> None:
    s = spec(runtime={"vllm": {"maxLoraRank": 16}})
    res = resolve.resolve(s, [_ranked("f1", "v1", 16)], {}, {})
    assert res.revisions["facts"].rank == 16 and not res.problems
    v1 = res.revisions["facts"]
    res = resolve.resolve(s, [_ranked("f1", "v1", 16), _ranked("f2", "v2", 32)], {}, {"facts": v1})
    assert "facts" not in res.revisions
    problem = res.problems["facts"]
    assert problem.reason == "AdapterRankTooHigh"
    assert "revision v2 (FineTuneJob f2) has LoRA rank 32" in problem.message
    assert "runtime.vllm.maxLoraRank 16" in problem.message
    # The rollout does not start: the template keeps v1, and Degraded says why.
    old = {"serving": [v1.model_dump(by_alias=True)]}
    p = plan.compute(
        s, old, res, plan.Observed(1, deployment({"facts": "v1"}), [], NOW), "http://x", "assistant"
    )
    assert p.template == {"facts": v1} and p.status["rollout"] is None
    degraded = next(c for c in p.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AdapterRankTooHigh"
    assert "rank 32" in degraded["message"] and "maxLoraRank 16" in degraded["message"]
    # Without an explicit limit the same revision rolls out (the default rank follows it); TGI takes any rank.
    for other in (spec(**VLLM), spec()):
        assert resolve.resolve(other, [_ranked("f2", "v2", 32)], {}, {}).revisions["facts"].revision == "v2"
    # Above vLLM's largest rank, nothing can load it.
    too_big = resolve.resolve(spec(**VLLM), [_ranked("f3", "v3", 1024)], {}, {})
    assert (
        too_big.problems["facts"].reason == "AdapterRankTooHigh"
        and "512" in too_big.problems["facts"].message
    )


def test_status_names_the_runtime_and_the_base_models_name_for_clients() -> None:
    for s, name, base in ((spec(), "tgi", "tgi"), (spec(**VLLM), "vllm", "base/smollm2")):
        res = resolve.resolve(s, [ftj("f1", "v1")], {}, {})
        p = plan.compute(s, {}, res, plan.Observed(1, None, [], NOW), "http://x", "assistant")
        assert (p.status["runtime"], p.status["baseModelName"]) == (name, base)
