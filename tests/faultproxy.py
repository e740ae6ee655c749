"""A fault-injecting proxy in front of the real kube-apiserver, for tests.

It listens on plain HTTP on loopback and forwards every request to the API
server over TLS with the kubeconfig's client certificate, streaming the answer
back (watches included). A test points a client at it (``write_kubeconfig``)
and can then

- answer chosen requests with an API error instead (``inject``): 409, 429 with
  Retry-After, 5xx, or for a watch the "410 Gone" ERROR event the API server
  sends when a resourceVersion has expired;
- cut the open watch streams (``cut``), as a restarted API server would;
- read every request that went through, when, and how it was answered
  (``seen``), to assert how a client retried.

Everything else is the real API server's answer, byte for byte.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

# Hop-by-hop headers and those the proxy sets itself.
_DROP_REQUEST = {"host", "authorization", "content-length", "connection", "keep-alive", "transfer-encoding"}
_DROP_RESPONSE = {"content-length", "connection", "keep-alive", "transfer-encoding"}

_REASONS = {
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


@dataclass
class Fault:
    """Answer requests matching ``method`` and the ``path``/``query`` regexes with ``status``,
    ``times`` times."""

    method: str
    path: str
    status: int
    times: int = 1
    query: str = ""
    retry_after: int | None = None
    fired: list[float] = field(default_factory=list)  # time.monotonic() of each answer

    def matches(self, method: str, path: str, query: str) -> bool:
        return (
            len(self.fired) < self.times
            and method == self.method
            and re.search(self.path, path) is not None
            and re.search(self.query, query) is not None
        )


@dataclass(frozen=True)
class Seen:
    at: float  # time.monotonic() when the request arrived
    method: str
    path: str
    query: str
    status: int
    injected: bool


def _status_body(status: int) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f"injected by the test's fault proxy: {status}",
        "reason": _REASONS.get(status, "InternalError"),
        "code": status,
    }


class FaultProxy:
    def __init__(self, kubeconfig: Path, workdir: Path):
        cfg = yaml.safe_load(kubeconfig.read_text())
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == cfg["current-context"])
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        self.upstream = cluster["server"].rstrip("/")
        workdir.mkdir(parents=True, exist_ok=True)
        self._workdir = workdir

        def material(data_key: str, file_key: str, section: dict, out: str) -> str:
            if data_key in section:
                path = workdir / out
                path.write_bytes(base64.b64decode(section[data_key]))
                return str(path)
            return section[file_key]

        self._tls = ssl.create_default_context(
            cafile=material("certificate-authority-data", "certificate-authority", cluster, "ca.crt")
        )
        self._tls.load_cert_chain(
            material("client-certificate-data", "client-certificate", user, "client.crt"),
            material("client-key-data", "client-key", user, "client.key"),
        )
        self._faults: list[Fault] = []
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._streams: dict[web.StreamResponse, tuple[str, aiohttp.ClientResponse]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self.url = ""

    # --- control (from the test's thread) ---------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        async def close() -> None:
            for resp, (_, upstream) in list(self._streams.items()):
                upstream.close()
                if resp._req is not None and resp._req.transport is not None:
                    resp._req.transport.close()
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def write_kubeconfig(self, path: Path) -> Path:
        """A kubeconfig that reaches the API server through this proxy (no credentials of its own)."""
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "via-proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "via-proxy", "user": {"token": "unused-the-proxy-authenticates"}}],
            "contexts": [{"name": "via-proxy", "context": {"cluster": "via-proxy", "user": "via-proxy"}}],
            "current-context": "via-proxy",
        }
        path.write_text(yaml.safe_dump(cfg))
        return path

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def seen(self, method: str | None = None, path: str = "", query: str = "") -> list[Seen]:
        with self._lock:
            return [
                s
                for s in self._seen
                if (method is None or s.method == method)
                and re.search(path, s.path) is not None
                and re.search(query, s.query) is not None
            ]

    def cut(self, path: str = "") -> int:
        """Close the open streaming answers (watches) whose path matches; return how many."""

        async def close() -> int:
            victims = [(r, u) for r, (p, u) in list(self._streams.items()) if re.search(path, p)]
            for resp, upstream in victims:
                transport = resp._req.transport if resp._req is not None else None
                if transport is not None:
                    transport.close()
                upstream.close()
            return len(victims)

        return asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)

    # --- the server (in the proxy's own thread) ------------------------------------

    async def _serve(self) -> None:
        self._session = aiohttp.ClientSession(
            auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def _record(self, request: web.Request, status: int, injected: bool, at: float) -> None:
        with self._lock:
            self._seen.append(Seen(at, request.method, request.path, request.query_string, status, injected))

    def _fault_for(self, request: web.Request) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(request.method, request.path, request.query_string):
                    fault.fired.append(time.monotonic())
                    return fault
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        at = time.monotonic()
        fault = self._fault_for(request)
        if fault is not None:
            self._record(request, fault.status, True, at)
            if fault.status == 410 and request.query.get("watch") in ("true", "1"):
                # What the API server streams when the watch's resourceVersion is too old.
                event = {"type": "ERROR", "object": _status_body(410)}
                return web.Response(
                    status=200, text=json.dumps(event) + "\n", content_type="application/json"
                )
            headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
            return web.Response(
                status=fault.status,
                text=json.dumps(_status_body(fault.status)),
                content_type="application/json",
                headers=headers,
            )

        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        try:
            upstream = await self._session.request(
                request.method,
                self.upstream + request.path_qs,
                data=body or None,
                headers=headers,
                ssl=self._tls,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as e:
            # The API server is down: the client sees its connection fail.
            self._record(request, 0, False, at)
            raise web.HTTPBadGateway(text=str(e)) from e
        self._record(request, upstream.status, False, at)
        resp = web.StreamResponse(
            status=upstream.status,
            headers={k: v for k, v in upstream.headers.items() if k.lower() not in _DROP_RESPONSE},
        )
        try:
            await resp.prepare(request)
            self._streams[resp] = (request.path, upstream)
            async for chunk in upstream.content.iter_any():
                await resp.write(chunk)
            await resp.write_eof()
        except (aiohttp.ClientError, ConnectionError):
            pass  # either side went away; the other sees its connection end
        finally:
            self._streams.pop(resp, None)
            upstream.release()
        return resp
