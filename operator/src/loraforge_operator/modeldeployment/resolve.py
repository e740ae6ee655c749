"""Which adapter revisions a ModelDeployment should serve. Pure: works from
the FineTuneJobs of its namespace (their status says what each published,
whether it passed its gate, and on which base model it was trained).

An adapter that cannot be resolved is an error with a reason, and the
deployment keeps serving what it serves: bad input never reaches a pod.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..finetunejob.model import LoraSettings
from . import runtime
from .model import ModelDeploymentSpec, ServedAdapter, ServingRevision
from .vocabulary import Reason

DEFAULT_RANK = LoraSettings().r  # what a FineTuneJob trains when its spec names no rank


@dataclass
class Problem:
    """Why an adapter has no revision to serve, or its smoke test cannot run: a Degraded reason
    (vocabulary.Reason) with the message for people."""

    reason: str
    message: str


@dataclass
class Resolution:
    revisions: dict[str, ServingRevision] = field(default_factory=dict)
    problems: dict[str, Problem] = field(default_factory=dict)  # adapter name -> why it has no revision
    available: dict[str, str] = field(default_factory=dict)  # adapter name -> newest promotable revision
    pending: dict[str, str] = field(default_factory=dict)  # Manual promotion: adapter -> revision waiting


def _rev_number(revision: str) -> int:
    return int(revision[1:]) if revision[1:].isdigit() else -1


def _base_of(ftj: dict[str, Any]) -> dict[str, Any]:
    b = (ftj.get("spec") or {}).get("baseModel") or {}
    return {"path": b.get("path"), "huggingFaceId": b.get("huggingFaceId")}


def _same_base(spec: ModelDeploymentSpec, ftj: dict[str, Any]) -> bool:
    b = _base_of(ftj)
    return (b["path"], b["huggingFaceId"]) == (spec.base_model.path, spec.base_model.hugging_face_id)


def _published(ftj: dict[str, Any]) -> dict[str, Any] | None:
    st = ftj.get("status") or {}
    return st.get("adapter") if st.get("phase") == "Succeeded" else None


def _revision(adapter: ServedAdapter, ftj: dict[str, Any]) -> ServingRevision:
    pub = _published(ftj) or {}
    return ServingRevision(
        name=adapter.name,
        revision=pub.get("revision", ""),
        path=pub.get("path", ""),
        digest=pub.get("digest", ""),
        fine_tune_job=ftj["metadata"]["name"],
        rank=int(((ftj.get("spec") or {}).get("lora") or {}).get("r") or DEFAULT_RANK),
    )


def _lineage(ftj: dict[str, Any]) -> str:
    return ((ftj.get("spec") or {}).get("adapter") or {}).get("name") or ftj["metadata"]["name"]


def resolve(
    spec: ModelDeploymentSpec,
    finetunejobs: list[dict[str, Any]],
    rejected: dict[str, set[str]],
    serving: dict[str, ServingRevision],
) -> Resolution:
    """``rejected``: adapter -> revisions rolled back before (never followed again).
    ``serving``: what replicas serve now (kept under Manual promotion until a pin)."""
    out = Resolution()
    by_name = {f["metadata"]["name"]: f for f in finetunejobs}
    for adapter in spec.adapters:
        src = adapter.from_
        if src.path is not None:
            out.revisions[adapter.name] = ServingRevision(name=adapter.name, path=src.path)
            continue
        if src.fine_tune_job is not None:
            ftj = by_name.get(src.fine_tune_job)
            problem = _check_job(spec, adapter, ftj, src.fine_tune_job)
            if problem:
                out.problems[adapter.name] = problem
            else:
                assert ftj is not None
                out.revisions[adapter.name] = _revision(adapter, ftj)
            continue
        lineage = str(src.adapter)
        published = [f for f in finetunejobs if _lineage(f) == lineage and _published(f)]
        if not published:
            running = [f["metadata"]["name"] for f in finetunejobs if _lineage(f) == lineage]
            out.problems[adapter.name] = Problem(
                Reason.ADAPTER_NOT_PUBLISHED,
                f'adapter "{lineage}" has no published revision yet'
                + (f" (FineTuneJobs {', '.join(sorted(running))} have not succeeded)" if running else "")
                + "; no FineTuneJob in this namespace published it",
            )
            continue
        same_base = [f for f in published if _same_base(spec, f)]
        if not same_base:
            f = published[0]
            out.problems[adapter.name] = Problem(
                Reason.BASE_MODEL_MISMATCH,
                f'adapter "{lineage}" was trained on base model {_base_desc(_base_of(f))} '
                f"(FineTuneJob {f['metadata']['name']}), not on {_base_desc(spec.base_model.model_dump())}",
            )
            continue
        by_rev = {_published(f)["revision"]: f for f in same_base}  # type: ignore[index]
        promotable = sorted(
            (
                r
                for r, f in by_rev.items()
                if (_published(f) or {}).get("evaluationPassed")
                and r not in rejected.get(adapter.name, set())
            ),
            key=_rev_number,
        )
        if src.revision is not None:
            ftj = by_rev.get(src.revision)
            if ftj is None:
                known = ", ".join(sorted(by_rev, key=_rev_number))
                out.problems[adapter.name] = Problem(
                    Reason.REVISION_NOT_FOUND,
                    f'adapter "{lineage}" has no revision {src.revision} (it has {known})',
                )
            else:
                out.revisions[adapter.name] = _revision(adapter, ftj)
            # Under Manual promotion the pin is the approval: a newer passing revision waits for the next.
            if spec.promotion.policy == "Manual" and promotable:
                out.available[adapter.name] = promotable[-1]
                if _rev_number(promotable[-1]) > _rev_number(src.revision):
                    out.pending[adapter.name] = promotable[-1]
            continue
        if promotable:
            out.available[adapter.name] = promotable[-1]
        if spec.promotion.policy == "Manual":
            current = serving.get(adapter.name)
            if promotable and (current is None or current.revision != promotable[-1]):
                out.pending[adapter.name] = promotable[-1]
            if current is not None:
                out.revisions[adapter.name] = current
            else:
                out.problems[adapter.name] = Problem(
                    Reason.PROMOTION_PENDING,
                    f'adapter "{lineage}": promotion is Manual; pin a revision in from.revision'
                    + (f" (newest that passed its gate: {promotable[-1]})" if promotable else ""),
                )
            continue
        if not promotable:
            out.problems[adapter.name] = Problem(
                Reason.NO_PROMOTED_REVISION,
                f'adapter "{lineage}" has no revision that passed its evaluation gate'
                + (
                    f" and was not rolled back ({', '.join(sorted(rejected[adapter.name]))} were)"
                    if rejected.get(adapter.name)
                    else ""
                ),
            )
            continue
        out.revisions[adapter.name] = _revision(adapter, by_rev[promotable[-1]])
    _drop_incompatible(spec, out)
    return out


def _drop_incompatible(spec: ModelDeploymentSpec, out: Resolution) -> None:
    """A revision the runtime cannot load is a problem, not a rollout: it never reaches a pod."""
    rt = runtime.of(spec)
    for name, rev in list(out.revisions.items()):
        bad = rt.incompatible(spec, rev)
        if bad is not None:
            del out.revisions[name]
            out.problems[name] = Problem(bad.reason, f'adapter "{name}" {bad.message}')


def _base_desc(b: dict[str, Any]) -> str:
    return (
        f'"{b.get("path")}"' if b.get("path") else f'"{b.get("huggingFaceId") or b.get("hugging_face_id")}"'
    )


def _check_job(
    spec: ModelDeploymentSpec, adapter: ServedAdapter, ftj: dict[str, Any] | None, name: str
) -> Problem | None:
    if ftj is None:
        return Problem(Reason.FINE_TUNE_JOB_NOT_FOUND, f'FineTuneJob "{name}" not found in this namespace')
    phase = (ftj.get("status") or {}).get("phase")
    if phase == "Failed":
        return Problem(Reason.FINE_TUNE_JOB_FAILED, f'FineTuneJob "{name}" failed; it published no adapter')
    if not _published(ftj):
        return Problem(
            Reason.ADAPTER_NOT_PUBLISHED, f'FineTuneJob "{name}" has not published its adapter yet ({phase})'
        )
    if not _same_base(spec, ftj):
        return Problem(
            Reason.BASE_MODEL_MISMATCH,
            f'FineTuneJob "{name}" trained on base model {_base_desc(_base_of(ftj))}, '
            f"not on {_base_desc(spec.base_model.model_dump())}",
        )
    return None


def finetunejob_view(ftj: dict[str, Any]) -> dict[str, Any]:
    """What resolving reads of a FineTuneJob, and nothing else: the operator keeps this of every FineTuneJob
    for the ModelDeployments of its namespace, and wakes them only when it changes."""
    spec, st = ftj.get("spec") or {}, ftj.get("status") or {}
    base = spec.get("baseModel") or {}
    view_spec: dict[str, Any] = {
        "baseModel": {k: base[k] for k in ("path", "huggingFaceId") if k in base},
        "lora": {"r": (spec.get("lora") or {}).get("r")},
        "adapter": {"name": (spec.get("adapter") or {}).get("name")},
    }
    view_status = {k: st[k] for k in ("phase", "adapter") if k in st}
    meta = ftj.get("metadata") or {}
    return {"metadata": {"name": meta.get("name")}, "spec": view_spec, "status": view_status}
