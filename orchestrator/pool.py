"""The worker pool: clone (patch, run) every planned source under one shared budget.

A bounded queue feeds a TaskGroup of `concurrency` workers. Every step is recorded in
the ledger, the intent before its POST. Per-source failures are recorded and the run
goes on; a token the platform refuses (401, or 403 on every source) stops it early. A
set `stop` event lets in-flight requests settle and starts no new step, so the ledger
says exactly where each source stands and the next run resumes from there.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog
from structlog.contextvars import bound_contextvars

from orchestrator.client import ApiClient, Json
from orchestrator.errors import ApiError, AuthError, error_record
from orchestrator.ledger import Event, Ledger
from orchestrator.models import Clock, Overrides, TaskId, TaskStatus
from orchestrator.planner import Disposition, Plan, PlannedSource
from orchestrator.policy import Retrier, RetryState, Verdict, classify
from orchestrator.reconcile import Reconciler

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_FORBIDDEN_STREAK_IS_FATAL = 3
"""This many 403s in a row with no success in between: the token lost its rights."""


class Outcome(enum.StrEnum):
    """How one source ended in this run."""

    CLONED = "cloned"  # a new task exists and every step succeeded
    FAILED = "failed"  # a step was refused or gave up; recorded with its error
    SKIPPED = "skipped"  # a guard refused it
    DONE = "done"  # the ledger already had its rerun
    INTERRUPTED = "interrupted"  # stopped before it finished; resumable


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSummary:
    """What a run did, for the final report and the exit code."""

    outcomes: dict[str, int]
    adopted: int
    requests: int
    retries: int
    rate_limit_pauses: int
    elapsed_s: float
    interrupted: bool
    fatal: str | None = None

    @property
    def failed(self) -> int:
        """Sources that failed in this run."""
        return self.outcomes.get(Outcome.FAILED, 0)


ProgressCallback = Callable[[int, int, Counter[str]], None]


def _no_progress(done: int, total: int, counts: Counter[str]) -> None:
    del done, total, counts


def patch_body(source: Json, overrides: Overrides) -> dict[str, object]:
    """The PATCH that applies overrides to a fresh clone of `source`.

    Maps are sent merged with the source's own values, so the result is the same
    whether the platform merges or replaces them.
    """
    body: dict[str, object] = {}
    if overrides.name_suffix:
        body["name"] = f"{source.get('name', '')}{overrides.name_suffix}"
    if overrides.inputs:
        inputs = source.get("inputs")
        merged_inputs = dict(inputs) if isinstance(inputs, dict) else {}
        merged_inputs.update(overrides.inputs)
        body["inputs"] = merged_inputs
    if overrides.execution_settings:
        settings = source.get("execution_settings")
        merged = {**(settings if isinstance(settings, dict) else {})}
        merged.update(overrides.execution_settings)
        body["execution_settings"] = merged
    if overrides.use_interruptible_instances is not None:
        body["use_interruptible_instances"] = overrides.use_interruptible_instances
    return body


class _Fatal(Exception):
    """The token cannot do this at all: stop every worker."""


class _Stopped(Exception):
    """A stop was asked for between two tries; the source is left resumable."""


@dataclass(slots=True)
class _Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    done: int = 0
    forbidden_streak: int = 0


class Pool:
    """Runs a plan. One instance per run; see `runner.run_manifest`."""

    def __init__(
        self,
        *,
        client: ApiClient,
        ledger: Ledger,
        retrier: Retrier,
        reconciler: Reconciler,
        stop: asyncio.Event,
        progress: ProgressCallback | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._retrier = retrier
        self._reconciler = reconciler
        self._stop = stop
        self._progress = progress or _no_progress
        self._clock = clock
        self._tally = _Tally()
        self._fatal: ApiError | None = None
        self._alike: dict[str, asyncio.Lock] = {}

    def _alike_lock(self, task: Json) -> asyncio.Lock:
        """One clone or reconciliation at a time among sources no clone tells apart."""
        key = json.dumps(
            [task.get(k) for k in ("project", "name", "app", "inputs")],
            sort_keys=True,
        )
        return self._alike.setdefault(key, asyncio.Lock())

    async def run(self, plan: Plan, *, concurrency: int) -> RunSummary:
        """Process every planned source with `concurrency` workers."""
        started = time.monotonic()
        work = self._record_plan(plan)
        total = len(plan.items)
        self._progress(self._tally.done, total, self._tally.outcomes)
        queue: asyncio.Queue[PlannedSource | None] = asyncio.Queue(
            maxsize=2 * concurrency
        )
        workers = max(1, min(concurrency, len(work)))
        async with asyncio.TaskGroup() as group:
            for number in range(workers):
                group.create_task(self._worker(queue, total), name=f"worker-{number}")
            for item in work:
                if self._stop.is_set():
                    break
                await queue.put(item)
            for _ in range(workers):
                await queue.put(None)
        not_started = total - self._tally.done
        if not_started:
            self._tally.outcomes[Outcome.INTERRUPTED] += not_started
        return RunSummary(
            outcomes=dict(self._tally.outcomes),
            adopted=self._reconciler.adopted,
            requests=self._client.requests_sent,
            retries=self._retrier.retries,
            rate_limit_pauses=self._client.budget.waits,
            elapsed_s=time.monotonic() - started,
            interrupted=self._stop.is_set() and self._fatal is None,
            fatal=None if self._fatal is None else str(self._fatal),
        )

    def _record_plan(self, plan: Plan) -> list[PlannedSource]:
        """Record every source's plan; return the ones that need requests."""
        work: list[PlannedSource] = []
        for item in plan.items:
            source = item.source
            task = source.task or {}
            if item.disposition is Disposition.SKIP:
                self._ledger.defer(
                    Event.SKIPPED,
                    source.id,
                    reason=item.reason,
                    label=source.label,
                )
                self._finish(Outcome.SKIPPED)
            elif item.disposition is Disposition.UNREADABLE:
                error = source.read_error
                self._ledger.defer(
                    Event.CLONE_FAILED,
                    source.id,
                    label=source.label,
                    error=None if error is None else error.as_record(),
                    stage="read",
                )
                self._finish(Outcome.FAILED)
            elif item.disposition is Disposition.DONE:
                self._finish(Outcome.DONE)
            else:
                self._ledger.defer(
                    Event.PLANNED,
                    source.id,
                    label=source.label,
                    name=task.get("name"),
                    app=task.get("app"),
                    project=task.get("project"),
                    source_status=task.get("status"),
                    steps=list(steps_of(item)),
                    overrides=source.overrides.as_dict() or None,
                )
                work.append(item)
        self._ledger.flush()
        return work

    def _finish(self, outcome: Outcome, total: int | None = None) -> None:
        self._tally.outcomes[outcome] += 1
        self._tally.done += 1
        if total is not None:
            self._progress(self._tally.done, total, self._tally.outcomes)

    async def _worker(
        self, queue: asyncio.Queue[PlannedSource | None], total: int
    ) -> None:
        while (item := await queue.get()) is not None:
            if self._stop.is_set():
                continue  # drain the queue without starting anything new
            with bound_contextvars(source_task_id=item.source.id):
                outcome = await self._process(item)
            self._finish(outcome, total)
            log.debug("source.finished", outcome=str(outcome))

    async def _process(self, item: PlannedSource) -> Outcome:
        source_id = item.source.id
        try:
            async with self._alike_lock(item.source.task or {}):
                outcome = await self._steps(item)
        except asyncio.CancelledError:
            self._ledger.record(Event.INTERRUPTED, source_id)
            raise
        except (_Fatal, _Stopped):
            return Outcome.INTERRUPTED
        except ApiError as error:
            # A read around a step (reconcile, resume) gave up: record it and go on;
            # the row keeps its phase, so an uncertain clone is reconciled next run.
            self._ledger.record(Event.INTERRUPTED, source_id, error=error_record(error))
            log.warning("source.failed", error=str(error))
            if isinstance(error, AuthError) and error.status == 401:
                self._halt(error)
                return Outcome.INTERRUPTED
            return Outcome.FAILED
        if outcome is Outcome.CLONED:
            self._tally.forbidden_streak = 0
        return outcome

    def _halt(self, error: ApiError) -> None:
        """The token itself is refused: stop the whole run (exit 3)."""
        self._fatal = error
        self._stop.set()

    async def _steps(self, item: PlannedSource) -> Outcome:
        source = item.source
        task = source.task or {}
        new_task: Json | None = None
        row = item.ledger_row
        if item.disposition is Disposition.RESUME and row is not None:
            new_task = await self._current(item, TaskId(str(row.new_task_id)))
            if new_task.get("status") != TaskStatus.DRAFT:
                return Outcome.CLONED  # a stopped run's last step went through
        if item.disposition is Disposition.RECONCILE:
            since = (
                row.intent_at if row and row.intent_at is not None else self._clock()
            )
            new_task = await self._reconciler.adopt(source.id, task, since)
            if new_task is not None and new_task.get("errors"):
                return Outcome.FAILED
        for step in item.steps:
            if self._stop.is_set():
                return Outcome.INTERRUPTED
            if step in ("clone", "clone_run"):
                if new_task is not None:
                    continue  # adopted by reconciliation
                new_task = await self._clone(item, run=step == "clone_run")
                if new_task is None:
                    return Outcome.FAILED
                if new_task.get("errors"):
                    return Outcome.FAILED
            elif new_task is not None:
                new_id = TaskId(str(new_task["id"]))
                step_call = self._patch if step == "patch" else self._run
                if not await step_call(item, new_id):
                    return Outcome.FAILED
        return Outcome.CLONED

    # -- steps ------------------------------------------------------------------------

    def _fail(
        self, event: Event, item: PlannedSource, error: ApiError, **extra: object
    ) -> None:
        """Record a refused step; a token-wide refusal stops the run."""
        self._ledger.record(
            event,
            item.source.id,
            error=error_record(error),
            request_id=getattr(error, "request_id", None),
            **extra,
        )
        log.warning("source.failed", step=str(event), error=str(error))
        if isinstance(error, AuthError):
            self._tally.forbidden_streak += 1
            fatal = (
                error.status == 401
                or self._tally.forbidden_streak >= _FORBIDDEN_STREAK_IS_FATAL
            )
            if fatal:
                self._halt(error)
                raise _Fatal from error

    async def _clone(self, item: PlannedSource, *, run: bool) -> Json | None:
        """POST clone; on an uncertain outcome reconcile before any resend."""
        source = item.source
        state = RetryState()
        attempt = item.ledger_row.attempts if item.ledger_row else 0
        while True:
            attempt += 1
            intent_at = self._clock()
            self._ledger.record(
                Event.CLONE_INTENT, source.id, attempt=attempt, run=run, at=intent_at
            )
            try:
                task = await self._client.clone_task(source.id, run=run)
            except ApiError as error:
                verdict = classify(error, write=True)
                if verdict in (Verdict.GIVE_UP, Verdict.FATAL):
                    self._fail(Event.CLONE_FAILED, item, error)
                    return None
                uncertain = verdict is Verdict.RECONCILE
                if uncertain:
                    self._ledger.record(
                        Event.CLONE_UNCERTAIN, source.id, error=error_record(error)
                    )
                # An uncertain clone backs off *before* it looks: a backend that
                # finishes the clone just after our timeout would be missed, and the
                # resend would duplicate it. It looks even when attempts are used up.
                try:
                    await self._retrier.pause(
                        error, Verdict.BACKOFF if uncertain else verdict, state
                    )
                    exhausted = False
                except ApiError:
                    exhausted = True
                if uncertain:
                    found = await self._reconciler.adopt(
                        source.id, source.task or {}, intent_at
                    )
                    if found is not None:
                        return found
                if exhausted:
                    self._fail(Event.CLONE_FAILED, item, error)
                    return None
                if self._stop.is_set():
                    if not uncertain:  # (adopt recorded it for an uncertain one)
                        # The last POST was not applied (429, 503): say so.
                        self._ledger.record(
                            Event.RECONCILED, source.id, new_task_id=None
                        )
                    raise _Stopped from error
                continue
            errors = task.get("errors") or None
            self._ledger.record(
                Event.CLONED,
                source.id,
                new_task_id=task.get("id"),
                status=task.get("status"),
                via="response",
                task_errors=errors if run else None,
            )
            return task

    async def _current(self, item: PlannedSource, new_id: TaskId) -> Json:
        """Read a clone a stopped run left behind; record it if it has moved on."""
        task = await self._retrier.read(
            functools.partial(self._client.get_task, new_id)
        )
        status = task.get("status")
        if status != TaskStatus.DRAFT:
            self._ledger.record(
                Event.STARTED, item.source.id, new_task_id=new_id, status=status
            )
        return task

    async def _idempotent(
        self,
        item: PlannedSource,
        event: Event,
        call: Callable[[], Awaitable[Json]],
        *,
        check: Callable[[], Awaitable[bool]] | None = None,
    ) -> Json | None:
        """Send a write that may be resent (PATCH), or checked first (run)."""
        state = RetryState()
        while True:
            try:
                return await call()
            except ApiError as error:
                verdict = classify(error, write=check is not None)
                if verdict is Verdict.RECONCILE:
                    if check is not None and await self._retrier.read(check):
                        return {}
                    verdict = Verdict.BACKOFF
                try:
                    await self._retrier.pause(error, verdict, state)
                except ApiError:
                    self._fail(event, item, error)
                    return None

    async def _patch(self, item: PlannedSource, new_id: TaskId) -> bool:
        body = patch_body(item.source.task or {}, item.source.overrides)
        if not body:
            return True
        done = await self._idempotent(
            item,
            Event.RUN_FAILED,
            lambda: self._client.patch_task(new_id, body),
        )
        if done is None:
            return False
        self._ledger.record(
            Event.PATCHED, item.source.id, new_task_id=new_id, fields=sorted(body)
        )
        return True

    async def _run(self, item: PlannedSource, new_id: TaskId) -> bool:
        async def started_already() -> bool:
            task = await self._client.get_task(new_id)
            return task.get("status") != TaskStatus.DRAFT

        task = await self._idempotent(
            item,
            Event.RUN_FAILED,
            lambda: self._client.run_task(new_id),
            check=started_already,
        )
        if task is None:
            return False
        self._ledger.record(
            Event.STARTED,
            item.source.id,
            new_task_id=new_id,
            status=task.get("status", TaskStatus.QUEUED),
        )
        return True


def steps_of(item: PlannedSource) -> tuple[str, ...]:
    """The steps recorded with a source's plan."""
    if item.ledger_row is not None and item.disposition is Disposition.RESUME:
        return item.ledger_row.steps
    return item.steps
