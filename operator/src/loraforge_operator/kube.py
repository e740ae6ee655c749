"""The operator's writes to the Kubernetes API, and the few reads it needs.

Children are written with server-side apply under one field manager; status
with a merge patch of the status subresource. Every write is counted in the
``loraforge_api_writes_total`` metric, which is how the benchmark proves that
an idle operator writes nothing.

The client is aiohttp (kopf's own HTTP stack) on JSON dicts, with the
credentials kopf logs in with (``login``). Not ``kubernetes_asyncio``: the
operator never used its model classes, and importing them cost about 37 MiB of
the operator's resident memory (bench/README.md); kopf also imports them, to
recognise their objects, whenever the library is installed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf

from . import api, metrics

log = logging.getLogger(__name__)

# A call refused with Retry-After (429 from API priority and fairness, or a 5xx
# that names one) is sent again after that long, this many times in all, before
# the error reaches the reconcile (which then retries with its own backoff).
RETRY_AFTER_ATTEMPTS = 3
RETRY_AFTER_MAX_SECONDS = 60.0
# The API server's own default limit for a request.
REQUEST_TIMEOUT_SECONDS = 60.0

# Where the kubelet mounts a pod's service account
# (kubernetes.io/docs/tasks/run-application/access-api-from-pod).
SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


class ApiError(Exception):
    """The API server refused a request: its HTTP status and the message of its Status object."""

    def __init__(self, method: str, path: str, status: int, reason: str, body: str, headers: dict[str, str]):
        self.method, self.path = method, path
        self.status, self.reason, self.body, self.headers = status, reason, body, headers
        message = ""
        with contextlib.suppress(ValueError, AttributeError):
            message = json.loads(body).get("message") or ""
        self.message = message or reason
        super().__init__(f"{method} {path}: {status} {reason}: {self.message}")


def retry_after(error: Exception) -> float | None:
    """Seconds the API server asked us to wait (its Retry-After header), if it did."""
    if not isinstance(error, ApiError) or not (error.status == 429 or error.status >= 500):
        return None
    value = error.headers.get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # the HTTP-date form; the API server sends seconds
        return None
    return None if seconds is None else min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    resource = api.RESOURCES[kind]
    if resource.api_version != api_version:
        raise ValueError(f"{kind} is served as {resource.api_version}, not {api_version}")
    path = resource.collection(namespace)
    return f"{path}/{name}" if name else path


def in_cluster() -> bool:
    """Whether this process runs in a pod with a service account (what ``login`` then uses)."""
    return bool(
        os.environ.get("KUBERNETES_SERVICE_HOST")
        and os.environ.get("KUBERNETES_SERVICE_PORT")
        and os.path.exists(os.path.join(SERVICE_ACCOUNT, "token"))
    )


def login(**_: Any) -> kopf.ConnectionInfo:
    """The credentials of kopf's watches and of this client (one source): in a pod, its service account
    and the API server at KUBERNETES_SERVICE_HOST:PORT (as client-go does: no DNS needed); elsewhere the
    kubeconfig (KUBERNETES_SERVICE_HOST unset), read by kopf's own kubeconfig login."""
    if in_cluster():
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
        with open(os.path.join(SERVICE_ACCOUNT, "token"), encoding="utf-8") as f:
            token = f.read().strip()
        namespace = None
        with (
            contextlib.suppress(OSError),
            open(os.path.join(SERVICE_ACCOUNT, "namespace"), encoding="utf-8") as f,
        ):
            namespace = f.read().strip() or None
        ca = os.path.join(SERVICE_ACCOUNT, "ca.crt")
        return kopf.ConnectionInfo(
            server=f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}",
            ca_path=ca if os.path.exists(ca) else None,
            token=token or None,
            default_namespace=namespace,
        )
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    if info is None:
        raise kopf.LoginError(
            "neither a service account (KUBERNETES_SERVICE_HOST) nor a kubeconfig (KUBECONFIG)"
        )
    return info


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """Trust the cluster's CA only, where the credentials name one (as client-go does, and kopf's own
    session); the system's CAs only where they name none."""
    if info.insecure:
        return False
    if info.ca_path:
        ctx = ssl.create_default_context(cafile=os.fsdecode(info.ca_path))
    elif info.ca_data:
        ctx = ssl.create_default_context(cadata=_pem(info.ca_data))
    else:
        ctx = ssl.create_default_context()
    if info.certificate_path or info.certificate_data:
        with contextlib.ExitStack() as stack:
            cert = _file(stack, info.certificate_path, info.certificate_data)
            key = _file(stack, info.private_key_path, info.private_key_data)
            ctx.load_cert_chain(certfile=cert, keyfile=key)
    return ctx


def _pem(data: str | bytes) -> str:
    """kubeconfig's *-data fields are base64 of PEM."""
    return base64.b64decode(data).decode("ascii")


def _file(stack: contextlib.ExitStack, path: Any, data: str | bytes | None) -> str | None:
    """A path ssl can load: the given one, or a private temporary file with the data, removed once loaded."""
    if path:
        return os.fsdecode(path)
    if not data:
        return None
    f = stack.enter_context(tempfile.NamedTemporaryFile("w", suffix=".pem"))  # noqa: SIM115 - mode 0600
    f.write(_pem(data))
    f.flush()
    return f.name


class Kube:
    """A thin async client of the Kubernetes API, bound to one field manager."""

    def __init__(self, info: kopf.ConnectionInfo, field_manager: str, connections: int = 100):
        self.info = info
        self.field_manager = field_manager
        self.connections = connections
        self.server = info.server.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        # Retry-After applies to the client, not to one request: until then, no call is sent.
        self._not_before = 0.0

    @classmethod
    async def connect(cls, field_manager: str, connections: int = 100) -> Kube:
        return cls(login(), field_manager, connections)

    @property
    def default_namespace(self) -> str:
        return self.info.default_namespace or "default"

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=_ssl_context(self.info), limit=self.connections),
                headers=self.info.as_http_headers(),
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
                trust_env=self.info.trust_env,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    async def _relogin(self) -> None:
        """A 401: the token expired or rotated (a projected service-account token is renewed in its file)."""
        await self.close()
        self.info = login()

    async def _call(
        self, method: str, path: str, *, body: Any = None, query=None, content_type: str | None = None
    ) -> Any:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
            data = json.dumps(body, separators=(",", ":"))
        loop = asyncio.get_running_loop()
        relogged = False
        attempt = 1
        while True:
            wait = self._not_before - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._open().request(
                method,
                self.server + path,
                params=query,
                data=data,
                headers=headers,
                proxy=self.info.proxy_url,
            ) as r:
                text = await r.text()
                if r.status < 400:
                    return json.loads(text) if text else {}
                error = ApiError(method, path, r.status, r.reason or "", text, dict(r.headers))
            if error.status == 401 and not relogged:
                relogged = True
                await self._relogin()
                continue
            delay = retry_after(error)
            if delay is None or attempt == RETRY_AFTER_ATTEMPTS:
                raise error
            self._not_before = max(self._not_before, loop.time() + delay)
            attempt += 1
            log.info("%s %s: %s, retrying after %.0fs as asked", method, path, error.status, delay)

    # --- reads -------------------------------------------------------------------

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one object (not watched: e.g. a ConfigMap a spec names); None where it does not exist."""
        try:
            return await self._call("GET", _path(api_version, kind, namespace, name))
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def list_items(
        self, api_version: str, kind: str, namespace: str | None, label_selector: str | None = None
    ) -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else None
        return (await self._call("GET", _path(api_version, kind, namespace), query=query)).get("items") or []

    # --- writes ------------------------------------------------------------------

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; conflicts with other managers are forced (the
        operator owns its children's fields)."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"), meta["name"])
        metrics.API_WRITES.labels(verb="apply", kind=manifest["kind"]).inc()
        return await self._call(
            "PATCH",
            path,
            body=manifest,
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",  # JSON is YAML
        )

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        metrics.API_WRITES.labels(verb="create", kind=manifest["kind"]).inc()
        return await self._call(
            "POST",
            _path(manifest["apiVersion"], manifest["kind"], meta.get("namespace")),
            body=manifest,
            query=[("fieldManager", self.field_manager)],
        )

    async def patch(
        self, api_version: str, kind: str, namespace: str, name: str, patch: Any, content_type: str
    ) -> dict[str, Any]:
        metrics.API_WRITES.labels(verb="patch", kind=kind).inc()
        return await self._call(
            "PATCH",
            _path(api_version, kind, namespace, name),
            body=patch,
            query=[("fieldManager", self.field_manager)],
            content_type=content_type,
        )

    async def patch_status(
        self, api_version: str, kind: str, namespace: str, name: str, status: dict
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; return the updated object."""
        metrics.API_WRITES.labels(verb="patch-status", kind=kind).inc()
        return await self._call(
            "PATCH",
            _path(api_version, kind, namespace, name) + "/status",
            body={"status": status},
            query=[("fieldManager", self.field_manager)],
            content_type="application/merge-patch+json",
        )

    async def set_pod_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        """Set one condition on a pod's status (a readiness gate). Strategic merge by `type`, so the
        kubelet's conditions are left alone."""
        metrics.API_WRITES.labels(verb="patch-status", kind="Pod").inc()
        await self._call(
            "PATCH",
            _path("v1", "Pod", namespace, name) + "/status",
            body={"status": {"conditions": [condition]}},
            query=[("fieldManager", self.field_manager)],
            content_type="application/strategic-merge-patch+json",
        )

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        metrics.API_WRITES.labels(verb="delete", kind=kind).inc()
        try:
            await self._call(
                "DELETE",
                _path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
            )
        except ApiError as e:
            if e.status != 404:
                raise
