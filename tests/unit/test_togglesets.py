"""kopf's start-up barrier (togglesets.py): waiters wake when the set's state changes, not once per toggle."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from loraforge_operator import togglesets


def test_it_installs_against_the_kopf_in_use_once() -> None:
    assert togglesets.install() and togglesets.install()
    assert getattr(aiotoggles.ToggleSet.make_toggle, "__loraforge__", False)


def test_the_barrier_releases_every_waiter_once_when_the_last_toggle_goes() -> None:
    assert togglesets.install()

    async def scenario() -> tuple[int, list[bool], int]:
        barrier = aiotoggles.ToggleSet(all)  # kopf's operator_indexed
        notified = 0
        notify_all = barrier._condition.notify_all

        def counting() -> None:
            nonlocal notified
            notified += 1
            notify_all()

        barrier._condition.notify_all = counting  # type: ignore[method-assign]
        toggles = [await barrier.make_toggle(name=f"object {i}") for i in range(200)]
        waiters = [asyncio.create_task(barrier.wait_for(True)) for _ in range(50)]
        await asyncio.sleep(0)
        for t in toggles[:-1]:
            await barrier.drop_toggle(t)
        await asyncio.sleep(0)
        early = [w.done() for w in waiters]
        await barrier.drop_toggles(toggles[-1:])
        await asyncio.wait_for(asyncio.gather(*waiters), 5)
        return notified, early, len(barrier)

    notified, early, left = asyncio.run(scenario())
    assert not any(early)  # the barrier holds while one object is not indexed
    assert left == 0
    # kopf notified 400 times (each make and drop) and woke each waiter on every drop; now: when it
    # closed (the first toggle) and when it opened (the last).
    assert notified == 2


def test_a_toggle_turned_by_itself_still_wakes_the_sets_waiters() -> None:
    """kopf's peering pauses the operator by turning toggles of an ``any`` set on and off."""
    assert togglesets.install()

    async def scenario() -> bool:
        paused = aiotoggles.ToggleSet(any)  # kopf's operator_paused
        toggle = await paused.make_toggle(name="peering")
        await toggle.turn_to(True)
        resumed = asyncio.create_task(paused.wait_for(False))
        await asyncio.sleep(0)
        assert not resumed.done()
        await toggle.turn_to(False)
        await asyncio.wait_for(resumed, 5)
        return paused.is_on()

    assert asyncio.run(scenario()) is False
