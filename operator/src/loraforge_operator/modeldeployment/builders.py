"""ModelDeployment → the manifests of its children. Pure functions: no I/O.

Children (deterministic names, all owned by the ModelDeployment):

- ``<name>``  Deployment: the serving runtime (``runtime.py``) with the base
  model and the adapter revisions chosen for this rollout; a readiness gate
  (``loraforge.io/adapters-verified``) that only the operator's smoke test
  sets, so an old pod goes only once a new one answers with its adapters;
- ``<name>``  Service, ``<name>`` HorizontalPodAutoscaler (with
  ``autoscaling``), ``<name>`` PodDisruptionBudget, ``<name>`` ServiceMonitor
  (with ``monitoring.serviceMonitor``).
"""

from __future__ import annotations

import json
from typing import Any

from .. import api
from ..owner import Owner as OwnedBy
from ..pods import placement
from ..settings import (
    LABEL_COMPONENT,
    LABEL_MANAGED_BY,
    LABEL_MODELDEPLOYMENT,
    LABEL_PART_OF,
    MANAGED_BY,
    PART_OF,
    Settings,
    pull_secrets,
)
from . import runtime
from .model import ModelDeploymentSpec, ServingRevision

Manifest = dict[str, Any]

SERVICE_MONITOR_API_VERSION = "monitoring.coreos.com/v1"
# Children that exist only when the spec asks for them; the others always exist.
OPTIONAL_KINDS = frozenset({"HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceMonitor"})
# The pod condition the operator sets after a pod's smoke tests (a readiness gate).
VERIFIED_CONDITION = f"{api.GROUP}/adapters-verified"
# Template annotation: adapter name -> revision (or path) the pods of this template serve.
REVISIONS_ANNOTATION = f"{api.GROUP}/adapter-revisions"


class Owner(OwnedBy):
    """The ModelDeployment the children belong to."""

    kind = "ModelDeployment"


def selector_labels(owner: Owner) -> dict[str, str]:
    return {LABEL_MODELDEPLOYMENT: owner.name, LABEL_COMPONENT: "serving"}


def _meta(owner: Owner) -> dict[str, Any]:
    return {
        "name": owner.name,
        "namespace": owner.namespace,
        "labels": {
            **selector_labels(owner),
            LABEL_MANAGED_BY: MANAGED_BY,
            LABEL_PART_OF: PART_OF,
        },
        "ownerReferences": [owner.reference()],
    }


def revisions_key(revisions: dict[str, ServingRevision]) -> dict[str, str]:
    """Adapter name -> its revision, or its path for a `from.path` adapter."""
    return {name: r.revision or r.path for name, r in sorted(revisions.items())}


def encode_revisions(revisions: dict[str, str]) -> str:
    return json.dumps(revisions, sort_keys=True, separators=(",", ":"))


def decode_revisions(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def replicas(spec: ModelDeploymentSpec) -> int | None:
    """Fixed replicas; None when an autoscaler owns the count."""
    if spec.autoscaling is not None:
        return None
    return 1 if spec.replicas is None else spec.replicas


def deployment(
    owner: Owner, spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]
) -> Manifest:
    r = spec.resources
    rollout = spec.rollout
    strategy = (
        {"maxSurge": 0, "maxUnavailable": 1}
        if rollout.no_surge_fallback
        else {"maxSurge": rollout.max_surge, "maxUnavailable": 0}
    )
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the runtime talks to no API
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": runtime.TERMINATION_GRACE_SECONDS,  # in-flight generations finish
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.serving_uid,
            "runAsGroup": settings.serving_uid,
            "fsGroup": settings.serving_uid,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "readinessGates": [{"conditionType": VERIFIED_CONDITION}],
        "containers": [runtime.container(spec, settings, revisions)],
        "volumes": runtime.volumes(spec),
    }
    pod_spec.update(placement(r))
    pod_spec.update(pull_secrets(settings))
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner)},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": strategy},
        "progressDeadlineSeconds": rollout.progress_deadline_seconds,
        "revisionHistoryLimit": 3,
        "template": {
            "metadata": {
                "labels": selector_labels(owner),
                "annotations": {REVISIONS_ANNOTATION: encode_revisions(revisions_key(revisions))},
            },
            "spec": pod_spec,
        },
    }
    count = replicas(spec)
    if count is not None:
        dep_spec["replicas"] = count
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner), "spec": dep_spec}


def service(owner: Owner, spec: ModelDeploymentSpec) -> Manifest:
    meta = _meta(owner)
    if spec.service.annotations:
        meta["annotations"] = dict(spec.service.annotations)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": spec.service.type,
            "selector": selector_labels(owner),
            "ports": [{"name": "http", "port": spec.service.port, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def autoscaler(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    a = spec.autoscaling
    if a is None:
        return None
    metrics: list[dict[str, Any]] = []
    if a.queue_size_target is not None:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": runtime.of(spec).queue_metric},
                    "target": {"type": "AverageValue", "averageValue": a.queue_size_target},
                },
            }
        )
    if a.cpu_utilization is not None:
        metrics.append(
            {
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": {"type": "Utilization", "averageUtilization": a.cpu_utilization},
                },
            }
        )
    b = a.behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(owner),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name},
            "minReplicas": a.min_replicas,
            "maxReplicas": a.max_replicas,
            "metrics": metrics,
            "behavior": {
                "scaleUp": {"stabilizationWindowSeconds": b.scale_up_stabilization_seconds},
                "scaleDown": {
                    "stabilizationWindowSeconds": b.scale_down_stabilization_seconds,
                    "policies": [
                        {"type": "Pods", "value": b.scale_down_pods_per_minute, "periodSeconds": 60}
                    ],
                },
            },
        },
    }


def service_monitor(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """The Prometheus Operator's ServiceMonitor for the runtime's metrics, when asked for."""
    m = spec.monitoring
    if not m.service_monitor:
        return None
    meta = _meta(owner)
    meta["labels"] = {**m.labels, **meta["labels"]}
    return {
        "apiVersion": SERVICE_MONITOR_API_VERSION,
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": selector_labels(owner)},
            "namespaceSelector": {"matchNames": [owner.namespace]},
            "endpoints": [{"port": "http", "path": runtime.METRICS_PATH, "interval": m.interval}],
        },
    }


def disruption_budget(owner: Owner, spec: ModelDeploymentSpec) -> Manifest | None:
    """At most one serving pod evicted at a time (node drains, cluster upgrades). None for a single fixed
    replica: a budget there would only block drains or promise nothing."""
    fixed = replicas(spec)
    if fixed is not None and fixed < 2:
        return None
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner)}},
    }


def children(
    owner: Owner, spec: ModelDeploymentSpec, settings: Settings, revisions: dict[str, ServingRevision]
) -> list[Manifest]:
    """Every child in apply order (the Deployment first: the rest refers to it)."""
    out = [deployment(owner, spec, settings, revisions), service(owner, spec)]
    for m in (autoscaler(owner, spec), disruption_budget(owner, spec), service_monitor(owner, spec)):
        if m is not None:
            out.append(m)
    return out


def endpoint(owner: Owner, spec: ModelDeploymentSpec) -> str:
    port = "" if spec.service.port == 80 else f":{spec.service.port}"
    return f"http://{owner.name}.{owner.namespace}.svc{port}"
