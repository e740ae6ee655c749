"""Startup, readiness and liveness probes, with the kubelet's thresholds."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


def _port(value: int | str, container: Obj) -> int:
    if isinstance(value, int) or str(value).isdigit():
        return int(value)
    for p in container.get("ports") or []:
        if p.get("name") == value:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {value!r}")


def run_probe(spec: Obj, container: Obj, pod_ip: str, pid: int | None) -> tuple[bool, str]:
    """One attempt: (success, what happened)."""
    timeout = float(spec.get("timeoutSeconds", 1))
    try:
        if "httpGet" in spec:
            g = spec["httpGet"]
            if g.get("scheme", "HTTP") != "HTTP":
                return False, "only HTTP probes are supported on the local node"
            host = g.get("host") or pod_ip
            conn = http.client.HTTPConnection(host, _port(g["port"], container), timeout=timeout)
            try:
                headers = {h["name"]: h["value"] for h in g.get("httpHeaders") or []}
                conn.request("GET", g.get("path", "/"), headers={"User-Agent": "kube-probe/local", **headers})
                resp = conn.getresponse()
                body = resp.read(1024).decode(errors="replace")
            finally:
                conn.close()
            ok = 200 <= resp.status < 400
            return ok, f"HTTP probe failed with statuscode: {resp.status}" if not ok else body[:200]
        if "tcpSocket" in spec:
            t = spec["tcpSocket"]
            with socket.create_connection((t.get("host") or pod_ip, _port(t["port"], container)), timeout):
                return True, ""
        if "exec" in spec:
            if pid is None:
                return False, "container not running"
            # Run the command inside the container's mount namespace and root.
            proc = subprocess.run(
                [
                    "nsenter",
                    f"--target={pid}",
                    # Not root: the container's mount namespace belongs to its own user namespace.
                    *(["--user"] if os.geteuid() else []),
                    "--mount",
                    "--root",
                    "--wd",
                    "--",
                    *spec["exec"]["command"],
                ],
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            out = (proc.stdout + proc.stderr).strip()[-300:]
            return proc.returncode == 0, out or f"exit code {proc.returncode}"
        return False, "unsupported probe handler (httpGet, tcpSocket and exec are supported)"
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return False, f"probe error: {e}"


@dataclass
class Probe:
    kind: str  # startup | readiness | liveness
    spec: Obj
    started: float  # when the container started (monotonic)
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    result: bool | None = None  # None until the thresholds decide
    last_message: str = ""

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds", 0))

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> bool:
        """Feed one attempt; return True when the probe's result changed."""
        self.next_at = now + float(self.spec.get("periodSeconds", 10))
        self.last_message = message
        before = self.result
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= int(self.spec.get("successThreshold", 1)):
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= int(self.spec.get("failureThreshold", 3)):
                self.result = False
        return self.result != before


def probes_for(container: Obj, started: float) -> dict[str, Probe]:
    out = {}
    for kind in ("startup", "readiness", "liveness"):
        spec = container.get(f"{kind}Probe")
        if spec:
            out[kind] = Probe(kind, spec, started)
    return out


def now() -> float:
    return time.monotonic()
