"""Pod spec pieces both kinds of workload share."""

from __future__ import annotations

from typing import Any, Protocol


class Placement(Protocol):
    node_selector: dict[str, str]
    tolerations: list[Any]
    priority_class_name: str | None


def placement(r: Placement) -> dict[str, Any]:
    """nodeSelector, tolerations and priorityClassName of a pod spec, where set."""
    out: dict[str, Any] = {}
    if r.node_selector:
        out["nodeSelector"] = dict(r.node_selector)
    if r.tolerations:
        out["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in r.tolerations]
    if r.priority_class_name:
        out["priorityClassName"] = r.priority_class_name
    return out
