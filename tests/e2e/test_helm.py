"""helm, built from its Go module, installs into the local cluster and sees the
real server version (charts gate on `kubeVersion`)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.kube import Kube


def _chart(root: Path, kube_version: str) -> Path:
    chart = root / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(
        f'apiVersion: v2\nname: probe\nversion: 0.1.0\nkubeVersion: "{kube_version}"\n'
    )
    (chart / "templates" / "configmap.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-probe\n"
        "data:\n  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}\n"
    )
    return chart


def test_helm_installs_a_chart_gated_on_the_kubernetes_version(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    chart = _chart(tmp_path, ">=1.34.0-0")
    kube.helm("install", "probe", str(chart), "-n", namespace, "--wait", "--timeout=120s")
    server = json.loads(kube.kubectl("get", "--raw=/version").stdout)["gitVersion"]
    cm = kube.get("configmap", "probe-probe", "-n", namespace)
    assert cm["data"]["kubeVersion"] == server
    kube.helm("uninstall", "probe", "-n", namespace, "--wait")
    assert kube.kubectl("get", "configmap", "probe-probe", "-n", namespace, check=False).returncode != 0


def test_helm_refuses_a_chart_whose_kube_version_the_cluster_does_not_meet(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    chart = _chart(tmp_path, "<1.20.0-0")
    proc = kube.helm("install", "too-new", str(chart), "-n", namespace, check=False)
    assert proc.returncode != 0
    assert "kubeVersion" in proc.stderr or "incompatible" in proc.stderr.lower()
