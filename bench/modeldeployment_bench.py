"""ModelDeployment rollout benchmark on the local control plane with the local node, per serving runtime.

    make bench-rollout
    python bench/modeldeployment_bench.py [--runtime all|vllm|tgi] [--replicas 4]

For each runtime (`all`: vLLM, then TGI, one after the other, each with its
own namespace, operator and ModelDeployment), a ModelDeployment of SmolLM2-135M
with one adapter, `--replicas` pods on the local node (vLLM's real CPU build,
or the TGI stand-in), is rolled from adapter revision v1 to v2 while

- a sampler reads the Deployment's Ready replicas from the API every 100 ms
  (target: never below the desired count), and
- a client sends chat completions throughout, each to a Ready,
  non-terminating pod (what a Service's endpoints hold; target: no failed
  request).

The rollout's time (from the spec change naming v2 to `rollout.phase:
Complete`) is reported as a multiple of one pod's time to Ready (creation to
the Ready condition, the median of the first rollout's pods), measured in the
same run for the same runtime: the machines are noisy. The two revisions are
random LoRA adapters (peft, non-zero weights), so no training is needed and
both differ from the base model; the rollout path is the same one a
FineTuneJob's publication takes. Results go to bench/results/modeldeployment.json,
keyed by runtime (a run of one runtime keeps the other's last result).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import localbench as lb

from tests.e2e.localnode_workloads import ReadyPodClient

PROMPT = "What is the capital of Veloria?"
NAME = "assistant"
# The same for both runtimes; the local node enforces none of it, the scheduler counts the GPUs.
RESOURCES = {"gpus": 1, "cpu": "500m", "memory": "4Gi"}
ORDER = ("vllm", "tgi")  # `all`


class Sampler(threading.Thread):
    """The Deployment's Ready replicas every 100 ms, from the API."""

    def __init__(self, ns: lb.Namespace):
        super().__init__(daemon=True)
        self.ns = ns
        self.stop = threading.Event()
        self.samples: list[tuple[float, int, int]] = []  # (monotonic time, ready, desired)

    def run(self) -> None:
        while not self.stop.wait(0.1):
            dep = lb.get(self.ns.cluster, "deployment", NAME, "-n", self.ns.name)
            ready = dep.get("status", {}).get("readyReplicas", 0)
            self.samples.append((time.monotonic(), ready, dep["spec"].get("replicas", 0)))


def serve_v1(ns: lb.Namespace, runtime: str, replicas: int) -> None:
    lb.log(f"{runtime}: {replicas} replicas serving v1")
    md = lb.model_deployment(
        NAME,
        lb.RUNTIMES[runtime],
        "facts",
        "adapters/facts/v1",
        PROMPT,
        replicas,
        RESOURCES,
        rollout={"maxSurge": 1, "progressDeadlineSeconds": 900},
    )
    lb.apply(ns.cluster, ns.name, md)
    lb.wait_for(lambda: lb.settled(ns, NAME, "adapters/facts/v1"), 1200, f"{runtime}: v1 on every replica")


def pod_time_to_ready(ns: lb.Namespace) -> tuple[float, list[float]]:
    """One pod's time to Ready: the median over the pods of the first rollout (which loaded together)."""
    times = sorted(lb.time_to_ready(p) for p in lb.pods(ns, NAME))
    return statistics.median(times), times


def roll_to_v2(ns: lb.Namespace) -> dict[str, Any]:
    """Roll v1 -> v2 with the sampler and the client running throughout; what they saw during the rollout."""
    sampler = Sampler(ns)
    client = ReadyPodClient(lambda: lb.pods(ns, NAME), PROMPT, "facts", pause=0.2)
    sampler.start()
    client.start()
    try:
        time.sleep(3)
        t0 = time.monotonic()
        patch = {"spec": {"adapters": [{"name": "facts", "from": {"path": "adapters/facts/v2"}}]}}
        lb.kubectl(ns.cluster, "patch", "md", NAME, "-n", ns.name, "--type=merge", "-p", json.dumps(patch))
        md = lb.wait_for(lambda: lb.settled(ns, NAME, "adapters/facts/v2"), 1800, "v2 on every replica")
        seconds = time.monotonic() - t0
        time.sleep(3)
    finally:
        sampler.stop.set()
        client.stop.set()
        sampler.join(10)
        client.join(120)
    during = [s for s in sampler.samples if t0 <= s[0] <= t0 + seconds]
    return {
        "rolloutSeconds": round(seconds, 1),
        "readySamples": len(during),
        "minReadyReplicasDuringRollout": min(r for _, r, _ in during),
        "samplesBelowDesired": sum(1 for _, r, d in during if r < d),
        "requestsOk": client.ok,
        "requestsFailed": len(client.errors),
        "firstErrors": client.errors[:5],
        "rollout": md["status"]["rollout"],
    }


def bench_runtime(cluster: lb.LocalCluster, runtime: str, replicas: int, base: Path) -> dict[str, Any]:
    """Every measure for one runtime, in a namespace of its own."""
    operator_log = lb.RESULTS / f"modeldeployment-{runtime}-operator.log"
    with lb.bench_namespace(cluster, f"lf-bench-md-{runtime}", base, operator_log) as ns:
        for rev, seed in (("v1", 1), ("v2", 2)):
            lb.random_adapter(base, ns.store / "adapters" / "facts" / rev, seed)
        try:
            serve_v1(ns, runtime, replicas)
            pod_ready, times = pod_time_to_ready(ns)
            lb.log(f"{runtime}: one pod's time to Ready (median of {times}): {pod_ready:.0f}s; rolling to v2")
            rollout = roll_to_v2(ns)
        except TimeoutError:
            lb.diagnostics(ns, NAME, lb.RESULTS / f"modeldeployment-{runtime}-diagnostics.txt")
            raise
    return {
        "measuredAt": lb.now(),
        "machine": f"{os.cpu_count()} cores",
        "replicas": replicas,
        "maxSurge": 1,
        "resources": RESOURCES,
        "runtime": lb.RUNTIMES[runtime],
        "podTimeToReadySeconds": round(pod_ready, 1),
        "podTimesToReadySeconds": times,
        "rolloutOverPodReady": round(rollout["rolloutSeconds"] / pod_ready, 2),
        **rollout,
    }


def write_result(path: Path, runtime: str, result: dict[str, Any]) -> None:
    """``result`` under ``runtime`` in the JSON at ``path``; the other runtime's last result stays."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    if not isinstance(data, dict) or not set(data) <= set(lb.RUNTIMES):
        data = {}  # the layout before runtimes: one unkeyed result
    data[runtime] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(data.items())), indent=2) + "\n")


def zero_downtime(result: dict[str, Any]) -> bool:
    return result["samplesBelowDesired"] == 0 and result["requestsFailed"] == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runtime", choices=("all", *ORDER), default="all")
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--out", type=Path, default=lb.RESULTS / "modeldeployment.json")
    args = parser.parse_args()
    runtimes = ORDER if args.runtime == "all" else (args.runtime,)

    base = lb.base_model()
    ok = True
    with lb.local_cluster() as cluster:
        for runtime in runtimes:  # one after the other, never together: they would share the two cores
            try:
                result = bench_runtime(cluster, runtime, args.replicas, base)
            except TimeoutError as e:
                lb.log(f"{runtime}: FAILED: {e}")
                ok = False
                continue
            write_result(args.out, runtime, result)
            lb.log(f"{runtime}: " + json.dumps({k: v for k, v in result.items() if k != "rollout"}, indent=1))
            lb.log(f"{runtime}: zero downtime: " + ("yes" if zero_downtime(result) else "NO"))
            ok = ok and zero_downtime(result)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
