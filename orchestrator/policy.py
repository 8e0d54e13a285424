"""When and how long to wait before sending a request again.

One pure decision, `classify(error, write=...)`, tested as a table, and one `Retrier`
that applies it with an injected sleep, clock and random source:

* 429: wait until `X-RateLimit-Reset` and resend; not a failed attempt (not processed).
* 503 code 0 (maintenance): wait minutes, with a visible message; not a failed attempt,
  but bounded by `maintenance_max_s`.
* other 5xx and transport faults: exponential backoff with jitter under an attempt cap;
  for a *write* whose request may have reached the platform the outcome is uncertain,
  so the caller must reconcile before resending (`Verdict.RECONCILE`).
* 401/403: stop the run (exit 3). Other 4xx: no retry; the source records the error.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from orchestrator.errors import (
    ApiError,
    AuthError,
    Maintenance,
    RateLimited,
    ServerError,
    TransportError,
)
from orchestrator.models import Clock, Sleep
from orchestrator.pacing import RateBudget

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

T = TypeVar("T")


class Verdict(enum.Enum):
    """What to do after a failed request."""

    GIVE_UP = "give_up"  # 4xx: the request itself is refused
    FATAL = "fatal"  # 401/403: the token cannot do this; stop the whole run
    AT_RESET = "at_reset"  # 429: resend after the window resets
    MAINTENANCE = "maintenance"  # 503 code 0: resend after a long pause
    BACKOFF = "backoff"  # transient and safe to resend after a backoff
    RECONCILE = "reconcile"  # a write may have happened: look before resending


def classify(error: ApiError, *, write: bool) -> Verdict:
    """Decide what a failed request calls for. Pure; total over the error tree."""
    if isinstance(error, RateLimited):
        return Verdict.AT_RESET
    if isinstance(error, Maintenance):
        return Verdict.MAINTENANCE
    if isinstance(error, AuthError):
        return Verdict.FATAL
    if isinstance(error, ServerError):
        return Verdict.RECONCILE if write else Verdict.BACKOFF
    if isinstance(error, TransportError):
        return Verdict.RECONCILE if (write and error.sent) else Verdict.BACKOFF
    return Verdict.GIVE_UP


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Caps and waits for transient faults; defaults suit 1000 requests per 5 min."""

    attempts: int = 6
    wait_initial_s: float = 1.0
    wait_max_s: float = 60.0
    jitter_s: float = 1.0
    base: float = 2.0
    maintenance_wait_s: float = 60.0
    maintenance_max_s: float = 2 * 3600.0
    rate_limit_max_waits: int = 100


def backoff(policy: RetryPolicy, failures: int, rng: random.Random) -> float:
    """Seconds before the next try after `failures` (>= 1) transient faults."""
    try:
        exp = policy.wait_initial_s * policy.base ** (failures - 1)
    except OverflowError:  # absurd attempt caps: the cap applies anyway
        exp = policy.wait_max_s
    return min(policy.wait_max_s, exp + rng.uniform(0, policy.jitter_s))


@dataclass(slots=True)
class RetryState:
    """Counts for one logical request (a clone, a page read) across its tries."""

    failures: int = 0
    rate_limit_waits: int = 0
    maintenance_s: float = 0.0


class Retrier:
    """Applies `classify` with injected time: waits, or re-raises when it must stop."""

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        budget: RateBudget | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.policy = policy
        self._budget = budget
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self.retries = 0

    async def pause(self, error: ApiError, verdict: Verdict, state: RetryState) -> None:
        """Wait as `verdict` asks, or re-raise `error` once a cap is reached."""
        if verdict in (Verdict.GIVE_UP, Verdict.FATAL):
            raise error
        if verdict is Verdict.AT_RESET:
            state.rate_limit_waits += 1
            if state.rate_limit_waits > self.policy.rate_limit_max_waits:
                raise error
            reset_at = error.reset_at if isinstance(error, RateLimited) else None
            if self._budget is not None:
                # The shared gate holds every worker until the reset.
                self._budget.exhausted(reset_at)
                return
            wait = max(1.0, (reset_at or self._clock()) - self._clock())
        elif verdict is Verdict.MAINTENANCE:
            wait = self.policy.maintenance_wait_s
            state.maintenance_s += wait
            if state.maintenance_s > self.policy.maintenance_max_s:
                raise error
            log.warning(
                "api.maintenance",
                message="the platform is under maintenance; waiting",
                wait_s=wait,
            )
        else:
            state.failures += 1
            if state.failures >= self.policy.attempts:
                raise error
            wait = backoff(self.policy, state.failures, self._rng)
        self.retries += 1
        log.info(
            "request.retry_scheduled",
            attempt=state.failures + 1,
            wait_s=round(wait, 3),
            verdict=verdict.value,
            caused_by=str(error),
        )
        await self._sleep(wait)

    async def read(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent request (GET, bulk read, list page) until it succeeds."""
        state = RetryState()
        while True:
            try:
                return await call()
            except ApiError as error:
                await self.pause(error, classify(error, write=False), state)
