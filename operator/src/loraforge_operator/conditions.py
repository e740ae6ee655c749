"""Status conditions, as Kubernetes API conventions define them.

A list-map keyed by `type`; `lastTransitionTime` changes only when `status`
does, so re-computing identical conditions produces an identical status (and
therefore no write).

Each kind names its condition types and reasons in its own vocabulary
(``finetunejob/vocabulary.py``, ``modeldeployment/vocabulary.py``); what both
share is here: the spec-invalid reason, the reasons' old spellings still read
on objects written before, and the Event types.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import Field

from .schema import ApiModel

# The reason of a spec the operator cannot use, for both kinds (Degraded of a ModelDeployment; Accepted=False
# and Failed of a FineTuneJob).
SPEC_INVALID = "SpecInvalid"
# Old spelling -> the reason as written now. FineTuneJobs written before the spelling was one said
# InvalidSpec; whatever reads an existing object's reasons reads them through ``canonical_reason``.
REASON_ALIASES = {"InvalidSpec": SPEC_INVALID}


def canonical_reason(reason: str) -> str:
    """``reason`` as the operator spells it now (an old spelling read from an existing object, translated)."""
    return REASON_ALIASES.get(reason, reason)


class EventType:
    """The type of a Kubernetes Event."""

    NORMAL = "Normal"
    WARNING = "Warning"


def words(vocabulary: type) -> frozenset[str]:
    """The values of a class of constants (its UPPER_CASE string attributes)."""
    return frozenset(
        v for k, v in vars(vocabulary).items() if k.isupper() and not k.startswith("_") and isinstance(v, str)
    )


class Condition(ApiModel):
    """One aspect of the object's state (Kubernetes metav1.Condition)."""

    type: Annotated[str, Field(max_length=316, pattern=r"^[A-Z][A-Za-z0-9]*$")]
    """What this condition is about, in CamelCase, e.g. Accepted or Succeeded."""

    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""

    reason: Annotated[str, Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    """Machine-readable CamelCase cause of the last transition, e.g. DatasetInvalid."""

    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable detail."""

    last_transition_time: str
    """When `status` last changed (RFC 3339)."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The `.metadata.generation` this condition was computed from."""


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_conditions(existing: list[dict], desired: list[dict], now: str | None = None) -> list[dict]:
    """Return ``desired`` (dicts with type/status/reason/message/observedGeneration)
    with `lastTransitionTime` carried over from ``existing`` where the status did
    not change. Conditions not in ``desired`` are dropped; order follows ``desired``."""
    stamp = now or now_rfc3339()
    old = {c.get("type"): c for c in existing}
    merged = []
    for cond in desired:
        prev = old.get(cond["type"])
        keep_time = (
            prev is not None and prev.get("status") == cond["status"] and prev.get("lastTransitionTime")
        )
        merged.append({**cond, "lastTransitionTime": prev["lastTransitionTime"] if keep_time else stamp})
    return merged
