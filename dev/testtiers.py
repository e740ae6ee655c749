"""Run loraforge's test tiers and report how long each took.

    python dev/testtiers.py [lint] [unit] [trainer] [integration] [e2e]

(`make test` runs them all; `make test-unit` etc. one each.) The cluster tiers
share one local cluster: reused if it is running, otherwise started once and
stopped at the end. Every tier runs even after a failure, so one run shows all
that is broken; the exit code is non-zero if any tier failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TIERS = ("lint", "unit", "trainer", "integration", "e2e")
CLUSTER_TIERS = {"integration", "e2e"}
PY = sys.executable


def _run(cmd: list[str]) -> bool:
    print(f"$ {' '.join(cmd)}", flush=True)
    return subprocess.run(cmd, cwd=REPO).returncode == 0


def lint() -> bool:
    ok = _run([PY, "-m", "ruff", "check", "."])
    ok = _run([PY, "-m", "ruff", "format", "--check", "."]) and ok
    gofmt = subprocess.run(
        ["gofmt", "-l", "dev/localcluster/gowrap"], cwd=REPO, capture_output=True, text=True
    )
    if gofmt.returncode != 0 or gofmt.stdout.strip():
        print(f"gofmt: not formatted:\n{gofmt.stdout}{gofmt.stderr}", flush=True)
        ok = False
    # The images cannot be built here (no container engine): their Dockerfiles and scripts are linted.
    bin_dir = Path(PY).parent
    for tool in ("hadolint", "shellcheck"):
        if not (bin_dir / tool).exists():
            print(f"{tool} is not installed next to {PY} (requirements-dev.txt: make venv)", flush=True)
            return False
    dockerfiles = sorted(str(p.relative_to(REPO)) for p in (REPO / "images").glob("*/Dockerfile"))
    ok = _run([str(bin_dir / "hadolint"), "--config", "images/.hadolint.yaml", *dockerfiles]) and ok
    scripts = sorted(str(p.relative_to(REPO)) for p in (REPO / "images").glob("*.sh"))
    ok = _run([str(bin_dir / "shellcheck"), *scripts]) and ok
    return ok


def pytest_tier(tier: str) -> bool:
    # Exit code 5 (no tests collected) counts as a failure: an empty tier is a defect.
    return _run([PY, "-m", "pytest", f"tests/{tier}", "-m", tier])


def main(argv: list[str]) -> int:
    wanted = argv or list(TIERS)
    unknown = [t for t in wanted if t not in TIERS]
    if unknown:
        print(f"unknown tier(s) {', '.join(unknown)}; choose from {', '.join(TIERS)}", file=sys.stderr)
        return 2

    timings: list[tuple[str, float, bool]] = []
    cluster = None
    started_cluster = False
    use_existing = os.environ.get("LORAFORGE_TEST_USE_EXISTING_CLUSTER") == "1"
    try:
        for tier in [t for t in TIERS if t in wanted]:
            if tier in CLUSTER_TIERS and cluster is None and not use_existing:
                from localcluster.build import BuildError, ensure_built
                from localcluster.cluster import ClusterError, LocalCluster

                cluster = LocalCluster()
                t0 = time.monotonic()
                try:
                    ensure_built()
                    timings.append(("(build cluster binaries)", time.monotonic() - t0, True))
                    if not cluster.status().running:
                        t0 = time.monotonic()
                        started_cluster = True
                        cluster.up()
                        timings.append(("(start local cluster)", time.monotonic() - t0, True))
                except (BuildError, ClusterError) as e:
                    print(f"\nlocal cluster: {e}", file=sys.stderr, flush=True)
                    timings.append(("(local cluster)", time.monotonic() - t0, False))
                    timings += [(t, 0.0, False) for t in wanted if t in CLUSTER_TIERS]
                    break
            print(f"\n===== tier: {tier} =====", flush=True)
            t0 = time.monotonic()
            ok = lint() if tier == "lint" else pytest_tier(tier)
            timings.append((tier, time.monotonic() - t0, ok))
    finally:
        if started_cluster and cluster is not None:
            cluster.down()

    print("\n===== test tiers =====")
    for name, seconds, ok in timings:
        print(f"  {name:<28} {seconds:8.1f}s  {'ok' if ok else 'FAILED'}")
    failed = [name for name, _, ok in timings if not ok]
    print(f"  {'total':<28} {sum(s for _, s, _ in timings):8.1f}s")
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
