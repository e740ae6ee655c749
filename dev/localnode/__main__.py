"""``python -m localnode``: run the local node agent until SIGTERM or ^C."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from .agent import Agent


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
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    if os.geteuid() != 0:
        print("localnode: needs root (it makes a mount namespace per container)", file=sys.stderr)
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
    agent.run(args.healthz_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
