"""Command line: ``python -m servingenv {install,path,python}`` (with ``dev/`` on PYTHONPATH).

``install`` makes the vLLM CPU serving environment unless it is complete (``make serving-env``);
``path`` prints its folder, installed or not; ``python`` prints its interpreter, or exits 3 with
what to run when it is not installed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from . import NotInstalled, env_dir, require


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="servingenv", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install the vLLM CPU serving environment (idempotent)")
    sub.add_parser("path", help="print the environment's folder (installed or not)")
    sub.add_parser("python", help="print the environment's interpreter; exit 3 if not installed")
    args = parser.parse_args(argv)
    if args.command == "install":
        from .install import install

        try:
            install()
        except subprocess.CalledProcessError as e:
            print(f"servingenv: install failed: {e}", file=sys.stderr)
            return 1
    elif args.command == "path":
        print(env_dir())
    elif args.command == "python":
        try:
            print(require())
        except NotInstalled as e:
            print(f"servingenv: {e}", file=sys.stderr)
            return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
