"""A container's environment and command line, resolved as the kubelet does.

Pure functions over the pod object (dicts as the API returns them) and the
objects it refers to; the agent fetches those and passes a lookup in.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

Obj = dict[str, Any]
# (kind, namespace, name) -> the object's data (ConfigMap data, Secret data decoded), or None.
Lookup = Callable[[str, str, str], dict[str, str] | None]


class ConfigError(ValueError):
    """The container cannot be configured (kubelet's CreateContainerConfigError)."""


_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names are replaced, unknown ones
    kept as written, ``$$`` escapes a ``$``."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _REF.sub(sub, value)


_FIELD = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_value(pod: Obj, path: str) -> str:
    meta, spec, status = pod["metadata"], pod["spec"], pod.get("status") or {}
    m = _FIELD.match(path)
    if m:
        return (meta.get(m.group(1)) or {}).get(m.group(2), "")
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
        "status.podIPs": ",".join(p["ip"] for p in status.get("podIPs") or []),
        "status.hostIPs": ",".join(p["ip"] for p in status.get("hostIPs") or []),
    }
    if path in ("metadata.labels", "metadata.annotations"):
        items = meta.get(path.split(".")[1]) or {}
        return "\n".join(f'{k}="{v}"' for k, v in sorted(items.items()))
    if path not in simple:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return str(simple[path] or "")


_QTY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
}


def quantity(value: str | int | float) -> float:
    m = _QTY.match(str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ConfigError(f"cannot read quantity {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def resource_value(container: Obj, ref: Obj, node_allocatable: dict[str, str]) -> str:
    kind, _, name = ref["resource"].partition(".")
    res = container.get("resources") or {}
    raw = (res.get(kind) or {}).get(name)
    if raw is None and kind == "requests":
        raw = (res.get("limits") or {}).get(name)
    if raw is None:  # no limit: the node's allocatable, as the kubelet does
        raw = node_allocatable.get(name, "0")
    divisor = quantity(ref.get("divisor", "1"))
    return str(math.ceil(quantity(raw) / divisor))


def container_env(
    pod: Obj,
    container: Obj,
    base: dict[str, str],
    lookup: Lookup,
    node_allocatable: dict[str, str],
) -> dict[str, str]:
    """``base`` (the image's ENV and the kubelet's own variables), then
    ``envFrom``, then ``env`` with ``$(VAR)`` expansion against what came before."""
    ns = pod["metadata"]["namespace"]
    env = dict(base)
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in src:
                ref = src[key]
                data = lookup(kind, ns, ref["name"])
                if data is None:
                    if ref.get("optional"):
                        continue
                    raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found')
                for k, v in data.items():
                    env[prefix + k] = v
    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), env)
            continue
        vf = var["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_value(pod, vf["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in vf:
            env[name] = resource_value(container, vf["resourceFieldRef"], node_allocatable)
        else:
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                if key not in vf:
                    continue
                ref = vf[key]
                data = lookup(kind, ns, ref["name"])
                if data is None or ref["key"] not in data:
                    if ref.get("optional"):
                        break
                    what = f'{kind.lower()} "{ref["name"]}"'
                    raise ConfigError(
                        f"{what} not found" if data is None else f'key "{ref["key"]}" not in {what}'
                    )
                env[name] = data[ref["key"]]
                break
    return env
