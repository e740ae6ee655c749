"""`loraforge`: talk to a ModelDeployment from the shell.

    loraforge generate NAME [-n NAMESPACE] [--adapter A] [--max-new-tokens N] [--raw] [--url URL] PROMPT...

Sends PROMPT to the deployment with huggingface_hub's InferenceClient, as one
user turn through the chat API (the model's chat template; `--raw` sends the
text as is to TGI's /generate), with the adapter selected, and prints the answer.

Where it sends it: `--url` if given (e.g. after `kubectl port-forward
svc/NAME 8080:80`, `--url http://localhost:8080`); inside the cluster, the
deployment's Service (`status.endpoint`); otherwise a Ready pod's address,
which a machine in the pod network (or the local cluster) can reach.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from . import api
from .modeldeployment import runtime


class CliError(Exception):
    pass


async def _find(name: str, namespace: str | None) -> tuple[str, str]:
    """The URL to send to, and the `model` that means the base model there."""
    from kubernetes_asyncio import client, config

    try:
        config.load_incluster_config()
        in_cluster = True
    except config.ConfigException:
        await config.load_kube_config()
        in_cluster = False
    if namespace is None:
        _, active = config.list_kube_config_contexts() if not in_cluster else (None, {})
        namespace = ((active or {}).get("context") or {}).get("namespace") or "default"
    async with client.ApiClient() as api_client:
        custom = client.CustomObjectsApi(api_client)
        try:
            md: dict[str, Any] = await custom.get_namespaced_custom_object(
                api.GROUP, api.VERSION, namespace, "modeldeployments", name
            )
        except client.ApiException as e:
            raise CliError(f'ModelDeployment "{name}" in namespace "{namespace}": {e.reason}') from e
        status = md.get("status") or {}
        base = status.get("baseModelName") or "tgi"  # a status from before vLLM: TGI's name
        if in_cluster and status.get("endpoint"):
            return status["endpoint"], base
        pods = await client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"{api.GROUP}/modeldeployment={name}"
        )
        for pod in pods.items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                return f"http://{pod.status.pod_ip}:{runtime.PORT}", base
    raise CliError(
        f'ModelDeployment "{name}" has no Ready pod ({status.get("phase") or "no status yet"}); '
        "see `kubectl describe md " + name + "`"
    )


def _served_base_model(url: str, timeout: float) -> str:
    """The base model's name at ``url``: the model in `/v1/models` that is no adapter (vLLM lists adapters
    with a `parent`); TGI lists only its base model."""
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/v1/models", timeout=timeout) as r:  # noqa: S310
            models = json.load(r).get("data") or []
    except urllib.error.HTTPError as e:
        if e.code == 404:
            return "tgi"  # a TGI without /v1/models takes `model: tgi` for its base model
        raise
    base = next((m["id"] for m in models if not m.get("parent")), None)
    if base is None:
        raise CliError(f"{url}/v1/models lists no base model")
    return base


def generate(args: argparse.Namespace) -> int:
    from huggingface_hub import InferenceClient

    if args.url:
        url, base = args.url, _served_base_model(args.url, args.timeout)
    else:
        url, base = asyncio.run(_find(args.name, args.namespace))
    client = InferenceClient(base_url=url, timeout=args.timeout)
    prompt = " ".join(args.prompt)
    if args.raw:
        kwargs = {"adapter_id": args.adapter} if args.adapter else {}
        answer = client.text_generation(prompt, max_new_tokens=args.max_new_tokens, **kwargs)
    else:
        out = client.chat_completion(
            [{"role": "user", "content": prompt}],
            model=args.adapter or base,
            max_tokens=args.max_new_tokens,
            temperature=0.0,
        )
        answer = out.choices[0].message.content or ""
    print(answer.strip())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loraforge", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="ask a ModelDeployment, with or without an adapter")
    g.add_argument("name", help="the ModelDeployment")
    g.add_argument("prompt", nargs="+", help="the prompt")
    g.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    g.add_argument("--adapter", help="adapter name (adapter_id); without it, the base model answers")
    g.add_argument("--max-new-tokens", type=int, default=128)
    g.add_argument("--raw", action="store_true", help="send the prompt as is (no chat template)")
    g.add_argument("--url", help="the runtime's base URL (TGI or vLLM) to use instead of finding one")
    g.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    try:
        return generate(args)
    except CliError as e:
        print(f"loraforge: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # the server's refusal (e.g. an unknown adapter), briefly
        detail = getattr(e, "server_message", None) or str(e).splitlines()[0]
        print(f"loraforge: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
