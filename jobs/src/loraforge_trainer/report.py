"""The trainer's end of the progress channel (the operator's end is
loraforge_operator.finetunejob.contract).

The trainer merge-patches one ConfigMap, ``<FineTuneJob>-progress``, with its
progress, its result and, on failure, the reason. Its ServiceAccount may touch
that one object and nothing else. Only the standard library is used: the
channel must work before (and without) any ML dependency importing, and in an
air-gapped cluster the API server is the only endpoint it needs.

Progress reports are best effort (a lost one is superseded by the next); the
result is retried until it is stored or the attempts run out, and then raises.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import ssl
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
# The container's terminationMessagePath; LORAFORGE_TERMINATION_LOG moves it (tests, runs outside a pod).
TERMINATION_LOG = Path("/dev/termination-log")
FIELD_MANAGER = "loraforge-trainer"

PROGRESS_KEY = "progress.json"
RESULT_KEY = "result.json"
FAILURE_KEY = "failure.json"


class ReportError(RuntimeError):
    """The API server did not take a report after every retry."""


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProgressReporter:
    server: str  # https://host:port
    namespace: str
    config_map: str
    token: str
    ca_file: str | None = None
    timeout: float = 10.0
    attempts: int = 5

    def __post_init__(self) -> None:
        if not self.server.startswith("https://"):
            raise ValueError(f"the API server must be reached over https, got {self.server!r}")

    @classmethod
    def in_cluster(cls) -> ProgressReporter:
        """From the pod's environment: the ServiceAccount token and CA, and
        LORAFORGE_PROGRESS_CONFIGMAP / LORAFORGE_NAMESPACE set by the operator."""
        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if ":" in host:  # IPv6
            host = f"[{host}]"
        return cls(
            server=f"https://{host}:{port}",
            namespace=os.environ.get("LORAFORGE_NAMESPACE")
            or (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip(),
            config_map=os.environ["LORAFORGE_PROGRESS_CONFIGMAP"],
            token=(SERVICE_ACCOUNT_DIR / "token").read_text().strip(),
            ca_file=str(SERVICE_ACCOUNT_DIR / "ca.crt"),
        )

    # --- what the trainer reports ----------------------------------------------

    def progress(
        self,
        step: int,
        total_steps: int | None = None,
        epoch: float | None = None,
        loss: float | None = None,
        eval_loss: float | None = None,
        learning_rate: float | None = None,
        tokens_per_second: float | None = None,
    ) -> bool:
        """Best effort: returns False (and logs) instead of raising."""
        doc = {
            "step": step,
            "totalSteps": total_steps,
            "epoch": epoch,
            "loss": loss,
            "evalLoss": eval_loss,
            "learningRate": learning_rate,
            "tokensPerSecond": round(tokens_per_second, 1) if tokens_per_second else None,
            "time": _now(),
        }
        try:
            self._patch({PROGRESS_KEY: {k: v for k, v in doc.items() if v is not None}}, attempts=2)
        except ReportError as e:
            log.warning("progress report lost: %s", e)
            return False
        return True

    def result(
        self,
        adapter: dict[str, str],
        metrics: dict[str, float],
        evaluation_passed: bool,
        suites: list[dict[str, Any]] = (),
        explanation: str = "",
    ) -> None:
        """The published adapter revision. Raises ReportError if it cannot be stored."""
        doc: dict[str, Any] = {"adapter": adapter, "metrics": metrics, "evaluationPassed": evaluation_passed}
        if suites:
            doc["suites"] = list(suites)
        if explanation:
            doc["explanation"] = explanation
        self._patch({RESULT_KEY: doc}, attempts=self.attempts)

    def failure(self, reason: str, message: str) -> None:
        """Why training failed (CamelCase reason). Also written to the
        termination message, which needs no API access at all."""
        write_termination_message(reason, message)
        try:
            self._patch({FAILURE_KEY: {"reason": reason, "message": message}}, attempts=self.attempts)
        except ReportError as e:
            log.error("failure report lost (the termination message still has it): %s", e)

    # --- transport ---------------------------------------------------------------

    def _patch(self, documents: dict[str, dict[str, Any]], attempts: int) -> None:
        body = json.dumps({"data": {k: json.dumps(v, sort_keys=True) for k, v in documents.items()}}).encode()
        url = (
            f"{self.server}/api/v1/namespaces/{self.namespace}/configmaps/{self.config_map}"
            f"?fieldManager={FIELD_MANAGER}"
        )
        context = ssl.create_default_context(cafile=self.ca_file) if self.ca_file else None
        delay = 0.5
        last = ""
        for attempt in range(1, attempts + 1):
            request = urllib.request.Request(  # noqa: S310 - https only, checked in __post_init__
                url,
                data=body,
                method="PATCH",
                headers={
                    "Authorization": f"Bearer {self.token}",
                    "Content-Type": "application/merge-patch+json",
                    "Accept": "application/json",
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout, context=context) as resp:  # noqa: S310
                    resp.read()
                return
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}"
                if e.code not in (409, 429) and e.code < 500:
                    raise ReportError(last) from None  # 401/403/404 will not heal by retrying
                retry_after = e.headers.get("Retry-After")
                if retry_after and retry_after.isdigit():
                    delay = max(delay, float(retry_after))
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            if attempt < attempts:
                time.sleep(delay)
                delay = min(delay * 2, 30.0)
        raise ReportError(f"gave up after {attempts} attempts: {last}")


def write_termination_message(reason: str, message: str, path: Path | None = None) -> None:
    """`<Reason>: <message>` in the container's termination message (at most 4 KiB)."""
    path = path or Path(os.environ.get("LORAFORGE_TERMINATION_LOG") or TERMINATION_LOG)
    try:
        path.write_text(f"{reason}: {message}"[:4000])
    except OSError as e:  # not in a container, or no termination log
        log.debug("no termination message written: %s", e)
