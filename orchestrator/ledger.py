"""The ledger: an append-only JSON Lines record of every step, and its folded state.

Each line is one event, written whole and flushed before the step that depends on it
(the clone intent before its POST), so a `kill -9` at any moment leaves a ledger that
says exactly what was done: a line is either complete or it is a torn tail, which the
reader ignores and the next writer trims. One process at a time may append (an
exclusive `flock`, released by the kernel even on kill -9).

Every line: `v` (schema 1), `ts` (RFC 3339 UTC), `run_id`, `event`, `source_task_id`
(null for run-level events). The fields per event are listed in `Event` and the README.
"""

from __future__ import annotations

import enum
import fcntl
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import structlog

from orchestrator.errors import LedgerError, LedgerLockedError
from orchestrator.models import TERMINAL_STATUSES, Clock, TaskStatus

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

_Folder = Callable[["SourceRow", dict[str, object]], None]

SCHEMA_VERSION = 1
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
"""One encoder for every line: building one per call costs more than encoding."""
_FSYNC_INTERVAL_S = 1.0


class Event(enum.StrEnum):
    """Ledger event names (the `event` field) and what each adds."""

    RUN_STARTED = "run_started"  # command, manifest, endpoint, sources
    PLANNED = "planned"  # label, name, app, project, source_status, steps
    SKIPPED = "skipped"  # reason
    CLONE_INTENT = "clone_intent"  # attempt, run (bool): written before the POST
    CLONED = "cloned"  # new_task_id, status, via (response|reconciled), task_errors
    CLONE_UNCERTAIN = "clone_uncertain"  # error: the POST may or may not have happened
    RECONCILED = "reconciled"  # new_task_id or null: what the platform showed
    CLONE_FAILED = "clone_failed"  # error, request_id
    PATCHED = "patched"  # new_task_id, fields
    STARTED = "started"  # new_task_id, status
    RUN_FAILED = "run_failed"  # new_task_id, error: the draft is left to inspect
    STATUS = "status"  # new_task_id, status, start_time, end_time, price, message
    ABORTED = "aborted"  # new_task_id, status
    ABORT_FAILED = "abort_failed"  # new_task_id, error
    INTERRUPTED = "interrupted"  # the step in flight when the run was stopped
    RUN_FINISHED = "run_finished"  # counts


class Phase(enum.StrEnum):
    """Where a source stands, folded from its events."""

    PLANNED = "planned"
    SKIPPED = "skipped"
    INTENT = "intent"  # a clone POST was (maybe) sent; its outcome is not recorded
    CLONE_FAILED = "clone_failed"
    CLONED = "cloned"  # a new task exists; patch/run may still be due
    PATCHED = "patched"
    STARTED = "started"
    RUN_FAILED = "run_failed"


@dataclass(slots=True)
class SourceRow:
    """Everything the ledger knows about one source task."""

    source_task_id: str
    label: str | None = None
    name: str | None = None
    phase: Phase = Phase.PLANNED
    steps: tuple[str, ...] = ()
    new_task_id: str | None = None
    platform_status: str | None = None
    attempts: int = 0
    error: dict[str, object] | None = None
    skip_reason: str | None = None
    intent_at: float | None = None
    updated: str = ""
    start_time: str | None = None
    end_time: str | None = None
    price: object = None
    message: str | None = None
    via: str | None = None
    overrides: dict[str, object] | None = None

    @property
    def status(self) -> str:
        """The report's status: the new task's, or SKIPPED/CLONE_FAILED/...."""
        if self.phase is Phase.SKIPPED:
            return "SKIPPED"
        if self.phase is Phase.CLONE_FAILED:
            return "CLONE_FAILED"
        if self.phase is Phase.INTENT:
            return "UNCERTAIN"
        if self.new_task_id is None:
            return "PENDING"
        return self.platform_status or "UNKNOWN"

    @property
    def terminal(self) -> bool:
        """The new task will not change again."""
        return self.platform_status in TERMINAL_STATUSES

    @property
    def rerun_failed(self) -> bool:
        """The rerun did not complete: clone or run refused, or task FAILED/ABORTED."""
        if self.phase in (Phase.CLONE_FAILED, Phase.RUN_FAILED):
            return True
        return self.platform_status in (TaskStatus.FAILED, TaskStatus.ABORTED)

    @property
    def steps_left(self) -> tuple[str, ...]:
        """Patch/run steps still due on an existing clone (resume after a stop)."""
        if self.new_task_id is None or self.phase in (Phase.STARTED, Phase.RUN_FAILED):
            return ()
        done = {"clone"}
        if self.phase is Phase.PATCHED:
            done.add("patch")
        if self.platform_status not in (None, TaskStatus.DRAFT):
            return ()  # it runs already (e.g. started by hand): nothing is due
        return tuple(s for s in self.steps if s not in done and s != "clone_run")

    def as_report(self) -> dict[str, object]:
        """One object of `report --format json` (CONTRACT.md)."""
        return {
            "source_task_id": self.source_task_id,
            "label": self.label,
            "name": self.name,
            "new_task_id": self.new_task_id,
            "status": self.status,
            "attempts": self.attempts,
            "error": self.error,
            "skip_reason": self.skip_reason,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "duration_s": _duration_s(self.start_time, self.end_time),
            "price": self.price,
            "updated": self.updated,
        }


def _duration_s(start: str | None, end: str | None) -> float | None:
    """Seconds between two platform timestamps, when both are known."""
    if not start or not end:
        return None
    try:
        began = datetime.fromisoformat(start.replace("Z", "+00:00"))
        ended = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((ended - began).total_seconds(), 1)


@dataclass(slots=True)
class LedgerState:
    """The fold of a ledger: one row per source, in first-seen order."""

    rows: dict[str, SourceRow] = field(default_factory=dict)
    attributed: dict[str, str] = field(default_factory=dict)  # new task -> source
    runs: int = 0
    lines: int = 0
    run_info: dict[str, object] = field(default_factory=dict)  # the last run_started

    def row(self, source_task_id: str) -> SourceRow:
        """The row for a source, created on first sight."""
        found = self.rows.get(source_task_id)
        if found is None:
            found = self.rows[source_task_id] = SourceRow(source_task_id)
        return found

    def apply(self, entry: dict[str, object]) -> None:
        """Fold one ledger line into the state."""
        self.lines += 1
        event = entry.get("event")
        source = entry.get("source_task_id")
        if event == Event.RUN_STARTED:
            self.runs += 1
            self.run_info = entry
        if not isinstance(source, str):
            return
        row = self.row(source)
        row.updated = str(entry.get("ts", row.updated))
        new_id = entry.get("new_task_id")
        if isinstance(new_id, str):
            row.new_task_id = new_id
            self.attributed[new_id] = source
        status = entry.get("status")
        if isinstance(status, str):
            row.platform_status = status
        _FOLDERS.get(str(event), _fold_nothing)(row, entry)


def _fold_nothing(row: SourceRow, entry: dict[str, object]) -> None:
    del row, entry


def _fold_planned(row: SourceRow, entry: dict[str, object]) -> None:
    label, name, steps = entry.get("label"), entry.get("name"), entry.get("steps")
    row.label = label if isinstance(label, str) else row.label
    row.name = name if isinstance(name, str) else row.name
    if isinstance(steps, list):
        row.steps = tuple(str(s) for s in steps)
    overrides = entry.get("overrides")
    if isinstance(overrides, dict):
        row.overrides = overrides
    if row.phase is Phase.SKIPPED:
        row.phase, row.skip_reason = Phase.PLANNED, None


def _fold_skipped(row: SourceRow, entry: dict[str, object]) -> None:
    if row.new_task_id is None:
        row.phase = Phase.SKIPPED
        row.skip_reason = str(entry.get("reason", ""))


def _fold_intent(row: SourceRow, entry: dict[str, object]) -> None:
    row.phase = Phase.INTENT
    row.new_task_id = None
    row.platform_status = None
    row.error = None
    row.start_time = row.end_time = None
    row.price = None
    attempt = entry.get("attempt")
    row.attempts = attempt if isinstance(attempt, int) else row.attempts + 1
    at = entry.get("at")
    row.intent_at = float(at) if isinstance(at, int | float) else None


def _fold_cloned(row: SourceRow, entry: dict[str, object]) -> None:
    row.phase = Phase.CLONED
    row.via = str(entry.get("via", "response"))
    task_errors = entry.get("task_errors")
    if task_errors:
        row.phase = Phase.RUN_FAILED
        row.error = {"status": None, "code": 7024, "message": str(task_errors)}


def _fold_reconciled(row: SourceRow, entry: dict[str, object]) -> None:
    if entry.get("new_task_id") is None:
        row.phase = Phase.PLANNED  # nothing was created: safe to send again
    elif row.phase is Phase.INTENT:
        row.phase, row.via = Phase.CLONED, "reconciled"  # even if CLONED is torn off


def _fold_error(phase: Phase) -> _Folder:
    def fold(row: SourceRow, entry: dict[str, object]) -> None:
        row.phase = phase
        error = entry.get("error")
        row.error = error if isinstance(error, dict) else None

    return fold


def _fold_patched(row: SourceRow, entry: dict[str, object]) -> None:
    del entry
    row.phase = Phase.PATCHED


def _fold_started(row: SourceRow, entry: dict[str, object]) -> None:
    del entry
    row.phase = Phase.STARTED
    row.error = None


def _fold_status(row: SourceRow, entry: dict[str, object]) -> None:
    for key in ("start_time", "end_time", "message"):
        value = entry.get(key)
        if isinstance(value, str):
            setattr(row, key, value)
    if entry.get("price") is not None:
        row.price = entry["price"]
    if row.platform_status not in (None, TaskStatus.DRAFT) and row.phase in (
        Phase.CLONED,
        Phase.PATCHED,
    ):
        row.phase = Phase.STARTED


_FOLDERS: dict[str, _Folder] = {
    Event.PLANNED: _fold_planned,
    Event.SKIPPED: _fold_skipped,
    Event.CLONE_INTENT: _fold_intent,
    Event.CLONED: _fold_cloned,
    Event.RECONCILED: _fold_reconciled,
    Event.CLONE_FAILED: _fold_error(Phase.CLONE_FAILED),
    Event.PATCHED: _fold_patched,
    Event.STARTED: _fold_started,
    Event.RUN_FAILED: _fold_error(Phase.RUN_FAILED),
    Event.STATUS: _fold_status,
    Event.ABORTED: _fold_status,
}


def iter_entries(path: Path) -> Iterator[dict[str, object]]:
    """Stream a ledger's events. A torn last line is skipped; other bad lines raise."""
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return
    except OSError as exc:
        raise LedgerError(f"{path}: cannot read ({exc.strerror})") from exc
    with handle:
        for number, raw in enumerate(handle, start=1):
            if raw.endswith(b"\n"):
                yield _parse_line(path, number, raw)
                continue
            # Only the last line can lack its newline: a crash mid-write tore it.
            try:
                entry = _parse_line(path, number, raw)
            except LedgerError:
                log.warning("ledger.torn_line", path=str(path), line=number)
                return
            yield entry


def _parse_line(path: Path, number: int, raw: bytes) -> dict[str, object]:
    try:
        entry = json.loads(raw)
    except ValueError as exc:
        raise LedgerError(f"{path}:{number}: not a JSON line") from exc
    if not isinstance(entry, dict) or "event" not in entry:
        raise LedgerError(f"{path}:{number}: not a ledger event")
    return entry


def read_ledger(path: Path) -> LedgerState:
    """Fold a whole ledger (streaming: memory grows with sources, not lines)."""
    state = LedgerState()
    for entry in iter_entries(path):
        state.apply(entry)
    return state


def new_run_id(clock: Clock = time.time) -> str:
    """A sortable, unique run ID such as 20261203T154001Z-a1b2c3."""
    stamp = datetime.fromtimestamp(clock(), UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(3)}"


def rfc3339(epoch: float) -> str:
    """Unix seconds as RFC 3339 UTC with milliseconds."""
    text = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


class Ledger:
    """The one writer of a ledger file; holds its lock while open."""

    def __init__(
        self, path: Path, *, run_id: str | None = None, clock: Clock = time.time
    ) -> None:
        self.path = path
        self._clock = clock
        self.run_id = run_id or new_run_id(clock)
        self.state = LedgerState()
        self._handle: IO[bytes] | None = None
        self._last_fsync = 0.0

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Lock the file, fold what it holds and trim a torn tail left by a crash."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = self.path.open("a+b")
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot open ({exc.strerror})") from exc
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            handle.close()
            raise LedgerLockedError(
                f"{self.path} is in use by another cgc-rerun process; wait for it to "
                "finish (or stop it) before starting another run on this ledger"
            ) from exc
        self._handle = handle
        try:
            self._trim_torn_tail()
            self.state = read_ledger(self.path)
        except BaseException:
            self.close()
            raise

    def _trim_torn_tail(self) -> None:
        assert self._handle is not None  # noqa: S101 - only called from open()
        size = self._handle.seek(0, os.SEEK_END)
        if size == 0:
            return
        self._handle.seek(size - 1)
        if self._handle.read(1) == b"\n":
            return
        keep, end = 0, size
        while end > 0:
            start = max(0, end - 65536)
            self._handle.seek(start)
            cut = self._handle.read(end - start).rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        log.warning("ledger.torn_line_trimmed", path=str(self.path), bytes=size - keep)
        self._handle.truncate(keep)

    def record(
        self, event: Event, source_task_id: str | None, **fields: object
    ) -> None:
        """Append one event, flushed before returning (synchronous on purpose)."""
        self.defer(event, source_task_id, **fields)
        self.flush()

    def defer(self, event: Event, source_task_id: str | None, **fields: object) -> None:
        """Append one event without flushing: only for lines no request depends on
        (the plan, written before the first request); `flush()` writes them out."""
        if self._handle is None:
            raise LedgerError(f"{self.path}: ledger is not open")
        now = self._clock()
        entry: dict[str, object] = {
            "v": SCHEMA_VERSION,
            "ts": rfc3339(now),
            "run_id": self.run_id,
            "event": str(event),
            "source_task_id": source_task_id,
        }
        entry.update(fields)
        line = _ENCODER.encode(entry) + "\n"
        try:
            self._handle.write(line.encode("utf-8"))
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot append ({exc.strerror})") from exc
        self.state.apply(entry)

    def flush(self) -> None:
        """Hand what was written to the OS (it survives a kill -9); fsync at most once
        a second (it survives a machine crash too)."""
        if self._handle is None:
            return
        now = self._clock()
        try:
            self._handle.flush()
            if now - self._last_fsync >= _FSYNC_INTERVAL_S:
                os.fsync(self._handle.fileno())
                self._last_fsync = now
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot append ({exc.strerror})") from exc

    def close(self) -> None:
        """fsync, unlock and close."""
        if self._handle is None:
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        finally:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
