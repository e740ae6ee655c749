"""Where the local cluster keeps things.

Binaries are cached outside the repository (they outlive checkouts and are
keyed by version); the running cluster's state, including the kubeconfig,
lives in the checkout's ``.cluster/`` so each checkout has its own cluster.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parents[1]
GOWRAP_DIR = PACKAGE_DIR / "gowrap"
VERSIONS_FILE = PACKAGE_DIR / "versions.env"
MANIFESTS_DIR = PACKAGE_DIR / "manifests"


def cache_root() -> Path:
    explicit = os.environ.get("LORAFORGE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "loraforge"


def binaries_root() -> Path:
    return cache_root() / "bin"


def build_root() -> Path:
    return cache_root() / "build"


def state_dir() -> Path:
    explicit = os.environ.get("LORAFORGE_CLUSTER_DIR")
    return Path(explicit) if explicit else REPO_ROOT / ".cluster"
