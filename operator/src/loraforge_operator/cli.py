"""`loraforge`: talk to a ModelDeployment from the shell.

    loraforge generate NAME [-n NAMESPACE] [--adapter A] [--max-new-tokens N] [--raw] [--url URL] PROMPT...

Sends PROMPT to the deployment with huggingface_hub's InferenceClient, as one
user turn through the chat API (the model's chat template; `--raw` sends the
text as is to /generate), with the adapter selected, and prints the answer.

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


async def _find_url(name: str, namespace: str | None) -> str:
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
        if in_cluster and status.get("endpoint"):
            return status["endpoint"]
        pods = await client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"{api.GROUP}/modeldeployment={name}"
        )
        for pod in pods.items:
            ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
            if ready and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                return f"http://{pod.status.pod_ip}:{runtime.PORT}"
    raise CliError(
        f'ModelDeployment "{name}" has no Ready pod ({status.get("phase") or "no status yet"}); '
        "see `kubectl describe md " + name + "`"
    )


def generate(args: argparse.Namespace) -> int:
    from huggingface_hub import InferenceClient

    url = args.url or asyncio.run(_find_url(args.name, args.namespace))
    client = InferenceClient(base_url=url, timeout=args.timeout)
    prompt = " ".join(args.prompt)
    if args.raw:
        kwargs = {"adapter_id": args.adapter} if args.adapter else {}
        answer = client.text_generation(prompt, max_new_tokens=args.max_new_tokens, **kwargs)
    else:
        out = client.chat_completion(
            [{"role": "user", "content": prompt}],
            model=args.adapter or "tgi",
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
    g.add_argument("--url", help="TGI base URL to use instead of finding one")
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
