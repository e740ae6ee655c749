"""The reconcile loop both kinds share (loop.py), the packed copies the indexes keep (packed.py), and what
wakes a ModelDeployment (modeldeployment/handlers.py)."""

from __future__ import annotations

import asyncio
import sys
import tracemalloc
from typing import Any

import pytest

from loraforge_operator import loop as loop_module
from loraforge_operator.finetunejob import builders
from loraforge_operator.finetunejob.model import FineTuneJobSpec
from loraforge_operator.indexes import INDEXES
from loraforge_operator.loop import Loop
from loraforge_operator.modeldeployment import handlers as md_handlers
from loraforge_operator.packed import Packed
from loraforge_operator.settings import Settings


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_events_during_a_reconcile_coalesce_into_one_more_pass_and_enqueue_never_waits() -> None:
    passes: list[str] = []
    release = asyncio.Event

    async def main() -> None:
        gate = release()

        async def reconcile(key: Any) -> None:
            passes.append(key)
            await gate.wait()

        loop = Loop("Test", reconcile)
        loop.enqueue("a")
        await asyncio.sleep(0)  # the first pass starts and waits
        for _ in range(5):
            loop.enqueue("a")  # returns at once although a pass is running
        assert passes == ["a"]
        gate.set()
        await loop.idle()

    _run(main())
    assert passes == ["a", "a"]


def test_a_key_goes_round_again_later_without_a_worker_so_waiting_keys_go_first(monkeypatch) -> None:
    monkeypatch.setattr(loop_module, "REPASS_SECONDS", 0.05)
    passes: list[tuple[str, float]] = []

    async def main() -> None:
        gate = asyncio.Event()
        clock = asyncio.get_running_loop().time

        async def reconcile(key: Any) -> None:
            passes.append((key, clock()))
            if key == "a" and len(passes) == 1:
                await gate.wait()

        loop = Loop("Test", reconcile, workers=1)
        loop.enqueue("a")
        await asyncio.sleep(0)  # a's first pass holds the only worker
        loop.enqueue("a")  # its own writes echo back
        loop.enqueue("b")  # never reconciled yet
        gate.set()
        await asyncio.sleep(0.01)
        for _ in range(3):
            loop.enqueue("a")  # more echoes before its next pass: taken in that one pass
        await loop.idle()

    _run(main())
    assert [k for k, _ in passes] == ["a", "b", "a"]
    assert passes[2][1] - passes[0][1] >= 0.05


def test_a_failing_reconcile_is_retried_with_growing_backoff_then_reset(monkeypatch) -> None:
    monkeypatch.setattr(loop_module, "BACKOFF_FIRST_SECONDS", 0.01)
    monkeypatch.setattr(loop_module, "BACKOFF_MAX_SECONDS", 0.04)
    delays: list[float] = []

    async def main() -> Loop:
        calls = 0

        async def reconcile(key: Any) -> None:
            nonlocal calls
            calls += 1
            if calls <= 4:
                raise RuntimeError("the API server said 500")

        loop = Loop("Test", reconcile)
        real_after = loop.after

        def after(key: Any, delay: float) -> None:
            delays.append(delay)
            real_after(key, delay)

        loop.after = after  # type: ignore[method-assign]
        loop.enqueue("a")
        while calls < 5:
            await asyncio.sleep(0.005)
        await loop.idle()
        return loop

    loop = _run(main())
    assert delays == [0.01, 0.02, 0.04, 0.04]  # capped
    assert loop.backoff == {}  # a success resets it


def test_a_key_has_one_timer_and_the_earliest_wins() -> None:
    passes: list[float] = []

    async def main() -> Loop:
        start = asyncio.get_running_loop().time()

        async def reconcile(key: Any) -> None:
            passes.append(asyncio.get_running_loop().time() - start)

        loop = Loop("Test", reconcile)
        loop.after("a", 5.0)
        loop.after("a", 0.02)
        loop.after("a", 0.03)  # later than the pending one: kept as it is
        assert len(loop.timers) == 1
        await asyncio.sleep(0.1)
        await loop.idle()
        return loop

    loop = _run(main())
    assert len(passes) == 1 and passes[0] < 1.0
    assert loop.timers == {}


def test_a_reconcile_may_ask_to_run_again_later() -> None:
    passes: list[str] = []

    async def main() -> None:
        async def reconcile(key: Any) -> float | None:
            passes.append(key)
            return 0.01 if len(passes) < 3 else None  # e.g. a rollout's deadline, until it ends

        loop = Loop("Test", reconcile)
        loop.enqueue("md")
        await asyncio.sleep(0.2)
        await loop.idle()
        assert loop.timers == {}

    _run(main())
    assert passes == ["md", "md", "md"]


def test_at_most_workers_keys_reconcile_at_once() -> None:
    running, peak = 0, 0

    async def main() -> None:
        async def reconcile(key: Any) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1

        loop = Loop("Test", reconcile, workers=3)
        for i in range(20):
            loop.enqueue(i)
        await loop.idle()

    _run(main())
    assert peak == 3


def test_forgetting_a_key_cancels_its_timer() -> None:
    passes: list[str] = []

    async def main() -> None:
        async def reconcile(key: Any) -> None:
            passes.append(key)

        loop = Loop("Test", reconcile)
        loop.after("gone", 0.01)
        loop.forget("gone")
        await asyncio.sleep(0.05)

    _run(main())
    assert passes == []


def _children() -> list[dict[str, Any]]:
    spec = FineTuneJobSpec.model_validate({"baseModel": {"path": "base/m"}, "dataset": {"path": "d.jsonl"}})
    return builders.children(builders.Owner("ftj", "ns", "0" * 36), spec, Settings())


def test_a_packed_object_unpacks_to_an_equal_fresh_copy_in_a_fraction_of_the_memory() -> None:
    children = _children()
    packed = Packed(children)
    first = packed.unpack()
    assert first == children and first is not children
    first[0]["metadata"]["name"] = "changed"
    assert packed.unpack() == children  # every unpack is a fresh copy

    tracemalloc.start()
    as_dicts = packed.unpack()
    dict_bytes, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert as_dicts == children
    assert sys.getsizeof(packed._data) * 4 < dict_bytes


def _ftj(phase: str, step: int) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "progress": {"step": step}}
    if phase == "Succeeded":
        status["adapter"] = {"name": "a", "revision": "v1", "path": "adapters/ns/a/v1", "digest": "sha256:0"}
    return {
        "metadata": {"name": "ftj", "namespace": "ns"},
        "spec": {"baseModel": {"path": "base/m"}, "dataset": {"path": "d.jsonl"}, "adapter": {"name": "a"}},
        "status": status,
    }


def test_a_finetunejob_wakes_its_namespaces_modeldeployments_only_when_what_they_read_changes(
    monkeypatch,
) -> None:
    woken: list[tuple[str, str]] = []
    monkeypatch.setattr(md_handlers, "enqueue", woken.append)
    monkeypatch.setattr(INDEXES, "_by_id", {"modeldeployments": {("ns", "md"): [{}], ("other", "md"): [{}]}})
    md_handlers.State.seen.clear()

    async def event(type_: str, body: dict[str, Any]) -> None:
        await md_handlers.finetunejob_event(type=type_, namespace="ns", name="ftj", body=body)

    async def main() -> None:
        await event("ADDED", _ftj("Running", 1))
        assert woken == [("ns", "md")]  # first sight
        for step in range(2, 6):
            await event("MODIFIED", _ftj("Running", step))  # progress reports
        assert woken == [("ns", "md")]
        await event("MODIFIED", _ftj("Succeeded", 9))  # it published
        assert woken == [("ns", "md")] * 2
        await event("DELETED", _ftj("Succeeded", 9))
        assert woken == [("ns", "md")] * 3

    _run(main())
    md_handlers.State.seen.clear()


@pytest.mark.parametrize("kind", ["FineTuneJob", "ConfigMap", "Job", "HorizontalPodAutoscaler", "Pod"])
def test_one_table_names_where_each_kind_is_served(kind: str) -> None:
    from loraforge_operator import api, kube

    resource = api.RESOURCES[kind]
    path = kube._path(resource.api_version, kind, "ns", "x")
    assert path.endswith(f"/namespaces/ns/{resource.plural}/x")
    with pytest.raises(ValueError, match="served as"):
        kube._path("v9", kind, "ns", "x")


def test_every_index_a_reconcile_reads_and_every_child_event_is_registered_with_kopf() -> None:
    import kopf

    from loraforge_operator import handlers  # noqa: F401  (registers)
    from loraforge_operator.finetunejob import handlers as ftj_handlers

    registry = kopf.get_default_registry()
    indexes = {str(h.id) for h in registry._indexing.get_all_handlers()}
    events = {str(h.id) for h in registry._watching.get_all_handlers()}
    for child in ftj_handlers.CHILD_KINDS:
        assert f"owned_{child.plural}" in indexes and f"child_{child.plural}" in events
    for child in md_handlers.CHILD_KINDS:
        assert f"md_owned_{child.plural}" in indexes and f"md_child_{child.plural}" in events
    assert {"finetunejobs", "owned_pods", "modeldeployments", "md_pods", "md_finetunejobs"} <= indexes
    assert {"child_pods", "md_child_pods", "finetunejob_event", "modeldeployment_event"} <= events
    assert "md_finetunejob_event" in events
