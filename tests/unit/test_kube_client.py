"""The operator's own Kubernetes client (loraforge_operator.kube), against a real HTTP server standing
in for the API server's replies; the same client against the real API server is in every integration
and e2e test."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web

from loraforge_operator import kube


def _kubeconfig(path: Path, server: str, token: str, namespace: str = "team-a") -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u", "namespace": namespace}}],
                "clusters": [{"name": "k", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": token}}],
            }
        )
    )
    return path


def _run(tmp_path: Path, monkeypatch, handler, scenario):
    async def main():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        config = _kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{port}", "old")
        monkeypatch.setenv("KUBECONFIG", str(config))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        try:
            async with await kube.Kube.connect("loraforge-test") as client:
                return await scenario(client, config)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def test_a_refusal_carries_the_servers_status_message_and_a_missing_object_reads_as_none(
    tmp_path, monkeypatch
) -> None:
    async def handler(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response({"kind": "Status", "message": 'configmaps "x" not found'}, status=404)
        assert request.query["fieldManager"] == "loraforge-test"
        assert request.headers["Content-Type"] == "application/apply-patch+yaml"
        return web.json_response(
            {"kind": "Status", "message": 'Job.batch "j" is invalid: spec.template: field is immutable'},
            status=422,
        )

    async def scenario(client: kube.Kube, _):
        assert client.default_namespace == "team-a"  # the kubeconfig context's
        assert await client.get("v1", "ConfigMap", "ns", "x") is None
        job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j", "namespace": "ns"}}
        with pytest.raises(kube.ApiError) as e:
            await client.apply(job)
        return e.value

    error = _run(tmp_path, monkeypatch, handler, scenario)
    assert error.status == 422 and error.message.endswith("field is immutable")
    assert str(error).startswith("PATCH /apis/batch/v1/namespaces/ns/jobs/j: 422 ")


def test_a_401_logs_in_again_once_and_sends_the_request_with_the_new_token(tmp_path, monkeypatch) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer new":
            return web.json_response({"kind": "Status", "message": "Unauthorized"}, status=401)
        return web.json_response({"metadata": {"name": "x"}, "data": {"k": "v"}})

    async def scenario(client: kube.Kube, config: Path):
        with pytest.raises(kube.ApiError) as e:  # rotated nowhere yet: one new login, then the 401 stands
            await client.get("v1", "ConfigMap", "ns", "x")
        assert e.value.status == 401
        _kubeconfig(config, client.server, "new")  # the token is renewed in its file
        return await client.get("v1", "ConfigMap", "ns", "x")

    got = _run(tmp_path, monkeypatch, handler, scenario)
    assert got == {"metadata": {"name": "x"}, "data": {"k": "v"}}
    assert seen == ["Bearer old", "Bearer old", "Bearer old", "Bearer new"]


def test_retry_after_is_honoured_on_429_and_5xx_only_and_capped() -> None:
    def error(status: int, value: str | None) -> kube.ApiError:
        return kube.ApiError("PATCH", "/p", status, "", "", {"Retry-After": value} if value else {})

    assert kube.retry_after(error(429, "4")) == 4.0
    assert kube.retry_after(error(503, "9999")) == kube.RETRY_AFTER_MAX_SECONDS
    assert kube.retry_after(error(409, "4")) is None
    assert kube.retry_after(error(429, None)) is None
    assert kube.retry_after(error(429, "Wed, 21 Oct 2026 07:28:00 GMT")) is None


def test_the_operator_process_imports_no_kubernetes_client_library() -> None:
    """kopf imports kubernetes / kubernetes_asyncio when installed (the tests install the first): about
    37 MiB the operator never uses. Its entry point keeps them out, and its dependencies lack them."""
    code = (
        "import sys, loraforge_operator.__main__, loraforge_operator.handlers;"
        "print(sorted(m for m, v in sys.modules.items() if v is not None"
        " and m.split('.')[0] in ('kubernetes', 'kubernetes_asyncio', 'pykube')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    from importlib.metadata import requires

    declared = {
        r.split(">")[0].split("=")[0].split("<")[0].strip() for r in requires("loraforge-operator") or []
    }
    assert "kopf" in declared and not declared & {"kubernetes", "kubernetes-asyncio", "pykube-ng"}


def test_the_client_keeps_at_most_its_connection_bound_open(tmp_path, monkeypatch) -> None:
    """Each TLS connection holds buffers for as long as it stays open: a burst must queue on the bound."""
    in_flight, most = 0, 0
    peers: set[int] = set()

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, most
        peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return web.json_response({"items": []})

    async def scenario(client: kube.Kube, _):
        client.connections = 3
        await asyncio.gather(*(client.list_items("v1", "ConfigMap", "ns") for _ in range(30)))

    _run(tmp_path, monkeypatch, handler, scenario)
    assert most == 3 and len(peers) == 3


def test_start_up_bounds_kopfs_per_object_workers_and_the_clients_connections(monkeypatch) -> None:
    import kopf

    from loraforge_operator import handlers

    got: dict[str, object] = {}

    async def connect(field_manager: str, connections: int) -> kube.Kube:
        got.update(field_manager=field_manager, connections=connections)
        return kube.Kube(kopf.ConnectionInfo(server="https://api.invalid"), field_manager, connections)

    monkeypatch.setattr(handlers.Kube, "connect", connect)
    monkeypatch.setattr(handlers.finetunejob_handlers, "start", lambda *a: None)
    monkeypatch.setattr(handlers.modeldeployment_handlers, "start", lambda *a: None)
    monkeypatch.setenv("LORAFORGE_METRICS_PORT", "0")
    monkeypatch.setenv("LORAFORGE_API_CONNECTIONS", "7")
    settings = kopf.OperatorSettings()
    asyncio.run(handlers.configure(settings=settings))
    assert got == {"field_manager": "loraforge-operator", "connections": 7}
    assert settings.queueing.idle_timeout == handlers.QUEUE_IDLE_SECONDS < 5.0  # kopf's default: 5 s
    assert settings.posting.worker_limit == handlers.EVENT_POSTERS
    # No diff base: nothing built per event, nothing stored on objects.
    storage = settings.persistence.diffbase_storage
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {"template": {}}}
    assert storage.build(body=kopf.Body(job)) == {} and storage.fetch(body=kopf.Body(job)) is None
    handlers.Operator.kube = None


def test_the_client_trusts_the_clusters_ca_alone_where_one_is_named(tmp_path) -> None:
    import base64

    import kopf

    from localcluster import pki

    pki.generate(tmp_path)
    ca = tmp_path / "ca.crt"
    by_path = kube._ssl_context(kopf.ConnectionInfo(server="https://k", ca_path=str(ca)))
    by_data = kube._ssl_context(
        kopf.ConnectionInfo(server="https://k", ca_data=base64.b64encode(ca.read_bytes()))
    )
    for ctx in (by_path, by_data):
        assert [c["subject"] for c in ctx.get_ca_certs()] == [by_path.get_ca_certs()[0]["subject"]]
    assert kube._ssl_context(kopf.ConnectionInfo(server="https://k", insecure=True)) is False
