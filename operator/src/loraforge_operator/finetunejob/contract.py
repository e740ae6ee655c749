"""The contract between the operator and the trainer running in a FineTuneJob's pod.

Configuration flows in through a ConfigMap mounted at ``CONFIG_DIR``; progress
and the result flow out through a second ConfigMap, ``<name>-progress``, that
only the trainer of that FineTuneJob may patch (a Role limited to that one
object by ``resourceNames``). The channel needs no network path from the
operator to the pods, no egress, and no permission beyond that one object, so it
works in an air-gapped cluster with least privilege. The trainer also writes a
one-line failure summary to its termination message, so a failure is explained
even when the API server was unreachable from the pod.

The trainer (``loraforge_trainer.report``) implements the other end; the keys
and the JSON shapes below are the contract, and both ends are tested against a
real API server.
"""

from __future__ import annotations

CONFIG_DIR = "/etc/loraforge"
CONFIG_KEY = "config.json"  # the resolved training configuration (JSON)
# The resolved configuration is the FineTuneJob's spec as ``model.resolve`` leaves it (every default that
# depends on other fields or on the FineTuneJob's name made explicit), camelCase as in the API, plus a
# ``RUN_SECTION`` saying where things are inside the pod:
# {"namespace", "fineTuneJob", "uid", "modelStore", "datasetDir"?, "suitesDir"?, "checkpointDir",
#  "adapterDir", "progressConfigMap"}. The trainer reads it with a generated copy of the API models
# (``loraforge_trainer.api``, written by ``python -m loraforge_operator.crds``), so both ends parse one
# definition. A configuration with a run section is taken as resolved: the trainer applies no default
# of its own and refuses one that leaves a field to ``model.resolve`` (a spec without a run section, given
# to ``loraforge-train`` on a workstation, is resolved by the trainer with the same function).
RUN_SECTION = "run"

MODEL_STORE_MOUNT = "/models"
DATASET_MOUNT = "/data"
SUITES_MOUNT = "/data/suites"  # ConfigMap evaluation suites, one folder per suite name

# Keys of the progress ConfigMap, each a JSON document written by the trainer.
PROGRESS_KEY = "progress.json"
# {"step": 120, "totalSteps": 500, "epoch": 0.7, "loss": 1.42, "evalLoss": 1.51,
#  "learningRate": 0.00018, "tokensPerSecond": 2150.0, "time": "2026-11-22T10:00:00Z"}
RESULT_KEY = "result.json"
# {"adapter": {"name": "...", "revision": "...", "path": "adapters/<ns>/<name>/<rev>",
#              "digest": "sha256:..."},
#  "evaluationPassed": true, "metrics": {"evalLoss": 1.2, "baseEvalLoss": 1.9, ...},
#  "suites": [{"name": "held-out", "scorer": "contains", "records": 72, "correct": 70, "baseCorrect": 0,
#              "accuracy": 0.9722, "baseAccuracy": 0.0, "passed": true}],
#  "explanation": "every condition of the gate holds"}
FAILURE_KEY = "failure.json"
# {"reason": "DatasetInvalid", "message": "datasets/train.jsonl:17: missing key 'messages'"}

# The trainer's termination message on failure: "<Reason>: <message>", e.g.
# "DatasetInvalid: datasets/train.jsonl:17: missing key 'messages'".

# Exit code with which the trainer reports bad input (config, dataset, model):
# the Job's podFailurePolicy fails the Job at once instead of retrying a run
# that cannot succeed.
EXIT_INVALID_INPUT = 3

# Environment the trainer finds its channel by.
ENV_PROGRESS_CONFIGMAP = "LORAFORGE_PROGRESS_CONFIGMAP"
ENV_NAMESPACE = "LORAFORGE_NAMESPACE"
ENV_POD_NAME = "LORAFORGE_POD_NAME"
ENV_CONFIG = "LORAFORGE_CONFIG"


def config_map_name(ftj: str) -> str:
    return f"{ftj}-config"


def progress_map_name(ftj: str) -> str:
    return f"{ftj}-progress"


def job_name(ftj: str) -> str:
    return f"{ftj}-train"


def trainer_identity(ftj: str) -> str:
    """Name of the trainer's ServiceAccount, Role and RoleBinding."""
    return f"{ftj}-trainer"


def rendezvous_service_name(ftj: str) -> str:
    return f"{ftj}-rdzv"
