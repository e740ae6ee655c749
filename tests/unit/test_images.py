"""The images, without a container engine: the Dockerfiles pass hadolint and
loraforge's own rules (numeric non-root USER matching the chart, the trainer's
one pinned requirements file), the trainer's pinned set is what is installed
and it imports, and the air-gap tooling (stage-model.sh, push-images.sh,
bundle.py) works against stand-ins for kubectl and skopeo."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from loraforge_operator.settings import Settings

REPO = Path(__file__).resolve().parents[2]
IMAGES = REPO / "images"
BIN = Path(sys.executable).parent
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
VALUES = yaml.safe_load((REPO / "charts/loraforge/values.yaml").read_text())


def _tool(name: str) -> str:
    path = BIN / name
    assert path.exists(), f"{name} is not installed in the virtualenv (requirements-dev.txt; make venv)"
    return str(path)


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in dockerfile.read_text().splitlines() if not ln.startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_there_is_a_dockerfile_per_built_image() -> None:
    assert [p.parent.name for p in DOCKERFILES] == ["operator", "trainer"]


def test_hadolint_passes_on_every_dockerfile() -> None:
    proc = subprocess.run(
        [_tool("hadolint"), "--config", str(IMAGES / ".hadolint.yaml"), *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_catches_what_it_should(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\nUSER root\n")
    proc = subprocess.run(
        [_tool("hadolint"), "--config", str(IMAGES / ".hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    for rule in ("DL3007", "DL3013", "DL3002"):  # latest tag, unpinned pip, last USER root
        assert rule in proc.stdout, proc.stdout


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_images_run_as_a_numeric_non_root_user_with_an_exec_entrypoint(dockerfile: Path) -> None:
    steps = _instructions(dockerfile)
    users = [args for word, args in steps if word == "USER"]
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {users[-1]}: runAsNonRoot can only verify a numeric UID"
    assert gid.isdigit() and int(gid) > 0
    entry = [json.loads(args) for word, args in steps if word == "ENTRYPOINT"]
    assert entry and isinstance(entry[-1], list), "ENTRYPOINT must be exec form (signals reach the process)"
    froms = [args for word, args in steps if word == "FROM"]
    assert all(":latest" not in f for f in froms)


def _final_user(name: str) -> int:
    users = [args for word, args in _instructions(IMAGES / name / "Dockerfile") if word == "USER"]
    return int(users[-1].split(":")[0])


def test_image_users_match_what_the_chart_and_operator_run_them_as() -> None:
    assert _final_user("operator") == VALUES["podSecurityContext"]["runAsUser"]
    assert _final_user("trainer") == VALUES["trainer"]["uid"] == Settings().trainer_uid


def test_image_entrypoints_are_what_the_operator_and_local_node_expect() -> None:
    from localnode import images as node_images

    for name in ("operator", "trainer"):
        entry = [json.loads(a) for w, a in _instructions(IMAGES / name / "Dockerfile") if w == "ENTRYPOINT"][
            -1
        ]
        profile = node_images.lookup(f"registry.example/loraforge/{name}:0.1.0")
        assert tuple(entry) == profile.entrypoint, name


def test_the_trainer_image_installs_exactly_the_trainer_requirements_file() -> None:
    steps = _instructions(IMAGES / "trainer" / "Dockerfile")
    copies = [args.split() for word, args in steps if word == "COPY"]
    req = next((dest for *srcs, dest in copies if srcs == ["jobs/requirements.txt"]), None)
    assert req, "the trainer image does not copy jobs/requirements.txt"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert f"-r {req}" in runs, "jobs/requirements.txt is copied but not installed with pip -r"
    assert "--no-deps" in runs, "the trainer package must not re-resolve the pinned set"
    froms = [args for word, args in steps if word == "FROM"]
    arg_defaults = dict(a.split("=", 1) for w, a in steps if w == "ARG" and "=" in a)
    assert "cuda" in arg_defaults.get(froms[0].strip("${}"), ""), "the trainer is built on a CUDA base image"


def test_the_operator_image_carries_no_ml_stack() -> None:
    text = (IMAGES / "operator" / "Dockerfile").read_text()
    assert "requirements.txt" not in text
    for heavy in ("torch", "transformers", "cuda"):
        assert heavy not in text.lower().replace("no ml stack", ""), heavy


def test_the_build_context_lets_in_what_the_dockerfiles_copy() -> None:
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip()]
    rules = [r for r in rules if not r.startswith("#")]
    assert rules[0] == "*", "the context should start from nothing (the venv alone is gigabytes)"
    allowed = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    for dockerfile in DOCKERFILES:
        for word, args in _instructions(dockerfile):
            if word == "COPY" and "--from" not in args:
                for src in args.split()[:-1]:
                    assert src.split("/")[0] in allowed, (
                        f"{dockerfile}: COPY {src} is excluded by .dockerignore"
                    )


def _requirements() -> list[tuple[str, str]]:
    out = []
    for line in (REPO / "jobs" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"jobs/requirements.txt: {line!r} is not pinned with =="
            out.append((name, version))
    return out


def test_the_trainer_pinned_set_is_installed_at_its_pins_and_imports() -> None:
    pins = _requirements()
    assert {"torch", "transformers", "peft", "bitsandbytes"} <= {n for n, _ in pins}
    wrong = {n: (v, importlib.metadata.version(n)) for n, v in pins if importlib.metadata.version(n) != v}
    assert not wrong, f"installed versions differ from jobs/requirements.txt (pin, installed): {wrong}"
    modules = []
    top_level = importlib.metadata.packages_distributions()
    for name, _ in pins:
        mods = [m for m, dists in top_level.items() if name.lower() in (d.lower() for d in dists)]
        assert mods, f"{name}: no importable module found"
        modules.append(
            next((m for m in mods if m.lower() == name.lower().replace("-", "_")), sorted(mods)[0])
        )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)",
            *modules,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"importing {modules} failed:\n{proc.stderr[-3000:]}"


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(IMAGES.glob("*.sh"))
    assert [p.name for p in scripts] == ["push-images.sh", "stage-model.sh"]
    proc = subprocess.run([_tool("shellcheck"), *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- stage-model.sh against a stand-in kubectl -------------------------------------------------

FAKE_KUBECTL = r"""#!/usr/bin/env python3
# Stand-in for kubectl: records every call; `exec` runs the command here with the pod's /models
# mapped to $FAKE_STORE (what the real pod would see through its volume).
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
while args and args[0] in ("-n",):
    args = args[2:]
verb = args[0]
if verb == "apply":
    open(os.environ["FAKE_LOG"] + ".pod.json", "w").write(sys.stdin.read())
elif verb == "exec":
    cmd = args[args.index("--") + 1 :]
    store = os.environ["FAKE_STORE"]
    cmd = [a.replace("/models", store) if a.startswith("/models") else a for a in cmd]
    sys.exit(subprocess.run(cmd).returncode)
"""


@pytest.fixture
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    kubectl = bin_dir / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(0o755)
    stager = (
        bin_dir / "loraforge-stage-model"
    )  # the trainer image's command, faked: a folder from a GGUF file
    stager.write_text(
        '#!/bin/sh\nset -e\nmkdir -p "$3"\necho "{\\"from\\": \\"$(basename "$2")\\"}" > "$3/config.json"\n'
    )
    stager.chmod(0o755)
    store = tmp_path / "store"
    store.mkdir()
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_STORE": str(store),
        "FAKE_LOG": str(tmp_path / "kubectl.log"),
    }


def _stage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(IMAGES / "stage-model.sh"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_stage_model_copies_a_model_folder_into_base_and_removes_its_pod(
    fake_cluster: dict[str, str], tmp_path: Path
) -> None:
    model = tmp_path / "smollm2"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama"}')
    (model / "sub" / "tokenizer.json").write_text("{}")
    proc = _stage(
        fake_cluster, "-n", "ml", "-c", "store", "-i", "mirror/loraforge/trainer:0.1.0", str(model), "smol"
    )
    assert proc.returncode == 0, proc.stderr
    store = Path(fake_cluster["FAKE_STORE"])
    assert (store / "base" / "smol" / "config.json").read_text() == '{"model_type": "llama"}'
    assert (store / "base" / "smol" / "sub" / "tokenizer.json").exists()
    assert not (store / "base" / ".smol.partial").exists()
    calls = [json.loads(ln) for ln in Path(fake_cluster["FAKE_LOG"]).read_text().splitlines()]
    assert all(c[:2] == ["-n", "ml"] for c in calls)
    assert calls[-1][2:4] == ["delete", "pod"], "the staging pod is deleted at the end"
    pod = json.loads(Path(fake_cluster["FAKE_LOG"] + ".pod.json").read_text())
    assert pod["spec"]["containers"][0]["image"] == "mirror/loraforge/trainer:0.1.0"
    assert pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == "store"

    # Staging the same name again leaves the model alone and says so.
    again = _stage(fake_cluster, "-n", "ml", str(model), "smol")
    assert again.returncode == 3
    assert "already exists" in again.stderr
    assert json.loads(Path(fake_cluster["FAKE_LOG"]).read_text().splitlines()[-1])[2:4] == ["delete", "pod"]


def test_stage_model_converts_a_gguf_file_in_the_pod(fake_cluster: dict[str, str], tmp_path: Path) -> None:
    gguf = tmp_path / "SmolLM2.Q4.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    proc = _stage(fake_cluster, str(gguf), "smol-gguf")
    assert proc.returncode == 0, proc.stderr
    store = Path(fake_cluster["FAKE_STORE"])
    assert json.loads((store / "base" / "smol-gguf" / "config.json").read_text()) == {"from": gguf.name}
    assert not (store / ".staging" / gguf.name).exists(), "the uploaded GGUF file is removed"
    assert not (store / "base" / ".smol-gguf.partial").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/nonexistent/model", "x"], "no such file or folder"),
        (["{model}", "../escape"], "NAME must be one folder name"),
        (["{model}", "x", "extra"], "Stage a base model"),
        (["-u", "0", "{model}", "x"], "numeric non-root UID"),
    ],
)
def test_stage_model_refuses_bad_input_before_touching_the_cluster(
    fake_cluster: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    proc = _stage(fake_cluster, *[a.replace("{model}", str(tmp_path / "m")) for a in args])
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not Path(fake_cluster["FAKE_LOG"]).exists(), "kubectl was called"


# --- the air-gap bundle against a stand-in skopeo ----------------------------------------------

FAKE_SKOPEO = r"""#!/usr/bin/env python3
import hashlib, json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
if args[0] == "copy":
    src, dest = args[-2], args[-1]
    _, path, ref = dest.split(":", 2)
    with open(path, "w") as f:
        json.dump({"src": src, "ref": ref}, f)
elif args[0] == "inspect":
    path = args[-1].split(":", 1)[1]
    print("sha256:" + hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def test_the_airgap_bundle_holds_chart_images_scripts_and_digests(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text(FAKE_SKOPEO)
    (bin_dir / "skopeo").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(tmp_path / "skopeo.log")}
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, str(IMAGES / "bundle.py"), "--out", str(out), "--tool", "skopeo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    chart = yaml.safe_load((REPO / "charts/loraforge/Chart.yaml").read_text())
    bundle = out / f"loraforge-airgap-{chart['version']}.tar"
    extracted = tmp_path / "x"
    with tarfile.open(bundle) as tar:
        tar.extractall(extracted, filter="data")
    root = extracted / f"loraforge-airgap-{chart['version']}"
    manifest = json.loads((root / "manifest.json").read_text())

    # The chart, packaged as helm does (<name>/Chart.yaml ...), with its schema and CRDs.
    with tarfile.open(root / manifest["chart"]["file"]) as tar:
        names = tar.getnames()
    assert {"loraforge/Chart.yaml", "loraforge/values.schema.json", "loraforge/templates/crds.yaml"} <= set(
        names
    )
    assert "loraforge/files/crds/finetunejobs.loraforge.io.yaml" in names

    # Every image of the chart, under the repository:tag the chart pulls, with its digest.
    refs = {i["name"]: i for i in manifest["images"]}
    assert refs["operator"]["ref"] == f"loraforge/operator:{chart['appVersion']}"
    assert refs["trainer"]["ref"] == f"loraforge/trainer:{chart['appVersion']}"
    tgi = VALUES["serving"]["image"]
    assert refs["serving"]["ref"] == f"{tgi['repository']}:{tgi['tag']}"
    assert refs["serving"]["source"] == Settings().tgi_image
    # vLLM beside TGI, from the chart's serving.vllm.image: pushed as vllm/vllm-openai:<tag> under the mirror.
    vllm = VALUES["serving"]["vllm"]["image"]
    assert refs["vllm"]["ref"] == f"{vllm['repository']}:{vllm['tag']}" == "vllm/vllm-openai:v0.32.0"
    assert refs["vllm"]["source"] == f"{vllm['registry']}/{vllm['repository']}:{vllm['tag']}"
    assert refs["vllm"]["source"].endswith(Settings().vllm_image), "the operator's default vLLM image"
    assert sorted(refs) == ["operator", "serving", "trainer", "vllm"]
    calls = [json.loads(ln) for ln in (tmp_path / "skopeo.log").read_text().splitlines()]
    sources = {c[-2] for c in calls if c[0] == "copy"}
    assert f"docker://{Settings().tgi_image}" in sources, "TGI is pulled from upstream"
    assert f"docker://{refs['vllm']['source']}" in sources, "vLLM is pulled from upstream"
    assert f"docker-daemon:loraforge/operator:{chart['appVersion']}" in sources, "loraforge's own are local"
    for image in manifest["images"]:
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"])
        assert (root / image["archive"]).is_file()
    lines = [ln.split() for ln in (root / "images.txt").read_text().splitlines() if not ln.startswith("#")]
    assert sorted(ln[2] for ln in lines) == sorted(i["ref"] for i in manifest["images"])

    for script in ("stage-model.sh", "push-images.sh"):
        assert os.access(root / script, os.X_OK), script
    assert (root / "airgap.md").read_text() == (REPO / "docs" / "airgap.md").read_text()


def _bundle_module():
    """images/bundle.py as a module (it is a script, not in a package)."""
    name = "loraforge_images_bundle"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, IMAGES / "bundle.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


def _image_maps(values: dict, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Paths of values.yaml's image maps that name a repository (tests.image names none by default: the test
    pod then runs the operator's image)."""
    out = set()
    for key, value in values.items():
        if isinstance(value, dict):
            if key == "image" and value.get("repository"):
                out.add((*path, key))
            out |= _image_maps(value, (*path, key))
    return out


def test_the_bundle_carries_every_image_the_chart_defaults_to() -> None:
    bundle = _bundle_module()
    assert {path for _, path, _ in bundle.CHART_IMAGES} == _image_maps(VALUES), (
        "an image of values.yaml is missing from images/bundle.py's CHART_IMAGES (or one is stale)"
    )
    listed = {i.name: i for i in bundle.images(VALUES, "0.1.0")}
    assert listed["vllm"].ref == "vllm/vllm-openai:v0.32.0" and not listed["vllm"].local
    assert listed["serving"].ref.startswith("huggingface/text-generation-inference:")
    assert {n for n, i in listed.items() if i.local} == {"operator", "trainer"}


def test_push_images_copies_every_archive_to_the_registry(tmp_path: Path) -> None:
    bundle = tmp_path / "b"
    bundle.mkdir()
    shutil.copy2(IMAGES / "push-images.sh", bundle)
    (bundle / "images.txt").write_text(
        "# header\nimages/operator.tar oci-archive loraforge/operator:0.1.0 sha256:aa\n"
        "images/serving.tar oci-archive huggingface/text-generation-inference:3.3.6 sha256:bb\n"
        "images/vllm.tar oci-archive vllm/vllm-openai:v0.32.0 sha256:dd\n"
    )
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "skopeo").write_text('#!/bin/sh\necho "$@" >> "$FAKE_LOG"\necho sha256:cc\n')
    (bin_dir / "skopeo").chmod(0o755)
    log = tmp_path / "log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_LOG": str(log)}
    proc = subprocess.run(
        ["bash", str(bundle / "push-images.sh"), "mirror.example:5000/ml/"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    copies = [ln for ln in log.read_text().splitlines() if ln.startswith("copy")]
    assert copies == [
        f"copy --all oci-archive:{bundle}/images/operator.tar docker://mirror.example:5000/ml/loraforge/operator:0.1.0",
        f"copy --all oci-archive:{bundle}/images/serving.tar "
        "docker://mirror.example:5000/ml/huggingface/text-generation-inference:3.3.6",
        f"copy --all oci-archive:{bundle}/images/vllm.tar docker://mirror.example:5000/ml/vllm/vllm-openai:v0.32.0",
    ]
    assert "global.imageRegistry=mirror.example:5000/ml" in proc.stdout
