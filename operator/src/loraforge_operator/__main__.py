"""Run the operator: ``loraforge-operator`` (or ``python -m loraforge_operator``).

Settings come from LORAFORGE_* environment variables (see settings.py); the
flags here choose what to watch and how to log.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

# The operator uses neither Kubernetes client library (kube.py speaks HTTP itself). kopf imports them
# whenever they are installed, to recognise their model objects: about 37 MiB of resident memory
# (bench/README.md). They are absent from the operator's image; blocked here so that the operator run
# from a development environment, where the tests install them, is the process the image runs.
for _unused in ("kubernetes", "kubernetes_asyncio", "pykube"):
    sys.modules.setdefault(_unused, None)  # type: ignore[assignment]

import kopf  # noqa: E402

from . import peering, togglesets, watchgap  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="loraforge-operator", description=__doc__)
    parser.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable); default: the whole cluster",
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="liveness endpoint URL, served by kopf (empty to disable)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="run as one of several replicas coordinated through this kopf peering object "
        "(high availability); default: standalone, one replica",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority (the highest live replica works); default: the start time, newest wins",
    )
    parser.add_argument("--log-format", choices=["json", "plain"], default="json")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.PLAIN,
    )
    if not args.verbose:
        # kopf logs every handled event at INFO ("Handler ... succeeded"): noise
        # at scale. Our own messages and kopf's warnings and errors remain.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    from . import handlers  # noqa: F401  (registers the handlers)

    watchgap.install()  # objects deleted while a watch was broken are noticed after the re-list
    togglesets.install()  # kopf's start-up barrier wakes its waiters only when it opens

    if args.peering:
        asyncio.run(peering.ensure(args.peering, args.namespace))

    kopf.run(
        **peering.run_args(args.peering, args.priority),
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness or None,
    )


if __name__ == "__main__":
    main()
