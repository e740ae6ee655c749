"""Reconcile one ModelDeployment: resolve the adapter revisions, let the
rollout state machine (``plan.py``) choose the Deployment's template, apply
the children, smoke-test new pods (their readiness gate), write the status.
Level-triggered; a pass with nothing to change writes nothing."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from .. import api, metrics
from ..conditions import EventType, canonical_reason, merge_conditions, now_rfc3339
from ..kube import ApiError, Kube
from ..settings import Settings
from ..writes import ChildKey, StatusWrite, WriteMemo, ensure_child
from . import builders, plan, resolve, runtime, smoke, vocabulary
from .model import ModelDeploymentSpec

log = logging.getLogger(__name__)

Key = tuple[str, str]
# Events that end a rollout -> the result counted in loraforge_modeldeployment_rollouts_total.
T, R, E = vocabulary.Type, vocabulary.Reason, vocabulary.EventReason
ROLLOUT_ENDS = {E.ROLLOUT_COMPLETE: "Complete", E.ROLLED_BACK: "RolledBack", E.ROLLOUT_FAILED: "Failed"}
# How long to wait before writing a ServiceMonitor again where the API was missing.
MONITORING_RETRY_SECONDS = 300.0
# Degraded reason of a smokeTest.suite that cannot be used (missing ConfigMap or key, a bad record).
SUITE_INVALID = R.SMOKE_TEST_SUITE_INVALID


def _spec_error(e: ValidationError) -> str:
    return "; ".join(f"spec.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors())[
        :2000
    ]


def needs_smoke_test(pod: dict[str, Any]) -> bool:
    """Running, containers ready (the runtime is up), not yet judged by the operator."""
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    if meta.get("deletionTimestamp") or not st.get("podIP") or st.get("phase") != "Running":
        return False
    containers = plan.pod_condition(pod, "ContainersReady")
    return bool(containers and containers.get("status") == "True") and (
        plan.pod_condition(pod, builders.VERIFIED_CONDITION) is None
    )


@dataclass
class ModelDeploymentReconciler:
    kube: Kube
    settings: Settings
    post_event: Callable[[dict[str, Any], str, str, str], None]
    memo: WriteMemo = field(default_factory=WriteMemo)
    status_writes: dict[Key, StatusWrite] = field(default_factory=dict)
    # Pod uid -> {owner, condition}: the gate the operator decided (set again if a write was lost).
    verdicts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # ModelDeployment -> when its ServiceMonitor could not be written (the API is missing): one event,
    # and a retry later rather than a failing write on every reconcile.
    monitoring_unavailable: dict[Key, float] = field(default_factory=dict)
    # ModelDeployment -> adapter -> (what it was read from, the suite or why it is unusable): smoke-test
    # suites are read from their ConfigMaps on every reconcile, parsed again only when one changed.
    suites: dict[Key, dict[str, tuple[tuple[str, ...], smoke.Suite | resolve.Problem]]] = field(
        default_factory=dict
    )
    # ModelDeployment -> when an invalid suite last held its smoke tests (a rollout's deadline counts after).
    held_at: dict[Key, dt.datetime] = field(default_factory=dict)
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    async def reconcile(
        self,
        body: dict[str, Any],
        observed: dict[ChildKey, dict[str, Any]],
        pods: list[dict[str, Any]],
        finetunejobs: list[dict[str, Any]],
    ) -> dict[str, Any]:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        generation = int(meta.get("generation") or 0)
        owner = builders.Owner(name=name, namespace=ns, uid=meta["uid"])
        old_status = StatusWrite.known_status(self.status_writes.get((ns, name)), body)

        try:
            spec = ModelDeploymentSpec.model_validate(body.get("spec") or {})
        except ValidationError as e:
            new_status = self._invalid(old_status, generation, _spec_error(e))
            await self._write_status(body, old_status, new_status, [])
            return new_status

        deployment = observed.get(("Deployment", ns, name))
        serving = plan.serving_of(old_status)
        resolution = resolve.resolve(spec, finetunejobs, plan.rejected_of(old_status), serving)
        suites, smoke_problems = await self._read_suites(ns, name, spec)
        now = self.clock()
        if smoke_problems:
            self.held_at[(ns, name)] = now
        obs = plan.Observed(
            generation=generation,
            deployment=deployment,
            pods=pods,
            now=now,
            smoke_problems=smoke_problems,
            deadline_from=self.held_at.get((ns, name)),
        )
        p = plan.compute(spec, old_status, resolution, obs, builders.endpoint(owner, spec), name)
        if p.template is not None:
            wanted = builders.children(owner, spec, self.settings, p.template)
            for manifest in wanted:
                if manifest["kind"] == "ServiceMonitor":
                    await self._ensure_service_monitor(body, manifest, observed)
                else:
                    await ensure_child(self.kube, self.memo, manifest, observed)
            await self._prune(owner, wanted, observed)
        await self._verify(owner, spec, pods, suites, held=bool(smoke_problems))
        await self._write_status(body, old_status, p.status, p.events)
        return p.status

    async def _read_suites(
        self, ns: str, name: str, spec: ModelDeploymentSpec
    ) -> tuple[dict[str, smoke.Suite], dict[str, resolve.Problem]]:
        """Each adapter's smoke-test suite, read from its ConfigMap and checked before any pod is tested
        with it; or why it cannot be used (missing ConfigMap or key, a bad record: configmap/name[key]:line),
        a spec problem that holds the smoke tests rather than failing pods."""
        wanted = {a.name: a.smoke_test.suite for a in spec.adapters if a.smoke_test and a.smoke_test.suite}
        if not wanted:
            self.suites.pop((ns, name), None)
            return {}, {}
        config_maps: dict[str, dict[str, Any] | resolve.Problem | None] = {}
        for cm in sorted({s.config_map.name for s in wanted.values()}):
            try:
                config_maps[cm] = await self.kube.get("v1", "ConfigMap", ns, cm)
            except ApiError as e:
                config_maps[cm] = resolve.Problem(
                    SUITE_INVALID, f"configmap/{cm}: cannot read it: {e.status} {e.reason}"
                )
        known = self.suites.get((ns, name), {})
        cache: dict[str, tuple[tuple[str, ...], smoke.Suite | resolve.Problem]] = {}
        suites: dict[str, smoke.Suite] = {}
        problems: dict[str, resolve.Problem] = {}
        for adapter, suite_spec in wanted.items():
            cm = config_maps[suite_spec.config_map.name]
            if isinstance(cm, resolve.Problem):
                cache[adapter] = ((), cm)
                problems[adapter] = cm
                continue
            version = ((cm or {}).get("metadata") or {}).get("resourceVersion", "")
            source = (str(version) if cm is not None else "", suite_spec.model_dump_json())
            cached = known.get(adapter)
            if cached is not None and cached[0] == source:
                result = cached[1]
            else:
                try:
                    result = smoke.suite_from_configmap(cm, suite_spec)
                except smoke.SuiteInvalid as e:
                    result = resolve.Problem(SUITE_INVALID, f"smokeTest.suite: {e}")
                else:
                    log.info(
                        "%s/%s: smoke-test suite %s of adapter %s: %d questions",
                        ns,
                        name,
                        result.name,
                        adapter,
                        len(result.questions),
                    )
            cache[adapter] = (source, result)
            if isinstance(result, resolve.Problem):
                problems[adapter] = result
            else:
                suites[adapter] = result
        self.suites[(ns, name)] = cache
        return suites, problems

    async def _ensure_service_monitor(
        self, body: dict[str, Any], manifest: dict[str, Any], observed: dict[ChildKey, dict[str, Any]]
    ) -> None:
        """Optional, and in another project's API: where the cluster lacks it, say so and serve on. Tried
        again after MONITORING_RETRY_SECONDS (the CRD may be installed later), not on every reconcile."""
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        failed_at = self.monitoring_unavailable.get(key)
        if failed_at is not None and time.monotonic() - failed_at < MONITORING_RETRY_SECONDS:
            return
        try:
            await ensure_child(self.kube, self.memo, manifest, observed)
        except ApiError as e:
            if e.status != 404:
                raise
            if failed_at is None:
                self.post_event(
                    body,
                    EventType.WARNING,
                    E.SERVICE_MONITOR_UNAVAILABLE,
                    "spec.monitoring.serviceMonitor is set but this cluster does not serve "
                    f"{builders.SERVICE_MONITOR_API_VERSION} ServiceMonitors (the Prometheus Operator's "
                    "CRDs); install them or unset it",
                )
            self.monitoring_unavailable[key] = time.monotonic()
            return
        self.monitoring_unavailable.pop(key, None)

    async def _prune(
        self, owner: builders.Owner, wanted: list[dict[str, Any]], observed: dict[ChildKey, dict[str, Any]]
    ) -> None:
        """Delete optional children the spec no longer asks for (an HPA left after a switch to fixed
        replicas would keep resizing the Deployment). Only objects this ModelDeployment owns: the watched
        ones, and those this process wrote that no watch delivers (a ServiceMonitor whose CRD appeared after
        the operator started may not be watched yet)."""
        keep = {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in wanted}
        for key, obj in list({**self.memo.answers(), **observed}.items()):
            owners = {r.get("uid") for r in obj["metadata"].get("ownerReferences") or []}
            if key[0] in builders.OPTIONAL_KINDS and key not in keep and owner.uid in owners:
                log.info("deleting %s %s/%s: no longer in the spec", *key)
                await self.kube.delete(obj["apiVersion"], *key)
                self.memo.discard(key)
                observed.pop(key, None)

    def _invalid(self, old: dict[str, Any], generation: int, message: str) -> dict[str, Any]:
        conds = [
            {
                "type": T.DEGRADED,
                "status": "True",
                "reason": R.SPEC_INVALID,
                "message": message,
                "observedGeneration": generation,
            }
        ]
        kept = [c for c in old.get("conditions") or [] if c.get("type") != T.DEGRADED]
        return {
            **old,
            "observedGeneration": generation,
            "phase": "Degraded",
            "conditions": kept + merge_conditions(old.get("conditions") or [], conds, now_rfc3339()),
        }

    async def _write_status(
        self, body: dict[str, Any], old: dict[str, Any], new: dict[str, Any], events: list[plan.Event]
    ) -> None:
        meta = body["metadata"]
        ns, name = meta["namespace"], meta["name"]
        if new == old:
            return
        updated = await self.kube.patch_status(api.API_VERSION, "ModelDeployment", ns, name, new)
        previous = self.status_writes.get((ns, name))
        self.status_writes[(ns, name)] = StatusWrite.after(previous, body, new, updated)
        old_degraded = next((c for c in old.get("conditions") or [] if c["type"] == T.DEGRADED), {})
        new_degraded = next((c for c in new.get("conditions") or [] if c["type"] == T.DEGRADED), {})
        old_reason = canonical_reason(old_degraded.get("reason") or "")
        if new_degraded.get("status") == "True" and (
            old_degraded.get("status") != "True" or old_reason != new_degraded.get("reason")
        ):
            events = [
                *events,
                plan.Event(EventType.WARNING, new_degraded["reason"], new_degraded.get("message", "")),
            ]
        for e in events:
            self.post_event(body, e.type, e.reason, e.message)
            if e.reason in ROLLOUT_ENDS:
                metrics.ROLLOUTS.labels(result=ROLLOUT_ENDS[e.reason]).inc()

    async def _verify(
        self,
        owner: builders.Owner,
        spec: ModelDeploymentSpec,
        pods: list[dict[str, Any]],
        suites: dict[str, smoke.Suite],
        held: bool = False,
    ) -> None:
        """Smoke-test every pod that is up and not yet judged, concurrently; set its readiness gate.
        ``held``: a smoke test cannot run (an invalid suite): no pod is judged, verdicts are kept."""
        live = {p["metadata"].get("uid") for p in pods}
        # Verdicts of this deployment's pods that are gone are dropped (memory stays bounded).
        mine = {uid for uid, v in self.verdicts.items() if v.get("owner") == (owner.namespace, owner.name)}
        for uid in mine - live:
            del self.verdicts[uid]
        todo = []
        for pod in pods:
            uid = pod["metadata"].get("uid")
            known = self.verdicts.get(uid)
            if known is not None:
                gate = plan.pod_condition(pod, builders.VERIFIED_CONDITION)
                if gate is None or gate.get("status") != known["condition"]["status"]:
                    todo.append(
                        self.kube.set_pod_condition(
                            owner.namespace, pod["metadata"]["name"], known["condition"]
                        )
                    )
            elif needs_smoke_test(pod) and not held:
                todo.append(self._smoke(owner, spec, pod, suites))
        if todo:
            await asyncio.gather(*todo)

    async def _smoke(
        self,
        owner: builders.Owner,
        spec: ModelDeploymentSpec,
        pod: dict[str, Any],
        suites: dict[str, smoke.Suite],
    ) -> None:
        base_url = f"http://{pod['status']['podIP']}:{runtime.PORT}"
        revisions = plan.pod_template_key(pod) or {}
        results = []
        for adapter in spec.adapters:
            r = await asyncio.to_thread(
                smoke.check,
                base_url,
                runtime.of(spec).base_model_name(spec),
                adapter.name,
                adapter.smoke_test,
                self.settings.smoke_test_timeout,
                suites.get(adapter.name),
            )
            results.append(r)
            if not r.ok:
                break
        ok = all(r.ok for r in results)
        described = ", ".join(f"{k}={v}" for k, v in sorted(revisions.items()))
        passed = "; ".join(
            [
                f"smoke tests passed ({described})",
                *(f"{a.name}: {r.suite}" for a, r in zip(spec.adapters, results, strict=False) if r.suite),
            ]
        )
        message = (passed if ok else next(r.message for r in results if not r.ok))[:1000]
        condition = {
            "type": builders.VERIFIED_CONDITION,
            "status": "True" if ok else "False",
            "reason": vocabulary.GateReason.SMOKE_TEST_PASSED
            if ok
            else vocabulary.GateReason.SMOKE_TEST_FAILED,
            "message": message,
            "lastTransitionTime": now_rfc3339(),
        }
        self.verdicts[pod["metadata"]["uid"]] = {
            "owner": (owner.namespace, owner.name),
            "condition": condition,
        }
        await self.kube.set_pod_condition(owner.namespace, pod["metadata"]["name"], condition)
        log.info("pod %s/%s: %s", owner.namespace, pod["metadata"]["name"], message)
        if not ok:
            self.post_event(
                {
                    "apiVersion": api.API_VERSION,
                    "kind": "ModelDeployment",
                    "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
                },
                EventType.WARNING,
                E.SMOKE_TEST_FAILED,
                f"pod {pod['metadata']['name']}: {message}",
            )

    def suite_invalid(self, key: Key) -> bool:
        """Whether a smoke-test suite of this ModelDeployment was unusable at its last reconcile."""
        return any(isinstance(r, resolve.Problem) for _, r in self.suites.get(key, {}).values())

    def forget(self, key: Key) -> None:
        self.status_writes.pop(key, None)
        self.monitoring_unavailable.pop(key, None)
        self.suites.pop(key, None)
        self.held_at.pop(key, None)
