"""`helm test` for loraforge: is the installation working?

Runs in the test pod (Python's standard library only; the operator image
carries Python) with a ServiceAccount that may list the release's pods:

1. the API server serves FineTuneJob and ModelDeployment (the CRDs are
   installed and established);
2. the operator has a Ready pod, and every Ready operator pod answers its
   liveness endpoint and exports loraforge's metrics.

Each check prints one line; the first failure exits non-zero with what to
look at.
"""

import json
import os
import ssl
import sys
import urllib.parse
import urllib.request

SA = "/var/run/secrets/kubernetes.io/serviceaccount"


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def api(path):
    host = os.environ["KUBERNETES_SERVICE_HOST"]
    port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    if ":" in host:
        host = f"[{host}]"
    with open(f"{SA}/token") as f:
        token = f.read().strip()
    req = urllib.request.Request(
        f"https://{host}:{port}{path}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=f"{SA}/ca.crt")
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:  # noqa: S310 - the API server
        return json.load(r)


def http_get(pod, ip, port, path):
    host = f"[{ip}]" if ":" in ip else ip
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read().decode(errors="replace")
    except OSError as e:
        fail(f"{pod}: {url}: {e} (a NetworkPolicy in the way, or the operator is not listening)")


def main():
    namespace = os.environ["RELEASE_NAMESPACE"]
    selector = os.environ["OPERATOR_SELECTOR"]
    health_port = int(os.environ["HEALTH_PORT"])
    metrics_port = int(os.environ.get("METRICS_PORT") or 0)

    try:
        served = {r["name"] for r in api("/apis/loraforge.io/v1alpha1")["resources"]}
    except OSError as e:
        fail(f"the API server does not serve loraforge.io/v1alpha1 ({e}): are the CRDs installed?")
    for plural in ("finetunejobs", "modeldeployments"):
        if plural not in served:
            fail(f"loraforge.io/v1alpha1 does not serve {plural} (it serves {sorted(served)})")
    print("ok: the API server serves finetunejobs and modeldeployments (loraforge.io/v1alpha1)")

    query = urllib.parse.urlencode({"labelSelector": selector})
    pods = api(f"/api/v1/namespaces/{namespace}/pods?{query}")["items"]
    ready = [
        p
        for p in pods
        if p.get("status", {}).get("podIP")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]
    if not ready:
        states = {p["metadata"]["name"]: p.get("status", {}).get("phase") for p in pods}
        fail(f"no Ready operator pod ({selector}) in {namespace}: {states or 'none'}; kubectl describe pod")
    for pod in ready:
        name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        http_get(name, ip, health_port, "/healthz")
        print(f"ok: operator pod {name} is live ({ip}:{health_port}/healthz)")
        if metrics_port:
            body = http_get(name, ip, metrics_port, "/metrics")
            if "loraforge_reconciles_total" not in body:
                fail(f"{name}: /metrics does not export loraforge_reconciles_total")
            print(f"ok: operator pod {name} exports loraforge metrics ({ip}:{metrics_port}/metrics)")
    print("all checks passed")


if __name__ == "__main__":
    main()
