"""The local node agent: one Node, and the kubelet's part for the pods bound to it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from . import kubeletapi, volumes
from .pod import PodWorker, now_iso

log = logging.getLogger("localnode")
Obj = dict[str, Any]

NODE_LABEL = "loraforge.io/local-node"
TAINT = {"key": NODE_LABEL, "value": "true", "effect": "NoSchedule"}
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
NODE_STATUS_EVERY = 60.0
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"  # as the kubelet patches pod status


def _micro_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Agent:
    def __init__(
        self,
        kubeconfig: str,
        state_dir: Path,
        node_name: str = "local",
        gpus: int = 8,
        cpu: str = "32",
        memory: str = "256Gi",
        restart_backoff: float = 10.0,
        shutdown_grace: float = 10.0,
        pod_subnet: str = "127.0.0",
    ):
        config.load_kube_config(config_file=kubeconfig)
        self.api_client = client.ApiClient()
        self.v1 = client.CoreV1Api(self.api_client)
        self.coord = client.CoordinationV1Api(self.api_client)
        server = urlparse(self.api_client.configuration.host)
        self.apiserver = (server.hostname or "127.0.0.1", server.port or 443)
        self.node_name = node_name
        self.node_ip = "127.0.0.1"
        self.allocatable = {
            "cpu": cpu,
            "memory": memory,
            "pods": "110",
            "ephemeral-storage": "100Gi",
            "nvidia.com/gpu": str(gpus),
        }
        self.state_dir = state_dir
        self.pods_dir = state_dir / "pods"
        self.restart_backoff = restart_backoff
        self.shutdown_grace = shutdown_grace
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}
        self.finished: set[str] = set()
        self._lock = threading.Lock()
        self.pod_subnet = pod_subnet
        self._ips: dict[str, str] = {}
        self._next_ip = 2
        self._events: dict[tuple[str, str, str], tuple[str, int]] = {}
        self.watching = False
        self.kubelet_port = 0

    # --- API helpers used by pod workers ---------------------------------------

    def _json(self, resp: Any) -> Obj:
        return json.loads(resp.data)

    def lookup(self, kind: str, ns: str, name: str) -> dict[str, str] | None:
        try:
            if kind == "ConfigMap":
                obj = self._json(self.v1.read_namespaced_config_map(name, ns, _preload_content=False))
                return dict(obj.get("data") or {})
            obj = self._json(self.v1.read_namespaced_secret(name, ns, _preload_content=False))
            return volumes.decode_secret(obj.get("data"))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def claim_volume(self, ns: str, claim: str) -> Obj:
        try:
            pvc = self._json(
                self.v1.read_namespaced_persistent_volume_claim(claim, ns, _preload_content=False)
            )
        except ApiException as e:
            if e.status == 404:
                raise volumes.VolumeError(f'persistentvolumeclaim "{claim}" not found') from e
            raise
        pv_name = (pvc.get("spec") or {}).get("volumeName")
        if not pv_name or (pvc.get("status") or {}).get("phase") != "Bound":
            raise volumes.VolumeError(f'persistentvolumeclaim "{claim}" is not bound')
        return self._json(self.v1.read_persistent_volume(pv_name, _preload_content=False))

    def request_token(self, ns: str, sa: str, audience: str | None, seconds: int) -> tuple[str, int]:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"audiences": [audience] if audience else [], "expirationSeconds": seconds},
        }
        resp = self._json(
            self.v1.create_namespaced_service_account_token(sa, ns, body, _preload_content=False)
        )
        exp = dt.datetime.fromisoformat(resp["status"]["expirationTimestamp"].replace("Z", "+00:00"))
        return resp["status"]["token"], max(int((exp - dt.datetime.now(dt.UTC)).total_seconds()), 60)

    def patch_pod_status(self, pod: Obj, status: Obj) -> bool:
        meta = pod["metadata"]
        try:
            self.v1.patch_namespaced_pod_status(
                meta["name"], meta["namespace"], {"status": status}, _content_type=STRATEGIC
            )
            return True
        except ApiException as e:
            if e.status != 404:
                log.warning(
                    "status of %s/%s not written: %s %s", meta["namespace"], meta["name"], e.status, e.body
                )
            return False

    def delete_pod(self, pod: Obj) -> None:
        meta = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            self.v1.delete_namespaced_pod(meta["name"], meta["namespace"], body=body)
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def event(self, pod: Obj, etype: str, reason: str, message: str) -> None:
        """A core/v1 Event on the pod; a repeat of the same one bumps its count, as the kubelet's do."""
        meta = pod["metadata"]
        key = (meta["uid"], reason, message)
        now = now_iso()
        try:
            with self._lock:
                seen = self._events.get(key)
            if seen:
                name, count = seen
                self.v1.patch_namespaced_event(
                    name, meta["namespace"], {"count": count + 1, "lastTimestamp": now}, _content_type=MERGE
                )
                with self._lock:
                    self._events[key] = (name, count + 1)
                return
            body = {
                "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "namespace": meta["namespace"],
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
                "type": etype,
                "reason": reason,
                "message": message[:1024],
                "source": {"component": "localnode", "host": self.node_name},
                "reportingComponent": "loraforge.io/localnode",
                "reportingInstance": self.node_name,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "count": 1,
            }
            created = self._json(
                self.v1.create_namespaced_event(meta["namespace"], body, _preload_content=False)
            )
            with self._lock:
                self._events[key] = (created["metadata"]["name"], 1)
        except ApiException as e:
            log.debug("event %s on %s not recorded: %s", reason, meta["name"], e.status)

    def acquire_ip(self, worker: PodWorker) -> str:
        """A loopback address of the pod's own (``<subnet>.2`` to ``.254``), handed out round-robin."""
        with self._lock:
            used = set(self._ips.values())
            for _ in range(253):
                ip = f"{self.pod_subnet}.{self._next_ip}"
                self._next_ip = 2 if self._next_ip >= 254 else self._next_ip + 1
                if ip not in used:
                    self._ips[worker.uid] = ip
                    return ip
        raise RuntimeError("no free pod IP left on the local node")

    def release(self, worker: PodWorker) -> None:
        with self._lock:
            self._ips.pop(worker.uid, None)
            self.workers.pop(worker.uid, None)
            self.finished.add(worker.uid)
            self._events = {k: v for k, v in self._events.items() if k[0] != worker.uid}

    # --- the node ------------------------------------------------------------------

    def _node_status(self) -> Obj:
        now = now_iso()
        conds = [
            ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            ("PIDPressure", "False", "KubeletHasSufficientPID"),
            ("Ready", "True", "KubeletReady"),
        ]
        return {
            "conditions": [
                {
                    "type": t,
                    "status": s,
                    "reason": r,
                    "message": "loraforge local node agent" if t == "Ready" else "",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": self._started,
                }
                for t, s, r in conds
            ],
            "addresses": [
                {"type": "InternalIP", "address": self.node_ip},
                {"type": "Hostname", "address": self.node_name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.kubelet_port}},
            "capacity": self.allocatable,
            "allocatable": self.allocatable,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "loraforge local node (processes, no container runtime)",
                "kernelVersion": os.uname().release,
                "kubeletVersion": "localnode",
                "kubeProxyVersion": "",
                "containerRuntimeVersion": "localnode://processes",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        }

    def register(self) -> None:
        self._started = now_iso()
        labels = {
            "kubernetes.io/hostname": self.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            NODE_LABEL: "true",
            "loraforge.io/pool": "local",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": self.allocatable["nvidia.com/gpu"],
            "nvidia.com/gpu.product": "loraforge-local-fake-gpu",
        }
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name, "labels": labels},
            "spec": {"taints": [TAINT]},
            "status": self._node_status(),
        }
        try:
            self.v1.create_node(node)
            log.info("registered node %s", self.node_name)
        except ApiException as e:
            if e.status != 409:
                raise
            self.v1.patch_node(
                self.node_name,
                {"metadata": {"labels": labels}, "spec": {"taints": [TAINT]}},
                _content_type=MERGE,
            )
            log.info("node %s exists; taking it over", self.node_name)
        self._heartbeat_status()

    def _heartbeat_status(self) -> None:
        self.v1.patch_node_status(self.node_name, {"status": self._node_status()}, _content_type=MERGE)

    def _renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node_name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": _micro_now(),
            },
        }
        try:
            self.coord.patch_namespaced_lease(
                self.node_name, "kube-node-lease", {"spec": body["spec"]}, _content_type=MERGE
            )
        except ApiException as e:
            if e.status != 404:
                raise
            self.coord.create_namespaced_lease("kube-node-lease", body)

    def heartbeat_loop(self) -> None:
        last_status = time.monotonic()
        while not self.stopping.wait(LEASE_RENEW):
            try:
                self._renew_lease()
                if time.monotonic() - last_status > NODE_STATUS_EVERY:
                    self._heartbeat_status()
                    last_status = time.monotonic()
            except Exception as e:  # the API server restarting: keep trying
                log.warning("node heartbeat failed: %s", e)

    # --- pods ---------------------------------------------------------------------

    def dispatch(self, etype: str, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self._lock:
            worker = self.workers.get(uid)
            finished = uid in self.finished
        if etype == "DELETED":
            if worker:
                worker.deleted()
            return
        if worker:
            worker.update(pod)
        elif finished:
            if pod["metadata"].get("deletionTimestamp"):
                self.delete_pod(pod)
        elif not self.stopping.is_set():
            worker = PodWorker(self, pod)
            with self._lock:
                self.workers[uid] = worker
            worker.start()

    def watch_loop(self) -> None:
        selector = f"spec.nodeName={self.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self._json(
                    self.v1.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                )
                present = set()
                for pod in listing["items"]:
                    present.add(pod["metadata"]["uid"])
                    self.dispatch("MODIFIED", pod)
                with self._lock:
                    vanished = [w for uid, w in self.workers.items() if uid not in present]
                for w in vanished:
                    w.deleted()
                self.watching = True
                stream = watch.Watch()
                for ev in stream.stream(
                    self.v1.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing["metadata"]["resourceVersion"],
                    timeout_seconds=60,
                ):
                    if self.stopping.is_set():
                        stream.stop()
                        break
                    if ev["type"] == "ERROR":
                        break  # e.g. 410 Gone: list again
                    self.dispatch(ev["type"], ev["raw_object"])
            except Exception as e:
                self.watching = False
                log.warning("pod watch interrupted (%s); listing again", e)
                self.stopping.wait(1.0)

    # --- running -------------------------------------------------------------------

    def serve_health(self, port: int) -> ThreadingHTTPServer:
        agent = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path == "/healthz":
                    ok = agent.watching and not agent.stopping.is_set()
                    body = b"ok" if ok else b"not watching pods"
                    self.send_response(200 if ok else 503)
                elif self.path == "/pods":
                    with agent._lock:
                        pods = {
                            w.key: {
                                "ip": w.ip,
                                "pids": [c.proc.pid for c in w.containers if c.running and c.proc],
                            }
                            for w in agent.workers.values()
                        }
                    body = json.dumps(pods).encode()
                    self.send_response(200)
                else:
                    body = b"not found"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, name="healthz", daemon=True).start()
        return server

    def run(
        self, healthz_port: int | None = None, kubelet: tuple[int, Path, Path, Path] | None = None
    ) -> None:
        """Serve until ``stopping`` is set. ``kubelet``: (port, cert, key, client CA) of the kubelet API."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.pods_dir.mkdir(parents=True, exist_ok=True)
        kubelet_server = None
        if kubelet:
            self.kubelet_port = kubelet[0]
            kubelet_server = kubeletapi.serve(self, *kubelet)
        self.register()
        self._renew_lease()
        server = self.serve_health(healthz_port) if healthz_port else None
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        watcher = threading.Thread(target=self.watch_loop, name="watch", daemon=True)
        watcher.start()
        self.stopping.wait()
        log.info("stopping: ending every pod's processes")
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            w.update(w.pod)  # wake it
        for w in workers:
            w.join(self.shutdown_grace + 10)
        for srv in (server, kubelet_server):
            if srv:
                srv.shutdown()
        with contextlib.suppress(Exception):
            self.api_client.close()
