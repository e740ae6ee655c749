"""The operator against API errors in its own calls, injected by a proxy in
front of the real API server (tests/faultproxy.py): conflicts and server errors
on writes are retried until exactly one Job exists, a 429's Retry-After is
honoured, an expired watch ("410 Gone") is re-listed through failing lists, and
no Secret value ever reaches what the operator writes or logs.

The operator runs as a process watching only the test's namespace, with the
proxy as its API server; the session's operator is paused meanwhile so it does
not do the work behind the proxy's back. kwok plays the training pods."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from loraforge_operator.finetunejob import contract
from tests.e2e.conftest import OperatorProcess
from tests.faultproxy import Fault, FaultProxy
from tests.finetunejob_cases import VALID_SPEC, merge
from tests.kube import Kube, wait_for

pytestmark = pytest.mark.usefixtures("model_store")

RUN_LONG = {"annotations": {"job-pod-complete.stage.kwok.x-k8s.io/delay": "10m"}}
PULL_SECRET = "registry-creds"  # noqa: S105 - a name, not a value


@pytest.fixture(autouse=True)
def _local_only(kube: Kube) -> None:
    if not kube.local:
        pytest.skip("kwok plays the training pods here")


@pytest.fixture
def faulty(
    kube: Kube,
    namespace: str,
    tmp_path: Path,
    session_operator_paused: None,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[FaultProxy, OperatorProcess]]:
    """The proxy, and an operator that reaches the API server only through it."""
    proxy = FaultProxy(kube.kubeconfig, tmp_path / "proxy").start()
    via_proxy = Kube(proxy.write_kubeconfig(tmp_path / "via-proxy.kubeconfig"), local=kube.local)
    monkeypatch.setenv("LORAFORGE_IMAGE_PULL_SECRETS", PULL_SECRET)
    op = OperatorProcess(via_proxy, tmp_path / "operator.log")
    try:
        op.start(namespaces=[namespace])
        yield proxy, op
    finally:
        op.stop()
        proxy.stop()


def _apply_ftj(kube: Kube, namespace: str, name: str) -> None:
    spec = merge(json.loads(json.dumps(VALID_SPEC)), {"podMetadata": RUN_LONG})
    ftj = {"apiVersion": "loraforge.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}}
    kube.apply({**ftj, "spec": spec}, namespace=namespace)


def _running(kube: Kube, namespace: str, name: str, timeout: float = 90) -> dict:
    def check() -> dict | bool:
        obj = kube.get("finetunejob", name, "-n", namespace)
        return obj.get("status", {}).get("phase") == "Running" and obj

    return wait_for(check, timeout, f"FineTuneJob {name} to be Running")


def _jobs(kube: Kube, namespace: str) -> list[str]:
    return sorted(j["metadata"]["name"] for j in kube.get("jobs", "-n", namespace)["items"])


def test_conflicts_and_server_errors_on_writes_are_retried_to_exactly_one_job(
    kube: Kube, namespace: str, faulty: tuple[FaultProxy, OperatorProcess]
) -> None:
    proxy, _ = faulty
    job_path = rf"/namespaces/{namespace}/jobs/{contract.job_name('f1')}$"
    status_path = rf"/namespaces/{namespace}/finetunejobs/f1/status$"
    for code in (409, 500, 503):
        proxy.inject(Fault("PATCH", job_path, code))
    proxy.inject(Fault("PATCH", status_path, 409))
    proxy.inject(Fault("PATCH", status_path, 504))

    _apply_ftj(kube, namespace, "f1")
    obj = _running(kube, namespace, "f1")

    assert [s.status for s in proxy.seen("PATCH", job_path)][:4] == [409, 500, 503, 201]
    assert [s.status for s in proxy.seen("PATCH", status_path)][:3] == [409, 504, 200]
    assert _jobs(kube, namespace) == [contract.job_name("f1")]
    accepted = next(c for c in obj["status"]["conditions"] if c["type"] == "Accepted")
    assert accepted["status"] == "True"


def test_a_429_with_retry_after_holds_off_every_write_that_long(
    kube: Kube, namespace: str, faulty: tuple[FaultProxy, OperatorProcess]
) -> None:
    proxy, _ = faulty
    retry_after = 4
    job_path = rf"/namespaces/{namespace}/jobs/{contract.job_name('f2')}$"
    throttled = proxy.inject(Fault("PATCH", job_path, 429, retry_after=retry_after))

    _apply_ftj(kube, namespace, "f2")
    _running(kube, namespace, "f2")

    assert len(throttled.fired) == 1
    refused_at = throttled.fired[0]
    # Events are posted by kopf, which honours Retry-After on its own requests.
    writes_after = [
        s
        for s in proxy.seen(path=rf"/namespaces/{namespace}/")
        if s.method in ("POST", "PUT", "PATCH", "DELETE") and s.at > refused_at and "/events" not in s.path
    ]
    assert writes_after, "nothing was written after the 429"
    first = min(s.at for s in writes_after) - refused_at
    assert first >= retry_after - 0.1, f"wrote again {first:.2f}s after a 429 asking for {retry_after}s"
    assert [s.status for s in proxy.seen("PATCH", job_path)] == [429, 201]
    assert _jobs(kube, namespace) == [contract.job_name("f2")]


def test_an_expired_watch_is_relisted_through_failing_lists_and_nothing_is_missed(
    kube: Kube, namespace: str, faulty: tuple[FaultProxy, OperatorProcess]
) -> None:
    proxy, _ = faulty
    _apply_ftj(kube, namespace, "before")
    _running(kube, namespace, "before")

    collection = rf"/namespaces/{namespace}/finetunejobs$"
    expired = proxy.inject(Fault("GET", collection, 410, query="watch=true"))
    failed_lists = proxy.inject(Fault("GET", collection, 503, times=2, query=r"^(?!.*watch=true)"))
    assert proxy.cut(collection) == 1, "the operator had no open FineTuneJob watch"
    # Created while the operator's watch is broken and its re-list fails.
    _apply_ftj(kube, namespace, "during")
    _running(kube, namespace, "during")

    assert len(expired.fired) == 1 and len(failed_lists.fired) == 2
    relists = [
        s
        for s in proxy.seen("GET", collection)
        if "watch=true" not in s.query and s.at > expired.fired[0] and s.status == 200
    ]
    assert relists, "no successful re-list after the 410"
    assert _jobs(kube, namespace) == sorted(contract.job_name(n) for n in ("before", "during"))


def test_a_job_deleted_while_the_watch_was_broken_is_noticed_and_created_again(
    kube: Kube, namespace: str, faulty: tuple[FaultProxy, OperatorProcess]
) -> None:
    """Once a known limit: kopf's re-list after a 410 says nothing of objects deleted in the gap, so the
    operator kept the deleted Job in memory and never created it again (loraforge_operator.watchgap)."""
    proxy, op = faulty
    _apply_ftj(kube, namespace, "gapped")
    _running(kube, namespace, "gapped")
    job_name = contract.job_name("gapped")
    before = kube.get("job", job_name, "-n", namespace)["metadata"]["uid"]

    collection = rf"/namespaces/{namespace}/jobs$"
    expired = proxy.inject(Fault("GET", collection, 410, query="watch=true"))
    failed_lists = proxy.inject(Fault("GET", collection, 503, times=3, query=r"^(?!.*watch=true)"))
    assert proxy.cut(collection) == 1, "the operator had no open Job watch"
    # Deleted while the operator cannot watch Jobs (its pod watch still sees the pods go).
    kube.kubectl("delete", "job", job_name, "-n", namespace, "--cascade=background", "--wait=true")

    def recreated() -> str | None:
        jobs = kube.get("jobs", "-n", namespace)["items"]
        uids = [j["metadata"]["uid"] for j in jobs if j["metadata"]["name"] == job_name]
        return uids[0] if uids and uids[0] != before else None

    wait_for(recreated, 90, "the operator to create the deleted Job again")
    assert len(expired.fired) == 1 and len(failed_lists.fired) == 3
    assert _jobs(kube, namespace) == [job_name]
    assert f"Job {namespace}/{job_name} was deleted while the watch was broken" in op.log_path.read_text()
    _running(kube, namespace, "gapped")


def test_a_planted_secret_value_appears_in_no_log_event_annotation_status_or_child(
    kube: Kube, namespace: str, faulty: tuple[FaultProxy, OperatorProcess]
) -> None:
    proxy, op = faulty
    planted = f"planted-{uuid.uuid4().hex}"
    dockerconfig = {"auths": {"registry.local": {"username": "robot", "password": planted}}}
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": PULL_SECRET},
                "type": "kubernetes.io/dockerconfigjson",
                "stringData": {".dockerconfigjson": json.dumps(dockerconfig)},
            },
            # Labelled as if it belonged to the FineTuneJob: an operator watching by label would see it.
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "f4-extra", "labels": {"loraforge.io/finetunejob": "f4"}},
                "stringData": {"token": planted},
            },
        ],
        namespace=namespace,
    )
    _apply_ftj(kube, namespace, "f4")
    _running(kube, namespace, "f4")
    job = kube.get("job", contract.job_name("f4"), "-n", namespace)
    assert job["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    time.sleep(2)  # let events and late writes land

    forms = {planted, base64.b64encode(planted.encode()).decode()}
    places = {
        "operator log": op.log_path.read_text(errors="replace"),
        "objects": kube.kubectl(
            "get",
            "finetunejobs,jobs,pods,configmaps,serviceaccounts,services,roles,rolebindings,events",
            "-n",
            namespace,
            "-o",
            "json",
        ).stdout,
    }
    for where, text in places.items():
        for form in forms:
            assert form not in text, f"the planted secret value appears in the {where}"
    assert proxy.seen(path="/secrets") == [], "the operator sent a request about Secrets"


def test_the_proxy_forwards_faithfully_and_injects_what_it_is_told(kube: Kube, tmp_path: Path) -> None:
    """The harness itself: without a fault, the answer through the proxy is the API server's."""
    proxy = FaultProxy(kube.kubeconfig, tmp_path / "proxy").start()
    try:
        via = Kube(proxy.write_kubeconfig(tmp_path / "k"), local=kube.local, kubectl_path=kube.kubectl_path)
        direct = kube.get("namespace", "default")
        assert via.get("namespace", "default")["metadata"]["uid"] == direct["metadata"]["uid"]
        proxy.inject(Fault("GET", r"/api/v1/namespaces/default$", 409))
        failed = via.kubectl("get", "namespace", "default", check=False)
        assert failed.returncode != 0 and "injected by the test's fault proxy: 409" in failed.stderr
        assert [s.status for s in proxy.seen("GET", r"/api/v1/namespaces/default$")] == [200, 409]
    finally:
        proxy.stop()
