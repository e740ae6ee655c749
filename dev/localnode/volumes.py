"""A pod's volumes as local directories.

====================  ======================================================
volume                on the local node
====================  ======================================================
persistentVolumeClaim the bound PersistentVolume's ``hostPath`` or ``local`` path
hostPath              that path (``DirectoryOrCreate``/``FileOrCreate`` made)
emptyDir              a directory of the pod's, removed with the pod
configMap, secret     files written once when the pod starts (``items``,
                      ``defaultMode``, ``optional``); later edits are not synced
downwardAPI           files with the fields' values
projected             the above plus ``serviceAccountToken``: a TokenRequest
                      bound to the pod, renewed at 80 % of its lifetime
====================  ======================================================

Because PersistentVolumes are host paths, what one pod writes (an adapter)
another reads (a server), as on a shared file system in a cluster.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .podenv import ConfigError, Lookup, field_value

Obj = dict[str, Any]


class VolumeError(ConfigError):
    """A volume cannot be set up yet (kubelet's FailedMount); retried."""


@dataclass
class TokenSource:
    path: Path
    service_account: str
    audience: str | None
    expiration: int
    renew_at: float = 0.0


@dataclass
class PodVolumes:
    paths: dict[str, Path] = field(default_factory=dict)
    tokens: list[TokenSource] = field(default_factory=list)


# (namespace, serviceaccount, audience|None, seconds) -> (token, expirationSeconds)
RequestToken = Callable[[str, str, str | None, int], tuple[str, int]]
# (namespace, claim) -> PersistentVolume or an error message
ClaimVolume = Callable[[str, str], Obj]


def _write(path: Path, data: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _key_files(
    target: Path, data: dict[str, bytes], items: list[Obj] | None, default_mode: int, what: str
) -> None:
    if items:
        for item in items:
            if item["key"] not in data:
                raise VolumeError(f'configured key "{item["key"]}" not in {what}')
            _write(target / item["path"], data[item["key"]], item.get("mode", default_mode))
    else:
        for key, value in data.items():
            _write(target / key, value, default_mode)


def _data(kind: str, ns: str, name: str, lookup: Lookup) -> dict[str, bytes] | None:
    raw = lookup(kind, ns, name)
    return None if raw is None else {k: v.encode() for k, v in raw.items()}


def prepare(
    pod: Obj,
    root: Path,
    lookup: Lookup,
    claim_volume: ClaimVolume,
    request_token: RequestToken,
) -> PodVolumes:
    """Make every volume of ``pod`` under ``root``; raise VolumeError if one cannot be made yet."""
    ns = pod["metadata"]["namespace"]
    out = PodVolumes()
    for vol in pod["spec"].get("volumes") or []:
        name = vol["name"]
        target = root / name
        if "emptyDir" in vol:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(0o777)
        elif "hostPath" in vol:
            hp = vol["hostPath"]
            path = Path(hp["path"])
            kind = hp.get("type", "")
            if kind == "DirectoryOrCreate":
                path.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate":
                path.parent.mkdir(parents=True, exist_ok=True)
                path.touch()
            elif kind in ("Directory", "File") and not path.exists():
                raise VolumeError(f"hostPath type check failed: {path} is not a {kind.lower()}")
            target = path
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            pv = claim_volume(ns, claim)
            spec = pv["spec"]
            src = (spec.get("hostPath") or spec.get("local") or {}).get("path")
            if not src:
                raise VolumeError(
                    f'PersistentVolume "{pv["metadata"]["name"]}" of claim "{claim}" is neither hostPath '
                    "nor local: the local node mounts only those"
                )
            target = Path(src)
            if not target.is_dir():
                raise VolumeError(f'PersistentVolume "{pv["metadata"]["name"]}": {target} is not a directory')
        elif "configMap" in vol or "secret" in vol:
            kind = "ConfigMap" if "configMap" in vol else "Secret"
            src = vol.get("configMap") or vol.get("secret") or {}
            ref = src.get("name") or src.get("secretName")
            data = _data(kind, ns, ref, lookup)
            target.mkdir(parents=True, exist_ok=True)
            if data is None:
                if not src.get("optional"):
                    raise VolumeError(f'{kind.lower()} "{ref}" not found')
            else:
                _key_files(target, data, src.get("items"), src.get("defaultMode", 0o644), f'{kind} "{ref}"')
        elif "downwardAPI" in vol:
            src = vol["downwardAPI"]
            target.mkdir(parents=True, exist_ok=True)
            _downward(pod, target, src.get("items") or [], src.get("defaultMode", 0o644))
        elif "projected" in vol:
            src = vol["projected"]
            mode = src.get("defaultMode", 0o644)
            target.mkdir(parents=True, exist_ok=True)
            for source in src.get("sources") or []:
                if "serviceAccountToken" in source:
                    sat = source["serviceAccountToken"]
                    tok = TokenSource(
                        path=target / sat["path"],
                        service_account=pod["spec"].get("serviceAccountName") or "default",
                        audience=sat.get("audience"),
                        expiration=int(sat.get("expirationSeconds", 3600)),
                    )
                    renew(ns, tok, request_token, mode)
                    out.tokens.append(tok)
                elif "configMap" in source or "secret" in source:
                    kind = "ConfigMap" if "configMap" in source else "Secret"
                    ref = source.get("configMap") or source.get("secret") or {}
                    data = _data(kind, ns, ref["name"], lookup)
                    if data is None:
                        if ref.get("optional"):
                            continue
                        raise VolumeError(f'{kind.lower()} "{ref["name"]}" not found')
                    _key_files(target, data, ref.get("items"), mode, f'{kind} "{ref["name"]}"')
                elif "downwardAPI" in source:
                    _downward(pod, target, source["downwardAPI"].get("items") or [], mode)
        else:
            kinds = ", ".join(k for k in vol if k != "name")
            raise VolumeError(f'volume "{name}" ({kinds}) is not supported on the local node')
        out.paths[name] = target
    return out


def _downward(pod: Obj, target: Path, items: list[Obj], mode: int) -> None:
    for item in items:
        if "fieldRef" not in item:
            raise VolumeError(f"downward API item {item['path']!r}: only fieldRef is supported")
        value = field_value(pod, item["fieldRef"]["fieldPath"])
        _write(target / item["path"], value.encode(), item.get("mode", mode))


def renew(ns: str, tok: TokenSource, request_token: RequestToken, mode: int = 0o644) -> None:
    token, seconds = request_token(ns, tok.service_account, tok.audience, tok.expiration)
    _write(tok.path, token.encode(), mode)
    tok.renew_at = time.monotonic() + 0.8 * seconds


def decode_secret(data: dict[str, str] | None) -> dict[str, str]:
    return {k: base64.b64decode(v).decode(errors="replace") for k, v in (data or {}).items()}
