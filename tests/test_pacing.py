"""RateBudget: pacing from X-RateLimit-* headers, with a fake clock and fake sleep.

The fake sleep advances the fake clock, so "waiting until the reset" costs no real
time. The client's own aiolimiter budget is set to 10**6 requests so that it never
binds: these tests are about the platform's window, learnt from the headers. That
window (`per_seconds`) is 300 s, the platform's, except where a test says otherwise,
because a reset more than one window away is treated as clock skew.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from orchestrator import pacing
from orchestrator.models import RateLimit
from orchestrator.pacing import RateBudget, parse_reset
from tests.conftest import START as T0
from tests.conftest import FakeTime

MARGIN = pacing._RESET_MARGIN_S
JITTER_MAX = pacing._RESET_JITTER_S
SEED = 3


def make_budget(time: FakeTime, *, window_s: float = 300) -> RateBudget:
    return RateBudget(
        RateLimit(requests=10**6, per_seconds=window_s),
        clock=time,
        sleep=time.sleep,
        rng=random.Random(SEED),
    )


def headers(remaining: int, reset: float | str, limit: int = 1000) -> dict[str, str]:
    reset_text = reset if isinstance(reset, str) else str(int(reset))
    return {
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": reset_text,
    }


def first_jitter() -> float:
    return random.Random(SEED).uniform(0, JITTER_MAX)


class TestParseReset:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("1800000060", 1_800_000_060.0),
            ("1800000060000", 1_800_000_060.0),
            ("1800000060500", 1_800_000_060.5),
            (1_800_000_060, 1_800_000_060.0),
            (1_800_000_060_000, 1_800_000_060.0),
            (None, None),
            ("", None),
            ("soon", None),
        ],
    )
    def test_values(self, value: str | int | None, expected: float | None) -> None:
        """Reset is Unix seconds; 13-digit values are ms; junk is None."""
        assert parse_reset(value) == expected


class TestObserve:
    def test_headers_are_learnt(self) -> None:
        """Limit, Remaining and Reset set the window this client believes in."""
        time = FakeTime()
        budget = make_budget(time)
        unknown = budget.remaining
        assert unknown is None
        budget.observe(headers(remaining=997, reset=T0 + 120, limit=1000))
        assert budget.limit == 1000
        assert budget.remaining == 997
        assert budget.seconds_until_reset() == 120

    def test_millisecond_reset(self) -> None:
        """A 13-digit (ms) X-RateLimit-Reset is read as seconds."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=5, reset=str(int((T0 + 90) * 1000))))
        assert budget.seconds_until_reset() == 90

    @pytest.mark.parametrize(
        "bad",
        [
            {"X-RateLimit-Remaining": "5"},
            {"X-RateLimit-Remaining": "many", "X-RateLimit-Reset": str(int(T0 + 60))},
            {"X-RateLimit-Remaining": "5", "X-RateLimit-Reset": "later"},
            {},
        ],
    )
    def test_incomplete_headers_are_ignored(self, bad: dict[str, str]) -> None:
        """Without a usable Remaining and Reset the budget stays unknown."""
        budget = make_budget(FakeTime())
        budget.observe(bad)
        assert budget.remaining is None
        assert budget.seconds_until_reset() == 0

    async def test_another_client_spending_shrinks_what_remains(self) -> None:
        """A lower Remaining in a later header of the same window wins."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=100, reset=T0 + 60))
        await budget.acquire()
        assert budget.remaining == 99
        budget.release(headers(remaining=40, reset=T0 + 60))
        assert budget.remaining == 40

    async def test_stale_higher_remaining_does_not_grow_the_budget(self) -> None:
        """A late answer with a higher Remaining in the same window is not trusted."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=40, reset=T0 + 60))
        budget.observe(headers(remaining=90, reset=T0 + 60))
        assert budget.remaining == 40

    def test_new_window_replaces_the_estimate(self) -> None:
        """A later reset (a new window) replaces what remains."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=3, reset=T0 + 10))
        budget.observe(headers(remaining=999, reset=T0 + 310))
        assert budget.remaining == 999
        assert budget.seconds_until_reset() == 310

    async def test_in_flight_requests_count_against_remaining(self) -> None:
        """Remaining from a header is reduced by the requests still in flight."""
        time = FakeTime()
        budget = make_budget(time)
        for _ in range(3):
            await budget.acquire()
        assert budget.in_flight == 3
        budget.release(headers(remaining=5, reset=T0 + 60))
        assert budget.in_flight == 2
        assert budget.remaining == 3


class TestAcquire:
    async def test_no_pause_while_budget_remains(self) -> None:
        """Requests go out at once while the window has budget."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=3, reset=T0 + 60))
        for _ in range(3):
            await budget.acquire()
        assert time.sleeps == []
        assert budget.remaining == 0
        assert budget.waits == 0

    async def test_pauses_until_reset_then_resumes(self) -> None:
        """At zero remaining the next request waits for the reset, then goes on."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=2, reset=T0 + 60, limit=10))
        await budget.acquire()
        await budget.acquire()
        assert time.sleeps == []
        await budget.acquire()
        assert time.sleeps == [60 + MARGIN + first_jitter()]
        assert time.now >= T0 + 60
        assert budget.waits == 1
        assert budget.remaining == 9  # the new window's limit, minus this request
        await budget.acquire()
        assert len(time.sleeps) == 1

    async def test_pauses_when_in_flight_use_up_remaining(self) -> None:
        """Remaining minus requests in flight reaching 0 is enough to pause."""
        time = FakeTime()
        budget = make_budget(time)
        for _ in range(4):
            await budget.acquire()
        budget.release(headers(remaining=3, reset=T0 + 30, limit=10))
        assert budget.remaining == 0
        await budget.acquire()
        assert time.sleeps == [30 + MARGIN + first_jitter()]
        assert time.now >= T0 + 30

    async def test_blocks_other_requests_until_reset(self) -> None:
        """While the window is spent, a waiting request does not go out early."""
        time = FakeTime()
        gate = asyncio.Event()
        sleeps: list[float] = []

        async def gated_sleep(delay: float) -> None:
            sleeps.append(delay)
            await gate.wait()
            time.now += delay

        budget = RateBudget(
            RateLimit(requests=10**6, per_seconds=300),
            clock=time,
            sleep=gated_sleep,
            rng=random.Random(SEED),
        )
        budget.observe(headers(remaining=0, reset=T0 + 60))
        waiter = asyncio.create_task(budget.acquire())
        await asyncio.sleep(0)
        assert not waiter.done()
        assert budget.in_flight == 0
        gate.set()
        await waiter
        assert budget.in_flight == 1
        assert sleeps == [60 + MARGIN + first_jitter()]

    async def test_millisecond_reset_pauses_the_same(self) -> None:
        """A ms reset gives the same pause as the same reset in seconds."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=0, reset=str(int((T0 + 45) * 1000))))
        await budget.acquire()
        assert time.sleeps == [45 + MARGIN + first_jitter()]

    async def test_reset_beyond_one_window_is_capped(self) -> None:
        """A reset further away than one window (clock skew) waits one window only."""
        time = FakeTime()
        budget = make_budget(time, window_s=300)
        budget.observe(headers(remaining=0, reset=T0 + 3600))
        await budget.acquire()
        assert time.sleeps[0] == 300 + MARGIN + first_jitter()
        assert time.now - T0 <= 300 + MARGIN + JITTER_MAX

    async def test_reset_in_the_past_rolls_the_window(self) -> None:
        """Once the reset has passed, the budget is the limit again, no pause."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=0, reset=T0 + 5, limit=10))
        time.now = T0 + 6
        await budget.acquire()
        assert time.sleeps == []
        assert budget.remaining == 9


class TestExhausted:
    async def test_blocks_until_reset(self) -> None:
        """After a 429, the next request waits until the 429's reset."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=500, reset=T0 + 200))
        budget.exhausted(T0 + 20)
        assert budget.remaining == 0
        await budget.acquire()
        assert time.sleeps == [20 + MARGIN + first_jitter()]
        assert time.now >= T0 + 20

    async def test_without_reset_waits_a_window(self) -> None:
        """A 429 with no reset and no known window waits one whole window."""
        time = FakeTime()
        budget = make_budget(time, window_s=300)
        budget.exhausted(None)
        assert budget.seconds_until_reset() == 300
        await budget.acquire()
        assert time.sleeps == [300 + MARGIN + first_jitter()]

    async def test_without_reset_keeps_known_window(self) -> None:
        """A 429 with no reset keeps the reset the headers already gave."""
        time = FakeTime()
        budget = make_budget(time)
        budget.observe(headers(remaining=10, reset=T0 + 15))
        budget.exhausted(None)
        assert budget.seconds_until_reset() == 15
        await budget.acquire()
        assert time.sleeps == [15 + MARGIN + first_jitter()]
