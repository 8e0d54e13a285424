"""After the clones: poll the new tasks (bulk reads only) and abort them on request."""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from orchestrator.client import BULK_LIMIT, ApiClient, Json
from orchestrator.errors import ApiError, ApiStatusError, error_record
from orchestrator.ledger import Event, Ledger, SourceRow
from orchestrator.models import ABORTABLE_STATUSES, Clock, Sleep, TaskId, TaskStatus
from orchestrator.policy import Retrier

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

POLL_BUDGET_SHARE = 0.5
"""Polling may use at most this share of the platform's rate limit."""


@dataclass(frozen=True, slots=True, kw_only=True)
class FollowSummary:
    """Where the new tasks stand after `status` / `--wait`."""

    counts: dict[str, int]
    polls: int
    requests: int
    timed_out: bool
    interrupted: bool


def _status_fields(task: Json) -> dict[str, object]:
    execution = task.get("execution_status")
    message = execution.get("message") if isinstance(execution, dict) else None
    return {
        "status": task.get("status"),
        "start_time": task.get("start_time"),
        "end_time": task.get("end_time"),
        "price": task.get("price"),
        "message": message,
    }


def followed_rows(ledger: Ledger) -> list[SourceRow]:
    """Rows whose new task may still change."""
    return [
        row
        for row in ledger.state.rows.values()
        if row.new_task_id is not None and not row.terminal
    ]


async def refresh(ledger: Ledger, client: ApiClient, retrier: Retrier) -> int:
    """Read the non-terminal new tasks, 100 per call; record changes; return calls."""
    rows = followed_rows(ledger)
    calls = 0
    for start in range(0, len(rows), BULK_LIMIT):
        chunk = rows[start : start + BULK_LIMIT]
        ids = [TaskId(str(row.new_task_id)) for row in chunk]
        results = await retrier.read(functools.partial(client.bulk_get, ids))
        calls += 1
        for row, result in zip(chunk, results, strict=True):
            if isinstance(result, ApiStatusError):
                log.warning(
                    "status.unreadable", new_task_id=row.new_task_id, error=str(result)
                )
                continue
            fields = _status_fields(result)
            if (
                fields["status"] != row.platform_status
                or fields["end_time"] != row.end_time
            ):
                ledger.record(
                    Event.STATUS,
                    row.source_task_id,
                    new_task_id=row.new_task_id,
                    **fields,
                )
    return calls


def poll_interval(
    pending: int, *, poll_s: float, limit: int | None, window_s: float
) -> float:
    """Seconds between polls: the manifest's interval, stretched so that polling
    `pending` tasks never takes more than half of the rate limit."""
    calls = math.ceil(pending / BULK_LIMIT)
    if not limit or not calls:
        return poll_s
    floor = calls * window_s / (POLL_BUDGET_SHARE * limit)
    return max(poll_s, floor)


async def _pause(seconds: float, stop: asyncio.Event, sleep: Sleep) -> None:
    """Sleep, but wake at once when a stop is asked for."""
    sleeper = asyncio.ensure_future(sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (sleeper, stopper):
            future.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)


async def follow(
    ledger: Ledger,
    client: ApiClient,
    retrier: Retrier,
    *,
    wait: bool,
    poll_s: float,
    timeout_s: float,
    window_s: float,
    stop: asyncio.Event,
    sleep: Sleep = asyncio.sleep,
    clock: Clock = time.monotonic,
    on_poll: Callable[[int, int, Counter[str]], None] | None = None,
) -> FollowSummary:
    """Refresh statuses once, or with `wait` until all are terminal or time is up."""
    deadline = clock() + timeout_s
    polls = calls = 0
    timed_out = False
    while True:
        calls += await refresh(ledger, client, retrier)
        polls += 1
        counts = Counter(row.status for row in ledger.state.rows.values())
        pending = sum(  # a DRAFT (refused run, or action: draft) never moves alone
            1 for r in followed_rows(ledger) if r.platform_status != TaskStatus.DRAFT
        )
        if on_poll is not None:
            followed = sum(1 for r in ledger.state.rows.values() if r.new_task_id)
            on_poll(followed - pending, followed, counts)
        tally = {k.lower(): v for k, v in counts.items()}
        log.debug("wait.poll", pending=pending, **tally)
        if not wait or pending == 0 or stop.is_set():
            break
        if clock() >= deadline:
            timed_out = True
            log.warning("wait.timeout", pending=pending)
            break
        interval = poll_interval(
            pending, poll_s=poll_s, limit=client.budget.limit, window_s=window_s
        )
        await _pause(min(interval, max(0.0, deadline - clock())), stop, sleep)
    return FollowSummary(
        counts=dict(Counter(row.status for row in ledger.state.rows.values())),
        polls=polls,
        requests=calls,
        timed_out=timed_out,
        interrupted=stop.is_set(),
    )


async def abort_all(
    ledger: Ledger, client: ApiClient, retrier: Retrier
) -> tuple[int, int]:
    """Abort the new tasks still QUEUED/RUNNING (statuses refreshed first).

    Returns (aborted, failed).
    """
    await refresh(ledger, client, retrier)
    aborted = failed = 0
    for row in list(ledger.state.rows.values()):
        if row.new_task_id is None or row.platform_status not in ABORTABLE_STATUSES:
            continue
        new_id = TaskId(row.new_task_id)
        try:
            task = await retrier.read(functools.partial(client.abort_task, new_id))
        except ApiError as error:
            failed += 1
            ledger.record(
                Event.ABORT_FAILED,
                row.source_task_id,
                new_task_id=new_id,
                error=error_record(error),
            )
            continue
        aborted += 1
        ledger.record(
            Event.ABORTED,
            row.source_task_id,
            new_task_id=new_id,
            **_status_fields(task),
        )
    return aborted, failed
