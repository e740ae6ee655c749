"""`loraforge`: talk to a ModelDeployment from the shell.

    loraforge generate NAME [-n NAMESPACE] [--adapter A] [--max-new-tokens N] [--raw] [--url URL] PROMPT...
    loraforge approve MODELDEPLOYMENT ADAPTER REVISION [-n NAMESPACE]

Sends PROMPT to the deployment with huggingface_hub's InferenceClient, as one
user turn through the chat API (the model's chat template; `--raw` sends the
text as is to TGI's /generate), with the adapter selected, and prints the answer.

Where it sends it: `--url` if given (e.g. after `kubectl port-forward
svc/NAME 8080:80`, `--url http://localhost:8080`); inside the cluster, the
deployment's Service (`status.endpoint`); otherwise a Ready pod's address,
which a machine in the pod network (or the local cluster) can reach.

`approve`, under `promotion.policy: Manual`: pins the adapter to the revision
(`from.revision`) and records you, as the API server knows you (a
SelfSubjectReview), in `from.approvedBy`; the chart's admission policy checks
that name against whoever sends the change.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

from . import api
from .modeldeployment import runtime
from .modeldeployment.model import REVISION


class CliError(Exception):
    pass


FIELD_MANAGER = "loraforge-cli"


async def _find(name: str, namespace: str | None) -> tuple[str, str]:
    """The URL to send to, and the `model` that means the base model there."""
    from .kube import ApiError, Kube, in_cluster

    async with await Kube.connect(FIELD_MANAGER) as kube:
        namespace = namespace or kube.default_namespace
        try:
            md = await kube.get(api.API_VERSION, "ModelDeployment", namespace, name)
        except ApiError as e:
            raise CliError(f'ModelDeployment "{name}" in namespace "{namespace}": {e.message}') from e
        if md is None:
            raise CliError(f'ModelDeployment "{name}" in namespace "{namespace}": not found')
        status = md.get("status") or {}
        base = status.get("baseModelName") or "tgi"  # a status from before vLLM: TGI's name
        if in_cluster() and status.get("endpoint"):
            return status["endpoint"], base
        pods = await kube.list_items(
            "v1", "Pod", namespace, label_selector=f"{api.GROUP}/modeldeployment={name}"
        )
        for pod in pods:
            st = pod.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []
            )
            if ready and st.get("podIP") and not pod["metadata"].get("deletionTimestamp"):
                return f"http://{st['podIP']}:{runtime.PORT}", base
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


def approval_patch(md: dict[str, Any], adapter: str, revision: str, user: str) -> list[dict[str, Any]]:
    """The JSON patch that pins ``adapter`` of ModelDeployment ``md`` to ``revision``, approved by ``user``;
    refuses (CliError) what the operator would not treat as an approval. The `test` op on the adapter's name
    makes the API server refuse the patch if the list changed since ``md`` was read."""
    name = md["metadata"]["name"]
    spec = md.get("spec") or {}
    policy = (spec.get("promotion") or {}).get("policy") or "Automatic"
    if policy != "Manual":
        raise CliError(
            f'ModelDeployment "{name}" has promotion.policy {policy}: it serves each new passing revision '
            "by itself; approval applies to promotion.policy Manual"
        )
    adapters = spec.get("adapters") or []
    index = next((i for i, a in enumerate(adapters) if a.get("name") == adapter), None)
    if index is None:
        known = ", ".join(a.get("name", "?") for a in adapters) or "none"
        raise CliError(f'ModelDeployment "{name}" serves no adapter "{adapter}" (it serves {known})')
    source = adapters[index].get("from") or {}
    if not source.get("adapter"):
        kind = next((k for k in ("fineTuneJob", "path") if source.get(k)), "another source")
        raise CliError(
            f'adapter "{adapter}" of ModelDeployment "{name}" comes from from.{kind}, not from.adapter: '
            "only a followed adapter has revisions to approve"
        )
    if not re.fullmatch(REVISION, revision):
        raise CliError(f'"{revision}" is not a revision (v1, v2, ...)')
    at = f"/spec/adapters/{index}"
    return [
        {"op": "test", "path": f"{at}/name", "value": adapter},
        {"op": "add", "path": f"{at}/from/revision", "value": revision},
        {"op": "add", "path": f"{at}/from/approvedBy", "value": user},
    ]


async def _approve(name: str, adapter: str, revision: str, namespace: str | None) -> str:
    """Pin the revision as the current user; what was done, for people."""
    from .kube import ApiError, Kube

    async with await Kube.connect(FIELD_MANAGER) as kube:
        namespace = namespace or kube.default_namespace
        review = await kube.create(
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview", "metadata": {"name": ""}}
        )
        user = ((review.get("status") or {}).get("userInfo") or {}).get("username") or ""
        if not user:
            raise CliError("the API server did not say who you are (SelfSubjectReview has no username)")
        where = f'ModelDeployment "{name}" in namespace "{namespace}"'
        try:
            md = await kube.get(api.API_VERSION, "ModelDeployment", namespace, name)
        except ApiError as e:
            raise CliError(f"{where}: {e.message}") from e
        if md is None:
            raise CliError(f"{where}: not found")
        patch = approval_patch(md, adapter, revision, user)
        source = next(a for a in md["spec"]["adapters"] if a["name"] == adapter)["from"]
        before = source.get("revision")
        status = next((a for a in (md.get("status") or {}).get("adapters") or [] if a["name"] == adapter), {})
        try:
            await kube.patch(
                api.API_VERSION, "ModelDeployment", namespace, name, patch, "application/json-patch+json"
            )
        except ApiError as e:
            raise CliError(f"{where}: {e.message}") from e
    was = f"pinned to {before}" if before else "no revision pinned"
    serving = status.get("serving") or "nothing yet"
    newest = status.get("available") or revision
    note = "" if newest == revision else f"; newest that passed: {newest}"
    return (
        f"{name}: adapter {adapter} pinned to {revision}, approved by {user} "
        f"(was: {was}; serving {serving}{note})"
    )


def approve(args: argparse.Namespace) -> int:
    print(asyncio.run(_approve(args.name, args.adapter, args.revision, args.namespace)))
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
    g.set_defaults(run=generate)
    a = sub.add_parser(
        "approve",
        help="under promotion.policy Manual: pin an adapter's revision, recording you as its approver",
        description="Pin ADAPTER of MODELDEPLOYMENT to REVISION (from.revision) with you as from.approvedBy "
        "(who you are is asked of the API server: a SelfSubjectReview).",
    )
    a.add_argument("name", metavar="MODELDEPLOYMENT", help="the ModelDeployment")
    a.add_argument("adapter", metavar="ADAPTER", help="the adapter's name in spec.adapters")
    a.add_argument("revision", metavar="REVISION", help="the revision to serve, e.g. v2")
    a.add_argument("-n", "--namespace", help="its namespace (default: the kubeconfig context's)")
    a.set_defaults(run=approve)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except CliError as e:
        print(f"loraforge: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a server's refusal (e.g. an unknown adapter), briefly
        # huggingface_hub's HTTP errors carry the serving runtime's message as server_message, the
        # API server's (kube.ApiError) as message.
        detail = getattr(e, "server_message", None) or getattr(e, "message", None) or str(e).splitlines()[0]
        print(f"loraforge: {type(e).__name__}: {detail}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
