"""Training needs no network.

Air-gapped clusters and egress-denying NetworkPolicies are the normal case for
a training Job: the base model and the dataset come from the model store, and
nothing may be fetched from the Hugging Face Hub (or anywhere else) at run
time. This test runs the real trainer (tiny model, a few steps) in a network
namespace of its own (``unshare --user --map-root-user --net``), where no
interface is up (not even the loopback), so every connection attempt fails at
once, with ``HF_HUB_OFFLINE=1`` and an empty ``HF_HOME`` (nothing cached to
fall back on). A probe in the same namespace, just before the trainer starts,
shows that no interface is up and no address, not even 127.0.0.1, can be
reached. The run must
publish a complete revision.

Like the other namespace tests it fails, rather than skips, where ``unshare``
or user and network namespaces are unavailable.
"""

from __future__ import annotations

import errno
import shutil
import sys
from pathlib import Path

import pytest

from loraforge_trainer import publish

from .conftest import manifest, small_config

PROBE = """
import fcntl, socket, struct
SIOCGIFFLAGS, IFF_UP = 0x8913, 0x1
def flags(name):
    with socket.socket() as s:
        return struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", name.encode(), 0)))[1]
up = [name for _, name in socket.if_nameindex() if flags(name) & IFF_UP]
errors = []
for address in (("127.0.0.1", 9), ("1.1.1.1", 443)):
    try:
        socket.create_connection(address, timeout=5).close()
        errors.append(0)
    except OSError as e:
        errors.append(e.errno)
print(f"network probe: interfaces up {up}, connect errnos {errors}")
"""


def test_a_run_without_network_publishes(train, tmp_path: Path) -> None:
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) not found: needed to run the trainer without a network")
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    no_network = [
        *("unshare", "--user", "--map-root-user", "--net"),
        *("sh", "-c", '"$1" -c "$2" && shift 2 && exec "$@"', "sh", sys.executable, PROBE),
        *(sys.executable, "-m"),
    ]
    r = train(
        small_config(training={"maxSteps": 2}),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)},
        launcher=no_network,
        timeout=300,  # a hang guard only
    )
    unreachable = f"connect errnos {[errno.ENETUNREACH, errno.ENETUNREACH]}"
    assert f"network probe: interfaces up [], {unreachable}" in r.output, r.output
    assert r.code == 0, r.output
    assert r.revisions() == ["v1"]
    rev = r.adapter_dir() / "v1"
    publish.verify(rev)
    assert manifest(rev)["steps"] == 2
    assert not any(hf_home.iterdir())  # nothing was cached (or downloaded) on the way
