"""The base model: found offline, checked, loaded (4-bit for QLoRA), wrapped
with a LoRA adapter."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from .config import TrainConfig
from .errors import BASE_MODEL_INVALID, TARGET_MODULES_NOT_FOUND, InvalidInput
from .publish import sha256_file

log = logging.getLogger(__name__)

ALL_LINEAR = "all-linear"


def model_dir(cfg: TrainConfig) -> Path:
    """The local folder of the base model. Never downloads."""
    if cfg.base_model.path is not None:
        return cfg.store_path(cfg.base_model.path)
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    repo = cfg.base_model.hugging_face_id
    try:
        return Path(snapshot_download(repo, revision=cfg.base_model.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError) as e:
        raise InvalidInput(
            BASE_MODEL_INVALID,
            f"baseModel.huggingFaceId {repo}@{cfg.base_model.revision} is not in the offline Hugging Face "
            f"cache (HF_HOME); stage it into the model store's hf-cache first ({type(e).__name__})",
        ) from None


def _describe_model(cfg: TrainConfig) -> str:
    return (
        f"baseModel.path {cfg.base_model.path}"
        if cfg.base_model.path
        else (f"baseModel.huggingFaceId {cfg.base_model.hugging_face_id}")
    )


def load_tokenizer(cfg: TrainConfig, where: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(where, local_files_only=True)
    except Exception as e:
        raise InvalidInput(
            BASE_MODEL_INVALID, f"{_describe_model(cfg)}: cannot load the tokenizer: {e}"
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def linear_module_names(cfg: TrainConfig, where: Path) -> list[str]:
    """Names of the base model's Linear layers, from its config alone (no weights load)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(where, local_files_only=True)
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception as e:
        raise InvalidInput(
            BASE_MODEL_INVALID,
            f"{_describe_model(cfg)}: not a causal language model transformers can load: {e}",
        ) from None
    return [n for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]


def check_target_modules(cfg: TrainConfig, linear_names: list[str]) -> None:
    """Each lora.targetModules entry must name Linear layers (as peft matches
    them: the full name or its last dotted parts)."""
    targets = cfg.lora.target_modules
    if targets == [ALL_LINEAR]:
        return
    if ALL_LINEAR in targets:
        raise InvalidInput(
            TARGET_MODULES_NOT_FOUND, f"lora.targetModules: {ALL_LINEAR} must be the only entry"
        )
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear_names)]
    if missing:
        available = sorted({n.rsplit(".", 1)[-1] for n in linear_names})
        raise InvalidInput(
            TARGET_MODULES_NOT_FOUND,
            f"lora.targetModules {missing} match no linear layer of the base model; "
            f"its linear layers are named {available}",
        )


def device_kind() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def precision(cfg: TrainConfig) -> str:
    """bf16, fp16 or fp32 for the training run."""
    import torch

    p = cfg.training.precision
    if p != "auto":
        return p
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def load_model(cfg: TrainConfig, where: Path, local_rank: int) -> Any:
    """The base model with a fresh LoRA adapter (trainable) on top."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    prec = precision(cfg)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(prec, torch.float32)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True}
    if cfg.method == "qlora":
        q = cfg.quantization
        assert q is not None
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=q.type,
            bnb_4bit_use_double_quant=q.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, q.compute_dtype),
        )
        if cuda:
            kwargs["device_map"] = {"": local_rank}
    try:
        model = AutoModelForCausalLM.from_pretrained(where, **kwargs)
    except Exception as e:
        raise InvalidInput(
            BASE_MODEL_INVALID, f"{_describe_model(cfg)}: cannot load the weights: {e}"
        ) from None
    model.config.use_cache = False  # no KV cache while training
    if cfg.method == "qlora" and not cuda:
        _keep_cpu_4bit_layout(model)
    if cfg.method == "qlora":
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.training.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif cfg.training.gradient_checkpointing:
        model.enable_input_require_grads()
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=ALL_LINEAR
        if cfg.lora.target_modules == [ALL_LINEAR]
        else list(cfg.lora.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _keep_cpu_4bit_layout(model: Any) -> None:
    """bitsandbytes (0.50) repacks a 4-bit layer's weights into a CPU inference
    layout the first time the layer runs in eval mode, and training through the
    repacked weights no longer learns (seen here: held-out loss flat after an
    evaluation). Evaluation runs between training steps, so keep the training
    layout."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def identity(cfg: TrainConfig, where: Path) -> dict[str, Any]:
    """What the adapter was trained on, recorded in its manifest: a serving
    runtime must load the same base model."""
    out: dict[str, Any] = {}
    if cfg.base_model.path:
        out["path"] = cfg.base_model.path
    else:
        out["huggingFaceId"] = cfg.base_model.hugging_face_id
        out["revision"] = cfg.base_model.revision
    try:
        config = json.loads((where / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    out["architecture"] = (config.get("architectures") or [None])[0]
    out["modelType"] = config.get("model_type")
    with contextlib.suppress(OSError):
        out["configDigest"] = sha256_file(where / "config.json")
    return {k: v for k, v in out.items() if v is not None}
