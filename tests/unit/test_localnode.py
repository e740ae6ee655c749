"""The local node's pure parts: the image table, the kubelet's environment and
command-line rules, and probe thresholds. (Running pods is tested end to end
in tests/e2e/test_local_node.py.)"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

import servingenv
from localnode import images, podenv, probes

POD = {
    "metadata": {
        "name": "p",
        "namespace": "ns",
        "uid": "u-1",
        "labels": {"app": "x", "tier": "web"},
        "annotations": {"note": "hi"},
    },
    "spec": {"nodeName": "local", "serviceAccountName": "sa"},
    "status": {"podIP": "127.0.0.9", "podIPs": [{"ip": "127.0.0.9"}], "hostIP": "127.0.0.1"},
}


@pytest.mark.parametrize(
    ("image", "repo"),
    [
        ("ghcr.io/huggingface/text-generation-inference:3.3.6", "huggingface/text-generation-inference"),
        ("registry.local:5000/loraforge/trainer:e2e", "loraforge/trainer"),
        ("loraforge/trainer@sha256:" + "a" * 64, "loraforge/trainer"),
        ("busybox", "busybox"),
        ("docker.io/library/busybox:1.36", "busybox"),
        ("localhost/team/loraforge/operator:0.1", "team/loraforge/operator"),
    ],
)
def test_repository_drops_registry_tag_and_digest(image: str, repo: str) -> None:
    assert images.repository(image) == repo


def test_lookup_maps_project_images_and_refuses_others() -> None:
    assert images.lookup("mirror.corp/huggingface/text-generation-inference:3.3.6").name == "tgi"
    assert images.lookup("registry.local/loraforge/trainer:e2e").name == "trainer"
    assert images.lookup("busybox:1.36").name == "busybox"
    with pytest.raises(images.UnknownImage, match=r"'acme/trainer-x:1' cannot run on the local node"):
        images.lookup("acme/trainer-x:1")
    with pytest.raises(images.UnknownImage):
        images.lookup("evil/loraforge-trainer-lookalike")


def test_argv_follows_kubernetes_command_and_args_rules() -> None:
    trainer = images.lookup("loraforge/trainer:1")
    assert trainer.argv(None, None, "127.0.0.2") == ["loraforge-train"]
    assert trainer.argv(None, ["--config", "c"], "127.0.0.2") == ["loraforge-train", "--config", "c"]
    assert trainer.argv(["torchrun", "-m", "x"], None, "127.0.0.2") == ["torchrun", "-m", "x"]
    assert trainer.argv(["python"], ["-V"], "127.0.0.2") == ["python", "-V"]
    box = images.lookup("busybox")
    assert box.argv(None, None, "ip") == ["sh"]  # the image's CMD
    assert box.argv(None, [], "ip") == ["sh"]  # an empty list is unset in the API
    with pytest.raises(images.UnknownImage, match="no entrypoint"):
        images.ImageProfile("bare", ("bare",), ()).argv(None, None, "ip")


def test_tgi_runs_the_stand_in_on_the_pod_ip() -> None:
    tgi = images.lookup("ghcr.io/huggingface/text-generation-inference:3.3.6")
    argv = tgi.argv(None, ["--model-id", "/models/m", "--port", "8080"], "127.0.0.7")
    assert argv[1:3] == ["-m", "tgistandin"]
    assert argv[3:] == ["--model-id", "/models/m", "--port", "8080", "--hostname", "127.0.0.7"]
    # An explicit `command: [text-generation-launcher]` maps the same way.
    assert tgi.argv(["text-generation-launcher"], ["--port", "80"], "ip")[1:3] == ["-m", "tgistandin"]


VLLM_IMAGES = [
    "vllm/vllm-openai:v0.32.0",
    "docker.io/vllm/vllm-openai:latest",
    "registry.local/vllm/vllm-openai@sha256:" + "b" * 64,
    "vllm/vllm-openai-cpu:v0.32.0-x86_64",
    "public.ecr.aws/q9t5s3a7/vllm-cpu-release-repo:v0.32.0",
    "mirror.corp/ml/vllm-cpu:0.32.0",
]


@pytest.mark.parametrize("image", VLLM_IMAGES)
def test_vllm_images_run_vllm(image: str) -> None:
    assert images.lookup(image).name == "vllm"


@pytest.mark.parametrize("image", ["acme/vllm-openai-fork:1", "vllm/vllm-router:0.1", "vllm-cpu-lookalike"])
def test_other_vllm_like_images_do_not(image: str) -> None:
    with pytest.raises(images.UnknownImage):
        images.lookup(image)


def test_vllm_runs_the_serving_environment_with_or_without_a_command() -> None:
    vllm = images.lookup("vllm/vllm-openai:v0.32.0")
    py = str(servingenv.python())
    cli = [py, "-m", "vllm.entrypoints.cli.main"]
    args = ["--model", "/models/base/m", "--served-model-name", "m", "--port", "8080", "--enable-lora"]
    # No command: the images' ENTRYPOINT, `vllm serve`, bound to the pod's IP.
    assert vllm.argv(None, args, "127.0.0.7") == [*cli, "serve", *args, "--host", "127.0.0.7"]
    # The operator's command, and the older images' entrypoint.
    server = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert vllm.argv(server, args, "127.0.0.7") == [
        py,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *args,
        "--host",
        "127.0.0.7",
    ]
    assert vllm.argv(["vllm", "serve", "/models/m"], None, "ip")[3:] == ["serve", "/models/m", "--host", "ip"]
    # Anything but the server gets no --host.
    assert vllm.argv(["python", "-c", "print(1)"], None, "ip") == [py, "-c", "print(1)"]
    assert vllm.argv(["vllm", "--version"], None, "ip") == [*cli, "--version"]
    assert vllm.argv(["sh", "-c", "true"], None, "ip") == ["sh", "-c", "true"]
    env = vllm.env
    assert env["PATH"].split(":")[0] == str(Path(py).parent)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "1"
    assert env["VLLM_CPU_OMP_THREADS_BIND"] == "nobind" and int(env["OMP_NUM_THREADS"]) >= 1


def test_vllm_without_its_serving_environment_ends_start_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localnode import pod

    monkeypatch.setenv("LORAFORGE_CACHE_DIR", str(tmp_path / "cache"))
    image = "vllm/vllm-openai:v0.32.0"
    vllm = images.lookup(image)
    with pytest.raises(images.ImageNotInstalled, match=r"run `make serving-env`"):
        vllm.check(image)

    # What the pod sees: a terminated container (StartError, 128) and a Failed event, no retry loop.
    events: list[tuple[str, str, str]] = []
    agent = SimpleNamespace(event=lambda obj, kind, reason, msg: events.append((kind, reason, msg)))
    worker = SimpleNamespace(agent=agent, pod={}, dir=tmp_path / "pod", key="ns/p", ip="127.0.0.7")
    c = pod.Container(worker, {"name": "vllm", "image": image}, init=False)  # type: ignore[arg-type]
    assert c.start() is False and c.proc is None
    term = c.state["terminated"]
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
    assert "make serving-env" in term["message"] and image in term["message"]
    assert events and events[0][:2] == ("Warning", "Failed")

    d = servingenv.env_dir()
    d.mkdir(parents=True)
    (d / servingenv.MARKER_NAME).write_text(servingenv.marker_text())
    vllm.check(image)  # installed: nothing to say
    images.lookup("busybox").check("busybox")  # the other profiles need nothing installed


def test_expand_replaces_known_names_keeps_unknown_and_escapes() -> None:
    env = {"A": "1", "B": "two"}
    assert podenv.expand("$(A)-$(B)", env) == "1-two"
    assert podenv.expand("$(MISSING) stays", env) == "$(MISSING) stays"
    assert podenv.expand("$$(A) is literal", env) == "$(A) is literal"
    assert podenv.expand("$A is not a reference", env) == "$A is not a reference"


def test_container_env_resolves_every_source_in_order() -> None:
    data = {
        ("ConfigMap", "ns", "cm"): {"k": "from-cm", "other": "o"},
        ("Secret", "ns", "sec"): {"token": "s3cret"},
    }

    def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
        return data.get((kind, ns, name))

    container = {
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "1500m"}},
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "PLAIN", "value": "v"},
            {"name": "REF", "value": "$(PLAIN)/$(CM_k)/$(PATH)"},
            {"name": "NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": "TIER", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['tier']"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "KEY", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
            {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "sec", "key": "token"}}},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "none", "key": "x", "optional": True}}},
            {
                "name": "MEM_MI",
                "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}},
            },
            {"name": "CPU", "valueFrom": {"resourceFieldRef": {"resource": "requests.cpu"}}},
            {"name": "CPU_LIMIT", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
        ],
    }
    env = podenv.container_env(POD, container, {"PATH": "/bin"}, lookup, {"cpu": "32"})
    assert env["CM_k"] == "from-cm" and env["CM_other"] == "o"
    assert env["REF"] == "v/from-cm//bin"
    assert (env["NAME"], env["TIER"], env["IP"]) == ("p", "web", "127.0.0.9")
    assert (env["KEY"], env["TOKEN"]) == ("from-cm", "s3cret")
    assert "OPT" not in env
    assert env["MEM_MI"] == "2048"
    assert env["CPU"] == "2"  # rounded up, as the kubelet does
    assert env["CPU_LIMIT"] == "32"  # no limit: the node's allocatable


@pytest.mark.parametrize(
    ("var", "message"),
    [
        ({"valueFrom": {"configMapKeyRef": {"name": "nope", "key": "k"}}}, 'configmap "nope" not found'),
        ({"valueFrom": {"configMapKeyRef": {"name": "cm", "key": "x"}}}, 'key "x" not in configmap "cm"'),
        ({"valueFrom": {"fieldRef": {"fieldPath": "spec.nope"}}}, "unsupported fieldRef"),
    ],
)
def test_container_env_errors_name_what_is_missing(var: dict, message: str) -> None:
    def lookup(kind: str, ns: str, name: str) -> dict[str, str] | None:
        return {"k": "v"} if name == "cm" else None

    with pytest.raises(podenv.ConfigError, match=message):
        podenv.container_env(POD, {"env": [{"name": "X", **var}]}, {}, lookup, {})


def test_downward_labels_file_format() -> None:
    assert podenv.field_value(POD, "metadata.labels") == 'app="x"\ntier="web"'


def test_probe_thresholds_and_initial_delay() -> None:
    p = probes.Probe(
        "readiness", {"initialDelaySeconds": 5, "periodSeconds": 2, "successThreshold": 2}, 100.0
    )
    assert not p.due(104.9) and p.due(105.0)
    assert p.record(True, "", 105.0) is False and p.result is None  # one success of two
    assert not p.due(106.0) and p.due(107.0)
    assert p.record(True, "", 107.0) is True and p.result is True
    # failureThreshold defaults to 3
    assert not p.record(False, "x", 109.0) and not p.record(False, "x", 111.0)
    assert p.record(False, "x", 113.0) and p.result is False


def test_http_probe_against_a_real_server() -> None:
    import http.server
    import threading

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 503)
            self.end_headers()

        def log_message(self, *a) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    container = {"ports": [{"name": "http", "containerPort": port}]}
    try:
        assert probes.run_probe({"httpGet": {"path": "/ok", "port": "http"}}, container, "127.0.0.1", None)[0]
        ok, msg = probes.run_probe({"httpGet": {"path": "/bad", "port": port}}, container, "127.0.0.1", None)
        assert not ok and "503" in msg
        assert probes.run_probe({"tcpSocket": {"port": port}}, container, "127.0.0.1", None)[0]
    finally:
        srv.shutdown()
        srv.server_close()
    ok, msg = probes.run_probe({"tcpSocket": {"port": port}}, container, "127.0.0.1", None)
    assert not ok and "probe error" in msg


def test_resource_metrics_report_a_busy_sessions_cpu_in_the_kubelets_format() -> None:
    """What metrics-server scrapes from the local node: the kubelet's metric names, labels and
    millisecond timestamps, with the real CPU time of every process of a container's session."""
    import os
    import subprocess
    import sys
    import time

    from prometheus_client.parser import text_string_to_metric_families

    from localnode import usage

    # A container: a session leader whose child burns CPU (the child's time must count too).
    burn = "import subprocess, sys; subprocess.run([sys.executable, '-c', 'while True: pass'])"
    proc = subprocess.Popen([sys.executable, "-c", burn], start_new_session=True)
    try:
        time.sleep(1.0)
        started = time.time() - 1.0
        c = usage.ContainerUsage("ns", "pod-0", "tgi", proc.pid, started)
        gone = usage.ContainerUsage("ns", "pod-1", "tgi", 2**22 + 7, started)  # no such session
        before = time.time()
        text = usage.resource_metrics([c, gone])
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()

    samples = {
        (s.name, s.labels.get("pod")): s
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    cpu = samples[("container_cpu_usage_seconds_total", "pod-0")]
    assert cpu.labels == {"container": "tgi", "namespace": "ns", "pod": "pod-0"}
    assert 0.3 < cpu.value < 2.5  # about a second of one busy child (the parent sleeps)
    assert cpu.timestamp is not None and abs(float(cpu.timestamp) - before) < 5
    assert samples[("container_memory_working_set_bytes", "pod-0")].value > 1_000_000
    assert samples[("container_start_time_seconds", "pod-0")].value == pytest.approx(started, abs=0.01)
    assert ("container_cpu_usage_seconds_total", "pod-1") not in samples  # exited: not reported
    assert samples[("node_cpu_usage_seconds_total", None)].value > cpu.value
    assert samples[("node_memory_working_set_bytes", None)].value > 0


def test_a_checkout_under_a_pods_volume_stays_visible_to_the_image_commands() -> None:
    """A checkout under /tmp, where serving and operator pods mount an emptyDir: the folders the table's
    commands run from are bound again inside it (the sandbox's keepVisible)."""
    from localnode import sandbox

    assert sandbox.hidden_by("/tmp/lf-fresh", ["/models", "/tmp", "/dev/shm"])  # noqa: S108
    assert sandbox.hidden_by("/tmp/lf-fresh/.venv", ["/tmp/"])  # noqa: S108
    assert not sandbox.hidden_by("/tmp", ["/tmp"])  # noqa: S108 - the volume itself is what the pod asked for
    assert not sandbox.hidden_by("/tmpfoo/x", ["/tmp"])  # noqa: S108
    assert not sandbox.hidden_by("/srv/loraforge", ["/", "/models"])  # / is no volume mount here
    paths = images.host_paths()
    repo = str(images.DEV_DIR.parent)
    assert repo in paths and str(servingenv.env_dir()) in paths
    assert str(images.VENV_BIN.parent) in paths
