"""Build loraforge's air-gap bundle (`make airgap-bundle`), on a machine with internet access.

    python images/bundle.py [--out dist] [--tool skopeo|docker|podman] [--local-transport docker-daemon]

One archive, ``dist/loraforge-airgap-<version>.tar``, to carry into the air
gap (docs/airgap.md walks an administrator through its use):

- ``charts/loraforge-<version>.tgz``: the Helm chart;
- ``images/*.tar``: the operator and trainer images (built first with
  ``make images``) and the upstream images of both serving runtimes, TGI
  (``serving.tar``) and vLLM (``vllm.tar``), saved with skopeo (OCI
  archives, digests kept) or docker/podman (``save``);
- ``images.txt``: archive, transport, repository:tag and digest per image,
  read by ``push-images.sh``, which copies them into the private registry;
- ``stage-model.sh``: stages a base model into the model store claim;
- ``manifest.json``: the chart's and every image's digest and each file's
  sha256, to check what arrived;
- ``airgap.md``: the walkthrough.

The images are the chart's defaults (values.yaml, read here, so the list
cannot drift from the chart): the repository and tag each is pushed under
are those the chart asks for, so one ``global.imageRegistry`` points the
whole install at the mirror.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "loraforge"


class BundleError(Exception):
    pass


# Bundle name of each image -> where values.yaml keeps it (its `image` map), and whether `make images` builds
# it here (else it is the upstream image, pulled).
CHART_IMAGES: tuple[tuple[str, tuple[str, ...], bool], ...] = (
    ("operator", ("operator", "image"), True),
    ("trainer", ("trainer", "image"), True),
    ("serving", ("serving", "image"), False),  # TGI, the default serving runtime
    ("vllm", ("serving", "vllm", "image"), False),  # vLLM, for ModelDeployments with runtime.vllm
)


@dataclass(frozen=True)
class Image:
    name: str  # operator, trainer, serving (TGI), vllm
    source: str  # where it is copied from
    ref: str  # repository:tag under the private registry (what the chart pulls)
    local: bool  # built here (make images), not pulled


def chart_meta() -> dict:
    return yaml.safe_load((CHART / "Chart.yaml").read_text())


def images(values: dict, app_version: str) -> list[Image]:
    """The images the chart installs by default, and where each comes from."""
    out = []
    for name, path, local in CHART_IMAGES:
        img = values
        for key in path:
            img = img[key]
        ref = f"{img['repository']}:{img['tag'] or app_version}"
        source = f"{img['registry']}/{ref}" if img["registry"] else ref
        out.append(Image(name=name, source=source, ref=ref, local=local))
    return out


def package_chart(dest_dir: Path) -> Path:
    """The chart as `helm package` lays it out: <name>/... in a gzipped tar (files in a stable order)."""
    meta = chart_meta()
    out = dest_dir / f"{meta['name']}-{meta['version']}.tgz"
    ignored = {"__pycache__", ".DS_Store"}
    with tarfile.open(out, "w:gz") as tar:
        for path in sorted(CHART.rglob("*")):
            rel = path.relative_to(CHART)
            if path.is_dir() or any(part in ignored for part in rel.parts):
                continue
            info = tar.gettarinfo(str(path), arcname=f"{meta['name']}/{rel.as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with path.open("rb") as f:
                tar.addfile(info, f)
    return out


def _run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BundleError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip()


def save_image(tool: str, image: Image, archive: Path, local_transport: str) -> tuple[str, str]:
    """Save ``image`` into ``archive``; return (transport for push-images.sh, digest)."""
    if tool == "skopeo":
        src = f"{local_transport}:{image.source}" if image.local else f"docker://{image.source}"
        _run(["skopeo", "copy", "--retry-times=3", src, f"oci-archive:{archive}:{image.ref}"])
        digest = _run(["skopeo", "inspect", "--format", "{{.Digest}}", f"oci-archive:{archive}"])
        return "oci-archive", digest
    if not image.local:
        _run([tool, "pull", image.source])
    if image.source != image.ref:
        _run([tool, "tag", image.source, image.ref])
    _run([tool, "save", "-o", str(archive), image.ref])
    # docker save keeps no registry manifest: the image ID (its config's digest) identifies it.
    return "docker-archive", _run([tool, "image", "inspect", "--format", "{{.Id}}", image.ref])


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_tool(wanted: str | None) -> str:
    for tool in [wanted] if wanted else ["skopeo", "docker", "podman"]:
        if shutil.which(tool):
            return tool
    raise BundleError(
        f"saving images needs {wanted or 'skopeo, docker or podman'}, and none is installed here: "
        "build the bundle on a connected machine that has one (after `make images`)"
    )


def build(out_dir: Path, tool: str, local_transport: str = "docker-daemon") -> Path:
    meta = chart_meta()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    name = f"loraforge-airgap-{meta['version']}"
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        root = Path(tmp) / name
        (root / "charts").mkdir(parents=True)
        (root / "images").mkdir()
        chart = package_chart(root / "charts")
        lines = ["# archive transport repository:tag digest (read by push-images.sh)"]
        manifest: dict = {
            "bundle": name,
            "chart": {"file": f"charts/{chart.name}", "version": meta["version"], "sha256": sha256(chart)},
            "images": [],
        }
        for image in images(values, str(meta["appVersion"])):
            archive = root / "images" / f"{image.name}.tar"
            print(f">> {image.name}: {image.source}", flush=True)
            transport, digest = save_image(tool, image, archive, local_transport)
            rel = f"images/{archive.name}"
            lines.append(f"{rel} {transport} {image.ref} {digest}")
            manifest["images"].append(
                {
                    "name": image.name,
                    "source": image.source,
                    "ref": image.ref,
                    "digest": digest,
                    "archive": rel,
                    "transport": transport,
                    "sha256": sha256(archive),
                }
            )
        (root / "images.txt").write_text("\n".join(lines) + "\n")
        for script in ("stage-model.sh", "push-images.sh"):
            shutil.copy2(REPO / "images" / script, root / script)
            (root / script).chmod(0o755)
        shutil.copy2(REPO / "docs" / "airgap.md", root / "airgap.md")
        (root / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        bundle = out_dir / f"{name}.tar"
        # Image archives are compressed already: a plain tar.
        with tarfile.open(bundle, "w") as tar:
            tar.add(root, arcname=name)
    return bundle


def read_manifest(bundle: Path) -> dict:
    """The manifest.json inside a bundle (for checks after the transfer)."""
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("/manifest.json"))
        f = tar.extractfile(member)
        assert f is not None
        return json.load(io.TextIOWrapper(f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bundle.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO / "dist", help="output folder (default: dist/)")
    p.add_argument("--tool", choices=["skopeo", "docker", "podman"], help="default: the first one installed")
    p.add_argument(
        "--local-transport",
        default="docker-daemon",
        help="skopeo's transport for the images `make images` built: docker-daemon (docker), "
        "containers-storage (podman)",
    )
    args = p.parse_args(argv)
    try:
        bundle = build(args.out, find_tool(args.tool), args.local_transport)
    except BundleError as e:
        print(f"airgap-bundle: {e}", file=sys.stderr)
        return 1
    print(f">> {bundle} ({bundle.stat().st_size / 1e9:.1f} GB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
