"""The words of a ModelDeployment's status: its condition types, the reasons in them and in its rollout
records, and the reasons of the Events it posts, documented for users in docs/modeldeployment.md and
docs/operations.md ("Troubleshooting by reason"). Every condition and Event the operator writes for a
ModelDeployment takes its type and reason from here; a unit test holds every status ``plan.compute``
returns to this vocabulary."""

from __future__ import annotations

from ..conditions import SPEC_INVALID, words


class Type:
    """The ModelDeployment's condition types."""

    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    ROLLED_BACK = "RolledBack"
    PROMOTION_PENDING = "PromotionPending"


class Reason:
    """The reasons of its conditions and rollout records."""

    # Ready
    ALL_REPLICAS_READY = "AllReplicasReady"
    NO_SERVING_REVISION = "NoServingRevision"
    REPLICAS_NOT_READY = "ReplicasNotReady"
    # Progressing: the rollout's reason, or none
    NO_ROLLOUT = "NoRollout"
    ROLLOUT_STARTED = "RolloutStarted"
    ROLLOUT_COMPLETE = "RolloutComplete"
    # Why a rollout failed (its record, Progressing, Degraded and RolledBack)
    SMOKE_TEST_FAILED = "SmokeTestFailed"
    PODS_FAILING = "PodsFailing"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    # Degraded: nothing wrong, the spec, a smoke-test suite, or why an adapter has no revision to serve
    AS_EXPECTED = "AsExpected"
    SPEC_INVALID = SPEC_INVALID
    SMOKE_TEST_SUITE_INVALID = "SmokeTestSuiteInvalid"
    ADAPTER_NOT_PUBLISHED = "AdapterNotPublished"
    BASE_MODEL_MISMATCH = "BaseModelMismatch"
    REVISION_NOT_FOUND = "RevisionNotFound"
    PROMOTION_PENDING = "PromotionPending"
    NO_PROMOTED_REVISION = "NoPromotedRevision"
    FINE_TUNE_JOB_NOT_FOUND = "FineTuneJobNotFound"
    FINE_TUNE_JOB_FAILED = "FineTuneJobFailed"
    ADAPTER_RANK_TOO_HIGH = "AdapterRankTooHigh"
    # RolledBack
    NOT_ROLLED_BACK = "NotRolledBack"
    # PromotionPending
    APPROVAL_REQUIRED = "ApprovalRequired"
    NOTHING_PENDING = "NothingPending"


class EventReason:
    """The reasons of its Events that are no condition's (a Degraded=True condition is also an Event)."""

    ROLLOUT_STARTED = Reason.ROLLOUT_STARTED
    ROLLOUT_COMPLETE = Reason.ROLLOUT_COMPLETE
    ROLLED_BACK = "RolledBack"
    ROLLOUT_FAILED = "RolloutFailed"
    REVISION_APPROVED = "RevisionApproved"
    SMOKE_TEST_FAILED = Reason.SMOKE_TEST_FAILED  # a pod failed its smoke test
    SERVICE_MONITOR_UNAVAILABLE = "ServiceMonitorUnavailable"


class GateReason:
    """The reasons of the pods' readiness gate (builders.VERIFIED_CONDITION), set after their smoke tests."""

    SMOKE_TEST_PASSED = "SmokeTestPassed"
    SMOKE_TEST_FAILED = Reason.SMOKE_TEST_FAILED


TYPES = words(Type)
REASONS = words(Reason)
EVENT_REASONS = words(EventReason) | REASONS
GATE_REASONS = words(GateReason)
