"""FineTuneJob operator benchmark on the local control plane.

    make bench
    python bench/finetunejob_bench.py [--jobs 200] [--idle-seconds 300] [--memory-jobs 1000]

1. Floors: a plain async client (the operator's own, loraforge_operator.kube)
   creates N ConfigMaps + N Jobs (or all six children the operator creates)
   and patches N FineTuneJob statuses directly, as fast as this API server
   allows; with the N FineTuneJob creations inside the timed window or not,
   the children created or server-side applied (FLOORS; like for like: the
   same requests as the benchmark client and the operator together).
2. Operator: N FineTuneJobs are created at once; the time until every one has
   its Job and an Accepted condition (seen through watches) is divided by each
   floor (targets: 1.2x the like-for-like floor, 2x the three-write floor).
3. Idle: with nothing changing, the operator's write requests over
   --idle-seconds, read from its own loraforge_api_writes_total (target 0).
4. Memory: the operator's peak RSS (VmHWM) with --memory-jobs FineTuneJobs present.
5. Restart: the operator is restarted with everything above still present
   (1,200 FineTuneJobs and their children) and --unrelated ConfigMaps that
   are not loraforge's; N FineTuneJobs are created 3 s after it starts, and
   the time to Job + Accepted is divided by step 2's (kopf's start-up
   barrier, and what its watches see of objects that are not its own).

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
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "dev"), str(REPO / "operator" / "src")]

from localcluster import storage  # noqa: E402
from localcluster.cluster import LocalCluster  # noqa: E402
from loraforge_operator import api, metrics  # noqa: E402
from loraforge_operator.finetunejob import builders  # noqa: E402
from loraforge_operator.finetunejob.model import FineTuneJobSpec  # noqa: E402
from loraforge_operator.kube import Kube, _path  # noqa: E402
from loraforge_operator.kube import login as kube_login  # noqa: E402
from loraforge_operator.settings import Settings  # noqa: E402

SETTINGS = Settings()

CONCURRENCY = 32  # in-flight requests of the plain client
# (key, all six children?, FineTuneJob creations in the timed window?, server-side apply?, what it is)
FLOORS = (
    ("floor", False, False, False, "ConfigMap + Job + status patch"),
    ("floor_all_children", True, False, False, "all six children + status patch"),
    ("floor_with_creates", False, True, False, "FineTuneJob create + ConfigMap + Job + status patch"),
    ("floor_all_with_creates", True, True, False, "FineTuneJob create + all six children + status patch"),
    (
        "floor_like_for_like",
        True,
        True,
        True,
        "FineTuneJob create + all six children server-side applied + status patch",
    ),
)
SPEC = {"baseModel": {"path": "base/m"}, "dataset": {"path": "datasets/d.jsonl"}}


def _log(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


async def _bounded(coros, limit: int = CONCURRENCY) -> None:
    sem = asyncio.Semaphore(limit)

    async def run(c):
        async with sem:
            await c

    await asyncio.gather(*(run(c) for c in coros))


def _ftj(ns: str, name: str, suspend: bool = False) -> dict:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {**SPEC, "suspend": suspend},
    }


def _client() -> Kube:
    return Kube(kube_login(), "loraforge-bench")


async def create_ftjs(kube: Kube, ns: str, names: list[str], suspend: bool = False) -> None:
    await _bounded(kube.create(_ftj(ns, n, suspend)) for n in names)


async def list_ftjs(kube: Kube, ns: str) -> list[dict]:
    return await kube.list_items("loraforge.io/v1alpha1", "FineTuneJob", ns)


async def floor(
    ns: str, n: int, all_children: bool = False, with_creates: bool = False, apply: bool = False
) -> float:
    """Seconds for a plain client to create the same children the operator
    creates (built by the operator's own builders) and patch each status once:
    what this API server allows at best.

    ``all_children``: the ConfigMap, Job and the four objects the operator
    creates beside them (progress ConfigMap, ServiceAccount, Role, RoleBinding);
    otherwise the ConfigMap and the Job only (the three-write floor).

    ``with_creates``: the timed window also holds the N FineTuneJob creations,
    sent as the operator's measure sends them (32 in flight) while 32 other
    tasks write each one's children as soon as it exists: the same requests, in
    the same order, at the same concurrency as bench client plus operator
    workers, minus the operator. Without it the FineTuneJobs exist before the
    clock starts (the figures reported before 2026-12-02).

    ``apply``: the children are written as the operator writes them, with
    server-side apply (which costs the API server more than a create);
    otherwise created."""
    async with _client() as kube:
        names = [f"floor-{i}" for i in range(n)]
        spec = FineTuneJobSpec.model_validate(SPEC)
        status = {
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
        created: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

        async def create(name: str) -> None:
            body = await kube.create(_ftj(ns, name, suspend=True))
            created.put_nowait((name, body["metadata"]["uid"]))

        async def children(name: str, uid: str) -> None:
            owner = builders.Owner(name, ns, uid)
            write = kube.apply if apply else kube.create
            await write(builders.config_map(owner, spec))
            if all_children:  # what the operator really creates before the Job
                await asyncio.gather(
                    *(write(m) for m in (builders.progress_map(owner), *builders.trainer_rbac(owner)))
                )
            await write(builders.job(owner, spec, SETTINGS))
            await kube.patch_status("loraforge.io/v1alpha1", "FineTuneJob", ns, name, status)

        async def writer() -> None:
            while True:
                name, uid = await created.get()
                try:
                    await children(name, uid)
                finally:
                    created.task_done()

        if not with_creates:
            await _bounded(create(name) for name in names)
        t0 = time.monotonic()
        writers = [asyncio.create_task(writer()) for _ in range(CONCURRENCY)]

        async def all_written() -> None:
            if with_creates:
                await _bounded(create(name) for name in names)
            await created.join()

        finished = asyncio.create_task(all_written())
        try:
            # A writer only ends by failing: its error is the run's.
            await asyncio.wait([finished, *writers], return_when=asyncio.FIRST_COMPLETED)
            for task in (finished, *writers):
                if task.done() and task.exception() is not None:
                    raise task.exception()
        finally:
            for task in (finished, *writers):
                task.cancel()
            await asyncio.gather(finished, *writers, return_exceptions=True)
        return time.monotonic() - t0


def _accepted(ftj: dict) -> bool:
    conditions = (ftj.get("status") or {}).get("conditions", [])
    return any(c["type"] == "Accepted" and c["status"] == "True" for c in conditions)


async def _watch(
    kube: Kube, api_version: str, kind: str, ns: str, seen: Callable[[str, dict], bool], opened: asyncio.Event
) -> None:
    """Watch ``kind`` in ``ns`` from now on (``opened`` is set once the stream is open);
    ``seen(type, object)`` on each event, until it returns True."""
    path = _path(api_version, kind, ns)
    start = (await kube._call("GET", path, query=[("limit", "1")]))["metadata"]["resourceVersion"]
    query = {"watch": "1", "resourceVersion": start, "timeoutSeconds": "900"}
    # The bench's client has no watch of its own (kopf watches for the operator): the same session, streamed.
    async with kube._open().get(kube.server + path, params=query, timeout=None) as r:
        r.raise_for_status()
        opened.set()
        async for line in r.content:
            if not line.strip():
                continue
            event = json.loads(line)
            if event["type"] == "ERROR":
                raise RuntimeError(f"watch of {kind} in {ns} failed: {event['object'].get('message')}")
            if seen(event["type"], event["object"]):
                return


async def operator_throughput(ns: str, n: int) -> float:
    """Seconds from the first FineTuneJob creation until every one has its Job and an Accepted
    condition, as seen by two watches opened before the clock starts. (Until 2026-12-03 this
    polled lists of FineTuneJobs and Jobs every 0.5 s: each list of 200 Jobs cost the API server
    as much as the operator's own requests, and the result waited for the next poll.)"""
    async with _client() as kube:
        names = [f"ftj-{i}" for i in range(n)]
        accepted: set[str] = set()
        jobs: set[str] = set()
        done = asyncio.Event()

        def seen(into: set[str], name: str | None) -> bool:
            if name is not None:
                into.add(name)
            if len(accepted) == n and len(jobs) == n:
                done.set()
            return done.is_set()

        def ftj_seen(_type: str, ftj: dict) -> bool:
            return seen(accepted, ftj["metadata"]["name"] if _accepted(ftj) else None)

        def job_seen(_type: str, job: dict) -> bool:
            return seen(jobs, (job["metadata"].get("labels") or {}).get("loraforge.io/finetunejob"))

        opened = [asyncio.Event(), asyncio.Event()]
        watches = [
            asyncio.create_task(_watch(kube, api.API_VERSION, "FineTuneJob", ns, ftj_seen, opened[0])),
            asyncio.create_task(_watch(kube, "batch/v1", "Job", ns, job_seen, opened[1])),
        ]
        finished = asyncio.create_task(done.wait())
        try:
            await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 30)
            t0 = time.monotonic()
            await create_ftjs(kube, ns, names)
            await asyncio.wait([finished, *watches], timeout=900, return_when=asyncio.FIRST_COMPLETED)
            if not done.is_set():
                for w in watches:
                    if w.done() and w.exception() is not None:
                        raise w.exception()
                raise RuntimeError(
                    f"after 15 minutes, {len(accepted)}/{n} FineTuneJobs were accepted "
                    f"and {len(jobs)}/{n} had a Job"
                )
            return time.monotonic() - t0
        finally:
            for task in (finished, *watches):
                task.cancel()
            await asyncio.gather(finished, *watches, return_exceptions=True)


def _writes(metrics_port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as r:
        return metrics.sum_samples(r.read().decode(), "loraforge_api_writes_total")


def _cpu_seconds(pid: int) -> float:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# The local control plane's processes (their names as /proc shows them, cut to 15 characters).
CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller", "kube-scheduler", "kwok")


def _control_plane_cpu_seconds() -> float:
    """CPU the control plane has used so far: on a machine of few cores that it shares with the
    operator, the time of a burst follows the CPU the whole cluster spends on it."""
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            stat = (proc / "stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1 : stat.rindex(")")] in CONTROL_PLANE:
            total += _cpu_seconds(int(proc.name))
    return total


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
    parser.add_argument("--unrelated", type=int, default=2000, help="step 5's ConfigMaps; 0 skips step 5")
    args = parser.parse_args()

    cluster = LocalCluster()
    started = not cluster.status().running
    if started:
        cluster.up()
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    _kubectl(cluster, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    _kubectl(cluster, "wait", "--for=condition=Established", "crd/finetunejobs.loraforge.io")
    results: dict[str, object] = {"jobs": args.jobs}
    op = None
    try:
        floors: dict[str, float] = {}
        for key, all_children, with_creates, apply, what in FLOORS:
            _fresh_namespace(cluster, "bench-floor")
            plane0 = _control_plane_cpu_seconds()
            floors[key] = asyncio.run(floor("bench-floor", args.jobs, all_children, with_creates, apply))
            plane = _control_plane_cpu_seconds() - plane0
            _log(f"floor: plain client, {args.jobs} x ({what}): {floors[key]:.1f}s")
            if key == "floor_like_for_like":
                _log(f"floor: the control plane used {plane:.1f} CPU-seconds meanwhile")
                results["floor_like_for_like_control_plane_cpu_seconds"] = round(plane, 1)
            # Gone before the next run, so its pods do not load the cluster meanwhile.
            cluster.kubectl("delete", "namespace", "bench-floor", "--wait=true", "--timeout=300s")

        metrics_port = 18480
        op = _start_operator(metrics_port, "operator.log")
        _fresh_namespace(cluster, "bench-op")
        t_op, cpu, plane = _timed_burst(op, "bench-op", args.jobs)
        _log(f"operator: used {cpu:.1f} CPU-seconds ({100 * cpu / t_op:.0f}% of one core) meanwhile")
        _log(f"operator: the control plane used {plane:.1f} CPU-seconds meanwhile")
        results["operator_control_plane_cpu_seconds"] = round(plane, 1)
        results["operator_seconds"] = round(t_op, 2)
        for key, *_, what in FLOORS:
            ratio = t_op / floors[key]
            _log(f"operator: {args.jobs} to Job + Accepted in {t_op:.1f}s, {ratio:.2f}x the floor of {what}")
            results[f"{key}_seconds"] = round(floors[key], 2)
            results[f"ratio_to_{key}"] = round(ratio, 2)
        results["operator_cpu_seconds"] = round(cpu, 1)

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

        if args.unrelated:
            op.terminate()
            op.wait(timeout=30)
            _fresh_namespace(cluster, "bench-unrelated")
            asyncio.run(create_unrelated("bench-unrelated", args.unrelated))
            op = _start_operator(metrics_port, "unrelated-operator.log")
            _fresh_namespace(cluster, "bench-start")
            t_start, cpu, _ = _timed_burst(op, "bench-start", args.jobs)
            ratio = t_start / t_op
            _log(
                f"restart with {present} FineTuneJobs and {args.unrelated} unrelated ConfigMaps: {args.jobs} "
                f"to Job + Accepted in {t_start:.1f}s, {ratio:.2f}x step 2's; the operator used {cpu:.1f} "
                "CPU-seconds"
            )
            results.update(
                restart_unrelated_objects=args.unrelated,
                restart_seconds=round(t_start, 2),
                ratio_restart_to_quiet=round(ratio, 2),
                restart_cpu_seconds=round(cpu, 1),
            )
    finally:
        if op is not None:
            op.terminate()
            op.wait(timeout=30)
        namespaces = ("bench-op", "bench-mem", "bench-floor", "bench-unrelated", "bench-start")
        for ns in namespaces:
            cluster.kubectl("delete", "namespace", ns, "--ignore-not-found", "--wait=false", check=False)
        if started:
            cluster.down()
        else:
            # The cluster stays up: a run started meanwhile would compete with the garbage collector
            # removing 1,200 FineTuneJobs and their children (a 2.15x against 1.35-1.69x quiet).
            _log("waiting for the benchmark's namespaces to be gone")
            gone = [f"namespace/{ns}" for ns in namespaces]
            cluster.kubectl("wait", "--for=delete", *gone, "--timeout=600s", check=False)
    out = REPO / "bench" / "results" / "finetunejob.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"results: {json.dumps(results)}")
    return 0


def _timed_burst(op: subprocess.Popen, ns: str, n: int) -> tuple[float, float, float]:
    """Step 2's measure: seconds for n FineTuneJobs to Job + Accepted, and the CPU-seconds the
    operator and the control plane used meanwhile."""
    cpu0, plane0 = _cpu_seconds(op.pid), _control_plane_cpu_seconds()
    seconds = asyncio.run(operator_throughput(ns, n))
    return seconds, _cpu_seconds(op.pid) - cpu0, _control_plane_cpu_seconds() - plane0


def _start_operator(metrics_port: int, log_name: str) -> subprocess.Popen:
    env = {**os.environ, "LORAFORGE_METRICS_PORT": str(metrics_port)}
    log = open(REPO / "bench" / "results" / log_name, "wb")  # noqa: SIM115
    op = subprocess.Popen(
        [sys.executable, "-m", "loraforge_operator", "--log-format=plain", "--liveness="],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    time.sleep(3)
    return op


async def create_unrelated(ns: str, n: int) -> None:
    """ConfigMaps of another application: what a shared cluster holds, none of it loraforge's."""
    async with _client() as kube:
        await _bounded(
            kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"other-{i}", "namespace": ns, "labels": {"app": "other"}},
                    "data": {"settings": "x" * 500},
                }
            )
            for i in range(n)
        )


async def create_suspended(ns: str, n: int) -> None:
    async with _client() as kube:
        # Suspended: the memory measure is about the operator's state, not kwok's pods.
        await create_ftjs(kube, ns, [f"mem-{i}" for i in range(n)], suspend=True)


async def wait_phase(ns: str, n: int, phase: str) -> None:
    async with _client() as kube:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            items = await list_ftjs(kube, ns)
            if sum(1 for o in items if o.get("status", {}).get("phase") == phase) == n:
                return
            await asyncio.sleep(2)
        raise RuntimeError(f"FineTuneJobs in {ns} did not all reach {phase} in 30 minutes")


if __name__ == "__main__":
    sys.exit(main())
