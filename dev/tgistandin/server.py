"""The TGI stand-in's engine and HTTP server (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger("tgistandin")
VERSION = "loraforge-tgi-standin 0.1"
BASE_MODEL_NAMES = ("", "tgi")  # `model` values that mean the base model in chat completions
# TGI's --usage-stats / USAGE_STATS levels (its launcher's UsageStatsLevel); TGI's default is "on".
USAGE_STATS_LEVELS = ("on", "off", "no-stack")


class ValidationError(Exception):
    """A request TGI would refuse with HTTP 422 (error_type "validation")."""


def parse_lora_adapters(value: str) -> dict[str, Path]:
    """TGI's LORA_ADAPTERS: `name=/path,name2=/path2` (a bare path names itself)."""
    out: dict[str, Path] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, path = item.partition("=")
        if not sep:
            name, path = item, item
        out[name.strip()] = Path(path.strip())
    return out


@dataclass
class Params:
    max_new_tokens: int | None = None
    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    return_full_text: bool = False
    details: bool = False

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Params:
        p = cls(
            max_new_tokens=raw.get("max_new_tokens"),
            do_sample=bool(raw.get("do_sample") or False),
            temperature=raw.get("temperature"),
            top_k=raw.get("top_k"),
            top_p=raw.get("top_p"),
            seed=raw.get("seed"),
            stop=list(raw.get("stop") or []),
            return_full_text=bool(raw.get("return_full_text") or False),
            details=bool(raw.get("details") or False),
        )
        if p.max_new_tokens is not None and (not isinstance(p.max_new_tokens, int) or p.max_new_tokens < 1):
            raise ValidationError("`max_new_tokens` must be strictly positive")
        if p.temperature is not None and p.temperature <= 0:
            raise ValidationError("`temperature` must be strictly positive")
        if p.top_p is not None and not 0 < p.top_p < 1:
            raise ValidationError("`top_p` must be > 0.0 and < 1.0")
        return p


@dataclass
class Token:
    id: int
    text: str
    special: bool


class Engine:
    """The base model and its LoRA adapters, generating one request at a time."""

    def __init__(
        self, model_id: str, adapters: dict[str, Path], max_input_tokens: int, max_total_tokens: int
    ):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.model_id = model_id
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.tok = AutoTokenizer.from_pretrained(model_id, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32, local_files_only=True)
        self.adapters = sorted(adapters)
        if adapters:
            from peft import PeftModel

            first, *rest = self.adapters
            model = PeftModel.from_pretrained(model, adapters[first], adapter_name=first)
            for name in rest:
                model.load_adapter(adapters[name], adapter_name=name)
        self.model = model.eval()
        self.lock = threading.Lock()
        self.waiting = 0
        self.waiting_lock = threading.Lock()

    def adapter(self, adapter_id: str | None) -> str | None:
        if not adapter_id:
            return None
        if adapter_id not in self.adapters:
            loaded = ", ".join(self.adapters) or "none"
            raise ValidationError(f"adapter_id {adapter_id!r} is not loaded (loaded adapters: {loaded})")
        return adapter_id

    def encode(self, prompt: str) -> list[int]:
        ids = self.tok(prompt)["input_ids"]
        if len(ids) > self.max_input_tokens:
            raise ValidationError(
                f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. "
                f"Given: {len(ids)} `inputs` tokens (at most {self.max_input_tokens})"
            )
        return ids

    def stream(self, ids: list[int], params: Params, adapter: str | None) -> Iterator[Token]:
        """Tokens as they are generated (greedy, or sampled with temperature/top-k/top-p)."""
        torch = self.torch
        budget = self.max_total_tokens - len(ids)
        n = min(params.max_new_tokens or 100, budget)
        if n < 1:
            raise ValidationError(f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}")
        with self.waiting_lock:
            self.waiting += 1
        self.lock.acquire()
        with self.waiting_lock:
            self.waiting -= 1
        try:
            gen = torch.Generator().manual_seed(params.seed if params.seed is not None else 0)
            if adapter is not None:
                self.model.set_adapter(adapter)
                context = _nullcontext()
            else:
                context = self.model.disable_adapter() if self.adapters else _nullcontext()
            with context, torch.no_grad():
                past = None
                inputs = torch.tensor([ids])
                eos = set(_as_list(self.tok.eos_token_id)) | set(
                    _as_list(self.model.generation_config.eos_token_id)
                )
                for _ in range(n):
                    out = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
                    past = out.past_key_values
                    logits = out.logits[0, -1].float()
                    token = self._pick(logits, params, gen)
                    special = token in eos
                    yield Token(token, self.tok.decode([token], skip_special_tokens=False), special)
                    if special:
                        return
                    inputs = torch.tensor([[token]])
        finally:
            self.lock.release()

    def _pick(self, logits: Any, params: Params, gen: Any) -> int:
        torch = self.torch
        if (
            not params.do_sample
            and params.temperature is None
            and params.top_k is None
            and params.top_p is None
        ):
            return int(logits.argmax())
        logits = logits / (params.temperature or 1.0)
        if params.top_k:
            kth = torch.topk(logits, params.top_k).values[-1]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, -1)
        if params.top_p:
            sorted_probs, order = probs.sort(descending=True)
            keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=gen))


def _as_list(x: Any) -> list[int]:
    if x is None:
        return []
    return list(x) if isinstance(x, list | tuple) else [x]


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class Metrics:
    """A subset of TGI's Prometheus metrics, under TGI's names."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_count = Counter("tgi_request_count", "Requests received", registry=r)
        self.request_success = Counter("tgi_request_success", "Requests that succeeded", registry=r)
        self.request_failure = Counter("tgi_request_failure", "Requests that failed", ["err"], registry=r)
        self.queue_size = Gauge("tgi_queue_size", "Requests waiting to be scheduled", registry=r)
        self.batch_size = Gauge("tgi_batch_current_size", "Requests in the running batch", registry=r)
        self.duration = Histogram("tgi_request_duration", "Request duration in seconds", registry=r)
        self.generated = Histogram(
            "tgi_request_generated_tokens",
            "Tokens generated per request",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.input_length = Histogram(
            "tgi_request_input_length",
            "Input tokens per request",
            buckets=(1, 8, 32, 128, 512, 2048, 8192),
            registry=r,
        )


class Handler(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.0"  # streamed bodies end when the connection closes, as SSE clients expect

    def log_message(self, fmt: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    # --- plumbing -------------------------------------------------------------------

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, kind: str) -> None:
        self.server.metrics.request_failure.labels(err=kind).inc()
        self._json(status, {"error": message, "error_type": kind})

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def _sse(self, body: Any) -> None:
        self.wfile.write(b"data:" + json.dumps(body).encode() + b"\n\n")
        self.wfile.flush()

    def _body(self) -> dict[str, Any]:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError as e:
            raise ValidationError(f"request body is not JSON: {e}") from None
        if not isinstance(body, dict):
            raise ValidationError("request body must be a JSON object")
        return body

    # --- routes ---------------------------------------------------------------------

    def do_GET(self) -> None:
        if self.path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/info":
            self._json(200, self.server.info())
        elif self.path == "/metrics":
            self.server.metrics.queue_size.set(self.server.engine.waiting)
            data = generate_latest(self.server.metrics.registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json(404, {"error": f"no route GET {self.path}", "error_type": "not_found"})

    def do_POST(self) -> None:
        routes = {
            "/": self._compat,
            "/generate": self._generate,
            "/generate_stream": self._generate_stream,
            "/v1/chat/completions": self._chat,
        }
        route = routes.get(self.path)
        if route is None:
            self._json(404, {"error": f"no route POST {self.path}", "error_type": "not_found"})
            return
        self.server.metrics.request_count.inc()
        started = time.monotonic()
        try:
            route(self._body())
            self.server.metrics.request_success.inc()
        except ValidationError as e:
            self._error(422, str(e), "validation")
        except (BrokenPipeError, ConnectionResetError):
            self.server.metrics.request_failure.labels(err="disconnected").inc()
        except Exception as e:
            log.exception("generation failed")
            self._error(500, f"{type(e).__name__}: {e}", "generation")
        finally:
            self.server.metrics.duration.observe(time.monotonic() - started)

    def _prepare(self, body: dict[str, Any]) -> tuple[list[int], Params, str | None, str]:
        inputs = body.get("inputs")
        if not isinstance(inputs, str) or not inputs:
            raise ValidationError("`inputs` must be a non-empty string")
        raw = body.get("parameters") or {}
        params = Params.parse(raw)
        adapter = self.server.engine.adapter(raw.get("adapter_id"))
        ids = self.server.engine.encode(inputs)
        self.server.metrics.input_length.observe(len(ids))
        return ids, params, adapter, inputs

    def _run(self, ids: list[int], params: Params, adapter: str | None) -> tuple[list[Token], str]:
        tokens: list[Token] = []
        text = ""
        self.server.metrics.batch_size.set(1)
        try:
            for t in self.server.engine.stream(ids, params, adapter):
                tokens.append(t)
                text += "" if t.special else t.text
                if any(s in text for s in params.stop):
                    return tokens, "stop_sequence"
        finally:
            self.server.metrics.batch_size.set(0)
            self.server.metrics.generated.observe(len(tokens))
        return tokens, ("eos_token" if tokens and tokens[-1].special else "length")

    def _text(self, tokens: list[Token]) -> str:
        return self.server.engine.tok.decode([t.id for t in tokens], skip_special_tokens=True)

    def _generate(self, body: dict[str, Any], as_list: bool = False) -> None:
        ids, params, adapter, prompt = self._prepare(body)
        tokens, reason = self._run(ids, params, adapter)
        text = (prompt if params.return_full_text else "") + self._text(tokens)
        out: dict[str, Any] = {"generated_text": text}
        if params.details:
            out["details"] = {
                "finish_reason": reason,
                "generated_tokens": len(tokens),
                "seed": params.seed,
                "prefill": [],
                "tokens": [
                    {"id": t.id, "text": t.text, "logprob": None, "special": t.special} for t in tokens
                ],
            }
        self._json(200, [out] if as_list else out)

    def _generate_stream(self, body: dict[str, Any]) -> None:
        ids, params, adapter, prompt = self._prepare(body)
        self._sse_start()
        tokens: list[Token] = []
        self.server.metrics.batch_size.set(1)
        try:
            stream = self.server.engine.stream(ids, params, adapter)
            for i, t in enumerate(stream):
                tokens.append(t)
                text_so_far = self._text(tokens)
                stop = any(s in text_so_far for s in params.stop)
                last = stop or t.special or len(tokens) >= (params.max_new_tokens or 100)
                event: dict[str, Any] = {
                    "index": i,
                    "token": {"id": t.id, "text": t.text, "logprob": None, "special": t.special},
                    "generated_text": None,
                    "details": None,
                }
                if last:
                    reason = "stop_sequence" if stop else ("eos_token" if t.special else "length")
                    event["generated_text"] = (prompt if params.return_full_text else "") + text_so_far
                    event["details"] = {
                        "finish_reason": reason,
                        "generated_tokens": len(tokens),
                        "seed": params.seed,
                    }
                self._sse(event)
                if last:
                    stream.close()
                    break
        finally:
            self.server.metrics.batch_size.set(0)
            self.server.metrics.generated.observe(len(tokens))

    def _compat(self, body: dict[str, Any]) -> None:
        # TGI's `/`: what huggingface_hub's InferenceClient.text_generation posts to.
        if body.get("stream"):
            self._generate_stream(body)
        else:
            self._generate(body, as_list=True)

    def _chat(self, body: dict[str, Any]) -> None:
        engine = self.server.engine
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ValidationError("`messages` must be a non-empty list")
        model = body.get("model") or ""
        adapter = None if model in (*BASE_MODEL_NAMES, engine.model_id) else engine.adapter(model)
        prompt = engine.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = engine.tok(prompt, add_special_tokens=False)["input_ids"]
        if len(ids) > engine.max_input_tokens:
            raise ValidationError(
                f"the conversation is {len(ids)} tokens, more than {engine.max_input_tokens}"
            )
        params = Params.parse(
            {
                "max_new_tokens": body.get("max_tokens") or body.get("max_completion_tokens"),
                # As TGI's chat route: temperature 0 means greedy decoding.
                "temperature": body.get("temperature") or None,
                "top_p": body.get("top_p"),
                "seed": body.get("seed"),
                "stop": body.get("stop")
                if isinstance(body.get("stop"), list)
                else ([body["stop"]] if body.get("stop") else []),
            }
        )
        created, cid = int(time.time()), f"chatcmpl-{uuid.uuid4().hex[:12]}"
        name = model or "tgi"
        if body.get("stream"):
            self._sse_start()
            for t in engine.stream(ids, params, adapter):
                delta = {"role": "assistant", "content": "" if t.special else t.text}
                self._sse(
                    {
                        "id": cid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": name,
                        "system_fingerprint": VERSION,
                        "choices": [
                            {
                                "index": 0,
                                "delta": delta,
                                "logprobs": None,
                                "finish_reason": "stop" if t.special else None,
                            }
                        ],
                    }
                )
            self.wfile.write(b"data: [DONE]\n\n")
            return
        tokens, reason = self._run(ids, params, adapter)
        text = self._text(tokens)
        self._json(
            200,
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": name,
                "system_fingerprint": VERSION,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": None,
                        "finish_reason": "length" if reason == "length" else "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": len(ids),
                    "completion_tokens": len(tokens),
                    "total_tokens": len(ids) + len(tokens),
                },
            },
        )


class Server(ThreadingHTTPServer):
    # On SIGTERM, requests being answered finish before the process exits (as TGI drains).
    daemon_threads = False
    block_on_close = True
    # socketserver's listen backlog is 5: sixteen clients connecting at once overflowed it and one got a
    # connection reset (seen in bench/serving_bench.py at concurrency 16). TGI's router takes them all.
    request_queue_size = 1024

    def __init__(self, address: tuple[str, int], engine: Engine, args: argparse.Namespace) -> None:
        super().__init__(address, Handler)
        self.engine = engine
        self.args = args
        self.metrics = Metrics()

    def info(self) -> dict[str, Any]:
        a = self.args
        return {
            "model_id": self.engine.model_id,
            "model_sha": None,
            "model_dtype": "torch.float32",
            "model_device_type": "cpu",
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": a.max_concurrent_requests,
            "max_best_of": 1,
            "max_stop_sequences": 4,
            "max_input_tokens": a.max_input_tokens,
            "max_total_tokens": a.max_total_tokens,
            "validation_workers": 1,
            "max_client_batch_size": 1,
            "router": "text-generation-router",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
            # Not in TGI's /info: the --usage-stats level in effect, so a test can check what a pod was
            # started with. The stand-in never sends anything anywhere, whatever the level.
            "usage_stats": a.usage_stats,
        }


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tgistandin", description="A CPU stand-in for text-generation-inference."
    )
    env = os.environ.get
    p.add_argument("--model-id", default=env("MODEL_ID"), required=not env("MODEL_ID"))
    p.add_argument("--hostname", default="0.0.0.0")  # noqa: S104 - a server, as TGI's default
    p.add_argument("--port", type=int, default=int(env("PORT") or 80))
    p.add_argument("--max-input-tokens", type=int, default=int(env("MAX_INPUT_TOKENS") or 1024))
    p.add_argument("--max-total-tokens", type=int, default=int(env("MAX_TOTAL_TOKENS") or 2048))
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    # TGI's launcher reports usage statistics to Hugging Face unless this is "off" (or "no-stack": no
    # stack traces). Accepted and logged; the stand-in sends nothing, whatever it says.
    p.add_argument("--usage-stats", type=_usage_stats, default=env("USAGE_STATS") or "on")
    p.add_argument("--max-batch-size", type=int, default=None)
    # Accepted so a TGI command line runs unchanged; a CPU process has no shards or quantized kernels.
    p.add_argument("--quantize", default=env("QUANTIZE"))
    p.add_argument("--revision", default=env("REVISION"))
    p.add_argument("--num-shard", type=int, default=None)
    p.add_argument("--sharded", default=None)
    p.add_argument("--dtype", default=None)
    p.add_argument("--json-output", action="store_true")
    return p


def _usage_stats(value: str) -> str:
    # Case-sensitive, as clap's value enum in TGI's launcher; argparse applies this to the env default too.
    if value not in USAGE_STATS_LEVELS:
        raise argparse.ArgumentTypeError(
            f"invalid value {value!r} (possible values: {', '.join(USAGE_STATS_LEVELS)})"
        )
    return value


def validate(args: argparse.Namespace) -> str | None:
    """TGI's launcher's argument checks that apply here: the error text it ends with, or None."""
    if args.max_input_tokens >= args.max_total_tokens:
        # TGI's text, backticks included (launcher/src/main.rs); TGI checks it when both are given, the
        # stand-in on the values it would run with (its own defaults when they are not).
        return (
            f"`max_input_tokens`({args.max_input_tokens}) must be < "
            f"`max_total_tokens`({args.max_total_tokens})"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info("usage stats: %s (the stand-in sends nothing anywhere)", args.usage_stats)
    error = validate(args)
    if error is not None:
        # TGI's launcher returns LauncherError::ArgumentValidation from main(): Rust prints its Debug form
        # after "Error: " on stderr and exits with 1, before loading anything.
        print(f'Error: ArgumentValidation("{error}")', file=sys.stderr, flush=True)
        return 1
    adapters = parse_lora_adapters(os.environ.get("LORA_ADAPTERS", ""))
    for name, path in adapters.items():
        if not (path / "adapter_config.json").is_file():
            log.error("LORA_ADAPTERS: %s=%s has no adapter_config.json", name, path)
            return 2
    log.info("loading %s with adapters %s", args.model_id, ", ".join(adapters) or "none")
    engine = Engine(args.model_id, adapters, args.max_input_tokens, args.max_total_tokens)
    server = Server((args.hostname, args.port), engine, args)

    def drain(*_: Any) -> None:
        log.info("SIGTERM: no new connections; finishing the requests in flight")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    log.info("ready: listening on %s:%d", args.hostname, server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
