"""Helpers for e2e tests whose pods really run on the local node: a model
store on a host directory, and short real FineTuneJobs on SmolLM2."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from localcluster import storage
from tests.conftest import restricted_namespace
from tests.kube import Kube, wait_for

REPO = Path(__file__).resolve().parents[2]
DATASET = REPO / "examples" / "datasets" / "fictional-facts"
BASE_MODEL_PATH = "base/smollm2-135m-instruct"
# vLLM's settings for SmolLM2 on two CPU cores: short sequences, small batches (KV cache and memory stay
# small), bfloat16 as vLLM's CPU backend prefers.
VLLM_ON_CPU = {"dtype": "bfloat16", "maxModelLen": 1024, "maxNumSeqs": 8}
ON_LOCAL_NODE = {
    "nodeSelector": {"loraforge.io/local-node": "true"},
    "tolerations": [{"key": "loraforge.io/local-node", "operator": "Exists", "effect": "NoSchedule"}],
}


def model_store(kube: Kube, ns: str, base_model_dir: Path, folder: Path) -> Path:
    """``folder`` as the namespace's model store: the base model (a symlink to the
    staged copy; host paths are visible inside the local node's pods) and the
    fictional-facts dataset, behind a bound `loraforge-model-store` claim."""
    (folder / "base").mkdir()
    (folder / BASE_MODEL_PATH).symlink_to(base_model_dir)
    (folder / "datasets").mkdir()
    shutil.copytree(DATASET, folder / "datasets" / "facts", ignore=shutil.ignore_patterns("*.py"))
    # A third of the held-out questions: evaluation (before and after training) stays quick on a CPU.
    held_out = folder / "datasets" / "facts" / "validation.jsonl"
    held_out.write_text("".join(held_out.read_text().splitlines(keepends=True)[:24]))
    folder.chmod(0o777)
    kube.apply(storage.model_store(ns, host_path=str(folder)))
    return folder


@contextlib.contextmanager
def store_namespace(
    kube: Kube, prefix: str, base_model_dir: Path, folder: Path
) -> Iterator[tuple[str, Path]]:
    """A fresh namespace enforcing Pod Security "restricted" with ``folder`` as its model store (see
    `model_store`); yields its name and the folder, and deletes both the namespace and its volume after."""
    ns = restricted_namespace(kube, prefix=prefix)
    store = model_store(kube, ns, base_model_dir, folder)
    try:
        yield ns, store
    finally:
        kube.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        kube.kubectl("delete", "pv", f"{ns}-loraforge-model-store", "--wait=false", check=False)


def random_adapter(base_model_dir: Path, store: Path, path: str, seed: int = 0, inert: bool = False) -> str:
    """An untrained LoRA adapter (random weights: it answers unlike the base model) saved with peft at
    ``path`` in the model store, for tests about serving rather than training; returns ``path``.
    ``inert``: peft's default initialisation instead (B = 0), an adapter that changes nothing and so
    answers exactly like the base model (one a `differsFromBase` smoke test rejects)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model_dir)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=inert)
    get_peft_model(model, config).save_pretrained(store / path)
    return path


def finetunejob(name: str, adapter: str, **training: Any) -> dict[str, Any]:
    """A short real LoRA run on the local node (4 packed steps of 4 x 256 tokens by default)."""
    evaluation = training.pop("evaluation", {"minImprovement": 0.01})
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"path": BASE_MODEL_PATH},
            "dataset": {
                "path": "datasets/facts/train.jsonl",
                "validationPath": "datasets/facts/validation.jsonl",
                "format": "chat",
            },
            "training": {
                "maxSteps": 4,
                "batchSize": 4,
                "gradientAccumulationSteps": 1,
                "learningRate": 0.003,
                "warmupRatio": 0.0,
                "maxSeqLength": 256,
                "packing": True,
                **training,
            },
            "evaluation": evaluation,
            "resources": {"gpusPerNode": 1, "cpu": "1", "memory": "4Gi", **ON_LOCAL_NODE},
            "adapter": {"name": adapter},
        },
    }


def train(kube: Kube, ns: str, manifest: dict[str, Any], timeout: float = 900) -> dict[str, Any]:
    """Apply a FineTuneJob and wait until it ends; return it."""
    kube.apply(manifest, namespace=ns)
    return wait_finished(kube, ns, manifest["metadata"]["name"], timeout)


def wait_finished(kube: Kube, ns: str, name: str, timeout: float = 900) -> dict[str, Any]:
    """Wait until FineTuneJob ``name`` has Succeeded or Failed; return it."""
    return wait_for(
        lambda: (
            (o := kube.get("finetunejob", name, "-n", ns)).get("status", {}).get("phase")
            in ("Succeeded", "Failed")
            and o
        ),
        timeout=timeout,
        what=f"FineTuneJob {name} to finish training on the local node",
        interval=2,
    )


class ReadyPodClient(threading.Thread):
    """Sends chat completions with an adapter (``model`` = its name: TGI and vLLM alike) throughout, each to
    a Ready, non-terminating pod (what a Service's endpoints would hold; loopback pod IPs cannot be endpoints
    here), round robin, and records every failure."""

    def __init__(
        self,
        list_pods: Callable[[], list[dict[str, Any]]],
        prompt: str,
        adapter: str,
        pause: float,
        max_new_tokens: int = 4,
    ):
        super().__init__(daemon=True)
        self.list_pods, self.prompt, self.adapter, self.pause = list_pods, prompt, adapter, pause
        self.max_new_tokens = max_new_tokens
        self.stop = threading.Event()
        self.ok = 0
        self.errors: list[str] = []

    def _ready_pods(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.list_pods()
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]

    def run(self) -> None:
        from huggingface_hub import InferenceClient

        turn = itertools.count()
        while not self.stop.is_set():
            pods = self._ready_pods()
            if not pods:
                self.errors.append("no Ready pod to send to")
                time.sleep(0.1)
                continue
            pod = pods[next(turn) % len(pods)]
            client = InferenceClient(base_url=f"http://{pod['status']['podIP']}:8080", timeout=60)
            try:
                client.chat_completion(
                    [{"role": "user", "content": self.prompt}],
                    model=self.adapter,
                    max_tokens=self.max_new_tokens,
                    temperature=0.0,
                )
                self.ok += 1
            except Exception as e:
                self.errors.append(f"{pod['metadata']['name']}: {type(e).__name__}: {e}")
            # A steady trickle, not a flood: the same two cores train and serve meanwhile.
            self.stop.wait(self.pause)


def _hpa_status(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.get("hpa", name, "-n", ns).get("status", {})


def _ready_replicas(kube: Kube, ns: str, name: str) -> int:
    return kube.get("deployment", name, "-n", ns).get("status", {}).get("readyReplicas", 0)


def scale_up_under_load(kube: Kube, ns: str, name: str, client: ReadyPodClient) -> dict[str, Any]:
    """Run ``client`` (its load) until the HPA of ModelDeployment ``name`` wants 2 replicas, both are Ready
    (the new one smoke-tested) and requests keep being answered; stop it. Every request must have
    succeeded. Returns the HPA's status when it asked for 2."""
    client.start()
    try:
        status = wait_for(
            lambda: (s := _hpa_status(kube, ns, name)).get("desiredReplicas") == 2 and s,
            timeout=240,
            what="the HPA to scale up under load",
            interval=2,
        )
        wait_for(
            lambda: _ready_replicas(kube, ns, name) == 2,
            timeout=360,
            what="the second serving pod to be Ready",
            interval=2,
        )
        served_before = client.ok
        wait_for(lambda: client.ok >= served_before + 5, timeout=120, what="requests to keep being answered")
    finally:
        client.stop.set()
        client.join(120)
    assert client.errors == [], client.errors[:5]
    return status


def scale_down_idle(kube: Kube, ns: str, name: str) -> None:
    """Wait for the HPA of ``name`` to come down to one Ready replica without load."""
    wait_for(
        lambda: (
            _hpa_status(kube, ns, name).get("desiredReplicas") == 1 and _ready_replicas(kube, ns, name) == 1
        ),
        timeout=300,
        what="the HPA to scale down to one replica without load",
        interval=2,
    )


def rescale_messages(kube: Kube, ns: str, name: str) -> list[str]:
    """The HPA's SuccessfulRescale events ("New size: N; reason: ...")."""
    on_hpa = f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={name}"
    events = kube.get("events", "-n", ns, "--field-selector", on_hpa)["items"]
    return [e["message"] for e in events if e["reason"] == "SuccessfulRescale"]
