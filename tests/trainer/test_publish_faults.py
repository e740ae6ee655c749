"""A model store that runs out of space while the trainer publishes.

The promise (loraforge_trainer.publish): a publish that fails leaves no
half-written revision that anyone could take for a real one, reports the
failure as PublishFailed with "(the model store is out of space)" in the
message, never touches the revisions already there, and leaves nothing behind
that would make a later publish take another number: neither the hidden
staging folder nor the claimed revision folder. A retry with space publishes
the next number.

The full disk is real. Each test mounts a small tmpfs over the adapters
folder of a model store, inside a private mount namespace (``unshare --user
--map-root-user --mount``, so no root on the host and no mount visible outside
is needed) held open by a waiting shell. The trainer runs in that namespace
through ``nsenter``; the test reads, fills and frees the tmpfs through
``/proc/<pid>/root`` of that shell, and publishes into it from its own process
the same way. The existing revision v1 lives on the same tmpfs, so it shares
the space the failing publish runs out of. tmpfs counts space in whole pages,
which lets a test leave exactly enough room for some of a revision's files and
not the next one.

- Next to a revision v1, a filler file leaves too little room for a new
  adapter's weights; a real trainer run (tiny model) trains and fails while
  safetensors writes them; after the filler is removed, the retried run
  resumes from its last checkpoint (no training repeated) and publishes v2.
- ``publish()`` called directly with real safetensors of a known size, the
  space running out at each stage: while the weights are written (before a
  number is claimed), while the model card is written (after the claim),
  and while COMPLETE is written (after the files were renamed into the
  claimed folder).

Out of space is a *retryable* failure: the trainer exits with EXIT_FAILED (1),
which the FineTuneJob's podFailurePolicy does not treat as bad input
(EXIT_INVALID_INPUT, 3, fails at once), so the Job's backoffLimit retries it.
Space is often freed or added while a Job waits (old revisions or checkpoints
are deleted, the volume is grown), and a retry is cheap: the checkpoints of
the finished training survive the failed publish, so the retry only
evaluates and publishes. Failing at once would throw that work away.

These tests need ``unshare`` and ``nsenter`` (util-linux) and a kernel that
allows user and mount namespaces, as this project's CI machines (containers
running as root) and usual Linux workstations do. Where they are missing the tests fail and say so
instead of skipping: a skipped test proves nothing.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loraforge_trainer import publish
from loraforge_trainer.errors import EXIT_FAILED, PUBLISH_FAILED, TrainerError

from .conftest import make_store, manifest, run_trainer, small_config

PAGE = 4096  # tmpfs allocates space in pages


class PrivateTmpfs:
    """A tmpfs of `size` at `mountpoint`, mounted in a private mount namespace
    that a waiting shell holds. ``view`` is the mountpoint as this process
    reaches it (through /proc/<pid>/root); ``enter(cwd)`` is the command prefix
    that runs a program inside the namespace, where the tmpfs is at `mountpoint`."""

    def __init__(self, mountpoint: Path, size: int) -> None:
        missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
        if missing:
            pytest.fail(f"{' and '.join(missing)} (util-linux) not found: needed to mount a small tmpfs")
        self.holder = subprocess.Popen(
            [
                "unshare",
                "--user",
                "--map-root-user",
                "--mount",
                "sh",
                "-c",
                # holds the namespace until its stdin closes: at close(), or when this process dies
                'mount -t tmpfs -o size="$1" tmpfs "$2" && echo "$$" && read -r _',
                "sh",
                str(size),
                str(mountpoint),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.holder.stdout is not None
        pid = self.holder.stdout.readline().strip()
        if not pid:
            _, err = self.holder.communicate(timeout=30)
            pytest.fail(
                "cannot mount a tmpfs in a private user and mount namespace "
                f"(unshare --user --map-root-user --mount): {err.strip()}"
            )
        self.pid = int(pid)
        self.view = Path(f"/proc/{self.pid}/root") / mountpoint.relative_to(mountpoint.anchor)
        try:
            assert os.statvfs(self.view).f_blocks * os.statvfs(self.view).f_frsize == size
        except BaseException:
            self.close()
            raise

    def enter(self, cwd: Path) -> list[str]:
        return ["nsenter", f"--target={self.pid}", "--user", "--mount", f"--wd={cwd}"]

    def free(self) -> int:
        s = os.statvfs(self.view)
        return s.f_bavail * s.f_frsize

    def leave_free(self, space: int) -> None:
        """Fill the tmpfs with a filler file until exactly `space` bytes (whole pages) are left."""
        assert space % PAGE == 0
        (self.view / "filler").write_bytes(bytes(self.free() - space))
        assert self.free() == space

    def unfill(self) -> None:
        (self.view / "filler").unlink()

    def close(self) -> None:
        self.holder.communicate(timeout=30)  # closes its stdin: it exits, and the tmpfs goes with it


@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path, int], PrivateTmpfs]]:
    mounted: list[PrivateTmpfs] = []

    def mount(mountpoint: Path, size: int) -> PrivateTmpfs:
        mountpoint.mkdir(parents=True, exist_ok=True)
        mounted.append(PrivateTmpfs(mountpoint, size))
        return mounted[-1]

    yield mount
    for fs in mounted:
        fs.close()


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write_adapter(folder: Path) -> None:
    """An adapter's files: real safetensors weights (a little under 5 pages) and a small config."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"w": np.full(5 * PAGE - 200, 7, dtype=np.uint8)}, str(folder / publish.WEIGHTS))
    (folder / publish.ADAPTER_CONFIG).write_text('{"peft_type": "LORA"}\n')


def publish_into(facts: Path, seen: list[str] | None = None) -> publish.Published:
    """Publish a revision; `seen` collects what the model card's callback saw in `facts`."""

    def card(revision: str, m: dict[str, Any]) -> dict[str, str]:
        if seen is not None:
            seen.extend(sorted(os.listdir(facts)))
        return {"README.md": f"# {m['adapter']} {revision}\n", "loss.svg": "<svg/>\n"}

    return publish.publish(facts, "facts", write_adapter, {"source": {"uid": "job"}}, card)


def test_a_run_that_fills_the_store_fails_retryably_and_its_retry_publishes_the_next_revision(
    tmp_path: Path, tiny_model_dir: Path, tmpfs: Callable[[Path, int], PrivateTmpfs]
) -> None:
    store = make_store(tmp_path, tiny_model_dir)
    fs = tmpfs(store / "adapters", 1 << 20)  # checkpoints stay outside, on the normal disk
    facts = fs.view / "facts"
    termination = tmp_path / "termination-log"

    def run(uid: str) -> Any:
        return run_trainer(
            tmp_path,
            tiny_model_dir,
            small_config(),
            "--set",
            f"run.uid={uid}",
            env={"LORAFORGE_TERMINATION_LOG": str(termination)},
            launcher=[*fs.enter(tmp_path), sys.executable, "-m"],
            timeout=300,  # a hang guard only
        )

    assert publish_into(facts).revision == "v1"  # an earlier FineTuneJob's revision, on the same tmpfs
    v1 = snapshot(facts / "v1")

    # Room for peft's own README.md, not for the 16 KiB of weights that follow it.
    fs.leave_free(3 * PAGE)
    failed = run("job-2")
    assert failed.code == EXIT_FAILED, failed.output  # retryable: not EXIT_INVALID_INPUT
    message = termination.read_text()
    adapter_dir = store / "adapters" / "facts"
    assert message.startswith(
        f"{PUBLISH_FAILED}: cannot publish into {adapter_dir} (the model store is out of space): "
    ), message
    assert "(os error 28)" in message, message  # ENOSPC as safetensors (Rust) reports it: the weights
    assert "Traceback" not in failed.output
    assert sorted(os.listdir(facts)) == ["v1"]  # no staging folder, no claimed v2
    assert [p.name for _, p in publish.revisions(facts)] == ["v1"]
    assert snapshot(facts / "v1") == v1
    publish.verify(facts / "v1")
    checkpoints = store / "checkpoints" / "facts"
    assert (checkpoints / "checkpoint-4").is_dir()  # the training survives for the retry

    fs.unfill()
    retried = run("job-2")
    assert retried.code == 0, retried.output
    assert "resuming from checkpoint-4" in retried.output
    assert termination.read_text().startswith("Published: facts v2 ")
    assert sorted(os.listdir(facts)) == ["v1", "v2"]
    publish.verify(facts / "v2")
    assert manifest(facts / "v2")["source"]["uid"] == "job-2"
    assert snapshot(facts / "v1") == v1


# Pages left free for the failing publish, given the weights' pages: each file takes whole pages.
FAILS_WHILE_WRITING = {
    "the weights": lambda weights: weights - 1,
    "the model card": lambda weights: weights + 1,  # weights and config: staged; then a number is claimed
    "COMPLETE": lambda weights: weights + 4,  # weights, config, README.md, loss.svg, manifest.json: renamed
}


@pytest.mark.parametrize("stage", FAILS_WHILE_WRITING)
def test_running_out_of_space_at_any_stage_leaves_no_trace_and_v1_intact(
    tmp_path: Path, tmpfs: Callable[[Path, int], PrivateTmpfs], monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    probe = tmp_path / "probe"
    probe.mkdir()
    write_adapter(probe)
    weights = -(-(probe / publish.WEIGHTS).stat().st_size // PAGE)  # pages
    assert weights == 5

    fs = tmpfs(tmp_path / "adapters", 256 * 1024)
    facts = fs.view / "facts"
    assert publish_into(facts).revision == "v1"
    v1 = snapshot(facts / "v1")

    fs.leave_free(FAILS_WHILE_WRITING[stage](weights) * PAGE)
    seen: list[str] = []  # the adapter folder when the model card was rendered, after the claim
    renamed: list[tuple[str, str]] = []
    rename = os.rename

    def spy(src: Any, dst: Any) -> None:
        rename(src, dst)
        renamed.append((Path(src).name, Path(dst).name))

    monkeypatch.setattr(os, "rename", spy)  # the real rename, recorded: it shows how far the publish got
    with pytest.raises(TrainerError) as failed:
        publish_into(facts, seen)
    monkeypatch.undo()
    assert failed.value.reason == PUBLISH_FAILED
    assert failed.value.exit_code == EXIT_FAILED
    assert failed.value.message.startswith(f"cannot publish into {facts} (the model store is out of space): ")
    if stage == "the weights":
        assert "(os error 28)" in failed.value.message  # ENOSPC as safetensors (Rust) reports it
        assert seen == [] and renamed == []  # no number claimed yet
    else:
        assert f"[Errno {errno.ENOSPC}] No space left on device" in failed.value.message
        assert "v2" in seen  # v2 was claimed
        moved = [dst for _, dst in renamed]
        assert moved == (["v2"] if stage == "COMPLETE" else []), renamed  # COMPLETE: the files were in v2

    assert sorted(os.listdir(facts)) == ["v1"]  # no staging folder, no claimed or renamed v2
    assert [p.name for _, p in publish.revisions(facts)] == ["v1"]
    assert snapshot(facts / "v1") == v1
    publish.verify(facts / "v1")

    fs.unfill()
    again = publish_into(facts)
    assert again.revision == "v2"  # the number the failed publish had claimed, not v3
    publish.verify(facts / "v2")
    assert sorted(os.listdir(facts)) == ["v1", "v2"]
    assert snapshot(facts / "v1") == v1


def test_a_store_that_fills_up_while_checkpointing_fails_retryably_saying_so(
    tmp_path: Path, tiny_model_dir: Path, tmpfs: Callable[[Path, int], PrivateTmpfs]
) -> None:
    """Checkpoints go to the model store too. When it fills up while one is written, the failure says
    ModelStoreFull (not an anonymous TrainerFailed), is retryable, and a half-written checkpoint is never
    resumed from: with space again, the retry trains from the start (or the newest complete checkpoint)."""
    store = make_store(tmp_path, tiny_model_dir)
    fs = tmpfs(store / "checkpoints", 1 << 20)
    termination = tmp_path / "termination-log"

    def run() -> Any:
        return run_trainer(
            tmp_path,
            tiny_model_dir,
            small_config(),
            env={"LORAFORGE_TERMINATION_LOG": str(termination)},
            launcher=[*fs.enter(tmp_path), sys.executable, "-m"],
            timeout=300,  # a hang guard only
        )

    fs.leave_free(4 * PAGE)  # less than the first checkpoint needs
    failed = run()
    assert failed.code == EXIT_FAILED, failed.output  # retryable: not EXIT_INVALID_INPUT
    message = termination.read_text()
    assert message.startswith("ModelStoreFull: the model store is out of space (checkpoints go to "), message
    assert [p.name for _, p in publish.revisions(store / "adapters" / "facts")] == []

    fs.unfill()
    retried = run()
    assert retried.code == 0, retried.output
    assert "resuming from" not in retried.output  # the broken checkpoint-2 is not one to resume from
    assert termination.read_text().startswith("Published: facts v1 ")


def test_a_write_failure_without_an_errno_counts_as_a_full_store_only_when_it_is_full(
    tmp_path: Path, tmpfs: Callable[[Path, int], PrivateTmpfs]
) -> None:
    """torch.save reports a failed write as "file write failed", with no errno: then the free space where
    checkpoints go decides."""
    from loraforge_trainer.cli import _out_of_space

    fs = tmpfs(tmp_path / "store", 32 << 20)
    torch_says = RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")
    assert not _out_of_space(torch_says, fs.view / "checkpoints" / "facts")  # 32 MiB free: something else
    assert _out_of_space(OSError(errno.ENOSPC, "No space left on device"), None)
    fs.leave_free(PAGE)
    assert _out_of_space(torch_says, fs.view / "checkpoints" / "facts")  # a folder not made yet: its parent
    assert not _out_of_space(ValueError("a bug"), None)
