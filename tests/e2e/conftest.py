"""The operator, run as a process against the test cluster, and the storage
a FineTuneJob expects."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import storage
from loraforge_operator import metrics
from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[2]
TRAINER_IMAGE = "registry.local/loraforge/trainer:e2e"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OperatorProcess:
    """loraforge-operator in a subprocess; restartable, killable."""

    def __init__(self, kube: Kube, log_path: Path):
        self.kube = kube
        self.log_path = log_path
        self.metrics_port = _free_port()
        self.health_port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, namespaces: list[str] | None = None) -> None:
        """Start it, watching the whole cluster or only ``namespaces``."""
        env = {
            **os.environ,
            "KUBECONFIG": str(self.kube.kubeconfig),
            "LORAFORGE_METRICS_PORT": str(self.metrics_port),
            "LORAFORGE_TRAINER_IMAGE": TRAINER_IMAGE,
        }
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process for its lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "loraforge_operator",
                "--log-format=plain",
                "--verbose",  # the log is shown when a test fails
                f"--liveness=http://127.0.0.1:{self.health_port}/healthz",
                *(f"--namespace={ns}" for ns in namespaces or []),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        wait_for(self._healthy, timeout=60, what=f"the operator to be live (log: {self.log_path})")

    def _healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise AssertionError(f"the operator exited; log:\n{self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: no cleanup, as a crash or an OOM kill."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def writes(self) -> float:
        """Total write requests the operator has sent (its own metric)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return metrics.sum_samples(r.read().decode(), "loraforge_api_writes_total")


@pytest.fixture(scope="session")
def operator(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    kube.install_crds(REPO / "crds")
    op = OperatorProcess(kube, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture(scope="module")
def session_operator_paused(operator: OperatorProcess) -> Iterator[None]:
    """The session's operator stopped for a module that runs an operator of its own (one that must be the
    only one reconciling its objects), and started again after it."""
    operator.stop()
    try:
        yield
    finally:
        operator.start()


@pytest.fixture
def model_store(kube: Kube, namespace: str) -> Iterator[str]:
    """A bound `loraforge-model-store` claim in the test namespace."""
    pv, pvc = storage.model_store(namespace)
    kube.apply([pv, pvc])
    yield pvc["metadata"]["name"]
    kube.kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false", check=False)
