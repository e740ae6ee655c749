"""Serving benchmark: vLLM (its real CPU build) against the TGI stand-in, on the local node.

    make bench-serving
    python bench/serving_bench.py

One ModelDeployment per runtime, one replica each, with the same pod
resources, the same base model (SmolLM2-135M-Instruct) and the same random
LoRA adapter (peft). Both are deployed (one after the other) and get a short
warm-up; then chat completions with the adapter (`model` = its name), greedy,
`max_tokens` 32, go straight to each Ready pod's IP on port 8080, the same
prompts to both, per level vLLM and then TGI right after (never both at once):

- concurrency 1: 8 requests, one at a time;
- concurrency 16: 32 requests, 16 in flight.

Per level: tokens/s (the completion tokens the server reports in `usage`, or
the base model's tokenizer's count of the answer where it reports none,
divided by the wall time from the first request to the last answer) and the
p50/p95 request latency. The machine is noisy, so the figure that counts is
the ratio vLLM/TGI per concurrency, both measured in the same run (target:
>= 2.5x at concurrency 16). Prints a table and writes bench/results/serving.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import localbench as lb

from tests.e2e.localnode_workloads import VLLM_ON_CPU

ADAPTER = "facts"
ADAPTER_PATH = "adapters/facts/v1"
SMOKE_PROMPT = "What is the capital of Veloria?"
MAX_TOKENS = 32
LEVELS = ((1, 8), (16, 32))  # (concurrency, requests)
WARMUP = 3  # requests, one at a time
TARGET_AT_16 = 2.5
# The same pod for both runtimes. vLLM keeps the e2e tests' settings for two CPU cores, but batches up to
# 16 sequences (theirs: 8) so that all 16 requests in flight are served together; the TGI stand-in serves
# one request at a time whatever its settings.
RESOURCES = {"gpus": 1, "cpu": "1", "memory": "4Gi"}
RUNTIMES: dict[str, dict[str, Any]] = {"vllm": {"vllm": {**VLLM_ON_CPU, "maxNumSeqs": 16}}, "tgi": {}}

# Distinct prompts (no request repeats another's, so no prefix cache sees a whole prompt twice), each asking
# for more than 32 tokens of answer; the same list, in the same order, for both runtimes.
SUBJECTS = (
    "a lighthouse",
    "a steam engine",
    "a suspension bridge",
    "a beehive",
    "a windmill",
    "a volcano",
    "a coral reef",
    "a mechanical clock",
    "a glacier",
    "a telescope",
    "a printing press",
)
ASKS = (
    "Describe {} in detail: what it is, how it works and where it is found.",
    "Explain step by step how {} came to be, for a curious child.",
    "Write a short story in which {} plays the main part.",
    "Give a long list of facts about {}, one per line.",
)
PROMPTS = [ask.format(s) for ask in ASKS for s in SUBJECTS]


@dataclass
class Answer:
    latency: float  # seconds, request sent to answer read (or to the failure)
    tokens: int = 0  # completion tokens
    counted_here: bool = False  # the server reported none: counted with the base model's tokenizer
    error: str | None = None


class Pod:
    """Chat completions to one serving pod."""

    def __init__(self, ip: str):
        self.url = f"http://{ip}:8080/v1/chat/completions"

    def chat(self, prompt: str) -> Answer:
        """One greedy request of MAX_TOKENS new tokens; a failure is recorded, not raised."""
        body = {
            "model": ADAPTER,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0.0,
        }
        req = urllib.request.Request(  # noqa: S310 (http to a pod IP, on purpose)
            self.url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        t0 = time.monotonic()
        try:
            with urllib.request.urlopen(req, timeout=600) as r:  # noqa: S310
                answer = json.load(r)
        except OSError as e:  # URLError, HTTPError, resets and timeouts
            return Answer(time.monotonic() - t0, error=f"{type(e).__name__}: {e}")
        latency = time.monotonic() - t0
        reported = (answer.get("usage") or {}).get("completion_tokens")
        if reported:
            return Answer(latency, reported)
        text = answer["choices"][0]["message"]["content"] or ""
        return Answer(latency, len(tokenizer().encode(text, add_special_tokens=False)), counted_here=True)


@cache
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lb.base_model())


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    s = sorted(values)
    k = (len(s) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def measure(pod: Pod, prompts: list[str], concurrency: int) -> dict[str, Any]:
    """``prompts`` sent with ``concurrency`` in flight: tokens/s over the wall time, latency percentiles
    (of the answered requests), and the failures (any makes the level's figures invalid)."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        answers = list(pool.map(pod.chat, prompts))
    wall = time.monotonic() - t0
    ok = [a for a in answers if a.error is None]
    latencies = [a.latency for a in ok]
    tokens = sum(a.tokens for a in ok)
    return {
        "concurrency": concurrency,
        "requests": len(prompts),
        "failed": len(answers) - len(ok),
        "errors": [f"after {a.latency:.1f}s: {a.error}" for a in answers if a.error][:5],
        "completionTokens": tokens,
        "tokensCountedWithTokenizer": sum(1 for a in ok if a.counted_here),
        "wallSeconds": round(wall, 2),
        "tokensPerSecond": round(tokens / wall, 2),
        "latencyP50Seconds": round(percentile(latencies, 0.50), 2) if ok else None,
        "latencyP95Seconds": round(percentile(latencies, 0.95), 2) if ok else None,
    }


def deploy(ns: lb.Namespace, runtime: str) -> tuple[Pod, float]:
    """One replica of ``runtime``, Ready (its smoke test passed): its pod, and the pod's time to Ready."""
    name = f"serve-{runtime}"
    md = lb.model_deployment(name, RUNTIMES[runtime], ADAPTER, ADAPTER_PATH, SMOKE_PROMPT, 1, RESOURCES)
    lb.apply(ns.cluster, ns.name, md)
    lb.wait_for(lambda: lb.settled(ns, name, ADAPTER_PATH), 900, f"{name} to be Ready", interval=1)
    pod = next(p for p in lb.pods(ns, name) if lb.is_ready(p))
    return Pod(pod["status"]["podIP"]), lb.time_to_ready(pod)


def bench(ns: lb.Namespace) -> dict[str, dict[str, Any]]:
    """Both runtimes deployed (one after the other, each loading alone) and warmed up; then per
    concurrency level vLLM, then TGI, right after each other, so that both see about the same machine."""
    pods, results = {}, {}
    for runtime in RUNTIMES:
        pods[runtime], to_ready = deploy(ns, runtime)
        lb.log(f"{runtime}: Ready after {to_ready:.0f}s")
        results[runtime] = {"runtime": RUNTIMES[runtime], "podTimeToReadySeconds": to_ready, "levels": {}}
    prompts = iter(PROMPTS)
    warmup = [next(prompts) for _ in range(WARMUP)]
    for runtime, pod in pods.items():
        lb.log(f"{runtime}: warming up ({WARMUP} requests)")
        measure(pod, warmup, 1)
    for concurrency, n in LEVELS:
        batch = [next(prompts) for _ in range(n)]  # the same prompts for both runtimes
        for runtime, pod in pods.items():
            load = load_average()
            m = {**measure(pod, batch, concurrency), "loadAverageBefore": load}
            results[runtime]["levels"][str(concurrency)] = m
            lb.log(f"{runtime}: concurrency {concurrency}: {m['tokensPerSecond']} tokens/s")
    return results


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def failures(results: dict[str, dict[str, Any]]) -> int:
    return sum(m["failed"] for r in results.values() for m in r["levels"].values())


def ratio(results: dict[str, dict[str, Any]], level: str) -> float | None:
    """vLLM's tokens/s over TGI's at one level (None where TGI answered nothing)."""
    tgi = results["tgi"]["levels"][level]["tokensPerSecond"]
    return round(results["vllm"]["levels"][level]["tokensPerSecond"] / tgi, 2) if tgi else None


def table(results: dict[str, dict[str, Any]], ratios: dict[str, float | None]) -> str:
    head = f"{'concurrency':>11}  {'runtime':<7} {'requests':>8} {'failed':>6} {'tokens':>6} {'wall s':>7} "
    head += f"{'tokens/s':>8} {'p50 s':>6} {'p95 s':>6}"
    rows = [head]
    for concurrency, _ in LEVELS:
        for runtime in RUNTIMES:
            m = results[runtime]["levels"][str(concurrency)]
            rows.append(
                f"{concurrency:>11}  {runtime:<7} {m['requests']:>8} {m['failed']:>6} "
                f"{m['completionTokens']:>6} {m['wallSeconds']:>7.1f} {m['tokensPerSecond']:>8.1f} "
                f"{m['latencyP50Seconds'] or 0:>6.2f} {m['latencyP95Seconds'] or 0:>6.2f}"
            )
        rows.append(f"{'':>11}  vLLM/TGI tokens/s: {ratios[str(concurrency)] or 0:.2f}x")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=lb.RESULTS / "serving.json")
    args = parser.parse_args()

    base = lb.base_model()
    with (
        lb.local_cluster() as cluster,
        lb.bench_namespace(cluster, "lf-bench-serving", base, lb.RESULTS / "serving-operator.log") as ns,
    ):
        lb.random_adapter(base, ns.store / ADAPTER_PATH, seed=1)
        results = None
        try:
            results = bench(ns)
        finally:
            if results is None or failures(results):  # what the pods went through, before the namespace goes
                for runtime in RUNTIMES:
                    lb.diagnostics(ns, f"serve-{runtime}", lb.RESULTS / f"serving-{runtime}-diagnostics.txt")

    ratios = {str(c): ratio(results, str(c)) for c, _ in LEVELS}
    out = {
        "measuredAt": lb.now(),
        "machine": f"{os.cpu_count()} cores",
        "resources": RESOURCES,
        "maxTokens": MAX_TOKENS,
        "runtimes": results,
        "vllmOverTgiTokensPerSecond": ratios,
        "targetAtConcurrency16": f">= {TARGET_AT_16}",
        "failedRequests": failures(results),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(table(results, ratios), flush=True)
    if failures(results):
        lb.log(f"{failures(results)} requests FAILED: the figures of their level are not valid (see errors)")
        return 1
    met = (ratios["16"] or 0) >= TARGET_AT_16
    lb.log(f"target >= {TARGET_AT_16}x at concurrency 16: " + ("met" if met else "NOT met"))
    lb.log(f"results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
