"""The harness's own promises: `up` is idempotent, everything listens and talks
on loopback only, and `down` stops every process it started, the local node's
pods included. Runs a second,
private cluster in a temporary state folder so the session's cluster is untouched."""

from __future__ import annotations

import ipaddress
import json
import os
import time
from pathlib import Path

import pytest

from localcluster.cluster import COMPONENTS, LocalCluster, _start_ticks, is_alive


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def _addr(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip_hex = hex_addr.split(":")[0]
    raw = bytes.fromhex(ip_hex)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc/net/tcp6 stores four little-endian 32-bit words.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    v6 = ipaddress.IPv6Address(words)
    return v6.ipv4_mapped or v6


def _tcp_sockets(inodes: set[str]) -> list[tuple[str, object, object]]:
    """(state, local ip, remote ip) of every TCP socket whose inode is given."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes:
                found.append(("LISTEN" if f[3] == "0A" else f[3], _addr(f[1]), _addr(f[2])))
    return found


SLEEPER = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "nodeSelector": {"loraforge.io/local-node": "true"},
        "tolerations": [{"key": "loraforge.io/local-node", "operator": "Exists"}],
        "containers": [{"name": "sleep", "image": "busybox", "command": ["sleep", "600"]}],
    },
}


@pytest.fixture
def private_cluster(tmp_path: Path):
    cluster = LocalCluster(tmp_path / "cluster")
    try:
        yield cluster
    finally:
        cluster.down()


def test_up_is_idempotent_loopback_only_and_down_stops_everything(private_cluster: LocalCluster) -> None:
    private_cluster.up()
    _, procs = private_cluster._load_state()
    assert [p.name for p in procs] == list(COMPONENTS)
    assert all(is_alive(p) for p in procs)

    # A second `up` finds it running and starts nothing.
    private_cluster.up()
    _, again = private_cluster._load_state()
    assert [(p.pid, p.start_ticks) for p in again] == [(p.pid, p.start_ticks) for p in procs]

    for proc in procs:
        sockets = _tcp_sockets(_socket_inodes(proc.pid))
        listening = [local for state, local, _ in sockets if state == "LISTEN"]
        assert listening, f"{proc.name} listens on nothing"
        for state, local, remote in sockets:
            assert local.is_loopback, f"{proc.name} has a socket on {local}"
            if state != "LISTEN":
                assert remote.is_loopback, f"{proc.name} talks to {remote}"

    # A pod really running on the local node: `down` must end its process too.
    private_cluster.kubectl("apply", "-f", "-", input=json.dumps(SLEEPER))
    deadline = time.monotonic() + 60
    pid = None
    while pid is None and time.monotonic() < deadline:
        out = private_cluster.kubectl(
            "get", "pod", "sleeper", "-o", "jsonpath={.status.containerStatuses[0].containerID}", check=False
        ).stdout
        pid = int(out.removeprefix("localnode://")) if out.startswith("localnode://") else None
        time.sleep(0.2)
    assert pid is not None, "the pod never started on the local node"
    assert Path(f"/proc/{pid}").exists()

    stopped = private_cluster.down()
    assert sorted(stopped) == sorted(COMPONENTS)
    assert not any(is_alive(p) for p in procs)
    assert _start_ticks(pid) is None, f"the pod's process {pid} outlived the cluster"
    assert not private_cluster.kubeconfig.exists()
    assert not private_cluster.status().running
