"""FineTuneJob operator benchmark on the local control plane.

    make bench
    python bench/finetunejob_bench.py [--jobs 200] [--idle-seconds 300] [--memory-jobs 1000]

1. Floor: a plain async client creates N ConfigMaps + N Jobs and patches N
   FineTuneJob statuses directly, as fast as this API server allows.
2. Operator: N FineTuneJobs are created at once; the time until every one has
   its Job and an Accepted condition is divided by the floor (target <= 2x).
3. Idle: with nothing changing, the operator's write requests over
   --idle-seconds, read from its own loraforge_api_writes_total (target 0).
4. Memory: the operator's peak RSS (VmHWM) with --memory-jobs FineTuneJobs present.

Times are only reported as ratios measured in the same run: the machines are
noisy. Results are printed and written to bench/results/finetunejob.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from kubernetes_asyncio import client, config

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator" / "src")]

from localcluster import storage  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from loraforge_operator import metrics  # noqa: E402
from loraforge_operator.finetunejob import builders  # noqa: E402
from loraforge_operator.finetunejob.model import FineTuneJobSpec  # noqa: E402
from loraforge_operator.settings import Settings  # noqa: E402

SETTINGS = Settings()

CONCURRENCY = 32  # in-flight requests of the plain client
SPEC = {"baseModel": {"path": "base/m"}, "dataset": {"path": "datasets/d.jsonl"}}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


async def _bounded(coros, limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def run(c):
        async with sem:
            await c

    await asyncio.gather(*(run(c) for c in coros))


def _ftj(name: str, suspend: bool = False) -> dict:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {**SPEC, "suspend": suspend},
    }


async def create_ftjs(api: client.CustomObjectsApi, ns: str, names: list[str], suspend: bool = False) -> None:
    await _bounded(
        api.create_namespaced_custom_object("loraforge.io", "v1alpha1", ns, "finetunejobs", _ftj(n, suspend))
        for n in names
    )


async def floor(ns: str, n: int, all_children: bool = False) -> float:
    """Seconds for a plain client to create the same ConfigMaps and Jobs the
    operator creates (built by the operator's own builders) and patch each
    status once: what this API server allows at best."""
    async with client.ApiClient() as api_client:
        core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)
        names = [f"floor-{i}" for i in range(n)]
        uids: dict[str, str] = {}

        async def create(name: str) -> None:
            body = await custom.create_namespaced_custom_object(
                "loraforge.io", "v1alpha1", ns, "finetunejobs", _ftj(name, suspend=True)
            )
            uids[name] = body["metadata"]["uid"]

        await _bounded(create(name) for name in names)
        spec = FineTuneJobSpec.model_validate(SPEC)
        status = {
            "status": {
                "phase": "Pending",
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z",
                    }
                ],
            }
        }

        rbac = client.RbacAuthorizationV1Api(api_client)

        async def one(name: str) -> None:
            owner = builders.Owner(name, ns, uids[name])
            await core.create_namespaced_config_map(ns, builders.config_map(owner, spec))
            if all_children:  # what the operator really creates before the Job
                sa, role, binding = builders.trainer_rbac(owner)
                await asyncio.gather(
                    core.create_namespaced_config_map(ns, builders.progress_map(owner)),
                    core.create_namespaced_service_account(ns, sa),
                    rbac.create_namespaced_role(ns, role),
                    rbac.create_namespaced_role_binding(ns, binding),
                )
            await batch.create_namespaced_job(ns, builders.job(owner, spec, SETTINGS))
            await custom.patch_namespaced_custom_object_status(
                "loraforge.io",
                "v1alpha1",
                ns,
                "finetunejobs",
                name,
                status,
                _content_type="application/merge-patch+json",
            )

        t0 = time.monotonic()
        await _bounded(one(name) for name in names)
        return time.monotonic() - t0


async def operator_throughput(ns: str, n: int) -> float:
    async with client.ApiClient() as api_client:
        custom = client.CustomObjectsApi(api_client)
        batch = client.BatchV1Api(api_client)
        names = [f"ftj-{i}" for i in range(n)]
        t0 = time.monotonic()
        await create_ftjs(custom, ns, names)
        while True:
            items = (
                await custom.list_namespaced_custom_object("loraforge.io", "v1alpha1", ns, "finetunejobs")
            )["items"]
            accepted = {
                o["metadata"]["name"]
                for o in items
                if any(
                    c["type"] == "Accepted" and c["status"] == "True"
                    for c in o.get("status", {}).get("conditions", [])
                )
            }
            jobs = {
                j.metadata.labels.get("loraforge.io/finetunejob")
                for j in (await batch.list_namespaced_job(ns)).items
            }
            done = [nm for nm in names if nm in accepted and nm in jobs]
            if len(done) == n:
                return time.monotonic() - t0
            if time.monotonic() - t0 > 900:
                raise RuntimeError(
                    f"only {len(done)}/{n} FineTuneJobs were accepted with a Job after 15 minutes"
                )
            await asyncio.sleep(0.5)


def _writes(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        return metrics.sum_samples(r.read().decode(), "loraforge_api_writes_total")


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def _kubectl(cluster: LocalCluster, *args: str, input: str | None = None) -> str:
    return cluster.kubectl(*args, input=input).stdout


def _fresh_namespace(cluster: LocalCluster, ns: str) -> None:
    cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=300s")
    volumes = storage.model_store(ns)
    cluster.kubectl("delete", "pv", volumes[0]["metadata"]["name"], "--ignore-not-found")
    _kubectl(cluster, "create", "namespace", ns)
    docs = {"apiVersion": "v1", "kind": "List", "items": volumes}
    _kubectl(cluster, "apply", "-f", "-", input=json.dumps(docs))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=300)
    parser.add_argument("--memory-jobs", type=int, default=1000)
    args = parser.parse_args()

    cluster = LocalCluster()
    started = not cluster.status().running
    if started:
        cluster.up()
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    _kubectl(cluster, "wait", "--for=condition=Established", "crd/finetunejobs.loraforge.io")
    asyncio.run(config.load_kube_config(config_file=str(cluster.kubeconfig)))
    results: dict[str, object] = {"jobs": args.jobs}
    op = None
    try:
        _fresh_namespace(cluster, "bench-floor")
        t_floor = asyncio.run(floor("bench-floor", args.jobs))
        _log(f"floor: plain client, {args.jobs} x (ConfigMap + Job + status patch): {t_floor:.1f}s")
        # Gone before the next run, so its pods do not load the cluster meanwhile.
        cluster.kubectl("delete", "namespace", "bench-floor", "--wait=true", "--timeout=300s")
        _fresh_namespace(cluster, "bench-floor")
        t_floor_all = asyncio.run(floor("bench-floor", args.jobs, all_children=True))
        _log(f"floor: plain client creating all {args.jobs} x 6 children + status patch: {t_floor_all:.1f}s")
        cluster.kubectl("delete", "namespace", "bench-floor", "--wait=true", "--timeout=300s")

        metrics_port = 18480
        env = {**os.environ, "LORAFORGE_METRICS_PORT": str(metrics_port)}
        log = open(REPO / "bench" / "results" / "operator.log", "wb")  # noqa: SIM115
        op = subprocess.Popen(
            [sys.executable, "-m", "loraforge_operator", "--log-format=plain", "--liveness="],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(3)
        _fresh_namespace(cluster, "bench-op")
        cpu0 = _cpu_seconds(op.pid)
        t_op = asyncio.run(operator_throughput("bench-op", args.jobs))
        cpu = _cpu_seconds(op.pid) - cpu0
        _log(f"operator: used {cpu:.1f} CPU-seconds ({100 * cpu / t_op:.0f}% of one core) meanwhile")
        ratio = t_op / t_floor
        _log(f"operator: {args.jobs} FineTuneJobs to Job + Accepted: {t_op:.1f}s = {ratio:.2f}x the floor")
        ratio_all = t_op / t_floor_all
        _log(f"operator: {ratio_all:.2f}x a plain client creating the same six children")
        results.update(
            floor_seconds=round(t_floor, 2),
            floor_all_children_seconds=round(t_floor_all, 2),
            operator_seconds=round(t_op, 2),
            ratio=round(ratio, 2),
            ratio_same_children=round(ratio_all, 2),
            operator_cpu_seconds=round(cpu, 1),
        )

        # Let every training "finish" (kwok completes the pods; with no trainer
        # result they end Failed/NoResultReported): from then on nothing changes.
        asyncio.run(wait_phase("bench-op", args.jobs, "Failed"))
        time.sleep(5)
        before = _writes(metrics_port)
        _log(f"idle: counting the operator's writes for {args.idle_seconds:.0f}s")
        time.sleep(args.idle_seconds)
        idle = _writes(metrics_port) - before
        _log(f"idle: {idle:.0f} write requests in {args.idle_seconds:.0f}s")
        results.update(idle_seconds=args.idle_seconds, idle_writes=idle)

        _fresh_namespace(cluster, "bench-mem")
        asyncio.run(create_suspended("bench-mem", args.memory_jobs))
        _log(f"memory: waiting for {args.memory_jobs} FineTuneJobs to be reconciled")
        asyncio.run(wait_phase("bench-mem", args.memory_jobs, "Suspended"))
        peak = _peak_rss_mib(op.pid)
        present = args.memory_jobs + args.jobs
        _log(f"memory: operator peak RSS {peak:.0f} MiB with {present} FineTuneJobs present")
        results.update(memory_jobs=present, peak_rss_mib=round(peak))
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=30)
        for ns in ("bench-op", "bench-mem", "bench-floor"):
            cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        if started:
            cluster.down()
    out = REPO / "bench" / "results" / "finetunejob.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"results: {json.dumps(results)}")
    return 0


async def create_suspended(ns: str, n: int) -> None:
    async with client.ApiClient() as api_client:
        # Suspended: the memory measure is about the operator's state, not kwok's pods.
        await create_ftjs(
            client.CustomObjectsApi(api_client), ns, [f"mem-{i}" for i in range(n)], suspend=True
        )


async def wait_phase(ns: str, n: int, phase: str) -> None:
    async with client.ApiClient() as api_client:
        custom = client.CustomObjectsApi(api_client)
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            items = (
                await custom.list_namespaced_custom_object("loraforge.io", "v1alpha1", ns, "finetunejobs")
            )["items"]
            if sum(1 for o in items if o.get("status", {}).get("phase") == phase) == n:
                return
            await asyncio.sleep(2)
        raise RuntimeError(f"FineTuneJobs in {ns} did not all reach {phase} in 30 minutes")


if __name__ == "__main__":
    sys.exit(main())
