"""`down` stops exactly what `up` started: recorded processes are identified by
pid *and* kernel start time, so a recycled pid is never signalled."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from localcluster.cluster import LocalCluster, Ports, ProcessRecord, _start_ticks, is_alive


def _sleeper(tmp_path: Path, name: str, ignore_term: bool = False) -> tuple[subprocess.Popen, Path]:
    """A process that notes in a file the SIGTERM it gets (or ignores it)."""
    note = tmp_path / f"{name}.signals"
    code = "import signal, sys, time\n"
    if ignore_term:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    else:
        code += (
            "def on_term(*_):\n"
            f"    open({str(note)!r}, 'w').write('SIGTERM')\n"
            "    sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, on_term)\n"
        )
    code += "print('ready', flush=True)\ntime.sleep(300)\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout.readline().strip() == "ready"  # handlers are installed before we signal
    return proc, note


def _record(name: str, proc: subprocess.Popen, tick_offset: int = 0) -> ProcessRecord:
    ticks = _start_ticks(proc.pid)
    assert ticks is not None
    return ProcessRecord(name, proc.pid, ticks + tick_offset, [sys.executable])


def _cluster_with(tmp_path: Path, records: list[ProcessRecord]) -> LocalCluster:
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.dir.mkdir()
    cluster._save_state(Ports(1, 2, 3, 4, 5, 6, 7, 8, 9), records)
    return cluster


def test_down_stops_recorded_processes_and_spares_a_recycled_pid(tmp_path: Path) -> None:
    (ours, ours_note), (stranger, stranger_note) = _sleeper(tmp_path, "ours"), _sleeper(tmp_path, "stranger")
    try:
        # Same pid as recorded, different start time: another process now owns the pid.
        cluster = _cluster_with(tmp_path, [_record("etcd", ours), _record("kwok", stranger, tick_offset=1)])
        assert cluster.down() == ["etcd"]
        assert ours_note.read_text() == "SIGTERM"  # asked to stop, not killed outright
        assert _start_ticks(ours.pid) is None
        assert stranger.poll() is None and not stranger_note.exists()
    finally:
        for p in (ours, stranger):
            p.kill()
            p.wait()


def test_down_escalates_to_sigkill_after_the_grace_period(tmp_path: Path) -> None:
    stubborn, _ = _sleeper(tmp_path, "stubborn", ignore_term=True)
    try:
        rec = _record("kube-apiserver", stubborn)
        cluster = _cluster_with(tmp_path, [rec])
        assert cluster.down(grace=0.5) == ["kube-apiserver"]
        assert not is_alive(rec)  # it ignores SIGTERM, so only SIGKILL ended it
    finally:
        stubborn.kill()
        stubborn.wait()


def test_down_forgets_the_cluster_but_keeps_its_logs(tmp_path: Path) -> None:
    cluster = _cluster_with(tmp_path, [])
    (cluster.dir / "etcd").mkdir()
    cluster.log_dir.mkdir()
    (cluster.log_dir / "etcd.log").write_text("last words\n")
    cluster.down()
    assert sorted(p.name for p in cluster.dir.iterdir()) == ["logs"]
    assert cluster.status().detail == "not started"


def test_a_dead_process_is_not_alive_and_status_names_it(tmp_path: Path) -> None:
    proc, _ = _sleeper(tmp_path, "dead")
    rec = _record("kube-scheduler", proc)
    proc.kill()
    proc.wait()
    assert not is_alive(rec)
    status = _cluster_with(tmp_path, [rec]).status()
    assert not status.running
    assert "kube-scheduler" in status.detail


def test_ports_picked_for_a_cluster_are_distinct() -> None:
    ports = Ports.pick_free()
    values = list(vars(ports).values())
    assert len(set(values)) == len(values)
    assert all(1024 < p < 65536 for p in values)


def test_a_cluster_started_by_other_harness_code_is_not_reused(tmp_path: Path) -> None:
    import json

    cluster = _cluster_with(tmp_path, [])
    state = json.loads(cluster._state_file.read_text())
    # An older harness's state: another digest, and no port for a newer component.
    state["harness"] = "0" * 16
    del state["ports"]["kubelet"]
    cluster._state_file.write_text(json.dumps(state))
    st = cluster.status()
    assert not st.running
    assert "started by other code" in st.detail
    assert cluster.down() == []  # still readable, so `down` (and `up`) can clean it away
