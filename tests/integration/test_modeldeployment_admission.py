"""The API server, with the ModelDeployment CRD installed, rejects invalid
ModelDeployments naming the field, and accepts every child the operator
builds for one (Deployment, Service, HPA, PodDisruptionBudget) under Pod
Security "restricted"."""

from __future__ import annotations

import json

import pytest

from loraforge_operator.modeldeployment import builders
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, ServingRevision
from loraforge_operator.settings import Settings
from tests.kube import Kube

VALID = {
    "baseModel": {"path": "base/smollm2-135m-instruct"},
    "adapters": [{"name": "facts", "from": {"adapter": "facts"}}],
}

INVALID = [
    (
        {"adapters": [{"name": "facts", "from": {"adapter": "facts", "path": "a/b"}}]},
        "spec.adapters[0].from",
        "set exactly one of from.adapter, from.fineTuneJob or from.path",
    ),
    (
        {"adapters": [{"name": "facts", "from": {"fineTuneJob": "f", "revision": "v2"}}]},
        "spec.adapters[0].from.revision",
        "from.revision pins a revision of from.adapter",
    ),
    (
        {"autoscaling": {"minReplicas": 3, "maxReplicas": 2, "cpuUtilization": 50}},
        "spec.autoscaling",
        "autoscaling.minReplicas must be <= maxReplicas",
    ),
    ({"autoscaling": {"maxReplicas": 3}}, "spec.autoscaling", "set autoscaling.queueSizeTarget"),
    (
        {"resources": {"gpuResourceName": "kubernetes.io/gpu"}},
        "spec.resources.gpuResourceName",
        "must be an extended resource name",
    ),
    ({"resources": {"gpuResourceName": "0/."}}, "spec.resources.gpuResourceName", ""),
    (
        {"replicas": 2, "autoscaling": {"maxReplicas": 3, "cpuUtilization": 50}},
        "spec",
        "set either replicas or autoscaling, not both",
    ),
    ({"adapters": [{"name": "Facts!", "from": {"adapter": "facts"}}]}, "spec.adapters[0].name", ""),
    (
        {"adapters": [{"name": "facts", "from": {"adapter": "facts", "revision": "latest"}}]},
        "spec.adapters[0].from.revision",
        "",
    ),
    ({"adapters": [{"name": "facts", "from": {"path": "../etc"}}]}, "spec.adapters[0].from.path", ""),
    ({"adapters": []}, "spec.adapters", ""),
    (
        {"resources": {"nodeSelector": {"bad key": "x"}}},
        "spec.resources.nodeSelector",
        "resources.nodeSelector keys must be label keys",
    ),
    ({"resources": {"nodeSelector": {"gpu": "bad value"}}}, "spec.resources.nodeSelector.gpu", ""),
    (
        {"service": {"annotations": {"a/b/c": "x"}}},
        "spec.service.annotations",
        "service.annotations keys must be annotation keys",
    ),
    (
        {"monitoring": {"labels": {"Example.com/release": "x"}}},
        "spec.monitoring.labels",
        "monitoring.labels keys must be label keys",
    ),
    ({"monitoring": {"labels": {"release": "-prom"}}}, "spec.monitoring.labels.release", ""),
    (
        {"resources": {"tolerations": [{"key": "gpu", "operator": "Exists", "value": "x"}]}},
        "spec.resources.tolerations[0].value",
        "a toleration with operator Exists takes no value",
    ),
    # The serving runtimes: what their own start-up would refuse (a crash-looping pod) is refused here.
    ({"runtime": {"tgi": {}, "vllm": {}}}, "spec.runtime", "set at most one of runtime.tgi or runtime.vllm"),
    (
        {"runtime": {"tgi": {"maxInputTokens": 4096, "maxTotalTokens": 4096}}},
        "spec.runtime.tgi.maxInputTokens",
        "runtime.tgi.maxInputTokens must be < runtime.tgi.maxTotalTokens",
    ),
    (
        {"runtime": {"tgi": {"maxInputTokens": 8192}}},  # above the default maxTotalTokens, 4096
        "spec.runtime.tgi.maxInputTokens",
        "must be < runtime.tgi.maxTotalTokens",
    ),
    (
        {"runtime": {"vllm": {"maxNumSeqs": 64, "maxNumBatchedTokens": 32}}},
        "spec.runtime.vllm.maxNumBatchedTokens",
        "runtime.vllm.maxNumBatchedTokens must be >= runtime.vllm.maxNumSeqs",
    ),
    ({"runtime": {"vllm": {"maxLoraRank": 24}}}, "spec.runtime.vllm.maxLoraRank", "supported values"),
    ({"runtime": {"vllm": {"gpuMemoryUtilization": 0}}}, "spec.runtime.vllm.gpuMemoryUtilization", ""),
    ({"runtime": {"vllm": {"dtype": "int8"}}}, "spec.runtime.vllm.dtype", ""),
    ({"runtime": {"vllm": {"image": "has space"}}}, "spec.runtime.vllm.image", ""),
    (
        {
            "runtime": {"vllm": {}},
            "adapters": [{"name": "facts", "from": {"adapter": "facts"}, "smokeTest": {"chat": False}}],
        },
        "spec.adapters",
        "smokeTest.chat: false needs runtime.tgi",
    ),
    # smokeTest.suite: its ConfigMap and its minAccuracy are required, its concurrency bounded.
    (
        {
            "adapters": [
                {"name": "facts", "from": {"adapter": "facts"}, "smokeTest": {"suite": {"minAccuracy": 0.9}}}
            ]
        },
        "spec.adapters[0].smokeTest.suite.configMap",
        "Required value",
    ),
    (
        {
            "adapters": [
                {
                    "name": "facts",
                    "from": {"adapter": "facts"},
                    "smokeTest": {"suite": {"configMap": {"name": "facts-suite", "key": "questions.jsonl"}}},
                }
            ]
        },
        "spec.adapters[0].smokeTest.suite.minAccuracy",
        "Required value",
    ),
    (
        {
            "adapters": [
                {
                    "name": "facts",
                    "from": {"adapter": "facts"},
                    "smokeTest": {
                        "suite": {
                            "configMap": {"name": "facts-suite", "key": "questions.jsonl"},
                            "minAccuracy": 0.9,
                            "concurrency": 65,
                        }
                    },
                }
            ]
        },
        "spec.adapters[0].smokeTest.suite.concurrency",
        "",
    ),
]


def _md(name: str, spec: dict) -> str:
    return json.dumps(
        {
            "apiVersion": "loraforge.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


@pytest.mark.parametrize(
    ("patch", "field", "message"), INVALID, ids=[f"{i}-{c[1]}" for i, c in enumerate(INVALID)]
)
def test_invalid_modeldeployment_is_rejected_naming_the_field(
    kube: Kube, crds: None, namespace: str, patch: dict, field: str, message: str
) -> None:
    proc = kube.kubectl(
        "create",
        "--validate=strict",
        "-n",
        namespace,
        "-f",
        "-",
        input=_md("bad", {**VALID, **patch}),
        check=False,
    )
    assert proc.returncode != 0, "the API server accepted an invalid ModelDeployment"
    assert field in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr


def test_a_valid_modeldeployment_gets_its_defaults(kube: Kube, crds: None, namespace: str) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=_md("ok", VALID))
    spec = kube.get("md", "ok", "-n", namespace)["spec"]
    assert spec["rollout"] == {
        "maxSurge": 1,
        "noSurgeFallback": False,
        "progressDeadlineSeconds": 900,
        "historyLimit": 5,
    }
    assert spec["promotion"] == {"policy": "Automatic"}
    assert spec["resources"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_a_vllm_modeldeployment_is_admitted_with_its_defaults(kube: Kube, crds: None, namespace: str) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=_md("vllm", {**VALID, "runtime": {"vllm": {}}}))
    runtime = kube.get("md", "vllm", "-n", namespace)["spec"]["runtime"]
    assert runtime == {"vllm": {"dtype": "auto"}}  # no TGI defaults added beside it


@pytest.mark.parametrize("runtime", ["tgi", "vllm"])
def test_every_child_is_accepted_by_the_api_server_under_restricted_pod_security(
    kube: Kube, crds: None, namespace: str, runtime: str
) -> None:
    spec = ModelDeploymentSpec.model_validate(
        {
            **VALID,
            "runtime": {runtime: {}},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5, "queueSizeTarget": "4", "cpuUtilization": 80},
        }
    )
    owner = builders.Owner("assistant", namespace, "00000000-0000-0000-0000-000000000000")
    revs = {"facts": ServingRevision(name="facts", revision="v1", path=f"adapters/{namespace}/facts/v1")}
    children = builders.children(owner, spec, Settings(), revs)
    assert [c["kind"] for c in children] == [
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    ]
    for child in children:
        child = {**child, "metadata": {k: v for k, v in child["metadata"].items() if k != "ownerReferences"}}
        proc = kube.kubectl(
            "create",
            "--dry-run=server",
            "--validate=strict",
            "-n",
            namespace,
            "-f",
            "-",
            input=json.dumps(child),
            check=False,
        )
        assert proc.returncode == 0, f"{child['kind']}: {proc.stderr}"
        assert "would violate PodSecurity" not in proc.stderr, proc.stderr
    # The HPA as the API server stores it: the Deployment as target, the runtime's queue and CPU as metrics.
    hpa = next(c for c in children if c["kind"] == "HorizontalPodAutoscaler")
    hpa = {**hpa, "metadata": {k: v for k, v in hpa["metadata"].items() if k != "ownerReferences"}}
    kube.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(hpa))
    stored = kube.get("hpa", "assistant", "-n", namespace)["spec"]
    assert stored["scaleTargetRef"]["name"] == "assistant"
    assert [m["type"] for m in stored["metrics"]] == ["Pods", "Resource"]
    queue = {"tgi": "tgi_queue_size", "vllm": "vllm:num_requests_waiting"}[runtime]
    assert stored["metrics"][0]["pods"]["metric"]["name"] == queue
