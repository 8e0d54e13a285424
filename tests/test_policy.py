"""Retry policy: the `classify` table, `backoff` bounds and `Retrier.read` timing.

Time is injected: a `RecordingSleep` records every delay instead of waiting, the
clock is a fake, and jitter comes from a seeded `random.Random`.
"""

from __future__ import annotations

import asyncio
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.errors import (
    ApiError,
    ApiStatusError,
    AuthError,
    BadRequest,
    Conflict,
    Maintenance,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
)
from orchestrator.models import RateLimit
from orchestrator.pacing import RateBudget
from orchestrator.policy import Retrier, RetryPolicy, Verdict, backoff, classify
from tests.conftest import START as T0
from tests.conftest import FakeTime


class RecordingSleep:
    """An injected sleep that records each delay and yields once to the loop."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(0)


Outcome = ApiError | str


class Script:
    """A request that fails or succeeds in a fixed order, counting its calls."""

    def __init__(self, *outcomes: Outcome) -> None:
        self._outcomes = list(outcomes)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        outcome = self._outcomes.pop(0)
        if isinstance(outcome, ApiError):
            raise outcome
        return outcome


def status_error(
    cls: type[ApiStatusError], status: int, code: int | None = None
) -> ApiStatusError:
    return cls(
        status=status, code=code, message=f"HTTP {status}", method="GET", path="/x"
    )


def rate_limited(reset_at: float | None = None) -> RateLimited:
    return RateLimited(status=429, code=1000, message="rate", reset_at=reset_at)


def maintenance() -> Maintenance:
    return Maintenance(status=503, code=0, message="maintenance")


def server_error(status: int = 500) -> ServerError:
    return ServerError(status=status, code=None, message="boom")


# (error, verdict for a read, verdict for a write)
CLASSIFY_TABLE: list[tuple[str, ApiError, Verdict, Verdict]] = [
    ("429", rate_limited(T0), Verdict.AT_RESET, Verdict.AT_RESET),
    ("503 code 0", maintenance(), Verdict.MAINTENANCE, Verdict.MAINTENANCE),
    ("500", server_error(500), Verdict.BACKOFF, Verdict.RECONCILE),
    ("502", server_error(502), Verdict.BACKOFF, Verdict.RECONCILE),
    ("503 other", server_error(503), Verdict.BACKOFF, Verdict.RECONCILE),
    ("401", status_error(AuthError, 401), Verdict.FATAL, Verdict.FATAL),
    ("403", status_error(AuthError, 403), Verdict.FATAL, Verdict.FATAL),
    ("404", status_error(NotFound, 404), Verdict.GIVE_UP, Verdict.GIVE_UP),
    ("409", status_error(Conflict, 409), Verdict.GIVE_UP, Verdict.GIVE_UP),
    ("400", status_error(BadRequest, 400), Verdict.GIVE_UP, Verdict.GIVE_UP),
    ("422", status_error(BadRequest, 422), Verdict.GIVE_UP, Verdict.GIVE_UP),
    (
        "transport sent",
        TransportError("reset", sent=True),
        Verdict.BACKOFF,
        Verdict.RECONCILE,
    ),
    (
        "transport not sent",
        TransportError("refused", sent=False),
        Verdict.BACKOFF,
        Verdict.BACKOFF,
    ),
    (
        "timeout sent",
        RequestTimeout("no answer", sent=True),
        Verdict.BACKOFF,
        Verdict.RECONCILE,
    ),
    (
        "timeout not sent",
        RequestTimeout("connect timeout", sent=False),
        Verdict.BACKOFF,
        Verdict.BACKOFF,
    ),
    ("bare ApiError", ApiError("odd"), Verdict.GIVE_UP, Verdict.GIVE_UP),
    (
        "bare ApiStatusError",
        status_error(ApiStatusError, 418),
        Verdict.GIVE_UP,
        Verdict.GIVE_UP,
    ),
]


class TestClassify:
    @pytest.mark.parametrize(
        ("error", "write", "expected"),
        [
            pytest.param(
                error, write, verdict, id=f"{name}-{'write' if write else 'read'}"
            )
            for name, error, on_read, on_write in CLASSIFY_TABLE
            for write, verdict in ((False, on_read), (True, on_write))
        ],
    )
    def test_table(self, error: ApiError, write: bool, expected: Verdict) -> None:
        """Every branch of the error tree maps to its verdict, for reads and writes."""
        assert classify(error, write=write) is expected

    @given(
        index=st.integers(min_value=0, max_value=len(CLASSIFY_TABLE) - 1),
        write=st.booleans(),
    )
    def test_total_and_reads_never_reconcile(self, index: int, write: bool) -> None:
        """classify always returns a Verdict, and only a write may need reconciling."""
        verdict = classify(CLASSIFY_TABLE[index][1], write=write)
        assert isinstance(verdict, Verdict)
        if not write:
            assert verdict is not Verdict.RECONCILE


policies = st.builds(
    RetryPolicy,
    wait_initial_s=st.floats(min_value=0, max_value=100),
    wait_max_s=st.floats(min_value=0, max_value=3600),
    jitter_s=st.floats(min_value=0, max_value=10),
    base=st.floats(min_value=1, max_value=4),
)


class TestBackoff:
    @given(
        policy=policies,
        failures=st.integers(min_value=1, max_value=10_000),
        seed=st.integers(min_value=0, max_value=2**32),
    )
    def test_within_bounds(self, policy: RetryPolicy, failures: int, seed: int) -> None:
        """Backoff is always within [0, wait_max_s], whatever the failure count."""
        wait = backoff(policy, failures, random.Random(seed))
        assert 0 <= wait <= policy.wait_max_s

    @given(policy=policies, failures=st.integers(min_value=1, max_value=200))
    def test_non_decreasing_without_jitter(
        self, policy: RetryPolicy, failures: int
    ) -> None:
        """With jitter_s=0, each further failure waits at least as long as the last."""
        policy = RetryPolicy(
            wait_initial_s=policy.wait_initial_s,
            wait_max_s=policy.wait_max_s,
            base=policy.base,
            jitter_s=0,
        )
        rng = random.Random(0)
        assert backoff(policy, failures, rng) <= backoff(policy, failures + 1, rng)

    def test_exponential_then_capped(self) -> None:
        """Without jitter the waits double from wait_initial_s up to wait_max_s."""
        policy = RetryPolicy(wait_initial_s=1, wait_max_s=10, jitter_s=0)
        rng = random.Random(0)
        waits = [backoff(policy, n, rng) for n in range(1, 7)]
        assert waits == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def retrier(
    policy: RetryPolicy,
    sleep: RecordingSleep,
    *,
    budget: RateBudget | None = None,
    clock: FakeTime | None = None,
    seed: int = 7,
) -> Retrier:
    return Retrier(
        policy,
        budget=budget,
        sleep=sleep,
        clock=clock or FakeTime(),
        rng=random.Random(seed),
    )


NO_JITTER = RetryPolicy(attempts=4, wait_initial_s=1, wait_max_s=60, jitter_s=0)


class TestRetrierRead:
    async def test_5xx_then_success_exact_delays(self) -> None:
        """Two 5xx then a success wait exactly the seeded backoff delays."""
        policy = RetryPolicy(attempts=6, wait_initial_s=1, wait_max_s=60, jitter_s=1)
        sleep = RecordingSleep()
        call = Script(server_error(500), server_error(502), "ok")
        result = await retrier(policy, sleep, seed=42).read(call)
        assert result == "ok"
        assert call.calls == 3
        twin = random.Random(42)
        expected = [1.0 + twin.uniform(0, 1), 2.0 + twin.uniform(0, 1)]
        assert sleep.delays == expected

    async def test_5xx_then_success_without_jitter(self) -> None:
        """With no jitter the delays are the plain exponential series."""
        sleep = RecordingSleep()
        call = Script(server_error(), server_error(), server_error(), "ok")
        subject = retrier(NO_JITTER, sleep)
        assert await subject.read(call) == "ok"
        assert sleep.delays == [1.0, 2.0, 4.0]
        assert subject.retries == 3

    async def test_gives_up_after_attempts(self) -> None:
        """After `attempts` transient failures the last error is raised."""
        sleep = RecordingSleep()
        last = server_error(504)
        call = Script(server_error(), TransportError("reset", sent=False), last, "ok")
        with pytest.raises(ServerError) as caught:
            await retrier(RetryPolicy(attempts=3, jitter_s=0), sleep).read(call)
        assert caught.value is last
        assert call.calls == 3
        assert sleep.delays == [1.0, 2.0]

    async def test_transport_errors_back_off_on_reads(self) -> None:
        """A read retries transport faults and timeouts, sent or not."""
        sleep = RecordingSleep()
        call = Script(
            TransportError("reset", sent=True),
            RequestTimeout("slow", sent=True),
            TransportError("refused", sent=False),
            "ok",
        )
        assert await retrier(NO_JITTER, sleep).read(call) == "ok"
        assert sleep.delays == [1.0, 2.0, 4.0]

    @pytest.mark.parametrize(
        "error",
        [
            status_error(BadRequest, 400),
            status_error(AuthError, 401),
            status_error(AuthError, 403),
            status_error(NotFound, 404),
            status_error(Conflict, 409),
            status_error(BadRequest, 422),
        ],
        ids=["400", "401", "403", "404", "409", "422"],
    )
    async def test_4xx_not_retried(self, error: ApiStatusError) -> None:
        """A 4xx other than 429 is raised at once, with no wait and no second call."""
        sleep = RecordingSleep()
        call = Script(error, "ok")
        with pytest.raises(type(error)) as caught:
            await retrier(NO_JITTER, sleep).read(call)
        assert caught.value is error
        assert call.calls == 1
        assert sleep.delays == []

    async def test_429_exhausts_the_shared_budget(self) -> None:
        """A 429 hands its reset to the budget, which gates the resend."""
        clock = FakeTime()
        budget = RateBudget(
            RateLimit(requests=10**6, per_seconds=300),
            clock=clock,
            sleep=clock.sleep,
            rng=random.Random(0),
        )
        reset_at = T0 + 60
        sent_at: list[float] = []
        outcomes: list[Outcome] = [rate_limited(reset_at), "ok"]

        async def call() -> str:
            await budget.acquire()
            sent_at.append(clock.now)
            try:
                outcome = outcomes.pop(0)
                if isinstance(outcome, ApiError):
                    raise outcome
                return outcome
            finally:
                budget.release(None)

        sleep = RecordingSleep()
        assert (
            await retrier(NO_JITTER, sleep, budget=budget, clock=clock).read(call)
            == "ok"
        )
        assert sleep.delays == []  # the Retrier itself did not sleep
        assert sent_at[0] == T0
        assert sent_at[1] >= reset_at  # the resend waited for the window to turn
        assert budget.waits == 1

    async def test_429_marks_budget_exhausted_until_reset(self) -> None:
        """After a 429 the budget believes nothing remains until the given reset."""
        clock = FakeTime()
        budget = RateBudget(
            RateLimit(requests=10**6, per_seconds=300), clock=clock, sleep=clock.sleep
        )
        call = Script(rate_limited(T0 + 42), "ok")
        await retrier(NO_JITTER, RecordingSleep(), budget=budget, clock=clock).read(
            call
        )
        assert budget.remaining == 0
        assert budget.seconds_until_reset() == 42

    async def test_429_is_not_a_failed_attempt(self) -> None:
        """429s between 5xx do not use up the attempt cap."""
        clock = FakeTime()
        budget = RateBudget(
            RateLimit(requests=10**6, per_seconds=300), clock=clock, sleep=clock.sleep
        )
        sleep = RecordingSleep()
        call = Script(
            server_error(),
            rate_limited(T0 + 1),
            rate_limited(T0 + 2),
            rate_limited(T0 + 3),
            "ok",
        )
        policy = RetryPolicy(attempts=2, jitter_s=0)
        result = await retrier(policy, sleep, budget=budget, clock=clock).read(call)
        assert result == "ok"
        assert sleep.delays == [1.0]

    async def test_429_without_budget_sleeps_until_reset(self) -> None:
        """With no shared budget the Retrier sleeps until the reset itself (>= 1 s)."""
        clock = FakeTime()
        sleep = RecordingSleep()
        call = Script(
            rate_limited(T0 + 30), rate_limited(T0 - 5), rate_limited(None), "ok"
        )
        assert await retrier(NO_JITTER, sleep, clock=clock).read(call) == "ok"
        assert sleep.delays == [30.0, 1.0, 1.0]

    async def test_429_gives_up_after_rate_limit_max_waits(self) -> None:
        """Endless 429s stop after rate_limit_max_waits waits."""
        sleep = RecordingSleep()
        call = Script(*(rate_limited(T0 + 10) for _ in range(4)), "ok")
        policy = RetryPolicy(rate_limit_max_waits=3, jitter_s=0)
        with pytest.raises(RateLimited):
            await retrier(policy, sleep).read(call)
        assert call.calls == 4
        assert sleep.delays == [10.0, 10.0, 10.0]

    async def test_maintenance_waits_then_succeeds(self) -> None:
        """A 503 code 0 waits maintenance_wait_s each time and does not use attempts."""
        sleep = RecordingSleep()
        call = Script(maintenance(), maintenance(), maintenance(), "ok")
        policy = RetryPolicy(
            attempts=1, maintenance_wait_s=60, maintenance_max_s=180, jitter_s=0
        )
        assert await retrier(policy, sleep).read(call) == "ok"
        assert sleep.delays == [60.0, 60.0, 60.0]

    async def test_maintenance_stops_after_max(self) -> None:
        """Maintenance longer than maintenance_max_s raises the 503."""
        sleep = RecordingSleep()
        last = maintenance()
        call = Script(maintenance(), maintenance(), maintenance(), last, "ok")
        policy = RetryPolicy(maintenance_wait_s=60, maintenance_max_s=180)
        with pytest.raises(Maintenance) as caught:
            await retrier(policy, sleep).read(call)
        assert caught.value is last
        assert call.calls == 4
        assert sleep.delays == [60.0, 60.0, 60.0]
