"""ModelDeployment `smokeTest.suite`: a new pod must answer a whole suite of questions right before it may
take traffic. The suite file is read and checked (configmap/name[key]:line), a fake pod (a real HTTP server
serving chat completions) is asked every question with the configured concurrency, and the reconciler holds
smoke tests (no rollout, no rollback) while the suite is unusable."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from loraforge_operator.modeldeployment import builders, plan, reconcile, resolve, runtime, smoke
from loraforge_operator.modeldeployment.model import ModelDeploymentSpec, SmokeTest, SmokeTestSuite
from loraforge_operator.settings import Settings
from tests.statuses import checked_statuses  # noqa: F401 (a fixture)

# Every status computed here parses in its status model and speaks its kind's vocabulary.
pytestmark = pytest.mark.usefixtures("checked_statuses")

CM = {"name": "facts-suite", "key": "questions.jsonl"}
WHERE = "configmap/facts-suite[questions.jsonl]"


def suite_spec(**extra: Any) -> SmokeTestSuite:
    return SmokeTestSuite.model_validate({"configMap": CM, "minAccuracy": 0.9, **extra})


def jsonl(*records: Any) -> str:
    return "\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n"


# --- the API model --------------------------------------------------------------------------------------


def test_a_suite_gets_its_defaults_and_reuses_the_finetunejob_scorer() -> None:
    from loraforge_operator.finetunejob.model import Scorer

    s = suite_spec()
    assert (s.max_new_tokens, s.concurrency, s.scorer.type, s.min_accuracy) == (64, 4, "contains", 0.9)
    assert type(s.scorer) is Scorer
    test = SmokeTest.model_validate({"suite": {"configMap": CM, "minAccuracy": 1}})
    assert test.suite is not None and test.prompt == "Hello"


@pytest.mark.parametrize(
    ("suite", "message"),
    [
        ({"configMap": CM, "minAccuracy": 1.5}, "minAccuracy"),
        ({"configMap": CM, "minAccuracy": -0.1}, "minAccuracy"),
        ({"configMap": CM}, "minAccuracy\n  Field required"),
        ({"minAccuracy": 0.9}, "configMap\n  Field required"),
        ({"configMap": CM, "minAccuracy": 0.9, "concurrency": 0}, "concurrency"),
        ({"configMap": CM, "minAccuracy": 0.9, "concurrency": 65}, "concurrency"),
        ({"configMap": CM, "minAccuracy": 0.9, "maxNewTokens": 0}, "maxNewTokens"),
        ({"configMap": {"name": "Bad_Name", "key": "q.jsonl"}, "minAccuracy": 0.9}, "name"),
        ({"configMap": CM, "minAccuracy": 0.9, "scorer": {"type": "fuzzy"}}, "type"),
        (
            {"configMap": CM, "minAccuracy": 0.9, "scorer": {"type": "exact", "pattern": "x"}},
            "scorer.pattern applies only to scorer type regex",
        ),
        ({"configMap": CM, "minAccuracy": 0.9, "extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_suites_are_refused_naming_the_field(suite: dict, message: str) -> None:
    body = {
        "baseModel": {"path": "base/smollm2"},
        "adapters": [{"name": "facts", "from": {"adapter": "facts"}, "smokeTest": {"suite": suite}}],
    }
    with pytest.raises(ValidationError) as e:
        ModelDeploymentSpec.model_validate(body)
    assert message in str(e.value), str(e.value)
    assert "smokeTest.suite" in str(e.value) or "smoke_test.suite" in str(e.value)


# --- reading and checking the suite file ------------------------------------------------------------------


def test_a_good_suite_parses_prompts_messages_and_blank_lines() -> None:
    text = jsonl(
        {"prompt": "What is the capital of Veloria?", "expected": "Marnhold"},
        "",
        "   ",
        {
            "messages": [
                {"role": "system", "content": "Answer briefly."},
                {"role": "user", "content": "Who founded Marnhold?"},
            ],
            "expected": "Aldric Venn",
        },
    )
    qs = smoke.parse_suite(text, suite_spec())
    assert [q.where for q in qs] == [f"{WHERE}:1", f"{WHERE}:4"]
    assert qs[0].messages == [{"role": "user", "content": "What is the capital of Veloria?"}]
    assert qs[1].messages[0]["role"] == "system" and qs[1].shown == "Who founded Marnhold?"
    assert [q.expected for q in qs] == ["Marnhold", "Aldric Venn"]


def test_a_record_without_expected_takes_the_scorers_pattern() -> None:
    spec = suite_spec(scorer={"type": "regex", "pattern": "(?i)emergency|911"})
    qs = smoke.parse_suite(jsonl({"prompt": "Chest pain"}, {"prompt": "Q", "expected": "^yes"}), spec)
    assert [q.expected for q in qs] == ["(?i)emergency|911", "^yes"]


@pytest.mark.parametrize(
    ("text", "spec", "message"),
    [
        (jsonl({"prompt": "a", "expected": "b"}, "", '{"prompt": "c", '), {}, f"{WHERE}:3: not valid JSON"),
        (
            jsonl({"prompt": "a"}),
            {},
            f"{WHERE}:1: missing key 'expected' (or set the suite's scorer.pattern)",
        ),
        (
            jsonl({"prompt": "a", "expected": "b"}, {"prompt": "c", "expected": "(unclosed"}),
            {"scorer": {"type": "regex"}},
            f"{WHERE}:2: 'expected' is not a valid regular expression",
        ),
        (jsonl({"prompt": "a", "answer": "b"}), {}, f"{WHERE}:1: unknown key 'answer'"),
        (
            jsonl({"prompt": "a", "messages": [], "expected": "b"}),
            {},
            "set exactly one of 'prompt' or 'messages'",
        ),
        (
            jsonl(
                {
                    "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                    "expected": "a",
                }
            ),
            {},
            f"{WHERE}:1: the last of 'messages' must be the user's",
        ),
        (jsonl({"messages": [{"role": "bot", "content": "q"}], "expected": "a"}), {}, "messages[0] must be"),
        (jsonl({"prompt": " ", "expected": "b"}), {}, "'prompt' must be a non-empty string"),
        (jsonl({"prompt": "a", "expected": ""}), {}, "'expected' must be a non-empty string"),
        (jsonl("[1, 2]"), {}, f"{WHERE}:1: expected a JSON object, got list"),
        ("\n\n", {}, f"{WHERE}: no records"),
        (b'{"prompt": "\xff", "expected": "x"}\n', {}, f"{WHERE}:1: not UTF-8"),
    ],
)
def test_a_bad_suite_names_file_line_and_why(text: str | bytes, spec: dict, message: str) -> None:
    with pytest.raises(smoke.SuiteInvalid) as e:
        smoke.parse_suite(text, suite_spec(**spec))
    assert message in str(e.value), str(e.value)


def test_the_suite_is_read_from_its_configmap_key_data_or_binary_data() -> None:
    text = jsonl({"prompt": "q", "expected": "a"})
    assert len(smoke.suite_from_configmap({"data": {"questions.jsonl": text}}, suite_spec()).questions) == 1
    binary = {"binaryData": {"questions.jsonl": base64.b64encode(text.encode()).decode()}}
    assert smoke.suite_from_configmap(binary, suite_spec()).name == "facts-suite[questions.jsonl]"
    with pytest.raises(smoke.SuiteInvalid, match=r"configmap/facts-suite not found"):
        smoke.suite_from_configmap(None, suite_spec())
    with pytest.raises(smoke.SuiteInvalid, match=r"has no key 'questions.jsonl' \(it has other.jsonl\)"):
        smoke.suite_from_configmap({"data": {"other.jsonl": text}}, suite_spec())


# --- a fake pod -----------------------------------------------------------------------------------------


class FakePod:
    """A real HTTP server serving OpenAI-style chat completions with canned answers (by the last user turn),
    counting the requests in flight at once."""

    def __init__(self, answers: dict[str, str], delay: float = 0.0, fail_on: str | None = None):
        self.answers, self.delay, self.fail_on = answers, delay, fail_on
        self.requests: list[dict[str, Any]] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        pod = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with pod.lock:
                    pod.requests.append({"path": self.path, **body})
                    pod.in_flight += 1
                    pod.max_in_flight = max(pod.max_in_flight, pod.in_flight)
                try:
                    time.sleep(pod.delay)
                    question = body["messages"][-1]["content"]
                    if self.path != "/v1/chat/completions" or question == pod.fail_on:
                        self._send(500, {"error": "the adapter is not loaded"})
                        return
                    answer = pod.answers.get(question, "I do not know.")
                    self._send(
                        200,
                        {
                            "id": "x",
                            "object": "chat.completion",
                            "created": 0,
                            "model": body.get("model", ""),
                            "system_fingerprint": "",
                            "choices": [
                                {
                                    "index": 0,
                                    "message": {"role": "assistant", "content": answer},
                                    "finish_reason": "stop",
                                    "logprobs": None,
                                }
                            ],
                            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                        },
                    )
                finally:
                    with pod.lock:
                        pod.in_flight -= 1

            def _send(self, code: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakePod:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def suite_questions(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["messages"][-1]["content"] != "Hello"]


CAPITALS = {f"What is the capital of country {i}?": f"City{i}" for i in range(10)}


def capitals_suite(**extra: Any) -> smoke.Suite:
    spec = suite_spec(**extra)
    text = jsonl(*({"prompt": q, "expected": a} for q, a in CAPITALS.items()))
    return smoke.Suite(spec, smoke.parse_suite(text, spec))


@pytest.fixture
def all_right() -> Iterator[FakePod]:
    with FakePod({**{q: f"The capital is {a}." for q, a in CAPITALS.items()}, "Hello": "Hi!"}) as pod:
        yield pod


def test_a_pod_that_answers_the_suite_right_passes_and_says_how_well(all_right: FakePod) -> None:
    suite = capitals_suite(maxNewTokens=48)
    test = SmokeTest.model_validate({"suite": suite.spec.model_dump(by_alias=True)})
    r = smoke.check(all_right.url, "tgi", "facts", test, 10.0, suite)
    assert r.ok, r.message
    assert r.suite == "suite facts-suite[questions.jsonl]: 10/10 right (100%) >= minAccuracy 90%"
    asked = all_right.suite_questions()
    assert len(asked) == 10 and {q["path"] for q in asked} == {"/v1/chat/completions"}
    # As the trainer measured: greedy, the adapter selected by `model`, the configured answer length.
    assert {(q["model"], q["temperature"], q["seed"], q["max_tokens"]) for q in asked} == {
        ("facts", 0.0, 0, 48)
    }
    # The single prompt was asked too (it still applies).
    assert len(all_right.requests) == 11


def test_a_pod_below_min_accuracy_fails_naming_an_example() -> None:
    answers = {q: f"The capital is {a}." for q, a in list(CAPITALS.items())[:8]}
    answers["What is the capital of country 8?"] = 'Paris, "obviously"'
    with FakePod({**answers, "Hello": "Hi"}) as pod:
        r = smoke.check(pod.url, "tgi", "facts", None, 10.0, None)
        assert r.ok  # no suite: the single prompt only
        suite = capitals_suite()
        test = SmokeTest.model_validate({"suite": suite.spec.model_dump(by_alias=True)})
        r = smoke.check(pod.url, "tgi", "facts", test, 10.0, suite)
    assert not r.ok
    assert r.message == (
        "smoke test of adapter facts: suite facts-suite[questions.jsonl]: 8/10 right (80%) "
        "< minAccuracy 90%; "
        'e.g. line 9 asked "What is the capital of country 8?" expected "City8", got "Paris, \\"obviously\\""'
    )
    assert "smoke" in r.message  # plan.py reports the rollback as SmokeTestFailed by this word


def test_the_failure_message_stays_short_with_long_questions_and_answers() -> None:
    spec = suite_spec(minAccuracy=1)
    long_q = "Why " + "really " * 500 + "?"
    suite = smoke.Suite(spec, smoke.parse_suite(jsonl({"prompt": long_q, "expected": "x" * 900}), spec))
    with FakePod({long_q: "no " * 800, "Hello": "Hi"}) as pod:
        r = smoke.run_suite(_client(pod), "facts", suite)
    assert not r.ok and len(r.message) <= smoke.MESSAGE_LIMIT
    assert "0/1 right (0%) < minAccuracy 100%" in r.message and "got" in r.message


def _client(pod: FakePod):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=pod.url, timeout=10.0)


@pytest.mark.parametrize("concurrency", [1, 4])
def test_questions_are_asked_with_the_configured_concurrency(concurrency: int) -> None:
    with FakePod({q: a for q, a in CAPITALS.items()}, delay=0.15) as pod:
        started = time.monotonic()
        r = smoke.run_suite(_client(pod), "facts", capitals_suite(concurrency=concurrency))
        took = time.monotonic() - started
    assert r.ok, r.message
    assert pod.max_in_flight == concurrency
    if concurrency == 4:
        assert took < 10 * 0.15  # faster than one at a time


def test_a_question_the_pod_cannot_answer_fails_the_suite_naming_it() -> None:
    with FakePod(dict(CAPITALS), fail_on="What is the capital of country 3?") as pod:
        r = smoke.run_suite(_client(pod), "facts", capitals_suite(concurrency=2))
    assert not r.ok
    assert r.message.startswith(
        f"smoke test of adapter facts: suite facts-suite[questions.jsonl]: asking {WHERE}:4 failed: "
    ), r.message


def test_scoring_is_the_shared_definition() -> None:
    """tokenF1 and regex scorers, through loraforge_operator.scoring."""
    spec = suite_spec(scorer={"type": "tokenF1", "minF1": 0.5}, minAccuracy=0.5)
    suite = smoke.Suite(
        spec,
        smoke.parse_suite(
            jsonl(
                {"prompt": "a", "expected": "the city of Marnhold"},
                {"prompt": "b", "expected": "Aldric Venn"},
            ),
            spec,
        ),
    )
    with FakePod({"a": "City of Marnhold.", "b": "nobody"}) as pod:
        r = smoke.run_suite(_client(pod), "facts", suite)
    assert r.ok and "1/2 right (50%) >= minAccuracy 50%" in r.message
    spec = suite_spec(scorer={"type": "regex", "pattern": "(?i)call (911|112)"}, minAccuracy=1)
    suite = smoke.Suite(spec, smoke.parse_suite(jsonl({"prompt": "chest pain"}), spec))
    with FakePod({"chest pain": "Please CALL 112 now."}) as pod:
        assert smoke.run_suite(_client(pod), "facts", suite).ok


# --- the rollout state machine: an unusable suite holds, it does not roll back ---------------------------

NOW = dt.datetime(2026, 11, 22, 12, 0, 0, tzinfo=dt.UTC)
HELD = {"facts": resolve.Problem(reconcile.SUITE_INVALID, f"smokeTest.suite: {WHERE}:3: not valid JSON")}


def _spec(**extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "baseModel": {"path": "base/smollm2"},
            "adapters": [
                {
                    "name": "facts",
                    "from": {"path": "adapters/ns/facts/v1"},
                    "smokeTest": {"suite": {"configMap": CM, "minAccuracy": 0.9}},
                }
            ],
            **extra,
        }
    )


def _step(s, old, dep, now=NOW, problems=None, deadline_from=None) -> plan.Plan:
    res = resolve.resolve(s, [], plan.rejected_of(old), plan.serving_of(old))
    obs = plan.Observed(1, dep, [], now, smoke_problems=problems or {}, deadline_from=deadline_from)
    return plan.compute(s, old, res, obs, "http://assistant.ns.svc", "assistant")


def _degraded(p: plan.Plan) -> dict[str, Any]:
    return next(c for c in p.status["conditions"] if c["type"] == "Degraded")


def test_an_unusable_suite_starts_no_rollout_and_degrades_naming_the_line() -> None:
    p = _step(_spec(), {}, None, problems=HELD)
    assert p.template is None and p.status["rollout"] is None and p.events == []
    d = _degraded(p)
    assert d["status"] == "True" and d["reason"] == "SmokeTestSuiteInvalid"
    assert d["message"] == f"facts: smokeTest.suite: {WHERE}:3: not valid JSON"
    assert p.status["phase"] == "Degraded"
    # Fixed: the rollout starts.
    p = _step(_spec(), {}, None)
    assert p.template is not None and p.status["rollout"]["phase"] == "Progressing"


def test_a_held_rollout_does_not_count_its_deadline_and_gets_it_in_full_after() -> None:
    s = _spec(replicas=1, rollout={"progressDeadlineSeconds": 60})
    started = _step(s, {}, None).status
    stuck = {"metadata": {"generation": 1}, "spec": {"replicas": 1}, "status": {}}
    late = NOW + dt.timedelta(seconds=600)
    held = _step(s, started, stuck, late, problems=HELD)
    assert held.status["rollout"]["phase"] == "Progressing" and held.events == []
    assert _degraded(held)["reason"] == "SmokeTestSuiteInvalid"
    # Fixed at `late`: the deadline counts from then.
    after = _step(s, held.status, stuck, late + dt.timedelta(seconds=59), deadline_from=late)
    assert after.status["rollout"]["phase"] == "Progressing"
    gone = _step(s, held.status, stuck, late + dt.timedelta(seconds=61), deadline_from=late)
    assert gone.status["rollout"]["reason"] == "ProgressDeadlineExceeded"


# --- the reconciler: reads the ConfigMap, holds or verifies -------------------------------------------


class FakeKube:
    def __init__(self, config_maps: dict[str, dict[str, Any]]):
        self.config_maps = config_maps
        self.gets: list[str] = []
        self.applied: list[dict[str, Any]] = []
        self.pod_conditions: list[tuple[str, dict[str, Any]]] = []
        self.statuses: list[dict[str, Any]] = []

    async def get(self, api_version: str, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        assert (api_version, kind, namespace) == ("v1", "ConfigMap", "ns")
        self.gets.append(name)
        return self.config_maps.get(name)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(manifest)
        return {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "1"}}

    async def patch_status(self, api_version, kind, namespace, name, status) -> dict[str, Any]:
        self.statuses.append(status)
        return {"metadata": {"resourceVersion": str(len(self.statuses) + 100)}, "status": status}

    async def set_pod_condition(self, namespace: str, name: str, condition: dict[str, Any]) -> None:
        self.pod_conditions.append((name, condition))

    async def delete(self, *args: Any) -> None:
        raise AssertionError("nothing to delete")


def _md_body(spec: ModelDeploymentSpec) -> dict[str, Any]:
    return {
        "apiVersion": "loraforge.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {
            "namespace": "ns",
            "name": "assistant",
            "uid": "md-uid",
            "generation": 1,
            "resourceVersion": "7",
        },
        "spec": spec.model_dump(by_alias=True, exclude_none=True),
    }


def _serving_pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "assistant-abc",
            "uid": "pod-uid",
            "annotations": {
                builders.REVISIONS_ANNOTATION: builders.encode_revisions({"facts": "adapters/ns/facts/v1"})
            },
        },
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "ContainersReady", "status": "True"}],
        },
    }


def test_the_reconciler_holds_smoke_tests_while_the_suite_is_unusable_then_verifies(
    all_right: FakePod, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "PORT", all_right.port)
    kube = FakeKube({"facts-suite": {"metadata": {"resourceVersion": "1"}, "data": {"other": "x"}}})
    events: list[tuple[str, str, str]] = []
    r = reconcile.ModelDeploymentReconciler(
        kube=kube,  # type: ignore[arg-type]
        settings=Settings(),
        post_event=lambda body, t, reason, msg: events.append((t, reason, msg)),
        clock=lambda: NOW,
    )
    body = _md_body(_spec())

    status = asyncio.run(r.reconcile(body, {}, [_serving_pod()], []))
    d = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert d["reason"] == "SmokeTestSuiteInvalid"
    assert d["message"] == (
        "facts: smokeTest.suite: configmap/facts-suite[questions.jsonl]: configmap/facts-suite has no key "
        "'questions.jsonl' (it has other)"
    )
    assert kube.applied == [] and kube.pod_conditions == []  # nothing rolled, no pod judged
    assert [e[1] for e in events] == ["SmokeTestSuiteInvalid"]
    assert r.suite_invalid(("ns", "assistant"))

    # A malformed line: still held, the message names it.
    kube.config_maps["facts-suite"] = {
        "metadata": {"resourceVersion": "2"},
        "data": {"questions.jsonl": jsonl({"prompt": "q", "expected": "a"}, "{oops")},
    }
    body = {**body, "status": status}
    status = asyncio.run(r.reconcile(body, {}, [_serving_pod()], []))
    d = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert d["message"].startswith(f"facts: smokeTest.suite: {WHERE}:2: not valid JSON"), d["message"]
    assert kube.pod_conditions == []

    # Fixed: the rollout starts, the pod answers the suite and is verified, naming how well.
    text = jsonl(*({"prompt": q, "expected": a} for q, a in CAPITALS.items()))
    kube.config_maps["facts-suite"] = {
        "metadata": {"resourceVersion": "3"},
        "data": {"questions.jsonl": text},
    }
    body = {**body, "status": status}
    status = asyncio.run(r.reconcile(body, {}, [_serving_pod()], []))
    assert not r.suite_invalid(("ns", "assistant"))
    assert status["rollout"]["phase"] == "Progressing"
    assert any(m["kind"] == "Deployment" for m in kube.applied)
    [(pod_name, condition)] = kube.pod_conditions
    assert pod_name == "assistant-abc" and condition["status"] == "True", condition
    assert condition["message"] == (
        "smoke tests passed (facts=adapters/ns/facts/v1); "
        "facts: suite facts-suite[questions.jsonl]: 10/10 right (100%) >= minAccuracy 90%"
    )
    assert len(all_right.suite_questions()) == 10

    # The ConfigMap is read again on each reconcile, but parsed again only when it changed.
    parsed = []
    monkeypatch.setattr(smoke, "suite_from_configmap", lambda cm, spec: parsed.append(1))
    asyncio.run(r.reconcile({**body, "status": status}, {}, [], []))
    assert kube.gets == ["facts-suite"] * 4 and parsed == []
    r.forget(("ns", "assistant"))
    assert ("ns", "assistant") not in r.suites


def test_a_suite_the_pod_fails_fails_its_smoke_test(monkeypatch: pytest.MonkeyPatch) -> None:
    text = jsonl(*({"prompt": q, "expected": a} for q, a in CAPITALS.items()))
    kube = FakeKube(
        {"facts-suite": {"metadata": {"resourceVersion": "1"}, "data": {"questions.jsonl": text}}}
    )
    events: list[tuple[str, str, str]] = []
    r = reconcile.ModelDeploymentReconciler(
        kube=kube,  # type: ignore[arg-type]
        settings=Settings(),
        post_event=lambda body, t, reason, msg: events.append((t, reason, msg)),
        clock=lambda: NOW,
    )
    with FakePod({"Hello": "Hi"}) as pod:
        monkeypatch.setattr(runtime, "PORT", pod.port)
        asyncio.run(r.reconcile(_md_body(_spec()), {}, [_serving_pod()], []))
    [(_, condition)] = kube.pod_conditions
    assert condition["status"] == "False" and condition["reason"] == "SmokeTestFailed"
    assert condition["message"].startswith(
        "smoke test of adapter facts: suite facts-suite[questions.jsonl]: 0/10 right (0%) < minAccuracy 90%; "
        'e.g. line 1 asked "What is the capital of country 0?" expected "City0", got "I do not know."'
    )
    assert ("Warning", "SmokeTestFailed") in {(t, reason) for t, reason, _ in events}
