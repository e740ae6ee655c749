"""The operator's writes to the Kubernetes API, and the few reads it needs.

Children are written with server-side apply under one field manager; status
with a merge patch of the status subresource. Every write is counted in the
``loraforge_api_writes_total`` metric, which is how the benchmark proves that
an idle operator writes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.rest import ApiException

from . import api, metrics

log = logging.getLogger(__name__)

# A call refused with Retry-After (429 from API priority and fairness, or a 5xx
# that names one) is sent again after that long, this many times in all, before
# the error reaches the reconcile (which then retries with its own backoff).
RETRY_AFTER_ATTEMPTS = 3
RETRY_AFTER_MAX_SECONDS = 60.0


def retry_after(error: Exception) -> float | None:
    """Seconds the API server asked us to wait (its Retry-After header), if it did."""
    if not isinstance(error, ApiException) or not (error.status == 429 or (error.status or 0) >= 500):
        return None
    value = (error.headers or {}).get("Retry-After")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # the HTTP-date form; the API server sends seconds
        return None
    return None if seconds is None else min(max(seconds, 0.0), RETRY_AFTER_MAX_SECONDS)


def _path(api_version: str, kind: str, namespace: str, name: str | None = None) -> str:
    resource = api.RESOURCES[kind]
    if resource.api_version != api_version:
        raise ValueError(f"{kind} is served as {resource.api_version}, not {api_version}")
    path = resource.collection(namespace)
    return f"{path}/{name}" if name else path


class Kube:
    """A thin async client bound to one field manager."""

    def __init__(self, api_client: client.ApiClient, field_manager: str):
        self.api = api_client
        self.field_manager = field_manager
        # Retry-After applies to the client, not to one request: until then, no call is sent.
        self._not_before = 0.0

    @classmethod
    async def connect(cls, field_manager: str) -> Kube:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            await config.load_kube_config()
        return cls(client.ApiClient(), field_manager)

    async def close(self) -> None:
        await self.api.close()

    async def _call(self, method: str, path: str, *, body: Any = None, query=None, content_type=None) -> Any:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        loop = asyncio.get_running_loop()
        for attempt in range(1, RETRY_AFTER_ATTEMPTS + 1):
            wait = self._not_before - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                return await self.api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params=headers,
                    body=body,
                    response_types_map={200: "object", 201: "object"},
                    auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
            except ApiException as e:
                delay = retry_after(e)
                if delay is None:
                    raise
                self._not_before = max(self._not_before, loop.time() + delay)
                if attempt == RETRY_AFTER_ATTEMPTS:
                    raise
                log.info("%s %s: %s, retrying after %.0fs as asked", method, path, e.status, delay)
        raise AssertionError("unreachable")

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply; conflicts with other managers are forced (the
        operator owns its children's fields)."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta["namespace"], meta["name"])
        metrics.API_WRITES.labels(verb="apply", kind=manifest["kind"]).inc()
        return await self._call(
            "PATCH",
            path,
            body=manifest,
            query=[("fieldManager", self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
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

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """Read one object (not watched: e.g. a ConfigMap a spec names); None where it does not exist."""
        try:
            return await self._call("GET", _path(api_version, kind, namespace, name))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        metrics.API_WRITES.labels(verb="delete", kind=kind).inc()
        try:
            await self._call(
                "DELETE",
                _path(api_version, kind, namespace, name),
                body={"propagationPolicy": "Background"},
                content_type="application/json",
            )
        except ApiException as e:
            if e.status != 404:
                raise
