"""Start one container's process with the pod's volumes at their mount paths.

    python -m localnode.sandbox SPEC.json

The agent runs this for every container; it replaces itself with the
container's command. What it sets up (needs root, which the agent checks):

- a private mount namespace, so nothing here is seen outside this process tree;
- a root file system made of the host's own: a tmpfs whose entries are bind
  mounts of the host's top-level entries. Every volume mount is then bound at
  its ``mountPath``. A mount path whose parent is a host directory (say
  ``/etc/loraforge``) "shadows" that directory first: it becomes a tmpfs whose
  entries are binds of the host directory's entries, so the new mount point is
  made on the tmpfs, never in the host's ``/etc``;
- the host folders the image's command runs from (this checkout, its virtualenv, the serving
  environment: ``keepVisible``) bound again where a volume hides them, e.g. a checkout under ``/tmp``
  where the pod mounts an emptyDir;
- ``chroot`` into it, the working directory, the environment, then ``exec``.

Run as root it uses a mount namespace only; run as another user, a user
namespace too (where it is root and may mount), if the kernel allows those.

This is *not* isolation: the whole host file system stays visible (and
writable) inside, the process runs as the agent's user (the pod's
``runAsUser`` is not applied), and it shares the host's network stack (the
agent gives the pod a loopback address of its own instead). It gives a pod's
command the paths it was written for, which is what the local node needs.

If the agent dies, the kernel kills this process (``PR_SET_PDEATHSIG``), so a
crashed agent leaves no pod process behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_RELATIME = 1 << 21
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MNT_DETACH = 0x2
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        cls = PermissionError if err in (1, 13) else OSError  # EPERM, EACCES
        raise cls(err, f"{what}: {os.strerror(err)}")


def _mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            src.encode() if src else None,
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {src} on {target}",
    )


def _umount(target: str) -> None:
    _check(_libc.umount2(target.encode(), MNT_DETACH), f"umount {target}")


def _locked_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    flags = f & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    if f & os.ST_RELATIME:
        flags |= MS_RELATIME
    return flags


class RootFS:
    """The container's root, built under ``root`` from the host's entries."""

    def __init__(self, root: Path):
        self.root = root
        # Container directories that are tmpfs copies of a host directory's
        # listing, where new entries can be made without touching the host.
        self.shadowed: set[str] = set()

    def build(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _mount("loraforge-pod-root", str(self.root), "tmpfs", MS_NOSUID, "mode=0755")
        self._mirror("/")
        self.shadowed.add("/")

    def _host_entries(self, cdir: str) -> list[str]:
        try:
            return sorted(os.listdir(cdir))
        except OSError:
            return []

    def _mirror(self, cdir: str) -> None:
        """Fill the (tmpfs) container directory ``cdir`` with binds of the host's entries there."""
        for name in self._host_entries(cdir):
            host = os.path.join(cdir, name)
            inside = self.root / host.lstrip("/")
            if os.path.islink(host):
                os.symlink(os.readlink(host), inside)
            elif os.path.isdir(host):
                inside.mkdir()
                try:
                    _mount(host, str(inside), None, MS_BIND | MS_REC)
                except OSError:
                    continue  # unreadable or vanished: leave it empty
            elif os.path.exists(host):
                inside.touch()
                try:
                    _mount(host, str(inside), None, MS_BIND)
                except OSError:
                    continue

    def _shadow(self, cdir: str) -> None:
        """Turn the bound host directory ``cdir`` into a tmpfs listing of it."""
        inside = str(self.root / cdir.lstrip("/"))
        _umount(inside)
        _mount("loraforge-pod-dir", inside, "tmpfs", MS_NOSUID, "mode=0755")
        self._mirror(cdir)
        self.shadowed.add(cdir)

    def _resolve_parent(self, target: str) -> str:
        """The container path of ``target``'s parent with symlinks resolved,
        every directory on the way made (shadowing host directories as needed)."""
        parts = [p for p in target.split("/") if p][:-1]
        cur = "/"
        hops = 0
        while parts:
            name = parts.pop(0)
            nxt = os.path.join(cur, name)
            inside = self.root / nxt.lstrip("/")
            if inside.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(f"too many symlinks resolving {target}")
                link = os.readlink(inside)
                base = "/" if link.startswith("/") else cur
                parts = [p for p in os.path.normpath(os.path.join(base, link)).split("/") if p] + parts
                cur = "/"
                continue
            if not inside.exists():
                if cur not in self.shadowed:
                    self._shadow(cur)
                inside.mkdir()
                self.shadowed.add(nxt)  # made on a tmpfs: new entries can go in
            cur = nxt
        return cur

    def bind(self, source: str, target: str, read_only: bool) -> None:
        parent = self._resolve_parent(target)
        name = target.rstrip("/").rsplit("/", 1)[-1]
        ctarget = os.path.join(parent, name)
        inside = self.root / ctarget.lstrip("/")
        is_dir = os.path.isdir(source)
        if inside.is_symlink() or not inside.exists():
            if parent not in self.shadowed:
                self._shadow(parent)
            if inside.is_symlink():
                inside.unlink()
            if is_dir:
                inside.mkdir()
            else:
                inside.touch()
        _mount(source, str(inside), None, MS_BIND | MS_REC)
        if read_only:
            try:
                _mount(None, str(inside), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
            except PermissionError:
                # In a user namespace the source mount's nosuid/nodev/noexec/atime
                # flags are locked and must be repeated.
                _mount(None, str(inside), None, MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(source))


def hidden_by(path: str, targets: list[str]) -> bool:
    """Whether a volume mounted at one of ``targets`` hides host ``path`` (strictly below it): a checkout
    under /tmp, where pods mount an emptyDir."""
    return any(path.startswith(t.rstrip("/") + "/") for t in targets if t.rstrip("/"))


def _expose(rootfs: RootFS, path: str) -> None:
    """Bind host ``path`` again at its own path, inside the volume that hid it (made there: an emptyDir is
    the pod's own), so the image's command from this checkout runs. A read-only volume leaves it hidden."""
    inside = rootfs.root / path.lstrip("/")
    try:
        inside.mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    _mount(path, str(inside), None, MS_BIND | MS_REC)


def _prepare(spec: dict) -> None:
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
    if spec.get("agentPid") and os.getppid() != spec["agentPid"]:  # the agent died before the line above
        os._exit(137)
    if os.geteuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    else:
        # Not root: a user namespace of our own, in which we are root and may mount.
        uid, gid = os.geteuid(), os.getegid()
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
        Path("/proc/self/gid_map").write_text(f"0 {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    rootfs = RootFS(Path(spec["rootDir"]))
    rootfs.build()
    for m in spec["mounts"]:
        rootfs.bind(m["source"], m["target"], m.get("readOnly", False))
    targets = [m["target"] for m in spec["mounts"]]
    for path in spec.get("keepVisible") or []:
        if os.path.isdir(path) and hidden_by(path, targets):
            _expose(rootfs, path)
    os.chroot(str(rootfs.root))


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        _prepare(spec)
        os.chdir(spec.get("workingDir") or "/")
    except OSError as e:
        print(f"localnode sandbox: cannot set up the container: {e}", file=sys.stderr, flush=True)
        return 128
    argv_ = spec["argv"]
    try:
        os.execvpe(argv_[0], argv_, spec["env"])  # noqa: S606 - the container command, as given
    except OSError as e:
        print(f"localnode sandbox: cannot run {argv_[0]!r}: {e}", file=sys.stderr, flush=True)
        return 127 if isinstance(e, FileNotFoundError) else 126
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
