"""The reconcile loop both kinds share: a work queue keyed by object.

kopf's raw-event handlers (the only kind loraforge uses, so that kopf keeps no
per-object state on objects) are not retried by kopf, and a
``kopf.TemporaryError`` raised from one does nothing. So the handlers only
*enqueue* a key and return; this loop does the rest, as controller-runtime's
work queue does for Go operators:

- **coalescing**: at most one reconcile per key runs at a time; events that
  arrive meanwhile mark the key dirty, and the key goes round once more from
  the freshest indexes ``REPASS_SECONDS`` after the pass ended, without holding
  a worker meanwhile: the echoes of a pass's writes (an apply echoes back as
  several events, a FineTuneJob's six children as six and more) arrive spread
  over that time and are taken in one pass, and keys never reconciled get the
  workers first (bench/README.md: a burst of 200 FineTuneJobs);
- **bounded concurrency**: at most ``workers`` keys reconcile at once, so a
  burst (1,000 objects at start-up) queues here instead of piling thousands of
  requests onto the API server and the client's connection pool;
- **backoff**: a reconcile that raises is retried after 0.5 s, 1 s, 2 s, ... up
  to 60 s; a success resets it;
- **one timer per key**: a reconcile may ask to be run again after a delay (a
  rollout's deadline, a smoke-test suite to read again); a key has at most one
  pending timer, and the earliest wins. An event in the meantime reconciles at
  once (the timer stays, harmless: a reconcile with nothing to do writes
  nothing).

``enqueue`` never waits, so an event of one kind can enqueue the other kind's
reconciles (a FineTuneJob that published enqueues the ModelDeployments of its
namespace) without waiting for them, smoke tests included.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from . import metrics

log = logging.getLogger(__name__)

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 60.0
DEFAULT_WORKERS = 32
# After a pass during which events arrived, the key's next pass starts this much later.
REPASS_SECONDS = 0.2

# One pass over one key. It returns None, or seconds after which to reconcile the key again.
Reconcile = Callable[[Hashable], Awaitable[float | None]]


@dataclass
class Loop:
    kind: str
    reconcile: Reconcile
    workers: int = DEFAULT_WORKERS
    running: dict[Hashable, asyncio.Task] = field(default_factory=dict)
    dirty: set[Hashable] = field(default_factory=set)
    backoff: dict[Hashable, float] = field(default_factory=dict)
    timers: dict[Hashable, tuple[float, asyncio.TimerHandle]] = field(default_factory=dict)
    # Keys whose next pass is due REPASS_SECONDS after their last one: events meanwhile wait for it.
    repass: dict[Hashable, asyncio.TimerHandle] = field(default_factory=dict)
    _slots: asyncio.Semaphore | None = None

    def enqueue(self, key: Hashable) -> None:
        """Reconcile ``key`` soon; never waits. A key already running goes round once more."""
        if key in self.running:
            self.dirty.add(key)
            return
        if key in self.repass:
            return  # a pass is due shortly; it reads the freshest indexes
        task = asyncio.get_running_loop().create_task(self._run(key), name=f"reconcile {self.kind} {key}")
        self.running[key] = task

    def after(self, key: Hashable, delay: float) -> None:
        """Reconcile ``key`` again in ``delay`` seconds (one timer per key: the earliest wins)."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        pending = self.timers.get(key)
        if pending is not None:
            if pending[0] <= due:
                return
            pending[1].cancel()
        self.timers[key] = (due, loop.call_at(due, self._fire, key))

    def forget(self, key: Hashable) -> None:
        """The object is gone: no retry, no timer. A reconcile that runs now finishes on its own."""
        self.backoff.pop(key, None)
        self.dirty.discard(key)
        pending = self.timers.pop(key, None)
        if pending is not None:
            pending[1].cancel()
        repass = self.repass.pop(key, None)
        if repass is not None:
            repass.cancel()

    async def close(self) -> None:
        """Cancel what runs and what is pending (at shutdown)."""
        for handle in [*(h for _, h in self.timers.values()), *self.repass.values()]:
            handle.cancel()
        self.timers.clear()
        self.repass.clear()
        tasks = list(self.running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no reconcile runs or is due to go round again (tests)."""
        while self.running or self.repass:
            if self.running:
                await asyncio.gather(*list(self.running.values()), return_exceptions=True)
            else:
                await asyncio.sleep(REPASS_SECONDS / 4)

    def _fire(self, key: Hashable) -> None:
        self.timers.pop(key, None)
        self.enqueue(key)

    async def _run(self, key: Hashable) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.workers)
        try:
            async with self._slots:
                self.dirty.discard(key)
                self._once_done(key, await self._once(key))
        finally:
            self.running.pop(key, None)
        if key in self.dirty:
            self.dirty.discard(key)
            self.repass[key] = asyncio.get_running_loop().call_later(REPASS_SECONDS, self._repass, key)

    def _repass(self, key: Hashable) -> None:
        self.repass.pop(key, None)
        self.enqueue(key)

    async def _once(self, key: Hashable) -> float | BaseException | None:
        started = time.monotonic()
        try:
            return await self.reconcile(key)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # every failure is retried; the log says which
            return e
        finally:
            metrics.RECONCILE_SECONDS.labels(kind=self.kind).observe(time.monotonic() - started)

    def _once_done(self, key: Hashable, outcome: float | BaseException | None) -> None:
        if isinstance(outcome, BaseException):
            metrics.RECONCILES.labels(kind=self.kind, result="error").inc()
            delay = min(self.backoff.get(key, BACKOFF_FIRST_SECONDS / 2) * 2, BACKOFF_MAX_SECONDS)
            self.backoff[key] = delay
            log.warning(
                "reconcile of %s %s failed (%s: %s); retrying in %.1fs",
                self.kind,
                "/".join(map(str, key)) if isinstance(key, tuple) else key,
                type(outcome).__name__,
                outcome,
                delay,
            )
            self.after(key, delay)
            return
        metrics.RECONCILES.labels(kind=self.kind, result="ok").inc()
        self.backoff.pop(key, None)
        if outcome is not None:
            self.after(key, outcome)
