"""Reconcile one FineTuneJob: make its children match the spec, then make its
status match what is observed. Level-triggered and idempotent: it works from
the observed objects every time, and a pass with nothing to change sends no
write to the API server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .. import api
from ..kube import ApiError, Kube
from ..packed import Packed
from ..settings import Settings
from ..writes import ChildKey, StatusWrite, WriteMemo, ensure_child
from . import builders, contract, status, vocabulary
from .model import FineTuneJobSpec

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, FineTuneJob name)


def _pod_problem(pods: list[dict[str, Any]]) -> tuple[str, str] | None:
    """Why training pods are not running yet, if a person should know: the
    scheduler's verdict, or an image or config the kubelet cannot use."""
    for pod in pods:
        st = pod.get("status") or {}
        if st.get("phase") not in (None, "Pending"):
            continue
        for cond in st.get("conditions") or []:
            if (
                cond.get("type") == vocabulary.POD_SCHEDULED
                and cond.get("status") == "False"
                and cond.get("reason")
            ):
                return cond["reason"], cond.get("message") or ""
        for cs in (st.get("initContainerStatuses") or []) + (st.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = waiting.get("reason")
            if reason in vocabulary.STUCK_CONTAINER_REASONS:
                return reason, f"container {cs.get('name')}: {waiting.get('message') or reason}"
    return None


def _last_failed_trainer(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    best = None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if cs.get("name") != "trainer" or not term or term.get("exitCode") in (None, 0):
                continue
            if best is None or (term.get("finishedAt") or "") > (best.get("finishedAt") or ""):
                best = {
                    "exitCode": term.get("exitCode"),
                    "message": term.get("message") or "",
                    "reason": term.get("reason") or "",
                    "finishedAt": term.get("finishedAt"),
                }
    return best


@dataclass
class Reconciler:
    kube: Kube
    settings: Settings
    post_event: Callable[[dict[str, Any], str, str, str], None]
    memo: WriteMemo = field(default_factory=WriteMemo)
    status_writes: dict[Key, StatusWrite] = field(default_factory=dict)
    # Per FineTuneJob: (uid, generation, the children to apply (packed) or the spec's validation error).
    built: dict[Key, tuple[str, int, Packed | str]] = field(default_factory=dict)

    async def reconcile(
        self, body: dict[str, Any], observed: dict[ChildKey, dict[str, Any]]
    ) -> dict[str, Any]:
        """Bring one FineTuneJob's world in line; return the status it now has."""
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        owner = builders.Owner(name=name, namespace=ns, uid=meta["uid"])
        previous = self.status_writes.get((ns, name))
        old_status = StatusWrite.known_status(previous, body)
        obs = status.Observed(generation=int(meta.get("generation") or 0))

        desired = self._desired(owner, body, obs.generation)
        if isinstance(desired, str):
            obs.spec_error = desired
        else:
            *supporting, job = desired
            # What the Job's pods mount and run as first (concurrently), then the Job.
            await asyncio.gather(*(self._ensure(m, observed) for m in supporting))
            await self._ensure(job, observed)

        obs.job = observed.get(("Job", ns, contract.job_name(name)))
        progress_cm = observed.get(("ConfigMap", ns, contract.progress_map_name(name)))
        obs.progress_data = dict((progress_cm or {}).get("data") or {})
        pods = [obj for (kind, _, _), obj in observed.items() if kind == "Pod"]
        if status.is_failed_job(obs.job):
            # A failure is explained once; the pods may be gone later.
            obs.recorded_failure = status.recorded_failure(old_status)
            obs.last_failed_pod = _last_failed_trainer(pods)
        else:
            obs.pod_problem = _pod_problem(pods)

        new_status, transitions = status.compute(old_status, obs)
        if new_status != old_status:
            changed = sorted(
                k for k in new_status.keys() | old_status.keys() if new_status.get(k) != old_status.get(k)
            )
            log.debug("status of %s/%s changes: %s", ns, name, ", ".join(changed))
            updated = await self.kube.patch_status(api.API_VERSION, "FineTuneJob", ns, name, new_status)
            self.status_writes[(ns, name)] = StatusWrite.after(previous, body, new_status, updated)
            for t in transitions:
                self.post_event(body, t.type, t.reason, t.message)
        elif StatusWrite.caught_up(previous, body):
            del self.status_writes[(ns, name)]  # memory stays bounded with many FineTuneJobs
        return new_status

    def _desired(self, owner: builders.Owner, body: dict[str, Any], generation: int) -> list[dict] | str:
        """The children for this generation of the spec, or why the spec is invalid.
        Built once per generation: the spec cannot change without a new one."""
        key = (owner.namespace, owner.name)
        cached = self.built.get(key)
        if cached is not None and cached[:2] == (owner.uid, generation):
            return cached[2] if isinstance(cached[2], str) else cached[2].unpack()
        try:
            spec = FineTuneJobSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            desired: list[dict[str, Any]] | str = "; ".join(
                f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )[:2000]
        else:
            desired = builders.children(owner, spec, self.settings)
        self.built[key] = (owner.uid, generation, desired if isinstance(desired, str) else Packed(desired))
        return desired

    def forget(self, key: Key) -> None:
        """Drop what is remembered of a deleted FineTuneJob."""
        self.status_writes.pop(key, None)
        _, _, desired = self.built.pop(key, (None, None, ""))
        if not isinstance(desired, str):  # only valid specs had children applied
            for m in desired.unpack():
                self.memo.discard((m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]))

    async def _ensure(self, manifest: dict[str, Any], observed: dict[ChildKey, dict[str, Any]]) -> None:
        """Apply ``manifest`` unless the observed object already has it."""
        meta = manifest["metadata"]
        key = (manifest["kind"], meta["namespace"], meta["name"])
        current = observed.get(key)
        try:
            await ensure_child(self.kube, self.memo, manifest, observed)
        except ApiError as e:
            # A Job's pod template is immutable. The FineTuneJob's spec can only
            # change before training started, so a Job that never started is
            # replaced; the deletion event brings us back to create the new one.
            never_started = current is not None and not (current.get("status") or {}).get("startTime")
            if manifest["kind"] == "Job" and e.status == 422 and never_started:
                log.info("replacing Job %s/%s whose template changed before it started", *key[1:])
                await self.kube.delete("batch/v1", "Job", meta["namespace"], meta["name"])
                return
            raise
