"""``python -m localnode``: run the local node agent until SIGTERM or ^C."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from . import images
from .agent import Agent


def sandbox_problem(state_dir: Path) -> str:
    """Start one empty container (``true``); return why it failed, or ""."""
    probe = state_dir / "preflight"
    probe.mkdir(parents=True, exist_ok=True)
    spec = probe / "sandbox.json"
    spec.write_text(
        json.dumps(
            {
                "rootDir": str(probe / "rootfs"),
                "mounts": [{"source": str(probe), "target": "/preflight", "readOnly": True}],
                "argv": ["true"],
                "env": {"PATH": images.SYSTEM_PATH},
            }
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "localnode.sandbox", str(spec)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(images.DEV_DIR), "PATH": images.SYSTEM_PATH},
        timeout=60,
    )
    shutil.rmtree(probe, ignore_errors=True)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit code {proc.returncode}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="localnode", description=__doc__)
    p.add_argument(
        "--kubeconfig", default=os.environ.get("KUBECONFIG"), help="admin kubeconfig of the cluster"
    )
    p.add_argument("--state-dir", type=Path, required=True, help="where pods' volumes, logs and roots live")
    p.add_argument("--node-name", default="local")
    p.add_argument("--gpus", type=int, default=8, help="fake nvidia.com/gpu capacity to declare")
    p.add_argument("--cpu", default="32", help="CPU capacity to declare (not measured)")
    p.add_argument("--memory", default="256Gi", help="memory capacity to declare (not measured)")
    p.add_argument("--restart-backoff", type=float, default=10.0, help="first restart back-off, seconds")
    p.add_argument(
        "--pod-subnet",
        default="127.0.0",
        help="first three octets of the loopback /24 that pod IPs come from (one per cluster)",
    )
    p.add_argument("--healthz-port", type=int, default=None, help="serve /healthz and /pods on 127.0.0.1")
    p.add_argument("--kubelet-port", type=int, default=None, help="serve the kubelet API (kubectl logs) here")
    p.add_argument("--tls-cert", type=Path, help="serving certificate of the kubelet API")
    p.add_argument("--tls-key", type=Path, help="its key")
    p.add_argument("--client-ca", type=Path, help="CA that the API server's client certificate is signed by")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    problem = sandbox_problem(args.state_dir)
    if problem:
        print(
            f"localnode: cannot make a container here: {problem}\n"
            "It needs root, or unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
            "user.max_user_namespaces > 0).",
            file=sys.stderr,
        )
        return 2
    if not args.kubeconfig:
        print("localnode: --kubeconfig or KUBECONFIG is required", file=sys.stderr)
        return 2
    agent = Agent(
        args.kubeconfig,
        args.state_dir,
        node_name=args.node_name,
        gpus=args.gpus,
        cpu=args.cpu,
        memory=args.memory,
        restart_backoff=args.restart_backoff,
        pod_subnet=args.pod_subnet,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stopping.set())
    kubelet = None
    if args.kubelet_port:
        if not (args.tls_cert and args.tls_key and args.client_ca):
            print("localnode: --kubelet-port needs --tls-cert, --tls-key and --client-ca", file=sys.stderr)
            return 2
        kubelet = (args.kubelet_port, args.tls_cert, args.tls_key, args.client_ca)
    agent.run(args.healthz_port, kubelet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
