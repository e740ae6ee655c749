"""Start, inspect and stop the local control plane.

Every component is a plain process bound to 127.0.0.1 on ports chosen free at
start, with TLS between all of them. What was started is recorded in
``<state>/state.json`` (pid + the kernel's start time of each process), so
``down`` stops exactly those processes and never a stranger that reused a pid.
The admin kubeconfig is written to ``<state>/kubeconfig``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import pki
from .build import ensure_built
from .paths import MANIFESTS_DIR, PACKAGE_DIR, state_dir

LOOPBACK = "127.0.0.1"
SERVICE_CIDR = "10.96.0.0/16"
# Pod IPs handed out by kwok. Loopback on purpose: nothing runs behind a fake
# node's pod, and anything that tries to connect to one stays on this machine.
POD_CIDR = "127.64.0.0/16"
CLUSTER_NAME = "loraforge-local"
NODE_LEASE_SECONDS = 40

# Start order; `down` stops in reverse. The local node agent (dev/localnode)
# runs the pods bound to node `local` as processes; kwok fakes the rest.
# metrics-server serves the Metrics API from the local node's usage.
COMPONENTS = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
    "localnode",
    "metrics-server",
)
METRICS_API = "v1beta1.metrics.k8s.io"


def harness_digest() -> str:
    """Digest of the harness's own code: a cluster started by other code is restarted, not reused."""
    h = hashlib.sha256()
    for folder in (PACKAGE_DIR, PACKAGE_DIR.parent / "localnode"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".py", ".yaml", ".env", ".go"):
                h.update(path.relative_to(folder.parent).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


class ClusterError(RuntimeError):
    """The local cluster could not be started or reached; the message says why."""


def _log(msg: str) -> None:
    print(f"[localcluster] {msg}", file=sys.stderr, flush=True)


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int
    kwok: int
    localnode: int
    kubelet: int  # the local node's kubelet API
    metrics_server: int

    @classmethod
    def pick_free(cls) -> Ports:
        # Bind them all at once so the kernel hands out distinct ports, then
        # release; the components bind them a moment later.
        socks = []
        try:
            for _ in range(len(fields(cls))):
                s = socket.socket()
                s.bind((LOOPBACK, 0))
                socks.append(s)
            return cls(*(s.getsockname()[1] for s in socks))
        finally:
            for s in socks:
                s.close()


@dataclass
class ProcessRecord:
    name: str
    pid: int
    start_ticks: int  # /proc/<pid>/stat field 22: identifies this process, not just its pid
    argv: list[str]


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after it are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # zombie: already dead
        return None
    return int(fields[19])


def is_alive(rec: ProcessRecord) -> bool:
    return _start_ticks(rec.pid) == rec.start_ticks


def _terminate(rec: ProcessRecord, sig: signal.Signals, grace: float) -> None:
    """Send ``sig``; SIGKILL if it still lives after ``grace`` seconds; wait until it is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec.pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and is_alive(rec):
        time.sleep(0.05)
    if is_alive(rec):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, signal.SIGKILL)
        while is_alive(rec):
            time.sleep(0.05)
    # Reap it if this process started it (a test session), so no zombie lingers.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(rec.pid, os.WNOHANG)


@dataclass
class ClusterStatus:
    running: bool
    processes: dict[str, bool]
    kubeconfig: Path | None
    detail: str


class LocalCluster:
    def __init__(self, directory: Path | None = None):
        self.dir = (directory or state_dir()).resolve()
        self.pki_dir = self.dir / "pki"
        self.log_dir = self.dir / "logs"
        self.kubeconfig = self.dir / "kubeconfig"
        self._state_file = self.dir / "state.json"
        self._bins: dict[str, Path] | None = None

    def binaries(self) -> dict[str, Path]:
        if self._bins is None:
            self._bins = ensure_built(quiet=True)
        return self._bins

    # --- state -----------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        """Serialise up/down between processes (e.g. two test sessions)."""
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.dir.parent / f".{self.dir.name.lstrip('.')}.lock"
        with open(lock_path, "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _load_state(self) -> tuple[Ports | None, list[ProcessRecord]]:
        if not self._state_file.exists():
            return None, []
        data = json.loads(self._state_file.read_text())
        # A state file written by another version may lack a port: 0, never a crash.
        ports = Ports(**{f.name: data["ports"].get(f.name, 0) for f in fields(Ports)})
        return ports, [ProcessRecord(**p) for p in data["processes"]]

    def _save_state(self, ports: Ports, procs: list[ProcessRecord]) -> None:
        tmp = self._state_file.with_suffix(".tmp")
        state = {"harness": harness_digest(), "ports": asdict(ports), "processes": [asdict(p) for p in procs]}
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self._state_file)

    def status(self) -> ClusterStatus:
        ports, procs = self._load_state()
        if ports is None:
            return ClusterStatus(False, {}, None, "not started")
        alive = {p.name: is_alive(p) for p in procs}
        if json.loads(self._state_file.read_text()).get("harness") != harness_digest():
            return ClusterStatus(
                False,
                alive,
                self.kubeconfig,
                "started by other code of dev/localcluster or dev/localnode (`make cluster` restarts it)",
            )
        if not all(alive.get(c, False) for c in COMPONENTS):
            dead = [c for c in COMPONENTS if not alive.get(c, False)]
            return ClusterStatus(False, alive, self.kubeconfig, f"not running: {', '.join(dead)} down")
        ok, why = self._apiserver_ready(ports)
        return ClusterStatus(ok, alive, self.kubeconfig, "running" if ok else f"apiserver not ready: {why}")

    # --- health probes ----------------------------------------------------

    def _client_tls(self, stem: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki_dir / "ca.crt"))
        ctx.load_cert_chain(str(self.pki_dir / f"{stem}.crt"), str(self.pki_dir / f"{stem}.key"))
        return ctx

    @staticmethod
    def _get(port: int, path: str, tls: ssl.SSLContext | None) -> tuple[int, str]:
        if tls is None:
            conn: http.client.HTTPConnection = http.client.HTTPConnection(LOOPBACK, port, timeout=5)
        else:
            conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=5, context=tls)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode(errors="replace")
        finally:
            conn.close()

    def _apiserver_ready(self, ports: Ports) -> tuple[bool, str]:
        try:
            code, body = self._get(ports.apiserver, "/readyz", self._client_tls("admin"))
        except (OSError, ssl.SSLError) as e:
            return False, str(e)
        return code == 200, body.strip()[-500:]

    def _probe(self, name: str, ports: Ports) -> tuple[bool, str]:
        # kube-controller-manager and kube-scheduler serve /healthz with a
        # self-signed certificate they generate; a loopback liveness probe
        # needs no verification of it.
        insecure = ssl._create_unverified_context()  # noqa: S323
        try:
            if name == "etcd":
                code, body = self._get(
                    ports.etcd_client, "/health", self._client_tls("apiserver-etcd-client")
                )
                return code == 200 and '"health":"true"' in body.replace(" ", ""), body
            if name == "kube-apiserver":
                return self._apiserver_ready(ports)
            if name == "kube-controller-manager":
                code, body = self._get(ports.controller_manager, "/healthz", insecure)
            elif name == "kube-scheduler":
                code, body = self._get(ports.scheduler, "/healthz", insecure)
            elif name == "localnode":
                code, body = self._get(ports.localnode, "/healthz", None)
            elif name == "metrics-server":
                code, body = self._get(ports.metrics_server, "/livez", insecure)
            else:
                code, body = self._get(ports.kwok, "/healthz", None)
        except (OSError, ssl.SSLError) as e:
            return False, str(e)
        return code == 200, body

    # --- command lines ------------------------------------------------------

    def _argv(self, name: str, ports: Ports, bins: dict[str, Path]) -> list[str]:
        p = self.pki_dir
        cfg = self.dir / "config"
        if name == "etcd":
            peer = f"http://{LOOPBACK}:{ports.etcd_peer}"
            client = f"https://{LOOPBACK}:{ports.etcd_client}"
            return [
                str(bins["etcd"]),
                "--name=local",
                f"--data-dir={self.dir / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                # A single member; the peer URL is never dialled but must not
                # collide with another etcd's default 2380.
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=local={peer}",
                f"--cert-file={p / 'etcd-server.crt'}",
                f"--key-file={p / 'etcd-server.key'}",
                f"--trusted-ca-file={p / 'ca.crt'}",
                "--client-cert-auth=true",
                # Test cluster: durability across power loss is not needed,
                # and fsync dominates etcd latency on shared disks.
                "--unsafe-no-fsync=true",
                "--log-level=warn",
            ]
        if name == "kube-apiserver":
            return [
                str(bins["kube-apiserver"]),
                f"--etcd-servers=https://{LOOPBACK}:{ports.etcd_client}",
                f"--etcd-cafile={p / 'ca.crt'}",
                f"--etcd-certfile={p / 'apiserver-etcd-client.crt'}",
                f"--etcd-keyfile={p / 'apiserver-etcd-client.key'}",
                f"--bind-address={LOOPBACK}",
                f"--advertise-address={LOOPBACK}",
                f"--secure-port={ports.apiserver}",
                f"--tls-cert-file={p / 'apiserver.crt'}",
                f"--tls-private-key-file={p / 'apiserver.key'}",
                f"--client-ca-file={p / 'ca.crt'}",
                "--authorization-mode=Node,RBAC",
                # As in real clusters (kubeadm sets it too): privileged pods are
                # gated by Pod Security admission per namespace, not globally.
                "--allow-privileged=true",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={p / 'sa.pub'}",
                f"--service-account-signing-key-file={p / 'sa.key'}",
                # The default `kubernetes` Endpoints may not hold a loopback
                # address (API validation), so nothing reconciles them here.
                "--endpoint-reconciler-type=none",
                f"--requestheader-client-ca-file={p / 'front-proxy-ca.crt'}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={p / 'front-proxy-client.crt'}",
                f"--proxy-client-key-file={p / 'front-proxy-client.key'}",
                # `kubectl logs` reaches the local node's kubelet API by its address, over TLS both ways.
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                "--profiling=false",
            ]
        if name == "kube-controller-manager":
            kc = str(cfg / "kube-controller-manager.kubeconfig")
            return [
                str(bins["kube-controller-manager"]),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports.controller_manager}",
                f"--cert-dir={self.dir / 'kube-controller-manager'}",
                f"--cluster-name={CLUSTER_NAME}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p / 'sa.key'}",
                f"--root-ca-file={p / 'ca.crt'}",
                f"--cluster-signing-cert-file={p / 'ca.crt'}",
                f"--cluster-signing-key-file={p / 'ca.key'}",
                "--profiling=false",
            ]
        if name == "kube-scheduler":
            kc = str(cfg / "kube-scheduler.kubeconfig")
            return [
                str(bins["kube-scheduler"]),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports.scheduler}",
                f"--cert-dir={self.dir / 'kube-scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ]
        if name == "kwok":
            return [
                str(bins["kwok"]),
                f"--kubeconfig={cfg / 'kwok.kubeconfig'}",
                f"--config={MANIFESTS_DIR / 'kwok.yaml'}",
                f"--server-address={LOOPBACK}:{ports.kwok}",
                f"--cidr={POD_CIDR}",
                f"--node-ip={LOOPBACK}",
                f"--node-lease-duration-seconds={NODE_LEASE_SECONDS}",
            ]
        if name == "localnode":
            p = self.pki_dir
            return [
                sys.executable,
                "-m",
                "localnode",
                f"--kubeconfig={self.kubeconfig}",
                f"--state-dir={self.dir / 'localnode'}",
                f"--healthz-port={ports.localnode}",
                f"--kubelet-port={ports.kubelet}",
                f"--tls-cert={p / 'localnode-kubelet.crt'}",
                f"--tls-key={p / 'localnode-kubelet.key'}",
                f"--client-ca={p / 'ca.crt'}",
                # Pod IPs from a loopback /24 of this cluster's own, so two
                # clusters' pods (a test's private one) never share an address.
                f"--pod-subnet=127.0.{zlib.crc32(str(self.dir).encode()) % 250 + 1}",
            ]
        if name == "metrics-server":
            kc = str(cfg / "metrics-server.kubeconfig")
            return [
                str(bins["metrics-server"]),
                f"--kubeconfig={kc}",
                f"--authentication-kubeconfig={kc}",
                f"--authorization-kubeconfig={kc}",
                f"--bind-address={LOOPBACK}",
                f"--secure-port={ports.metrics_server}",
                f"--tls-cert-file={p / 'metrics-server-serving.crt'}",
                f"--tls-private-key-file={p / 'metrics-server-serving.key'}",
                # Only the local node has a kubelet API; kwok's fake nodes have none.
                "--node-selector=loraforge.io/local-node=true",
                "--kubelet-use-node-status-port",
                "--kubelet-preferred-address-types=InternalIP",
                f"--kubelet-certificate-authority={p / 'ca.crt'}",
                f"--kubelet-client-certificate={p / 'metrics-server.crt'}",
                f"--kubelet-client-key={p / 'metrics-server.key'}",
                # The shortest resolution metrics-server accepts (its default is 60s); it
                # must exceed the kubelet request timeout by a tenth.
                "--metric-resolution=10s",
                "--kubelet-request-timeout=5s",
            ]
        raise ValueError(name)

    # --- lifecycle ----------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], append_log: bool = False) -> ProcessRecord:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)  # every component gets its own explicitly
        # Never route loopback traffic through a proxy from the environment.
        env["NO_PROXY"] = env["no_proxy"] = f"{LOOPBACK},localhost"
        if name == "localnode":
            env["PYTHONPATH"] = str(PACKAGE_DIR.parent)
        # Each start of the cluster writes a fresh log (a restart of one component appends to it);
        # `down` keeps the last one for post-mortems.
        with open(self.log_dir / f"{name}.log", "ab" if append_log else "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=env,
                start_new_session=True,  # outlives `make cluster`; not killed by the terminal's ^C
            )
        ticks = None
        for _ in range(50):
            ticks = _start_ticks(proc.pid)
            if ticks is not None or proc.poll() is not None:
                break
            time.sleep(0.01)
        if ticks is None:
            raise ClusterError(f"{name} exited at once:\n{self.log_tail(name)}")
        return ProcessRecord(name, proc.pid, ticks, argv)

    def log_tail(self, name: str, lines: int = 25) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _wait_healthy(self, rec: ProcessRecord, ports: Ports, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        why = ""
        while time.monotonic() < deadline:
            if not is_alive(rec):
                log = self.log_dir / f"{rec.name}.log"
                raise ClusterError(
                    f"{rec.name} exited during start-up; last lines of {log}:\n{self.log_tail(rec.name)}"
                )
            ok, why = self._probe(rec.name, ports)
            if ok:
                return
            time.sleep(0.25)
        raise ClusterError(
            f"{rec.name} was not healthy after {timeout:.0f}s ({why.strip()[-300:]}); "
            f"last lines of its log:\n{self.log_tail(rec.name)}"
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.binaries()["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def _write_configs(self, ports: Ports) -> None:
        pki.generate(self.pki_dir)
        server = f"https://{LOOPBACK}:{ports.apiserver}"
        cfg = self.dir / "config"
        cfg.mkdir(parents=True, exist_ok=True)
        for ident in pki.CLIENTS:
            if ident.file_stem != "admin":
                text = pki.kubeconfig(server, self.pki_dir, ident.file_stem, CLUSTER_NAME)
                path = cfg / f"{ident.file_stem}.kubeconfig"
                path.write_text(text)
                path.chmod(0o600)
        tmp = self.kubeconfig.with_suffix(".tmp")
        tmp.write_text(pki.kubeconfig(server, self.pki_dir, "admin", CLUSTER_NAME))
        tmp.chmod(0o600)
        os.replace(tmp, self.kubeconfig)

    def _create_nodes(self) -> None:
        # `create`, not `apply`: a Node's status is only accepted from the
        # request that creates it (the main resource resets status on update),
        # and kwok keeps it from then on.
        existing = set(self.kubectl("get", "nodes", "-o", "name").stdout.split())
        import yaml  # local import: only `up` needs it

        items = yaml.safe_load((MANIFESTS_DIR / "nodes.yaml").read_text())["items"]
        for node in items:
            if f"node/{node['metadata']['name']}" not in existing:
                self.kubectl("create", "-f", "-", input=json.dumps(node))

    def _wait_for(self, what: str, check, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            ok, last = check()
            if ok:
                return
            time.sleep(0.5)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}: {last}")

    def _nodes_ready(self) -> tuple[bool, str]:
        out = self.kubectl(
            "get",
            "nodes",
            "-l",
            "type=kwok",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name}="
            '{.status.conditions[?(@.type=="Ready")].status} {end}',
            check=False,
        ).stdout
        pairs = dict(p.split("=", 1) for p in out.split() if "=" in p)
        return bool(pairs) and all(v == "True" for v in pairs.values()), out

    def _apply_metrics_api(self, ports: Ports) -> None:
        """metrics-server's RBAC and APIService; first, as it reads the front proxy CA when it starts."""
        ca = base64.b64encode((self.pki_dir / "ca.crt").read_bytes()).decode()
        text = (MANIFESTS_DIR / "metrics-server.yaml").read_text()
        text = text.replace("${PORT}", str(ports.metrics_server)).replace("${CA_BUNDLE}", ca)
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=text)

    def _metrics_api_available(self) -> tuple[bool, str]:
        out = self.kubectl(
            "get",
            "apiservice",
            METRICS_API,
            "-o",
            'jsonpath={.status.conditions[?(@.type=="Available")].status} '
            '{.status.conditions[?(@.type=="Available")].message}',
            check=False,
        ).stdout
        return out.startswith("True"), out

    def _default_sa(self) -> tuple[bool, str]:
        proc = self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False)
        return proc.returncode == 0, proc.stderr.strip()

    def up(self, timeout: float = 120.0) -> ClusterStatus:
        """Start the cluster, or do nothing if it is already running."""
        with self._lock():
            st = self.status()
            if st.running:
                _log(f"already running; kubeconfig: {self.kubeconfig}")
                return st
            if st.processes:
                _log(f"found a broken cluster ({st.detail}); stopping it and starting afresh")
                self._stop_locked()
            bins = self.binaries()
            self.dir.mkdir(parents=True, exist_ok=True)
            ports = Ports.pick_free()
            self._write_configs(ports)
            procs: list[ProcessRecord] = []
            try:
                for name in COMPONENTS:
                    t0 = time.monotonic()
                    if name == "metrics-server":
                        self._apply_metrics_api(ports)
                    rec = self._spawn(name, self._argv(name, ports, bins))
                    procs.append(rec)
                    self._save_state(ports, procs)
                    self._wait_healthy(rec, ports, timeout)
                    _log(f"{name} healthy ({time.monotonic() - t0:.1f}s, pid {rec.pid})")
                self._create_nodes()
                self._wait_for("the fake nodes to become Ready", self._nodes_ready, timeout)
                self._wait_for("the default ServiceAccount", self._default_sa, timeout)
                self._wait_for(f"the Metrics API ({METRICS_API})", self._metrics_api_available, timeout)
            except BaseException:
                _log("start-up failed; stopping what was started")
                self._stop_locked()
                raise
            _log(f"running; kubeconfig: {self.kubeconfig}")
            return self.status()

    def _stop_locked(self, grace: float = 10.0) -> list[str]:
        _, procs = self._load_state()
        stopped = []
        for rec in reversed(procs):
            if not is_alive(rec):
                continue
            # The local node agent first stops its pods' processes (with their own grace).
            _terminate(rec, signal.SIGTERM, grace + 20 if rec.name == "localnode" else grace)
            stopped.append(rec.name)
        # A stopped cluster is forgotten: the next `up` starts from an empty
        # etcd with fresh certificates. Logs stay for post-mortems.
        for entry in self.dir.glob("*") if self.dir.exists() else ():
            if entry.name == "logs":
                continue
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        return stopped

    # --- one component at a time (fault-injection tests) -----------------------

    def _component(self, name: str) -> tuple[Ports, list[ProcessRecord], int]:
        ports, procs = self._load_state()
        index = next((i for i, p in enumerate(procs) if p.name == name), None)
        if ports is None or index is None:
            raise ClusterError(f"no {name} in this cluster's state (is it running?)")
        return ports, procs, index

    def stop_component(self, name: str, sig: signal.Signals = signal.SIGKILL, grace: float = 10.0) -> None:
        """Stop one component (SIGKILL by default: a crash) and leave it down; the others keep running.
        `start_component` brings it back with the same arguments and data."""
        if name not in COMPONENTS:
            raise ClusterError(f"unknown component {name!r}; one of {', '.join(COMPONENTS)}")
        with self._lock():
            _, procs, index = self._component(name)
            if is_alive(procs[index]):
                _terminate(procs[index], sig, grace)
                _log(f"{name} stopped ({sig.name})")

    def start_component(self, name: str, timeout: float = 120.0) -> None:
        """Start a stopped component again, as it was (same arguments, ports, certificates and etcd
        data), and wait until it is healthy. Does nothing if it is running."""
        with self._lock():
            ports, procs, index = self._component(name)
            if is_alive(procs[index]):
                return
            t0 = time.monotonic()
            rec = self._spawn(name, procs[index].argv, append_log=True)
            procs[index] = rec
            self._save_state(ports, procs)
            self._wait_healthy(rec, ports, timeout)
            _log(f"{name} restarted ({time.monotonic() - t0:.1f}s, pid {rec.pid})")

    def down(self, grace: float = 10.0) -> list[str]:
        """Stop exactly the processes `up` started (SIGTERM, then SIGKILL after
        ``grace`` seconds); return their names."""
        with self._lock():
            return self._stop_locked(grace)
