"""One pod on the local node: its volumes, its containers as processes, its
probes and its status, from binding to deletion (the kubelet's pod worker)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import images, podenv, probes, volumes

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger("localnode.pod")
Obj = dict[str, Any]

TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048
MAX_BACKOFF = 300.0
TICK = 0.2


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class Stop(Exception):
    """The pod's worker is done (the pod is gone, or the agent stops)."""


class Container:
    def __init__(self, worker: PodWorker, spec: Obj, init: bool):
        self.w = worker
        self.spec = spec
        self.name: str = spec["name"]
        self.init = init
        self.dir = worker.dir / "containers" / self.name
        self.proc: subprocess.Popen | None = None
        self.restart_count = 0
        self.state: Obj = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: Obj = {}
        self.started_at = ""
        self.started_epoch = 0.0  # for the resource metrics (container_start_time_seconds)
        self.started_mono = 0.0
        self.probes: dict[str, probes.Probe] = {}
        self.backoff = 0.0
        self.restart_at: float | None = None
        self.restart_pending = False  # the next start is a restart (counted)
        self.reaped = False  # the current process's exit is recorded
        self.done = False  # terminated and will not restart

    # --- state --------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def started(self) -> bool:
        p = self.probes.get("startup")
        return self.running and (p is None or p.result is True)

    @property
    def ready(self) -> bool:
        p = self.probes.get("readiness")
        return self.started and (p is None or p.result is True)

    def log_path(self) -> Path:
        return self.dir / f"{self.restart_count}.log"

    def status(self) -> Obj:
        out: Obj = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
            "state": self.state,
        }
        if self.proc is not None:
            out["containerID"] = f"localnode://{self.proc.pid}"
            with contextlib.suppress(images.UnknownImage):
                out["imageID"] = f"localnode://{images.lookup(self.spec.get('image', '')).name}"
        if self.last_state:
            out["lastState"] = self.last_state
        return out

    # --- lifecycle ----------------------------------------------------------

    def start(self) -> bool:
        """Start the process; False (with the container terminated or waiting) if it cannot."""
        w = self.w
        image = self.spec.get("image", "")
        try:
            profile = images.lookup(image)
            profile.check(image)  # e.g. vLLM without its serving environment: StartError, not a retry loop
        except images.UnknownImage as e:
            w.agent.event(w.pod, "Warning", "Failed", f"Error: {e}")
            self._terminated(128, "StartError", str(e), now_iso())
            return False
        try:
            env = w.container_env(self.spec, profile)
            command = [podenv.expand(a, env) for a in self.spec.get("command") or []]
            args = self.spec.get("args")
            args = None if args is None else [podenv.expand(a, env) for a in args]
            argv = profile.argv(command, args, w.ip)
            mounts = w.container_mounts(self.spec, env)
        except (podenv.ConfigError, images.UnknownImage, KeyError) as e:
            msg = str(e)
            if self.state.get("waiting", {}).get("message") != msg:
                w.agent.event(w.pod, "Warning", "Failed", f"Error: {msg}")
            self.state = {"waiting": {"reason": "CreateContainerConfigError", "message": msg}}
            self.restart_at = time.monotonic() + 2.0
            return False
        self.dir.mkdir(parents=True, exist_ok=True)
        term = self.dir / "termination-log"
        term.write_bytes(b"")
        term.chmod(0o666)
        mounts.append(
            {
                "source": str(term),
                "target": self.spec.get("terminationMessagePath") or "/dev/termination-log",
            }
        )
        spec_file = self.dir / "sandbox.json"
        spec_file.write_text(
            json.dumps(
                {
                    "agentPid": os.getpid(),
                    "rootDir": str(self.dir / "rootfs"),
                    "mounts": mounts,
                    "keepVisible": images.host_paths(),
                    "argv": argv,
                    "env": env,
                    "workingDir": self.spec.get("workingDir") or "/",
                }
            )
        )
        with open(self.log_path(), "ab") as logf:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "localnode.sandbox", str(spec_file)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd="/",
                env={"PYTHONPATH": str(images.DEV_DIR), "PATH": images.SYSTEM_PATH},
                start_new_session=True,  # its own process group: stopped as a whole
            )
        self.reaped = False
        self.started_at = now_iso()
        self.started_epoch = time.time()
        self.started_mono = time.monotonic()
        self.state = {"running": {"startedAt": self.started_at}}
        self.probes = probes.probes_for(self.spec, self.started_mono)
        self.restart_at = None
        w.agent.event(
            w.pod, "Normal", "Started", f"Started container {self.name} ({profile.name}: {argv[0]})"
        )
        log.info("%s: started %s as pid %d: %s", w.key, self.name, self.proc.pid, " ".join(argv))
        return True

    def _terminated(self, code: int, reason: str, message: str, started: str) -> None:
        term: Obj = {"exitCode": code, "reason": reason, "finishedAt": now_iso()}
        if started:
            term["startedAt"] = started
        if message:
            term["message"] = message
        if self.proc is not None:
            term["containerID"] = f"localnode://{self.proc.pid}"
        self.state = {"terminated": term}

    def reap(self) -> bool:
        """If the process has exited, record how; True when it just did."""
        if self.proc is None or self.reaped or self.proc.poll() is None:
            return False
        self.reaped = True
        rc = self.proc.returncode
        code = 128 - rc if rc < 0 else rc
        message = self._termination_message(code)
        reason = "Completed" if code == 0 else "Error"
        self._terminated(code, reason, message, self.started_at)
        self.probes = {}
        log.info("%s: container %s exited with %d", self.w.key, self.name, code)
        return True

    def _termination_message(self, code: int) -> str:
        with contextlib.suppress(OSError):
            text = (self.dir / "termination-log").read_bytes()[:TERMINATION_MESSAGE_MAX]
            if text.strip():
                return text.decode(errors="replace")
        if code != 0 and self.spec.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                lines = self.log_path().read_bytes().splitlines()[-FALLBACK_LOG_LINES:]
                return b"\n".join(lines)[-FALLBACK_LOG_BYTES:].decode(errors="replace")
        return ""

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.proc is not None
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float, reason: str) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the process group)."""
        if not self.running:
            return
        self.w.agent.event(self.w.pod, "Normal", "Killing", f"Stopping container {self.name}: {reason}")
        deadline = time.monotonic() + grace
        # A preStop sleep (lifecycle.preStop.sleep) runs first, inside the grace period.
        pause = float(
            ((self.spec.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
        )
        if pause and grace:
            time.sleep(min(pause, grace))
        self.signal(signal.SIGTERM)
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running:
            self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait()
        # Whatever the group left behind (a shell's children) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.reap()

    def will_restart(self, policy: str) -> bool:
        term = self.state.get("terminated")
        if term is None:
            return False
        if self.init:
            return term["exitCode"] != 0 and policy != "Never"
        return policy == "Always" or (policy == "OnFailure" and term["exitCode"] != 0)

    def schedule_restart(self, initial: float) -> None:
        ran = time.monotonic() - self.started_mono
        self.backoff = initial if ran > 600 or not self.backoff else min(self.backoff * 2, MAX_BACKOFF)
        self.restart_at = time.monotonic() + self.backoff
        self.restart_pending = True
        self.last_state = self.state
        self.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off {self.backoff:.0f}s restarting failed container={self.name} "
                f"pod={self.w.pod['metadata']['name']}",
            }
        }
        self.w.agent.event(
            self.w.pod, "Warning", "BackOff", f"Back-off {self.backoff:.0f}s restarting container {self.name}"
        )

    def retry(self) -> None:
        """Start again after a back-off (a restart) or a configuration error (not one)."""
        if self.restart_pending:
            self.restart_pending = False
            self.restart_count += 1
        self.start()


class PodWorker(threading.Thread):
    """Runs one pod. The agent feeds it the pod's latest object; it writes the
    pod's status and, once the pod is deleted and its processes stopped, removes it."""

    def __init__(self, agent: Agent, pod: Obj):
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.uid: str = meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = agent.pods_dir / self.uid
        self.ip = ""
        self.gone = False
        self._wake = threading.Condition()
        self._posted: Obj | None = None
        self._transitions: dict[str, tuple[str, str]] = {}
        self.vols = volumes.PodVolumes()
        self.init_containers = [Container(self, c, True) for c in pod["spec"].get("initContainers") or []]
        self.containers = [Container(self, c, False) for c in pod["spec"]["containers"]]
        self.initialized = not self.init_containers
        self.start_time = ""
        self.final_phase = ""

    # --- fed by the agent ------------------------------------------------------

    def update(self, pod: Obj) -> None:
        with self._wake:
            self.pod = pod
            self._wake.notify()

    def deleted(self) -> None:
        with self._wake:
            self.gone = True
            self._wake.notify()

    def _sleep(self, seconds: float) -> None:
        with self._wake:
            self._wake.wait(seconds)

    @property
    def deleting(self) -> bool:
        return self.gone or bool(self.pod["metadata"].get("deletionTimestamp"))

    # --- helpers for containers ----------------------------------------------

    def container_env(self, spec: Obj, profile: images.ImageProfile) -> dict[str, str]:
        host, port = self.agent.apiserver
        base = {
            **profile.env,
            "HOSTNAME": self.pod["spec"].get("hostname") or self.pod["metadata"]["name"],
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }
        # As the kubelet, the agent knows the pod's IP before the watched copy shows it: fieldRefs to
        # status.podIP resolve from its own view.
        pod = {**self.pod, "status": {**(self.pod.get("status") or {}), **self.addresses()}}
        return podenv.container_env(pod, spec, base, self.agent.lookup, self.agent.allocatable)

    def container_mounts(self, spec: Obj, env: dict[str, str]) -> list[Obj]:
        out = []
        for vm in spec.get("volumeMounts") or []:
            if vm["name"] not in self.vols.paths:
                raise podenv.ConfigError(f'volumeMount "{vm["name"]}" names no volume of the pod')
            src = self.vols.paths[vm["name"]]
            sub = vm.get("subPath") or podenv.expand(vm.get("subPathExpr", ""), env)
            if sub:
                src = src / sub
                if not src.exists():
                    src.mkdir(parents=True)
            out.append({"source": str(src), "target": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
        return out

    # --- status ----------------------------------------------------------------

    def _cond(self, ctype: str, ok: bool, reason: str = "") -> Obj:
        status = "True" if ok else "False"
        prev = self._transitions.get(ctype)
        if prev is None or prev[0] != status:
            self._transitions[ctype] = (status, now_iso())
        c: Obj = {"type": ctype, "status": status, "lastTransitionTime": self._transitions[ctype][1]}
        if reason and not ok:
            c["reason"] = reason
        return c

    def phase(self) -> str:
        if self.final_phase:
            return self.final_phase
        if not self.initialized or all(
            "waiting" in c.state and not c.restart_count and not c.last_state for c in self.containers
        ):
            return "Pending"
        if all(c.done for c in self.containers):
            codes = [c.state["terminated"]["exitCode"] for c in self.containers]
            return "Succeeded" if all(code == 0 for code in codes) else "Failed"
        return "Running"

    def addresses(self) -> Obj:
        """The pod's and its node's IPs, as status fields."""
        out: Obj = {"hostIP": self.agent.node_ip, "hostIPs": [{"ip": self.agent.node_ip}]}
        if self.ip:
            out["podIP"] = self.ip
            out["podIPs"] = [{"ip": self.ip}]
        return out

    def build_status(self, reason: str = "", message: str = "") -> Obj:
        containers_ready = bool(self.containers) and all(c.ready for c in self.containers)
        existing = [
            c
            for c in (self.pod.get("status") or {}).get("conditions") or []
            if c["type"] not in ("PodReadyToStartContainers", "Initialized", "ContainersReady", "Ready")
        ]
        # Readiness gates: conditions others (a controller) set on the pod must be True too.
        gates = {g["conditionType"] for g in self.pod["spec"].get("readinessGates") or []}
        gates_ok = all(any(c["type"] == g and c["status"] == "True" for c in existing) for g in gates)
        ready = containers_ready and gates_ok
        phase = self.phase()
        not_ready = "PodCompleted" if phase in ("Succeeded", "Failed") else "ContainersNotReady"
        status: Obj = {
            "phase": phase,
            # Strategic merge by `type`: conditions others own (PodScheduled, readiness gates) are kept.
            "conditions": [
                self._cond(
                    "PodReadyToStartContainers", bool(self.ip) and phase not in ("Succeeded", "Failed")
                ),
                self._cond("Initialized", self.initialized, "ContainersNotInitialized"),
                self._cond("ContainersReady", containers_ready, not_ready),
                self._cond("Ready", ready, not_ready if not containers_ready else "ReadinessGatesNotReady"),
            ],
            **self.addresses(),
            "containerStatuses": [c.status() for c in self.containers],
        }
        if self.start_time:
            status["startTime"] = self.start_time
        if self.init_containers:
            status["initContainerStatuses"] = [c.status() for c in self.init_containers]
        if reason:
            status["reason"] = reason
            status["message"] = message
        return status

    def publish(self, reason: str = "", message: str = "") -> None:
        status = self.build_status(reason, message)
        if status == self._posted or self.gone:
            return
        if self.agent.patch_pod_status(self.pod, status):
            self._posted = status

    # --- the worker ---------------------------------------------------------------

    def run(self) -> None:
        try:
            self._lifecycle()
        except Stop:
            pass
        except Exception:
            log.exception("%s: pod worker failed", self.key)
            with contextlib.suppress(Exception):
                self._stop_all(2.0, "the local node's pod worker failed")
                self.final_phase = "Failed"
                self.publish("LocalNodeError", "the local node agent failed to run this pod; see its log")
        finally:
            for c in self.init_containers + self.containers:
                with contextlib.suppress(Exception):
                    c.stop(0, "cleanup")
            self.agent.release(self)
            if self.gone or self.deleting:
                shutil.rmtree(self.dir, ignore_errors=True)

    def _check(self) -> None:
        """Between steps: the pod deleted, or the agent stopping?"""
        if self.agent.stopping.is_set():
            if self.phase() in ("Succeeded", "Failed"):
                raise Stop  # a terminal phase never changes
            self._stop_all(self.agent.shutdown_grace, "the local node agent is stopping")
            self.final_phase = "Failed"
            self.publish(
                "Terminated", "the local node agent stopped; the pod's processes were stopped with it"
            )
            raise Stop
        if self.deleting:
            self._finish_deletion()
            raise Stop

    def _grace(self) -> float:
        meta = self.pod["metadata"]
        g = meta.get("deletionGracePeriodSeconds")
        if g is None:
            g = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(g)

    def _stop_all(self, grace: float, reason: str) -> None:
        running = [c for c in self.init_containers + self.containers if c.running]
        threads = [threading.Thread(target=c.stop, args=(grace, reason)) for c in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for c in running:
            c.done = True

    def _finish_deletion(self) -> None:
        if not self.gone:
            self._stop_all(self._grace(), "the pod is being deleted")
            for c in self.containers:
                if "terminated" not in c.state:
                    c._terminated(137, "ContainerStatusUnknown", "the pod was deleted before it ran", "")
                c.done = True
            if not self.final_phase and self.phase() not in ("Succeeded", "Failed"):
                # The kubelet moves a deleted pod to a terminal phase before removing it.
                self.final_phase = (
                    "Succeeded"
                    if all(c.state["terminated"]["exitCode"] == 0 for c in self.containers)
                    else "Failed"
                )
            self.publish()
            self.agent.delete_pod(self.pod)
        else:
            self._stop_all(0, "the pod was removed")

    def _adopt_stale(self) -> bool:
        """A pod the agent started before it restarted: its processes are gone."""
        status = self.pod.get("status") or {}
        if status.get("phase") in ("Succeeded", "Failed"):
            self.final_phase = status["phase"]
            return True
        if status.get("podIP") and status.get("containerStatuses"):
            self.final_phase = "Failed"
            self._posted = None
            self.agent.patch_pod_status(
                self.pod,
                {
                    **status,
                    "phase": "Failed",
                    "reason": "NodeAgentRestarted",
                    "message": "the local node agent restarted; the pod's processes did not survive it",
                },
            )
            return True
        return False

    def _wait_for_deletion(self) -> None:
        while True:
            self._check()
            self._sleep(1.0)

    def _lifecycle(self) -> None:
        if self._adopt_stale():
            self._wait_for_deletion()
        self._check()
        self.ip = self.agent.acquire_ip(self)
        self.start_time = now_iso()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.publish()
        self._prepare_volumes()
        policy = self.pod["spec"].get("restartPolicy", "Always")
        for c in self.init_containers:
            self._run_init(c, policy)
        self.initialized = True
        for c in self.containers:
            if not c.start() and "terminated" in c.state:
                self._after_exit(c, policy)
        self.publish()
        while True:
            self._check()
            now = time.monotonic()
            for c in self.containers:
                if c.reap():
                    self._after_exit(c, policy)
                if c.restart_at is not None and now >= c.restart_at and not c.done:
                    c.retry()
                    if "terminated" in c.state:
                        self._after_exit(c, policy)
                self._probe(c, now)
            for tok in self.vols.tokens:
                if now >= tok.renew_at:
                    with contextlib.suppress(Exception):
                        volumes.renew(self.pod["metadata"]["namespace"], tok, self.agent.request_token)
            self.publish()
            if all(c.done for c in self.containers):
                self._wait_for_deletion()
            self._sleep(TICK)

    def _prepare_volumes(self) -> None:
        reported = ""
        while True:
            self._check()
            try:
                self.vols = volumes.prepare(
                    self.pod,
                    self.dir / "volumes",
                    self.agent.lookup,
                    self.agent.claim_volume,
                    self.agent.request_token,
                )
                return
            except podenv.ConfigError as e:
                if str(e) != reported:
                    reported = str(e)
                    self.agent.event(self.pod, "Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
                    for c in self.init_containers + self.containers:
                        c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                    self.publish()
            self._sleep(2.0)

    def _run_init(self, c: Container, policy: str) -> None:
        c.start()
        while True:
            self._check()
            now = time.monotonic()
            if c.reap() or ("terminated" in c.state and c.restart_at is None):
                if c.state["terminated"]["exitCode"] == 0:
                    c.done = True
                    self.publish()
                    return
                if not c.will_restart(policy):
                    c.done = True
                    self.final_phase = "Failed"
                    self.publish()
                    self._wait_for_deletion()
                c.schedule_restart(self.agent.restart_backoff)
            if c.restart_at is not None and now >= c.restart_at:
                c.retry()
            self.publish()
            self._sleep(TICK)

    def _after_exit(self, c: Container, policy: str) -> None:
        if c.will_restart(policy):
            c.schedule_restart(self.agent.restart_backoff)
        else:
            c.done = True

    def _probe(self, c: Container, now: float) -> None:
        if not c.running:
            return
        assert c.proc is not None
        order = ["startup"] if "startup" in c.probes and c.probes["startup"].result is not True else []
        order = order or [k for k in ("readiness", "liveness") if k in c.probes]
        for kind in order:
            p = c.probes[kind]
            if not p.due(now):
                continue
            ok, msg = probes.run_probe(p.spec, c.spec, self.ip, c.proc.pid)
            changed = p.record(ok, msg, time.monotonic())
            if not ok:
                self.agent.event(self.pod, "Warning", "Unhealthy", f"{kind.capitalize()} probe failed: {msg}")
            if changed and p.result is False and kind in ("startup", "liveness"):
                grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
                c.stop(grace, f"failed {kind} probe, will be restarted")
                policy = self.pod["spec"].get("restartPolicy", "Always")
                self._after_exit(c, policy)
                return
