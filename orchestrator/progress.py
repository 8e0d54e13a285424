"""The live progress line (a terminal) or a periodic log line (anything else)."""

from __future__ import annotations

import sys
import time
from collections import Counter
from typing import TextIO

import structlog

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_LOG_EVERY_S = 10.0
_DRAW_EVERY_S = 0.1


class Progress:
    """Callable the pool and the poller report to: (done, total, counts)."""

    def __init__(
        self, *, what: str, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self._stream = stream or sys.stderr
        self._live = enabled and self._stream.isatty()
        self._enabled = enabled
        self._what = what
        self._started = time.monotonic()
        self._last = 0.0
        self._drawn = False

    def __call__(self, done: int, total: int, counts: Counter[str]) -> None:
        now = time.monotonic()
        final = done >= total
        elapsed = now - self._started
        if not self._enabled:
            return
        if self._live:
            if final or now - self._last >= _DRAW_EVERY_S:
                self._last = now
                self._draw(done, total, counts, elapsed)
            if final:
                self.close()  # what follows (logs, the next phase) starts afresh
        elif final or now - self._last >= _LOG_EVERY_S:
            self._last = now
            log.info(
                f"{self._what}.progress",
                done=done,
                total=total,
                elapsed_s=round(elapsed, 1),
                **{str(k): v for k, v in counts.items()},
            )

    def _draw(
        self, done: int, total: int, counts: Counter[str], elapsed: float
    ) -> None:
        width = 24
        filled = int(width * done / total) if total else width
        bar = "#" * filled + "." * (width - filled)
        rate = done / elapsed if elapsed > 0 else 0.0
        left = f", ~{(total - done) / rate:.0f}s left" if rate > 0 else ""
        tally = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        self._stream.write(
            f"\r{self._what} [{bar}] {done}/{total}  {tally}  "
            f"{elapsed:.0f}s elapsed{left}\x1b[K"
        )
        self._stream.flush()
        self._drawn = True

    def close(self) -> None:
        """End the live line so that what follows starts on a fresh one."""
        if self._drawn:
            self._stream.write("\n")
            self._stream.flush()
            self._drawn = False
