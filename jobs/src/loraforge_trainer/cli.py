"""`loraforge-train`: the trainer's command line, in a FineTuneJob's pod or on a workstation.

    loraforge-train --config run.yaml [--set training.maxSteps=50 ...]
                    [--model-store DIR] [--output DIR] [--checkpoint-dir DIR] [--check]

`--config` takes the operator's resolved configuration (JSON), a YAML file with
the same fields as a FineTuneJob's spec, or a whole FineTuneJob manifest. The
operator's configuration (it has a `run` section) is used as is; a spec or a
manifest is resolved first, by the API's own `resolve` (1 epoch when neither
epochs nor maxSteps is set, QLoRA's quantization defaults, the adapter named
after the FineTuneJob, else `adapter`), as the operator would resolve it.
Relative paths in it (baseModel.path, dataset.path) are read from the model
store, `--model-store` (default: the current folder). Exit codes: 0 done (also
when the adapter failed its evaluation gate: it is published and marked so), 3
bad input (configuration, dataset, base model), 1 anything else.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

from . import config as config_mod
from .errors import CONFIG_INVALID, EXIT_FAILED, MODEL_STORE_FULL, TRAINER_FAILED, InvalidInput, TrainerError
from .publish import io_errno
from .report import ProgressReporter, write_termination_message

log = logging.getLogger("loraforge_trainer")


class LogReporter:
    """Outside Kubernetes: progress and the result go to the log only."""

    def progress(self, step: int, **fields: Any) -> bool:
        return True

    def result(
        self,
        adapter: dict[str, str],
        metrics: dict[str, float],
        evaluation_passed: bool,
        suites: list[dict[str, Any]] = (),
        explanation: str = "",
    ) -> None:
        log.info(
            "result: %s revision %s at %s, evaluation %s",
            adapter["name"],
            adapter["revision"],
            adapter["path"],
            "passed" if evaluation_passed else "FAILED",
        )

    def failure(self, reason: str, message: str) -> None:
        write_termination_message(reason, message)


def reporter_from_env() -> Any:
    """The progress ConfigMap when running in a FineTuneJob's pod (rank 0 reports)."""
    if os.environ.get("LORAFORGE_PROGRESS_CONFIGMAP") and os.environ.get("KUBERNETES_SERVICE_HOST"):
        return ProgressReporter.in_cluster()
    return LogReporter()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="loraforge-train",
        description="LoRA/QLoRA fine-tuning with transformers + peft (+ bitsandbytes), "
        "publishing a versioned adapter.",
    )
    p.add_argument(
        "--config", default=os.environ.get("LORAFORGE_CONFIG"), help="configuration file (JSON or YAML)"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set training.maxSteps=50 (value parsed as YAML); repeatable",
    )
    p.add_argument(
        "--model-store",
        help="folder that relative paths are read from (default: the configuration's "
        "run.modelStore, else the current folder)",
    )
    p.add_argument(
        "--output",
        help="adapter folder that revisions v1, v2, ... are published into "
        "(default: <model store>/adapters/<adapter name>)",
    )
    p.add_argument(
        "--checkpoint-dir",
        help="where checkpoints and TensorBoard logs go (default: <model store>/checkpoints/<adapter name>)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="validate the configuration, base model and dataset; do not train",
    )
    p.add_argument("--log-level", default=os.environ.get("LORAFORGE_LOG_LEVEL", "INFO"))
    return p


def _configure(ns: argparse.Namespace) -> config_mod.TrainConfig:
    if not ns.config:
        raise InvalidInput(CONFIG_INVALID, "no configuration: pass --config FILE (or set LORAFORGE_CONFIG)")
    overrides = [config_mod.parse_override(o) for o in ns.overrides]
    for flag, key in (
        (ns.model_store, "run.modelStore"),
        (ns.output, "run.adapterDir"),
        (ns.checkpoint_dir, "run.checkpointDir"),
    ):
        if flag:
            overrides.append((key, os.path.abspath(flag)))
    return config_mod.load(ns.config, overrides)


def check(cfg: config_mod.TrainConfig) -> None:
    from . import modeling, training

    config_mod.check_inputs_exist(cfg)
    where = modeling.model_dir(cfg)
    tokenizer = modeling.load_tokenizer(cfg, where)
    modeling.check_target_modules(cfg, modeling.linear_module_names(cfg, where))
    s = training.prepare_data(cfg, tokenizer)["summary"]
    print(
        f"ok: {s['trainRecords']} training records ({s['trainTokens']} tokens), "
        f"{s['validationRecords']} held out, "
        f"{s['skippedRecords']} skipped, {s['truncatedAway']} too long; base model {where}"
    )


# Less than this free where checkpoints go, after an unexpected failure: the store is what ran out.
NEARLY_FULL = 16 << 20


def _out_of_space(e: BaseException, checkpoint_dir: Path | None) -> bool:
    """Did ``e`` come from a full model store? An I/O error says so by its errno (or, from safetensors,
    "(os error 28)" in its message); torch.save's writer says only "file write failed", so the free space
    where checkpoints go decides then."""
    if io_errno(e) in (errno.ENOSPC, errno.EDQUOT):
        return True
    folder = checkpoint_dir
    while folder is not None and not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder is None:
        return False
    try:
        s = os.statvfs(folder)
    except OSError:
        return False
    return s.f_bavail * s.f_frsize < NEARLY_FULL


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=ns.log_level.upper(),
        format=f"%(asctime)s %(levelname)s [rank {rank}] %(message)s"
        if "WORLD_SIZE" in os.environ
        else "%(asctime)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    reporter = reporter_from_env() if rank == 0 else LogReporter()
    checkpoint_dir: Path | None = None
    try:
        cfg = _configure(ns)
        checkpoint_dir = cfg.checkpoint_dir()
        if ns.check:
            check(cfg)
            return 0
        from .training import run

        published = run(cfg, reporter)
        if published.revision and rank == 0:
            evaluation = published.manifest.get("evaluation") or {}
            verdict = "passed" if evaluation.get("passed") else "FAILED"
            write_termination_message(
                "Published",
                f"{published.name} {published.revision} ({published.digest}); evaluation {verdict}: "
                f"{evaluation.get('explanation', '')}".rstrip(": "),
            )
        return 0
    except TrainerError as e:
        log.error("%s", e)
        reporter.failure(e.reason, e.message)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        log.exception("training failed")
        if _out_of_space(e, checkpoint_dir):
            # Retryable (exit 1): once space is freed or the volume grown, the retry resumes from the
            # newest complete checkpoint (a half-written one is never resumed from).
            reporter.failure(
                MODEL_STORE_FULL,
                f"the model store is out of space (checkpoints go to {checkpoint_dir}); free space or grow "
                f"the volume and the retry resumes from the newest checkpoint: {type(e).__name__}: {e}",
            )
        else:
            reporter.failure(TRAINER_FAILED, f"{type(e).__name__}: {e}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
