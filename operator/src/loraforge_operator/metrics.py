"""Prometheus metrics of the operator (served on settings.metrics_port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter(
    "loraforge_reconciles_total",
    "Reconciles of loraforge resources, by kind and result (ok, error).",
    ["kind", "result"],
)
RECONCILE_SECONDS = Histogram(
    "loraforge_reconcile_duration_seconds",
    "Time a reconcile took, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_WRITES = Counter(
    "loraforge_api_writes_total",
    "Write requests the operator sent to the Kubernetes API, by verb and kind.",
    ["verb", "kind"],
)
ROLLOUTS = Counter(
    "loraforge_modeldeployment_rollouts_total",
    "ModelDeployment rollouts that ended, by result (Complete, RolledBack, Failed).",
    ["result"],
)
FINETUNEJOBS = Gauge(
    "loraforge_finetunejobs",
    "FineTuneJobs the operator knows, by phase.",
    ["phase"],
)


def sum_samples(exposition: str, metric: str) -> float:
    """The sum of every sample of ``metric`` in a Prometheus text exposition
    (how tests and the benchmark read the operator's write counter)."""
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in exposition.splitlines() if line.startswith(metric + "{")
    )
