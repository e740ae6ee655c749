"""kopf's start-up barrier without waking every waiter once per object.

At start-up kopf holds every reconcile until each object it lists is indexed: one
toggle per object in a set, and each object's worker waits on the set's
condition until no toggle is left. kopf notifies all waiters whenever a toggle
is made or dropped, even when the set's state (every toggle on, or not) stays
the same, and each woken waiter checks the set again. With N objects listed
that is about N * N wake-ups: an operator restarted with 1,400 FineTuneJobs and
their children present had not reconciled a new FineTuneJob after 400 s at 100%
of a core; with this, 17 s (bench/README.md).

A waiter waits for the set's state, and a make or drop that leaves that state
as it was cannot satisfy any of them, so this notifies only when it changes.
The waiters that do wake are the same ones, at the same moment, as before. A
single toggle turned on or off notifies through the shared condition as it did
(kopf's peering uses that), so nothing else changes.

kopf has no public hook for this: like watchgap.py, ``install()`` replaces the
three methods of ``kopf._cogs.aiokits.aiotoggles.ToggleSet`` only where they
look as expected, and otherwise warns and leaves kopf as it is. A unit test pins
that it installs against the kopf in use.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

_METHODS = ("make_toggle", "drop_toggle", "drop_toggles")


_Toggle: Any = None  # kopf's Toggle class, set by install()


def _notify_if_changed(self: Any, before: bool) -> None:
    """Wake the set's waiters only if its state is no longer ``before`` (called holding its condition)."""
    if self.is_on() != before:
        self._condition.notify_all()


async def _make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
    toggle = _Toggle(__val, name=name, condition=self._condition)
    async with self._condition:
        before = self.is_on()
        self._toggles.add(toggle)
        _notify_if_changed(self, before)
    return toggle


async def _drop_toggle(self: Any, toggle: Any) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.discard(toggle)
        _notify_if_changed(self, before)


async def _drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
    async with self._condition:
        before = self.is_on()
        self._toggles.difference_update(toggles)
        _notify_if_changed(self, before)


def install() -> bool:
    """Replace ToggleSet's make/drop methods once; False (with a warning) where this kopf differs."""
    global _Toggle
    try:
        from kopf._cogs.aiokits import aiotoggles
    except ImportError:
        aiotoggles = None
    toggle_set = getattr(aiotoggles, "ToggleSet", None)
    toggle = getattr(aiotoggles, "Toggle", None)
    probe = None
    if toggle_set is not None:
        try:
            probe = toggle_set(all)
        except TypeError:
            probe = None
    if (
        toggle is None
        or probe is None
        or not all(hasattr(toggle_set, m) for m in (*_METHODS, "is_on"))
        or not hasattr(probe, "_condition")
        or not isinstance(getattr(probe, "_toggles", None), set)
    ):
        log.warning(
            "this kopf version's toggle sets differ from the ones loraforge patches: a start-up with "
            "many objects wakes every waiting worker once per object"
        )
        return False
    if getattr(toggle_set.make_toggle, "__loraforge__", False):
        return True
    _Toggle = toggle
    for name, fn in zip(_METHODS, (_make_toggle, _drop_toggle, _drop_toggles), strict=True):
        fn.__loraforge__ = True  # type: ignore[attr-defined]
        setattr(toggle_set, name, fn)
    return True
