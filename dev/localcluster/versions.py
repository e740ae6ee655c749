"""The pinned component versions, read from versions.env (the one place)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .paths import VERSIONS_FILE

_KEYS = {
    "KUBERNETES_VERSION": "kubernetes",
    "ETCD_VERSION": "etcd",
    "KWOK_VERSION": "kwok",
    "HELM_VERSION": "helm",
    "METRICS_SERVER_VERSION": "metrics_server",
}
_SEMVER = re.compile(r"v\d+\.\d+\.\d+")


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    etcd: str
    kwok: str
    helm: str
    metrics_server: str


def parse_versions(text: str, source: str = "versions.env") -> Versions:
    found: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in _KEYS:
            raise ValueError(f"{source}:{lineno}: expected one of {', '.join(_KEYS)} as KEY=VALUE")
        if not _SEMVER.fullmatch(value):
            raise ValueError(f"{source}:{lineno}: {key} must be a release tag like v1.2.3, got {value!r}")
        found[_KEYS[key]] = value
    missing = [k for k, f in _KEYS.items() if f not in found]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}")
    return Versions(**found)


def load_versions(path: Path = VERSIONS_FILE) -> Versions:
    return parse_versions(path.read_text(), str(path.name))
