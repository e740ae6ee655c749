"""The API server is real: version, server-side apply, and admission behave as
in any cluster. The operator's later promises (SSA with a field manager,
restricted pods) rest on exactly these behaviours."""

from __future__ import annotations

import json
import re

import pytest

from localcluster.versions import load_versions
from tests.kube import RESTRICTED_CONTAINER_SECURITY, Kube, KubectlError


def test_api_server_reports_a_supported_and_pinned_version(kube: Kube) -> None:
    server = json.loads(kube.kubectl("version", "-o", "json").stdout)["serverVersion"]
    minor = int(re.match(r"\d+", server["minor"]).group())
    assert (int(server["major"]), minor) >= (1, 34), server
    if kube.local:
        # The ldflags stamp reached the binary: Helm's kubeVersion checks rely on it.
        assert server["gitVersion"] == load_versions().kubernetes


def test_object_created_by_server_side_apply_is_stored_with_its_field_manager(
    kube: Kube, namespace: str
) -> None:
    kube.apply(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "probe"}, "data": {"step": "1"}},
        namespace=namespace,
    )
    stored = kube.get("configmap", "probe", "-n", namespace, "--show-managed-fields")
    assert stored["data"] == {"step": "1"}
    managers = {(m["manager"], m["operation"]) for m in stored["metadata"]["managedFields"]}
    assert ("loraforge-tests", "Apply") in managers


def test_a_second_field_manager_conflicts_instead_of_silently_overwriting(kube: Kube, namespace: str) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "owned"}, "data": {"k": "mine"}}
    kube.apply(cm, namespace=namespace)
    cm["data"]["k"] = "theirs"
    proc = kube.kubectl(
        "apply",
        "--server-side",
        "--field-manager=someone-else",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(cm),
        check=False,
    )
    assert proc.returncode != 0
    assert "conflict" in proc.stderr.lower() and ".data.k" in proc.stderr
    assert kube.get("configmap", "owned", "-n", namespace)["data"]["k"] == "mine"


def _pod(name: str, security: dict) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "containers": [{"name": "main", "image": "registry.local/probe:1", "securityContext": security}]
        },
    }


def test_restricted_namespace_rejects_a_privileged_pod_naming_the_field(kube: Kube, namespace: str) -> None:
    with pytest.raises(KubectlError) as err:
        kube.apply(_pod("privileged", {"privileged": True}), namespace=namespace)
    message = str(err.value)
    assert 'violates PodSecurity "restricted:latest"' in message
    assert "securityContext.privileged=true" in message


def test_restricted_namespace_admits_a_pod_that_follows_the_profile(kube: Kube, namespace: str) -> None:
    kube.apply(_pod("restricted", RESTRICTED_CONTAINER_SECURITY), namespace=namespace)
    assert kube.get("pod", "restricted", "-n", namespace)["metadata"]["name"] == "restricted"
