"""Publishing an immutable adapter revision into the model store.

Layout of ``<adapterDir>/<revision>/`` (``adapterDir`` is
``adapters/<namespace>/<adapter>`` in the model store):

- ``adapter_model.safetensors``, ``adapter_config.json``: what peft's
  ``PeftModel.from_pretrained`` and TGI's ``LORA_ADAPTERS=name=/path`` load;
- ``manifest.json``: digests, base model identity, dataset digest, settings,
  metrics, times and the source FineTuneJob;
- ``README.md`` (the model card) and ``loss.svg`` (its loss curve);
- ``COMPLETE``: written last. A folder without it is not a revision.

Revisions are numbered ``v1``, ``v2``, …. The files are written into a hidden
temporary folder, flushed, and renamed into place under a number claimed with
an exclusive ``mkdir``, so two publishers never take the same number and no
reader sees a half-written revision. A publish that fails (a full model store,
say) removes what it wrote, the claimed folder included, so a retry takes the
same number. An existing revision is never written to.
A trainer retried after it published finds its own revision (by the source
FineTuneJob's uid) and reports it instead of publishing twice.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import html
import json
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import PUBLISH_FAILED, TrainerError

COMPLETE = "COMPLETE"
MANIFEST = "manifest.json"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
REVISION = re.compile(r"^v([1-9][0-9]*)$")
MANIFEST_VERSION = 1


@dataclass(frozen=True)
class Published:
    name: str
    revision: str
    path: Path
    digest: str
    manifest: dict[str, Any]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def revisions(adapter_dir: Path) -> list[tuple[int, Path]]:
    """Complete revisions, oldest first."""
    out = []
    if adapter_dir.is_dir():
        for p in adapter_dir.iterdir():
            m = REVISION.match(p.name)
            if m and (p / COMPLETE).is_file():
                out.append((int(m.group(1)), p))
    return sorted(out)


def read_manifest(revision_dir: Path) -> dict[str, Any]:
    return json.loads((revision_dir / MANIFEST).read_text())


def find_by_source(adapter_dir: Path, uid: str | None) -> Published | None:
    """The revision a given FineTuneJob (by uid) already published, if any."""
    if not uid:
        return None
    for _, p in reversed(revisions(adapter_dir)):
        try:
            manifest = read_manifest(p)
        except (OSError, ValueError):
            continue
        if (manifest.get("source") or {}).get("uid") == uid:
            return Published(manifest["adapter"], p.name, p, manifest["digest"], manifest)
    return None


def verify(revision_dir: Path) -> None:
    """Raise unless the revision is complete and its files match the manifest's digests."""
    if not (revision_dir / COMPLETE).is_file():
        raise ValueError(f"{revision_dir}: no {COMPLETE} marker")
    manifest = read_manifest(revision_dir)
    for name, digest in manifest["files"].items():
        if sha256_file(revision_dir / name) != digest:
            raise ValueError(f"{revision_dir / name}: digest does not match the manifest")


def _fsync_tree(root: Path) -> None:
    for p in [*root.rglob("*"), root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if p.is_dir() else 0)
        fd = os.open(p, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _claim(adapter_dir: Path) -> Path:
    """Reserve the next revision number with an exclusive mkdir."""
    taken = [int(m.group(1)) for p in adapter_dir.iterdir() if (m := REVISION.match(p.name))]
    n = max(taken, default=0) + 1
    while True:
        target = adapter_dir / f"v{n}"
        try:
            target.mkdir()
            return target
        except FileExistsError:
            n += 1


def publish(
    adapter_dir: Path,
    name: str,
    write_files: Any,
    manifest: dict[str, Any],
    card: Any,
) -> Published:
    """Write a new revision. `write_files(folder)` saves the adapter there;
    `card(revision, manifest) -> {filename: text}` renders the model card.

    On failure nothing new is left behind: neither the staging folder nor
    the claimed number, so a retry publishes under the same number."""
    try:
        adapter_dir.mkdir(parents=True, exist_ok=True)
        staging = adapter_dir / f".staging-{os.getpid()}-{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S%f}"
        staging.mkdir()
        target = None
        try:
            write_files(staging)
            for required in (WEIGHTS, ADAPTER_CONFIG):
                if not (staging / required).is_file():
                    raise TrainerError(PUBLISH_FAILED, f"the adapter was saved without {required}")
            target = _claim(adapter_dir)
            manifest = {
                **manifest,
                "manifestVersion": MANIFEST_VERSION,
                "adapter": name,
                "revision": target.name,
                "digest": sha256_file(staging / WEIGHTS),
                "publishedAt": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            for filename, text in card(target.name, manifest).items():
                (staging / filename).write_text(text)
            manifest["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
            (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            _fsync_tree(staging)
            # rename(2) replaces the empty claimed folder atomically.
            os.rename(staging, target)
            # COMPLETE appears whole or not at all (an empty one from a full disk would pass for one).
            (target / f".{COMPLETE}").write_text(manifest["digest"] + "\n")
            _fsync_tree(target)
            os.rename(target / f".{COMPLETE}", target / COMPLETE)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if target is not None:  # not a revision yet, and no one else writes into a claimed folder
                shutil.rmtree(target, ignore_errors=True)
            raise
        _fsync_tree(target)
        for p in target.iterdir():  # an existing revision is never written to
            p.chmod(0o444)
        return Published(name, target.name, target, manifest["digest"], manifest)
    except Exception as e:
        code = io_errno(e)
        if code is None:
            raise
        space = " (the model store is out of space)" if code in (errno.ENOSPC, errno.EDQUOT) else ""
        raise TrainerError(PUBLISH_FAILED, f"cannot publish into {adapter_dir}{space}: {e}") from None


def io_errno(e: BaseException) -> int | None:
    """The errno of an I/O failure: an OSError's, or the one a Rust library
    (safetensors) writes into its own exception's message, else None."""
    if isinstance(e, OSError):
        return e.errno or 0
    m = re.search(r"\(os error (\d+)\)", str(e))
    return int(m.group(1)) if m else None


# --- the model card -------------------------------------------------------------------


def loss_svg(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], title: str) -> str:
    """A small self-contained SVG line chart of training and eval loss by step."""
    w, h, left, right, top, bottom = 640, 360, 60, 20, 40, 40
    points = [*train, *evals]
    if not points:
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="60">'
            '<text x="10" y="35" font-family="sans-serif" font-size="14">no loss was logged</text></svg>\n'
        )
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    x0, x1 = min(xs), max(xs) or 1
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    pad = (y1 - y0) * 0.05 or 0.5
    y0, y1 = max(0.0, y0 - pad), y1 + pad

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def sy(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    def line(series: Sequence[tuple[int, float]], color: str) -> str:
        if not series:
            return ""
        pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
        dots = "".join(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2.5" fill="{color}"/>' for x, y in series
        )
        return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>{dots}'

    ticks = []
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        ticks.append(
            f'<line x1="{left}" x2="{w - right}" y1="{sy(yv):.1f}" y2="{sy(yv):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{sy(yv) + 4:.1f}" text-anchor="end">{yv:.2f}</text>'
        )
    for i in range(5):
        xv = x0 + (x1 - x0) * i / 4
        ticks.append(f'<text x="{sx(xv):.1f}" y="{h - bottom + 16}" text-anchor="middle">{xv:.0f}</text>')
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
        f'font-size="11">'
        f'<rect width="{w}" height="{h}" fill="white"/>'
        f'<text x="{left}" y="22" font-size="14">{html.escape(title)}</text>'
        + "".join(ticks)
        + f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle">optimizer step</text>'
        + line(train, "#1f77b4")
        + line(evals, "#d62728")
        + (f'<text x="{w - right - 150}" y="22" fill="#1f77b4">— training loss</text>' if train else "")
        + (f'<text x="{w - right - 60}" y="22" fill="#d62728">— eval loss</text>' if evals else "")
        + "</svg>\n"
    )


def model_card(revision: str, m: dict[str, Any]) -> str:
    """README.md of a revision: what it is for, what it was trained on, how, and how it did."""
    spec = m.get("settings") or {}
    t = spec.get("training") or {}
    lora = spec.get("lora") or {}
    metrics = m.get("metrics") or {}
    ds = m.get("dataset") or {}
    base = m.get("baseModel") or {}
    src = m.get("source") or {}
    base_name = base.get("path") or f"{base.get('huggingFaceId')}@{base.get('revision')}"
    rows = "\n".join(f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()))
    gate = m.get("evaluation") or {}
    conditions = ", ".join(f"{k} {v}" for k, v in (gate.get("gate") or {}).items())
    if conditions:
        verdict = f"The evaluation gate ({conditions}) {'passed' if gate.get('passed') else 'did not pass'}: "
        verdict += f"{gate.get('explanation')}."
    else:
        verdict = "No evaluation gate was set; the metrics are recorded only."
    method = {"lora": "LoRA", "qlora": "QLoRA"}.get(spec.get("method", "lora"), spec.get("method"))
    quant = spec.get("quantization") or {}
    quant_row = (
        f"| base model quantization | 4-bit {quant.get('type')}, "
        f"double quantization {quant.get('doubleQuant')}, compute {quant.get('computeDtype')} |\n"
        if quant
        else ""
    )
    origin = (
        f"FineTuneJob `{src['namespace']}/{src['fineTuneJob']}` (uid `{src.get('uid')}`)"
        if src.get("fineTuneJob") and src.get("namespace")
        else "the `loraforge-train` command line"
    )
    written = (spec.get("adapter") or {}).get("modelCard") or {}
    inherited = (
        f"Fine-tuned on {ds.get('trainRecords')} records; it inherits the base model's limitations and "
        "biases and adds\nthose of its data. A small held-out split measures fit to that data, not general "
        "quality or safety. Review\nanswers before relying on them."
    )
    data_file = f"- File: `{ds.get('path')}` (format `{ds.get('format')}`), digest `{ds.get('digest')}`"
    arch = base.get("architecture", "unknown architecture")
    batch = f"{t.get('batchSize')} x {t.get('gradientAccumulationSteps')} x {m.get('worldSize', 1)}"
    return f"""# {m["adapter"]} {revision}

A {method} adapter for `{base_name}` ({arch}),
trained by loraforge from {origin}.

- Weights: `adapter_model.safetensors` ({m["digest"]}), with `adapter_config.json`.
- Load with peft: `PeftModel.from_pretrained(base_model, "<this folder>")`.
- Serve with text-generation-inference: `LORA_ADAPTERS={m["adapter"]}=<this folder>`, then
  `parameters.adapter_id: "{m["adapter"]}"` in requests; with vLLM: `--enable-lora --lora-modules
  {m["adapter"]}=<this folder>`, then `"model": "{m["adapter"]}"`.

## Intended use

{written.get("intendedUse") or _UNWRITTEN_USE}
{_section("Out of scope", written.get("outOfScope"))}
## Training data

{_paragraph(written.get("trainingData"))}{data_file}
- Records: {ds.get("trainRecords")} for training, {ds.get("validationRecords")} held out
  ({ds.get("validationSource")}); {ds.get("skippedRecords", 0)} invalid records skipped,
  {ds.get("truncatedAway", 0)} dropped as too long.

## Settings

| setting | value |
| --- | --- |
| method | {method} |
{quant_row}| LoRA rank / alpha / dropout | {lora.get("r")} / {lora.get("alpha")} / {lora.get("dropout")} |
| target modules | {", ".join(lora.get("targetModules", []))} |
| learning rate, schedule | {t.get("learningRate")}, {t.get("lrScheduler")} |
| batch size x accumulation x processes | {batch} |
| max sequence length, packing | {t.get("maxSeqLength")}, {t.get("packing")} |
| optimizer steps, epochs | {m.get("steps")}, {m.get("epochs")} |
| precision | {m.get("precision")} |
| seed | {t.get("seed")} |

## Evaluation

On the held-out records (loss per trained token; perplexity = exp(loss)):

| metric | value |
| --- | --- |
{rows}
{_answers(gate.get("suites") or [])}
{verdict}

![loss curve](loss.svg)

## Limitations

{_paragraph(written.get("limitations"))}{inherited}

## Ethical considerations

{written.get("ethicalConsiderations") or _UNWRITTEN_ETHICS}
"""


_UNWRITTEN_USE = (
    "Answering in the style and with the knowledge of the training data below, on top of the same base "
    "model. "
    "It was not evaluated for anything else; treat answers outside that domain like the base model's. "
    "(The FineTuneJob's `adapter.modelCard.intendedUse` says more, when its author writes it.)"
)
_UNWRITTEN_ETHICS = (
    "Not written by the FineTuneJob's author (`adapter.modelCard.ethicalConsiderations`). Before serving, "
    "consider the privacy of the people in the training data, the harm a wrong answer can do, and who "
    "reviews "
    "the answers."
)


def _paragraph(text: str | None) -> str:
    return f"{text.strip()}\n\n" if text and text.strip() else ""


def _section(title: str, text: str | None) -> str:
    return f"\n## {title}\n\n{text.strip()}\n" if text and text.strip() else ""


def _cell(text: str, limit: int = 120) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def suites_table(suites: list[dict[str, Any]]) -> str:
    """The evaluation suites (as the manifest records them), base model against adapter: a Markdown table for
    the model card, the trainer's log and TensorBoard."""
    rows = [
        "| suite | scorer | questions | base model | adapter | gate |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for x in suites:
        n = x["records"]
        rows.append(
            f"| {x['name']} | {x['scorer']} | {n} | {x['baseCorrect']}/{n} ({x['baseAccuracy']:.0%}) | "
            f"{x['correct']}/{n} ({x['accuracy']:.0%}) | {_verdict(x)} |"
        )
    return "\n".join(rows)


def _verdict(suite: dict[str, Any]) -> str:
    thresholds = [f"{k} {suite[k]}" for k in ("minAccuracy", "minGain") if k in suite]
    if not thresholds:
        return "recorded (no threshold)"
    return f"{'passed' if suite['passed'] else 'FAILED'} ({', '.join(thresholds)})"


def _answers(suites: list[dict[str, Any]]) -> str:
    """The evaluation by answers: accuracy per suite, base against adapter, with right and wrong examples."""
    if not suites:
        return ""
    out = [
        "",
        "Answers, greedy, base model against adapter (every answer: `answers-<suite>.jsonl` in this folder):",
        "",
        suites_table(suites),
    ]
    for x in suites:
        for kind in ("right", "wrong"):
            examples = (x.get("examples") or {}).get(kind) or []
            if not examples:
                continue
            out += [
                "",
                f"Suite {x['name']}, answered {kind}:",
                "",
                "| question | expected | adapter | base model |",
            ]
            out.append("| --- | --- | --- | --- |")
            out += [
                "| " + " | ".join(_cell(e[k]) for k in ("question", "expected", "adapter", "base")) + " |"
                for e in examples
            ]
    return "\n".join(out) + "\n"
