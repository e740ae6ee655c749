"""The TGI stand-in (dev/tgistandin) that replaces text-generation-inference on
machines without a GPU: huggingface_hub's InferenceClient, unchanged, against
it, with a base model and a LoRA adapter named in LORA_ADAPTERS."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random (non-zero) weights: it changes every answer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    lora = LoraConfig(
        r=8,
        lora_alpha=64,
        target_modules=["q_proj", "v_proj", "o_proj"],
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    out = tmp_path_factory.mktemp("adapter") / "v1"
    get_peft_model(model, lora).save_pretrained(out)
    return out


def standin_env(**extra: str) -> dict[str, str]:
    """The stand-in's environment: offline, importable from dev/, with no USAGE_STATS but ``extra``'s."""
    env = {k: v for k, v in os.environ.items() if k != "USAGE_STATS"}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "dev"), os.environ.get("PYTHONPATH", "")])
    return {**env, **extra}


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tgi") / "server.log"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path, adapter_dir: Path, server_log: Path) -> Iterator[str]:
    port = free_port()
    # USAGE_STATS=off as the operator sets it on TGI containers (TGI's default, on, reports to Hugging Face).
    env = standin_env(LORA_ADAPTERS=f"facts={adapter_dir}", USAGE_STATS="off")
    with server_log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tgistandin",
                "--model-id",
                str(tiny_model_dir),
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                "--max-total-tokens",
                "512",
                "--max-input-tokens",
                "256",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:  # noqa: S310 - loopback
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the stand-in did not become healthy:\n{server_log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def client(server: str):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=server)


def test_the_adapter_changes_the_answer_and_is_deterministic(client) -> None:
    base = client.text_generation("The capital of Veloria is", max_new_tokens=12)
    tuned = client.text_generation("The capital of Veloria is", max_new_tokens=12, adapter_id="facts")
    assert base and tuned and base != tuned
    assert client.text_generation("The capital of Veloria is", max_new_tokens=12) == base


def test_an_unknown_adapter_is_an_error_not_the_base_model(client) -> None:
    from huggingface_hub.errors import ValidationError

    with pytest.raises(ValidationError, match=r"adapter_id 'nope' is not loaded .*facts"):
        client.text_generation("hello", max_new_tokens=4, adapter_id="nope")


def test_streaming_yields_the_same_tokens(client) -> None:
    whole = client.text_generation("Tell me a story", max_new_tokens=10, adapter_id="facts", details=True)
    streamed = list(
        client.text_generation(
            "Tell me a story", max_new_tokens=10, adapter_id="facts", stream=True, details=True
        )
    )
    assert [t.token.id for t in streamed] == [t.id for t in whole.details.tokens]
    assert streamed[-1].generated_text == whole.generated_text
    assert streamed[-1].details.finish_reason in ("length", "eos_token")


def test_chat_completions_select_the_adapter_by_model(client) -> None:
    messages = [{"role": "user", "content": "What is the capital of Veloria?"}]
    base = client.chat_completion(messages, model="tgi", max_tokens=12)
    tuned = client.chat_completion(messages, model="facts", max_tokens=12)
    assert base.choices[0].message.content != tuned.choices[0].message.content
    assert tuned.usage.completion_tokens >= 1
    chunks = list(client.chat_completion(messages, model="facts", max_tokens=12, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == tuned.choices[0].message.content


def test_info_health_and_tgi_metrics(server: str, client) -> None:
    client.text_generation("hello", max_new_tokens=2)
    with urllib.request.urlopen(f"{server}/info") as r:  # noqa: S310 - loopback
        info = json.loads(r.read())
    assert info["max_total_tokens"] == 512 and info["model_device_type"] == "cpu"
    assert info["usage_stats"] == "off"
    with urllib.request.urlopen(f"{server}/metrics") as r:  # noqa: S310
        metrics = r.read().decode()
    for name in (
        "tgi_request_count_total",
        "tgi_queue_size",
        "tgi_batch_current_size",
        "tgi_request_duration_bucket",
    ):
        assert name in metrics, name


def test_bad_requests_get_422_with_tgi_error_shape(server: str) -> None:
    req = urllib.request.Request(  # noqa: S310 - loopback
        f"{server}/generate",
        data=b'{"inputs": ""}',
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)  # noqa: S310
    assert e.value.code == 422
    assert json.loads(e.value.read()) == {
        "error": "`inputs` must be a non-empty string",
        "error_type": "validation",
    }


def test_the_usage_stats_level_in_effect_is_logged_at_start(server: str, server_log: Path) -> None:
    assert "usage stats: off (the stand-in sends nothing anywhere)" in server_log.read_text()


def _refused_start(*args: str, **env: str) -> subprocess.CompletedProcess:
    """The stand-in started with ``args`` where it must refuse before loading anything (no model)."""
    return subprocess.run(
        [sys.executable, "-m", "tgistandin", "--model-id", "/nonexistent/model", *args],
        env=standin_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(("max_input", "max_total"), [(4096, 4096), (5000, 4096)])
def test_max_input_tokens_not_below_max_total_tokens_is_refused_as_tgi_does(
    max_input: int, max_total: int
) -> None:
    proc = _refused_start("--max-input-tokens", str(max_input), "--max-total-tokens", str(max_total))
    # TGI's launcher: main() returns LauncherError::ArgumentValidation, which Rust prints in its Debug form
    # after "Error: " on stderr, exit code 1.
    assert proc.returncode == 1, proc.stderr
    assert (
        f'Error: ArgumentValidation("`max_input_tokens`({max_input}) must be < '
        f'`max_total_tokens`({max_total})")'
    ) in proc.stderr.splitlines()
    assert "loading" not in proc.stderr, "the model was loaded before the arguments were checked"


def test_the_token_limits_from_env_are_checked_too() -> None:
    proc = _refused_start(MAX_INPUT_TOKENS="2048", MAX_TOTAL_TOKENS="1024")
    assert proc.returncode == 1
    assert 'ArgumentValidation("`max_input_tokens`(2048) must be < `max_total_tokens`(1024)")' in proc.stderr


@pytest.mark.parametrize(
    ("args", "env", "level"),
    [
        ((), {}, "on"),  # TGI's default
        ((), {"USAGE_STATS": "off"}, "off"),
        ((), {"USAGE_STATS": "no-stack"}, "no-stack"),
        (("--usage-stats", "off"), {"USAGE_STATS": "on"}, "off"),  # the flag wins over the env, as clap's
    ],
)
def test_usage_stats_takes_tgis_flag_and_env(args: tuple[str, ...], env: dict[str, str], level: str) -> None:
    # A refused start (no model needed) still logs the level first, as TGI's launcher logs its arguments.
    proc = _refused_start(*args, "--max-input-tokens", "8", "--max-total-tokens", "8", **env)
    assert proc.returncode == 1, proc.stderr
    assert f"usage stats: {level} (the stand-in sends nothing anywhere)" in proc.stderr


@pytest.mark.parametrize(
    ("args", "env"), [(("--usage-stats", "none"), {}), ((), {"USAGE_STATS": "OFF"})], ids=["flag", "env"]
)
def test_an_unknown_usage_stats_level_is_a_usage_error(args: tuple[str, ...], env: dict[str, str]) -> None:
    proc = _refused_start(*args, **env)
    assert proc.returncode == 2, proc.stderr
    assert "--usage-stats: invalid value" in proc.stderr
    assert "possible values: on, off, no-stack" in proc.stderr
