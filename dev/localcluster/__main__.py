"""Command line: ``python -m localcluster {build,up,down,status,env,restart}``.

Run with ``dev/`` on PYTHONPATH (the Makefile does): ``make cluster`` is
``up``, ``make cluster-down`` is ``down``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from .build import BuildError, ensure_built
from .cluster import COMPONENTS, ClusterError, LocalCluster


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="localcluster", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("build", help="build (or find cached) etcd, Kubernetes, kwok and helm binaries")
    up = sub.add_parser("up", help="start the local cluster unless it is already running")
    up.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for each step")
    sub.add_parser("down", help="stop exactly the processes `up` started and forget the cluster")
    sub.add_parser("status", help="exit 0 if the cluster is running and ready, 3 if not")
    sub.add_parser("env", help="print shell exports: KUBECONFIG and PATH with the cluster's kubectl and helm")
    restart = sub.add_parser(
        "restart", help="fault drill: stop one component (SIGKILL: a crash), wait, start it again as it was"
    )
    restart.add_argument("component", choices=COMPONENTS)
    restart.add_argument("--down-for", type=float, default=5.0, help="seconds it stays down")
    restart.add_argument("--signal", choices=("KILL", "TERM"), default="KILL")
    args = parser.parse_args(argv)

    cluster = LocalCluster()
    try:
        if args.command == "build":
            for name, path in sorted(ensure_built().items()):
                print(f"{name}\t{path}")
        elif args.command == "up":
            cluster.up(timeout=args.timeout)
            print(
                cluster.kubectl("get", "nodes", "-L", "loraforge.io/pool,nvidia.com/gpu.product").stdout,
                end="",
            )
            print(f"\nexport KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            stopped = cluster.down()
            print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")
        elif args.command == "status":
            st = cluster.status()
            print(st.detail)
            for name, alive in st.processes.items():
                print(f"  {name}: {'running' if alive else 'stopped'}")
            return 0 if st.running else 3
        elif args.command == "env":
            dirs = sorted({str(p.parent) for p in ensure_built(quiet=True).values()})
            print(f"export KUBECONFIG={cluster.kubeconfig}")
            print(f'export PATH={":".join(dirs)}:"$PATH"')
        elif args.command == "restart":
            cluster.stop_component(args.component, signal.Signals[f"SIG{args.signal}"])
            time.sleep(args.down_for)
            cluster.start_component(args.component)
    except (BuildError, ClusterError) as e:
        print(f"localcluster: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
