"""A small client for tests: kubectl of the cluster's version, and the
official Python client, both bound to one kubeconfig."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

# A container securityContext that Pod Security "restricted" admits.
RESTRICTED_CONTAINER_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class KubectlError(AssertionError):
    pass


@dataclass
class Kube:
    kubeconfig: Path
    local: bool  # True for the local control plane (kwok nodes), False for a real cluster
    kubectl_path: Path | None = None
    helm_path: Path | None = None

    def _tool(self, path: Path | None, name: str) -> str:
        if path is not None:
            return str(path)
        found = shutil.which(name)
        if found is None:
            raise KubectlError(f"{name} is not on PATH")
        return found

    def _run(
        self,
        tool: str,
        path: Path | None,
        args: tuple[str, ...],
        input: str | None,
        check: bool,
        timeout: float,
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [self._tool(path, tool), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise KubectlError(f"{tool} {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        return self._run("kubectl", self.kubectl_path, args, input, check, timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        return self._run("helm", self.helm_path, args, None, check, timeout)

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, manifest: dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> None:
        docs = manifest if isinstance(manifest, list) else [manifest]
        body = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
        ns = [f"--namespace={namespace}"] if namespace else []
        self.kubectl("apply", "--server-side", "--field-manager=loraforge-tests", *ns, "-f", "-", input=body)

    def install_crds(self, folder: Path) -> None:
        """Apply every CRD in ``folder`` and wait until the API server serves them."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(folder))
        names = [f"crd/{p.name.removesuffix('.yaml')}" for p in sorted(folder.glob("*.yaml"))]
        self.kubectl("wait", "--for=condition=Established", *names, "--timeout=60s")

    def create_namespace(self, name: str, labels: dict[str, str]) -> None:
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
        # Pods need the namespace's default ServiceAccount, which a controller
        # creates shortly after the namespace.
        wait_for(
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            timeout=60,
            what=f"the default ServiceAccount in {name}",
        )

    def server_and_ca(self, tmp_dir: Path) -> tuple[str, str]:
        """The API server URL of the current context and its CA bundle written to a file."""
        import base64

        import yaml

        cfg = yaml.safe_load(self.kubeconfig.read_text())
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        ca = tmp_dir / "ca.crt"
        if "certificate-authority-data" in cluster:
            ca.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
        else:
            ca.write_bytes(Path(cluster["certificate-authority"]).read_bytes())
        return cluster["server"], str(ca)

    def token(self, namespace: str, service_account: str) -> str:
        return self.kubectl(
            "create", "token", service_account, "-n", namespace, "--duration=10m"
        ).stdout.strip()

    def api_client(self):
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.5) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")
