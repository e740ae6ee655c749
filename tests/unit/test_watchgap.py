"""Objects deleted while a watch was broken: after kopf's re-list, the wrapper
around its continuous_watch delivers a DELETED event for each object the new
listing lacks (kopf itself delivers none). Driven here by a scripted stand-in
for kopf's generator; tests/e2e/test_api_faults.py proves it against the API
server with the operator running."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf._cogs.clients.watching as kopf_watching

from loraforge_operator import watchgap

LISTED = kopf_watching.Bookmark.LISTED


def _obj(name: str, uid: str, **labels: str) -> dict[str, Any]:
    meta = {"name": name, "namespace": "ns", "uid": uid, "labels": labels, "resourceVersion": "1"}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {"big": "x" * 100}}


def _run(streams: list[list[Any]], resource: str = "jobs") -> list[list[Any]]:
    """Feed each scripted stream through the wrapper, as kopf calls it once per (re)connection."""

    async def scripted(events: list[Any]):
        for e in events:
            yield e

    async def go() -> list[list[Any]]:
        out = []
        for events in streams:

            async def original(events: list[Any] = events, **_: Any):
                async for e in scripted(events):
                    yield e

            wrapped = watchgap.wrap(original, LISTED)
            kwargs = {
                "settings": None,
                "resource": resource,
                "namespace": "ns",
                "operator_pause_waiter": None,
            }
            out.append([e async for e in wrapped(**kwargs)])
        return out

    return asyncio.run(go())


def test_what_a_relist_lacks_is_delivered_as_deleted_before_the_stream_goes_on() -> None:
    a, b, c = _obj("a", "u-a", owner="x"), _obj("b", "u-b", owner="y"), _obj("c", "u-c")
    first = [{"type": None, "object": a}, {"type": None, "object": b}, LISTED, {"type": "ADDED", "object": c}]
    # The watch broke (410); while it was down b was deleted. The re-list has a and c.
    second = [
        {"type": None, "object": a},
        {"type": None, "object": c},
        LISTED,
        {"type": "MODIFIED", "object": a},
    ]
    out1, out2 = _run([first, second], resource="jobs-1")
    assert out1 == first  # nothing invented on a first listing
    deleted = out2[2]
    assert deleted["type"] == "DELETED"
    assert deleted["object"] == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "b",
            "namespace": "ns",
            "uid": "u-b",
            "labels": {"owner": "y"},
            "resourceVersion": "1",
        },
    }
    assert out2[:2] + out2[3:] == [*second[:2], LISTED, second[3]]
    assert out2[3] is LISTED  # the deletion comes before the listing is declared over


def test_objects_deleted_in_the_watch_or_after_the_listing_are_not_deleted_twice() -> None:
    a, b = _obj("a", "u-a"), _obj("b", "u-b")
    first = [
        {"type": None, "object": a},
        LISTED,
        {"type": "ADDED", "object": b},
        {"type": "DELETED", "object": a},
    ]
    second = [{"type": None, "object": b}, LISTED]
    _, out2 = _run([first, second], resource="jobs-2")
    assert [e for e in out2 if isinstance(e, dict) and e["type"] == "DELETED"] == []


def test_a_listing_cut_short_deletes_nothing() -> None:
    a, b = _obj("a", "u-a"), _obj("b", "u-b")
    first = [{"type": None, "object": a}, {"type": None, "object": b}, LISTED]
    broken = [{"type": None, "object": a}]  # the connection dropped mid-listing: no LISTED
    third = [{"type": None, "object": a}, {"type": None, "object": b}, LISTED]
    _, out2, out3 = _run([first, broken, third], resource="jobs-3")
    assert out2 == broken and out3 == third


def test_installs_into_the_kopf_in_use() -> None:
    assert watchgap.install() is True
    assert kopf_watching.continuous_watch.__wrapped__ is not None
    wrapped = kopf_watching.continuous_watch
    assert watchgap.install() is True and kopf_watching.continuous_watch is wrapped  # once only
