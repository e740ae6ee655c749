"""Resource usage of the local node and its containers, read from /proc.

The kubelet serves ``GET /metrics/resource`` in the Prometheus text format;
metrics-server scrapes it on every node and turns the cumulative CPU counters
into the rates the Metrics API (``kubectl top``, the HPA's CPU targets) shows.
This is that endpoint for the local node, with the same metric names, labels
and millisecond timestamps:

- ``node_cpu_usage_seconds_total``: busy time of the whole machine (all
  fields of /proc/stat's ``cpu`` line but idle and iowait);
- ``node_memory_working_set_bytes``: MemTotal - MemAvailable;
- ``container_cpu_usage_seconds_total``: CPU time of every process of the
  container (its session: the agent starts each container as a session
  leader), children that already exited included;
- ``container_memory_working_set_bytes``: the sum of their resident sets;
- ``container_start_time_seconds``: when the current process started.

The numbers are real: a TGI stand-in under load shows its CPU time, so the
HPA scales on what the process really does, not on emulated usage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class ContainerUsage:
    namespace: str
    pod: str
    container: str
    session: int  # the container's session id (its first process's pid)
    start_time: float  # epoch seconds


def _stat_fields(pid: str) -> list[str] | None:
    try:
        stat = (PROC / pid / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses; what follows its last ')' is fixed.
    return stat[stat.rindex(")") + 2 :].split()


def sessions_usage(sessions: set[int]) -> dict[int, tuple[float, int]]:
    """CPU seconds and resident bytes per session id, summed over its live processes."""
    out: dict[int, tuple[float, int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        f = _stat_fields(entry.name)
        # After the name: state(0) ppid(1) pgrp(2) session(3) ... utime(11) stime(12) cutime(13)
        # cstime(14) ... rss(21) in pages.
        if f is None or int(f[3]) not in sessions:
            continue
        cpu = sum(int(x) for x in f[11:15]) / TICKS
        rss = int(f[21]) * PAGE
        old_cpu, old_rss = out.get(int(f[3]), (0.0, 0))
        out[int(f[3])] = (old_cpu + cpu, old_rss + rss)
    return out


def node_cpu_seconds() -> float:
    first = (PROC / "stat").read_text().splitlines()[0].split()
    assert first[0] == "cpu"
    values = [int(x) for x in first[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    busy = sum(values[:8]) - idle
    return busy / TICKS


def node_memory_working_set() -> int:
    info: dict[str, int] = {}
    for line in (PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        info[key] = int(rest.split()[0]) * 1024
    return info["MemTotal"] - info.get("MemAvailable", info.get("MemFree", 0))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def resource_metrics(containers: Iterable[ContainerUsage], now: float | None = None) -> str:
    """The body of the kubelet's ``/metrics/resource`` for these running containers."""
    ts = int((now if now is not None else time.time()) * 1000)
    containers = list(containers)
    usage = sessions_usage({c.session for c in containers})
    lines = [
        "# HELP node_cpu_usage_seconds_total Cumulative cpu time consumed by the node in core-seconds",
        "# TYPE node_cpu_usage_seconds_total counter",
        f"node_cpu_usage_seconds_total {node_cpu_seconds():.6f} {ts}",
        "# HELP node_memory_working_set_bytes Current working set of the node in bytes",
        "# TYPE node_memory_working_set_bytes gauge",
        f"node_memory_working_set_bytes {node_memory_working_set()} {ts}",
    ]
    rows = []
    for c in containers:
        if c.session in usage:  # else it exited between the listing and the read
            labels = ",".join(
                f'{key}="{_label(value)}"'
                for key, value in (("container", c.container), ("namespace", c.namespace), ("pod", c.pod))
            )
            cpu, rss = usage[c.session]
            rows.append((labels, f"{cpu:.6f}", str(rss), f"{c.start_time:.3f}"))
    families = (
        ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed by the container"),
        ("container_memory_working_set_bytes", "gauge", "Current working set of the container in bytes"),
        ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch in seconds"),
    )
    for column, (name, kind, help_text) in enumerate(families, start=1):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        lines += [f"{name}{{{row[0]}}} {row[column]} {ts}" for row in rows]
    lines += [
        "# HELP scrape_error 1 if there was an error while getting container metrics, 0 otherwise",
        "# TYPE scrape_error gauge",
        "scrape_error 0",
        "",
    ]
    return "\n".join(lines)
