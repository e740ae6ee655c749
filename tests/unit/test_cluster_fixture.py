"""The `kube` fixture fails a session loudly, naming the cause, when it cannot
provide a cluster: it never skips the cluster tiers silently."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
A_CLUSTER_TEST = "tests/integration/test_apiserver.py::test_api_server_reports_a_supported_and_pinned_version"


def _pytest(env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LORAFORGE_TEST_USE_EXISTING_CLUSTER"}
    env.update(env_overrides)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", A_CLUSTER_TEST],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_opting_into_an_existing_cluster_without_a_kubeconfig_errors_naming_the_variable(
    tmp_path: Path,
) -> None:
    proc = _pytest({"LORAFORGE_TEST_USE_EXISTING_CLUSTER": "1", "KUBECONFIG": str(tmp_path / "missing")})
    assert proc.returncode == 1, proc.stdout
    assert "LORAFORGE_TEST_USE_EXISTING_CLUSTER=1 needs KUBECONFIG" in proc.stdout
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout


def test_a_local_cluster_that_cannot_be_built_errors_with_the_reason(tmp_path: Path) -> None:
    path_without_go = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "go").exists()
    )
    proc = _pytest(
        {
            "PATH": path_without_go,
            "LORAFORGE_CACHE_DIR": str(tmp_path / "empty-cache"),
            "LORAFORGE_CLUSTER_DIR": str(tmp_path / "cluster"),
        }
    )
    assert proc.returncode == 1, proc.stdout
    assert "could not start the local cluster" in proc.stdout
    assert "`go` is not on PATH" in proc.stdout
    assert "skipped" not in proc.stdout
