"""The parts of the kubelet's HTTPS API that ``kubectl logs`` and metrics-server use.

The API server proxies ``kubectl logs`` to the node's kubelet endpoint
(``status.daemonEndpoints.kubeletEndpoint``) at
``GET /containerLogs/<namespace>/<pod>/<container>``. This serves it from the
local node's log files, with ``follow``, ``previous``, ``tailLines`` and
``limitBytes``. ``GET /metrics/resource`` is the resource usage metrics-server
scrapes (``usage.py``). TLS with the cluster CA's serving certificate; only a
client certificate signed by that CA is let in (the API server's
kubelet-client identity, metrics-server's). ``exec``, ``attach`` and
``port-forward`` are not offered.
"""

from __future__ import annotations

import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlparse

from . import usage

if TYPE_CHECKING:
    from .agent import Agent
    from .pod import Container

FOLLOW_POLL = 0.2


def _tail(data: bytes, lines: int) -> bytes:
    if lines <= 0:
        return b""
    parts = data.splitlines(keepends=True)
    return b"".join(parts[-lines:])


def serve(agent: Agent, port: int, cert: Path, key: Path, client_ca: Path) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _fail(self, code: int, message: str) -> None:
            body = message.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _container(self, ns: str, pod: str, name: str) -> Container | None:
            with agent._lock:
                worker = next((w for w in agent.workers.values() if w.key == f"{ns}/{pod}"), None)
            if worker is None:
                return None
            return next((c for c in worker.init_containers + worker.containers if c.name == name), None)

        def _resource_metrics(self) -> None:
            with agent._lock:
                workers = list(agent.workers.values())
            running = [
                usage.ContainerUsage(
                    namespace=w.pod["metadata"]["namespace"],
                    pod=w.pod["metadata"]["name"],
                    container=c.name,
                    session=c.proc.pid,
                    start_time=c.started_epoch,
                )
                for w in workers
                for c in w.containers
                if c.running and c.proc is not None
            ]
            body = usage.resource_metrics(running).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            parts = [unquote(p) for p in url.path.strip("/").split("/")]
            if parts == ["healthz"]:
                return self._fail(200, "ok")
            if parts == ["metrics", "resource"]:
                return self._resource_metrics()
            if len(parts) != 4 or parts[0] != "containerLogs":
                return self._fail(
                    404, "only /containerLogs/<namespace>/<pod>/<container> and /metrics/resource are served"
                )
            q = {k: v[-1] for k, v in parse_qs(url.query).items()}
            c = self._container(parts[1], parts[2], parts[3])
            if c is None:
                return self._fail(
                    404, f"container {parts[3]!r} of pod {parts[1]}/{parts[2]} is not on this node"
                )
            previous = q.get("previous") == "true"
            index = c.restart_count - 1 if previous else c.restart_count
            path = c.dir / f"{index}.log"
            if index < 0 or not path.exists():
                what = "previous terminated" if previous else "current"
                return self._fail(400, f"no {what} container log for {parts[3]!r} yet")
            data = path.read_bytes()
            if "tailLines" in q:
                data = _tail(data, int(q["tailLines"]))
            limit = int(q["limitBytes"]) if "limitBytes" in q else None
            if limit is not None:
                data = data[:limit]
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.end_headers()
            self.wfile.write(data)
            if q.get("follow") != "true" or previous:
                return None
            sent = len(data) if limit is None else None
            offset = path.stat().st_size
            while sent is not None:
                with path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
                if chunk:
                    offset += len(chunk)
                    self.wfile.write(chunk)
                    self.wfile.flush()
                elif not c.running or c.restart_count != index or agent.stopping.is_set():
                    break
                else:
                    time.sleep(FOLLOW_POLL)
            return None

        def log_message(self, *args: Any) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    ctx.load_verify_locations(str(client_ca))
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name="kubelet-api", daemon=True).start()
    return server
