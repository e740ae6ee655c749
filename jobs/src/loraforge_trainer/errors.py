"""Failures the trainer reports, each with a CamelCase reason.

The reason and message reach the FineTuneJob's status (through the progress
ConfigMap and the container's termination message). Bad input exits with
``EXIT_INVALID_INPUT`` so that the Job's podFailurePolicy fails it at once
instead of retrying a run that cannot succeed.
"""

from __future__ import annotations

# Matches loraforge_operator.finetunejob.contract.EXIT_INVALID_INPUT (a unit test holds them equal).
EXIT_INVALID_INPUT = 3
EXIT_FAILED = 1

CONFIG_INVALID = "ConfigInvalid"
DATASET_INVALID = "DatasetInvalid"
SUITE_INVALID = "EvaluationSuiteInvalid"
BASE_MODEL_INVALID = "BaseModelInvalid"
TARGET_MODULES_NOT_FOUND = "TargetModulesNotFound"
PUBLISH_FAILED = "PublishFailed"
MODEL_STORE_FULL = "ModelStoreFull"
TRAINER_FAILED = "TrainerFailed"


class TrainerError(Exception):
    """A failure with a reason for people and automation."""

    exit_code = EXIT_FAILED

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"


class InvalidInput(TrainerError):
    """The configuration, dataset or base model cannot work; retrying will not help."""

    exit_code = EXIT_INVALID_INPUT
