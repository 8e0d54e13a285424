"""One request budget shared by every worker, paced from the platform's own numbers.

Two meters, both passed by every HTTP attempt:

* the client's own budget (`manifest.rate_limit`), an `aiolimiter.AsyncLimiter`;
* the platform's fixed window, learnt from `X-RateLimit-Remaining` / `X-RateLimit-Reset`
  on every response (and the free `GET /rate_limit` at start). Requests in flight are
  counted against what remains, so the pool stops *before* the wall and waits for the
  reset instead of collecting 429s. Another client spending the same token's budget
  shows up in the headers and simply shortens what this one may use.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Mapping

import structlog
from aiolimiter import AsyncLimiter

from orchestrator.models import Clock, RateLimit, Sleep

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

PLATFORM_WINDOW_S = 300.0
"""The platform's documented rate-limit window (1000 requests per 5 minutes)."""

_RESET_MARGIN_S = 0.1
"""Reset is whole seconds, rounded up: a little past it the window has surely turned
(on an NTP-synced clock). Coming too early costs one 429 and a short wait, no more."""

_RESET_JITTER_S = 0.1
"""Spread of the wake-ups after a pause, so that workers do not all resume at once."""


def parse_reset(value: str | float | int | None) -> float | None:
    """`X-RateLimit-Reset` as Unix seconds; 13-digit values are milliseconds."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number / 1000.0 if number > 1e12 else number


class RateBudget:
    """The shared gate in front of every request (see the module docstring)."""

    def __init__(
        self,
        rate_limit: RateLimit,
        *,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._own = AsyncLimiter(rate_limit.requests, rate_limit.per_seconds)
        self._window_s = rate_limit.per_seconds
        # The platform documents a 5-minute window; our own budget may be shorter.
        self._max_wait_s = max(rate_limit.per_seconds, PLATFORM_WINDOW_S)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.limit: int | None = None
        self._available: int | None = None  # None: unknown, go until a header tells
        self._reset_at: float | None = None
        self._in_flight = 0
        self._skew_s = 0.0  # how far our clock runs ahead of the platform's
        self._reserve = 0  # requests left for another client seen spending our budget
        self.waits = 0

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered."""
        return self._in_flight

    def _roll_window(self) -> None:
        """Once the reset time has passed, the platform has restored the budget."""
        if self._reset_at is not None and self._clock() >= self._reset_at:
            self._reset_at = None
            self._available = None if self.limit is None else self.limit

    def _wait_s(self) -> float:
        self._roll_window()
        if self._available is None or self._available > self._reserve:
            return 0.0
        if self._reset_at is None:  # no window known: let one request find out
            return 0.0
        wait = self._reset_at - self._clock()
        if wait > self._max_wait_s:
            # A reset further away than one window means the clocks disagree: trust
            # one window at most, then let a request find out from the headers.
            self._reset_at = self._clock() + self._max_wait_s
            wait = self._max_wait_s
        return max(0.0, wait) + _RESET_MARGIN_S

    async def acquire(self) -> None:
        """Wait until both meters allow one more request, then count it in flight."""
        while (wait := self._wait_s()) > 0:
            self.waits += 1
            log.info(
                "rate_limit.pause",
                wait_s=round(wait, 2),
                remaining=self._available,
                in_flight=self._in_flight,
            )
            await self._sleep(wait + self._rng.uniform(0, _RESET_JITTER_S))
            self._roll_window()
        await self._own.acquire()
        if self._available is not None:
            self._available -= 1
        self._in_flight += 1

    def release(self, headers: Mapping[str, str] | None) -> None:
        """One request is answered; learn the window from its headers, if any."""
        self._in_flight -= 1
        if headers is not None:
            self.observe(headers)

    def observe(self, headers: Mapping[str, str]) -> None:
        """Update the window from `X-RateLimit-*` headers (or the /rate_limit body)."""
        limit = headers.get("X-RateLimit-Limit")
        remaining = headers.get("X-RateLimit-Remaining")
        reset_at = parse_reset(headers.get("X-RateLimit-Reset"))
        if limit is not None and limit.isdigit():
            self.limit = int(limit)
        if remaining is None or not remaining.lstrip("-").isdigit() or reset_at is None:
            return
        reset_at += self._skew_s  # the platform's reset, on our clock
        # Other requests of ours are in flight: the platform will count them too.
        estimate = int(remaining) - self._in_flight
        new_window = self._reset_at is None or reset_at > self._reset_at + 1
        if new_window or self._available is None:
            self._available = estimate
            self._reserve //= 2
        else:
            # Less left than our own requests explain: another client spends the
            # same budget. Keep that much in reserve, so its next request and our
            # last one do not both land on the wall.
            drift = self._available - estimate - self._in_flight
            if drift > 0 and self.limit:
                self._reserve = min(max(self._reserve, drift), self.limit // 10)
            self._available = min(self._available, estimate)
        self._reset_at = reset_at if new_window else max(self._reset_at or 0, reset_at)

    def exhausted(self, reset_at: float | None) -> None:
        """A 429 arrived: nothing remains until `reset_at`."""
        self._available = 0
        now = self._clock()
        if reset_at is not None and reset_at <= now:
            # The platform says the window turned, our clock says it has passed:
            # the clocks disagree. Learn by how much instead of resending at once.
            self._skew_s = max(self._skew_s, now - reset_at + 1.0)
        if reset_at is not None:
            self._reset_at = reset_at + self._skew_s
        elif self._reset_at is None:
            self._reset_at = self._clock() + self._window_s

    def seconds_until_reset(self) -> float:
        """How long until the current window ends (0 if unknown)."""
        if self._reset_at is None:
            return 0.0
        return max(0.0, self._reset_at - self._clock())

    @property
    def remaining(self) -> int | None:
        """Requests this client believes it may still send in the current window."""
        self._roll_window()
        return self._available
