"""The words of a FineTuneJob's status: its condition types and the reasons in them, documented for users
in docs/finetunejob.md ("Failure reasons"). Every condition and Event the operator writes for a FineTuneJob
takes its type and reason from here, or passes on the reason of someone who knows better: the trainer
(``TRAINER_REASONS``, its own words for its failures) or Kubernetes (``POD_PROBLEM_REASONS``, why pods do
not start). A unit test holds every status ``status.compute`` returns to this vocabulary."""

from __future__ import annotations

from ..conditions import SPEC_INVALID, words


class Type:
    """The FineTuneJob's condition types."""

    ACCEPTED = "Accepted"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    EVALUATED = "Evaluated"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class Reason:
    """The reasons the operator itself gives."""

    ACCEPTED = "Accepted"
    SPEC_INVALID = SPEC_INVALID  # read also as InvalidSpec, its spelling before (conditions.REASON_ALIASES)
    WAITING_FOR_PODS = "WaitingForPods"
    TRAINING_RUNNING = "TrainingRunning"
    COMPLETED = "Completed"
    SUSPENDED = "Suspended"
    NOT_SUSPENDED = "NotSuspended"
    ADAPTER_PUBLISHED = "AdapterPublished"
    EVALUATION_GATE_PASSED = "EvaluationGatePassed"
    EVALUATION_GATE_FAILED = "EvaluationGateFailed"
    NO_RESULT_REPORTED = "NoResultReported"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    TRAINER_FAILED = "TrainerFailed"  # a pod failed without the trainer saying why


# The trainer's failure reasons (loraforge_trainer.errors; a unit test holds the two lists equal), passed on
# from its failure report or termination message. A trainer may name others: any CamelCase reason passes.
TRAINER_REASONS = frozenset(
    {
        "ConfigInvalid",
        "DatasetInvalid",
        "EvaluationSuiteInvalid",
        "BaseModelInvalid",
        "TargetModulesNotFound",
        "PublishFailed",
        "ModelStoreFull",
        "TrainerFailed",
    }
)

# Kubernetes' reasons why training pods do not start, passed on in Running=False. Container waiting reasons
# that will not resolve by waiting:
STUCK_CONTAINER_REASONS = frozenset(
    {
        "ImagePullBackOff",
        "ErrImagePull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "CrashLoopBackOff",
    }
)
POD_SCHEDULED = "PodScheduled"  # the pod condition the scheduler sets
UNSCHEDULABLE = "Unschedulable"  # its reason in PodScheduled=False
POD_PROBLEM_REASONS = STUCK_CONTAINER_REASONS | {UNSCHEDULABLE}


class Job:
    """What the operator reads of its batch Job (Kubernetes' words): condition types and failure reasons."""

    COMPLETE = "Complete"
    FAILED = "Failed"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"


TYPES = words(Type)
REASONS = words(Reason)
