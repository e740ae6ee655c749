"""The reconciler's memory of its own writes, with the API server replaced by
a recorder (the same paths run against a real one in the e2e tier): a watch
that lags behind our writes neither makes it repeat them nor confuses it, and
a watch that has caught up is trusted again."""

from __future__ import annotations

import asyncio
import copy
import itertools
from typing import Any

from loraforge_operator.finetunejob.reconcile import Reconciler
from loraforge_operator.settings import Settings
from tests.finetunejob_cases import VALID_SPEC


class RecordingKube:
    """Stands in for loraforge_operator.kube.Kube: records writes, answers like a server."""

    def __init__(self) -> None:
        self.applied: list[str] = []
        self.status_patches: list[dict] = []
        self._rv = itertools.count(100)

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.applied.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
        answer = copy.deepcopy(manifest)
        answer["metadata"]["resourceVersion"] = str(next(self._rv))
        return answer

    async def patch_status(self, api_version, kind, namespace, name, status) -> dict[str, Any]:
        self.status_patches.append(copy.deepcopy(status))
        return {"metadata": {"resourceVersion": str(next(self._rv))}, "status": status}


def _body(rv: str, status: dict | None = None) -> dict[str, Any]:
    meta = {"name": "demo", "namespace": "ns", "uid": "u-1", "generation": 1, "resourceVersion": rv}
    return {"metadata": meta, "spec": VALID_SPEC, **({"status": status} if status else {})}


def _reconciler() -> tuple[Reconciler, RecordingKube]:
    kube = RecordingKube()
    return Reconciler(kube=kube, settings=Settings(), post_event=lambda *a: None), kube  # type: ignore[arg-type]


def test_a_lagging_watch_repeats_no_apply_and_no_status_write() -> None:
    rec, kube = _reconciler()
    asyncio.run(rec.reconcile(_body("1"), {}))
    assert len(kube.applied) == 6 and len(kube.status_patches) == 1
    # The same stale view again (the watch has delivered none of our writes).
    asyncio.run(rec.reconcile(_body("1"), {}))
    assert len(kube.applied) == 6 and len(kube.status_patches) == 1


def test_once_the_watch_shows_our_status_a_later_change_compares_with_it() -> None:
    rec, kube = _reconciler()
    asyncio.run(rec.reconcile(_body("1"), {}))
    written = kube.status_patches[-1]
    fresh = rec.status_writes[("ns", "demo")].version
    asyncio.run(rec.reconcile(_body(fresh, written), {}))
    assert len(kube.status_patches) == 1  # nothing changed
    # The watch shows our write: its record has served its purpose (memory stays bounded).
    assert ("ns", "demo") not in rec.status_writes
    # The training pod becomes ready: a real change, written once.
    job = rec.built[("ns", "demo")][2].unpack()[-1]  # the Job as applied, now seen by the watch
    job["metadata"]["resourceVersion"] = "500"
    job["status"] = {"active": 1, "ready": 1}
    asyncio.run(rec.reconcile(_body(fresh, written), {("Job", "ns", "demo-train"): job}))
    assert len(kube.status_patches) == 2 and kube.status_patches[-1]["phase"] == "Running"
    # The watch had caught up, so versions from before it no longer count as stale.
    assert rec.status_writes[("ns", "demo")].stale_versions == {fresh}


def test_forgetting_a_deleted_finetunejob_drops_what_was_remembered() -> None:
    rec, _ = _reconciler()
    asyncio.run(rec.reconcile(_body("1"), {}))
    rec.forget(("ns", "demo"))
    assert rec.status_writes == {} and rec.built == {} and rec.memo._last == {}
