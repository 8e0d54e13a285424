"""The ledger: whole JSON lines, torn tails, the lock, and the fold into rows."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator.errors import LedgerError, LedgerLockedError
from orchestrator.ledger import (
    SCHEMA_VERSION,
    Event,
    Ledger,
    LedgerState,
    Phase,
    SourceRow,
    read_ledger,
)
from orchestrator.models import TaskStatus

T0 = 1_800_000_000.0
RUN_ID = "20270115T080000Z-abc123"
SRC = "08c5da64-1329-4a3e-b014-62a1617bc7db"
NEW = "5e1f0c7a-0000-4000-8000-000000000001"
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
REPO_ROOT = Path(__file__).resolve().parent.parent


class StepClock:
    """A fake clock that advances a fixed step on every read."""

    def __init__(self, start: float = T0, step: float = 0.25) -> None:
        self.now = start
        self.step = step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def ledger_at(path: Path) -> Ledger:
    """A writer with a fixed run ID and a fake clock; use it with `with`."""
    return Ledger(path, run_id=RUN_ID, clock=StepClock())


def fold(*entries: dict[str, object]) -> LedgerState:
    """Fold entries as `read_ledger` would, without a file."""
    state = LedgerState()
    for number, entry in enumerate(entries):
        state.apply({"ts": f"2027-01-15T08:00:{number:02d}.000Z", **entry})
    return state


def row_of(*entries: dict[str, object]) -> SourceRow:
    """The one row folded from events of the source SRC."""
    return fold(*({"source_task_id": SRC, **e} for e in entries)).rows[SRC]


def planned(steps: list[str]) -> dict[str, object]:
    return {"event": "planned", "label": "sample-1", "steps": steps}


def cloned(status: str = "DRAFT") -> dict[str, object]:
    return {"event": "cloned", "new_task_id": NEW, "status": status}


ERROR = {"status": 400, "code": 9000, "message": "bad input"}


class TestLines:
    def test_lines_are_whole_json_with_the_common_fields(self, tmp_path: Path) -> None:
        """Every line is one JSON object with v, ts, run_id, event, source_task_id."""
        path = tmp_path / "run.ledger.jsonl"
        with Ledger(path, run_id=RUN_ID, clock=StepClock()) as ledger:
            ledger.record(Event.RUN_STARTED, None, command="run")
            ledger.record(Event.PLANNED, SRC, label="naïve\nlabel", steps=["clone"])
            ledger.record(Event.CLONE_INTENT, SRC, attempt=1, run=True)
        raw = path.read_bytes()
        assert raw.endswith(b"\n")
        lines = raw.decode("utf-8").splitlines()
        assert len(lines) == 3
        entries = [json.loads(line) for line in lines]
        for entry in entries:
            assert entry["v"] == SCHEMA_VERSION
            assert RFC3339_UTC.match(entry["ts"])
            assert entry["run_id"] == RUN_ID
            assert "source_task_id" in entry
        assert [e["event"] for e in entries] == [
            "run_started",
            "planned",
            "clone_intent",
        ]
        assert entries[0]["source_task_id"] is None
        assert entries[1]["source_task_id"] == SRC
        assert entries[1]["label"] == "naïve\nlabel"
        assert "naïve" in lines[1]  # UTF-8, not \u escapes

    def test_record_on_a_closed_ledger_raises(self, tmp_path: Path) -> None:
        """Recording without an open ledger is a LedgerError, not a silent loss."""
        ledger = Ledger(tmp_path / "l.jsonl", run_id=RUN_ID)
        with pytest.raises(LedgerError, match="not open"):
            ledger.record(Event.SKIPPED, SRC, reason="x")

    def test_missing_file_reads_empty(self, tmp_path: Path) -> None:
        """A ledger that does not exist yet folds to nothing."""
        state = read_ledger(tmp_path / "absent.jsonl")
        assert state.rows == {}
        assert state.lines == 0

    def test_reopen_folds_what_the_file_holds(self, tmp_path: Path) -> None:
        """A new writer starts from the state its file already holds (resume)."""
        path = tmp_path / "l.jsonl"
        with ledger_at(path) as ledger:
            ledger.record(Event.PLANNED, SRC, label="a", steps=["clone_run"])
            ledger.record(Event.CLONE_INTENT, SRC, attempt=1)
            ledger.record(Event.CLONED, SRC, new_task_id=NEW, status="QUEUED")
            before = ledger.state.rows
        with ledger_at(path) as again:
            assert again.state.rows == before
            assert again.state.rows[SRC].new_task_id == NEW


class TestTornTail:
    def _write_with_torn_tail(self, path: Path) -> None:
        with ledger_at(path) as ledger:
            ledger.record(Event.PLANNED, SRC, label="a", steps=["clone_run"])
            ledger.record(Event.CLONE_INTENT, SRC, attempt=1)
        with path.open("ab") as handle:
            handle.write(b'{"v":1,"ts":"2027-01-15T08:00:00.000Z","event":"clo')

    def test_reader_ignores_torn_last_line(self, tmp_path: Path) -> None:
        """read_ledger skips a partial last line left by a crash mid-write."""
        path = tmp_path / "l.jsonl"
        self._write_with_torn_tail(path)
        state = read_ledger(path)
        assert state.lines == 2
        assert state.rows[SRC].status == "UNCERTAIN"

    def test_next_open_trims_torn_last_line(self, tmp_path: Path) -> None:
        """The next writer cuts the torn tail, so its own lines start clean."""
        path = tmp_path / "l.jsonl"
        self._write_with_torn_tail(path)
        with ledger_at(path) as ledger:
            assert path.read_bytes().endswith(b"\n")
            ledger.record(Event.CLONED, SRC, new_task_id=NEW, status="QUEUED")
        lines = path.read_text(encoding="utf-8").splitlines()
        assert len(lines) == 3
        assert [json.loads(line)["event"] for line in lines] == [
            "planned",
            "clone_intent",
            "cloned",
        ]
        assert read_ledger(path).rows[SRC].status == "QUEUED"

    def test_torn_only_line_trimmed_to_empty(self, tmp_path: Path) -> None:
        """A file holding only a torn line is trimmed to empty."""
        path = tmp_path / "l.jsonl"
        path.write_bytes(b'{"v":1,"eve')
        with ledger_at(path) as ledger:
            assert ledger.state.lines == 0
        assert path.read_bytes() == b""

    def test_bad_line_in_the_middle_raises_naming_the_line(
        self, tmp_path: Path
    ) -> None:
        """A corrupt line that is not the last is an error naming file and line."""
        path = tmp_path / "l.jsonl"
        with ledger_at(path) as ledger:
            ledger.record(Event.PLANNED, SRC, label="a")
        with path.open("ab") as handle:
            handle.write(b'{"v":1,"event":"clo\n')
            handle.write(b'{"v":1,"event":"skipped","source_task_id":"x"}\n')
        where = rf"^{re.escape(str(path))}:2: not a JSON line$"
        with pytest.raises(LedgerError, match=where):
            read_ledger(path)

    def test_failed_open_releases_the_lock(self, tmp_path: Path) -> None:
        """Opening a corrupt ledger fails with its line error and keeps no lock."""
        path = tmp_path / "l.jsonl"
        path.write_bytes(b'{"event":"planned","source_task_id":"a"}\nnot json\n{}\n')
        first = Ledger(path)
        try:
            with pytest.raises(LedgerError, match=r":2: not a JSON line"):
                first.open()
            with pytest.raises(LedgerError, match=r":2: not a JSON line"):
                Ledger(path).open()  # not LedgerLockedError: nothing holds it
        finally:
            first.close()  # tidy up if open() left its handle behind

    def test_non_event_line_raises(self, tmp_path: Path) -> None:
        """A JSON line that is not an event object is an error naming the line."""
        path = tmp_path / "l.jsonl"
        path.write_text('{"event":"planned","source_task_id":"a"}\n[1,2]\n{}\n')
        with pytest.raises(LedgerError, match=r":2: not a ledger event"):
            read_ledger(path)


LOCK_PROBE = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from orchestrator.errors import LedgerLockedError
    from orchestrator.ledger import Ledger
    try:
        Ledger(Path(sys.argv[1])).open()
    except LedgerLockedError:
        sys.exit(3)
    sys.exit(0)
    """
)


class TestLock:
    def test_second_writer_in_process_is_refused(self, tmp_path: Path) -> None:
        """A second Ledger on a path that is open raises LedgerLockedError."""
        path = tmp_path / "l.jsonl"
        with ledger_at(path), pytest.raises(LedgerLockedError, match="in use"):
            Ledger(path).open()
        with ledger_at(path) as again:  # released on close
            again.record(Event.SKIPPED, SRC, reason="done")

    def test_locked_error_is_a_ledger_error(self) -> None:
        """Callers catching LedgerError (exit 2) also catch the lock error."""
        assert issubclass(LedgerLockedError, LedgerError)

    def test_second_writer_in_another_process_is_refused(self, tmp_path: Path) -> None:
        """Another process cannot open a ledger this one holds; it can once closed."""
        path = tmp_path / "l.jsonl"

        def probe() -> int:
            done = subprocess.run(
                [sys.executable, "-c", LOCK_PROBE, str(path)],
                cwd=REPO_ROOT,
                capture_output=True,
                timeout=30,
                check=False,
            )
            return done.returncode

        with ledger_at(path):
            assert probe() == 3
        assert probe() == 0


class TestFold:
    def test_intent_without_outcome_is_uncertain(self) -> None:
        """A clone intent with no recorded outcome folds to UNCERTAIN."""
        row = row_of(planned(["clone_run"]), {"event": "clone_intent", "attempt": 1})
        assert row.phase is Phase.INTENT
        assert row.status == "UNCERTAIN"
        assert row.attempts == 1

    def test_planned_only_is_pending(self) -> None:
        """A planned source with no clone yet is PENDING."""
        row = row_of(planned(["clone_run"]))
        assert row.status == "PENDING"
        assert row.label == "sample-1"
        assert row.new_task_id is None

    def test_cloned_sets_new_task_and_status(self) -> None:
        """A cloned event records the new task ID and its platform status."""
        state = fold(
            {"source_task_id": SRC, **planned(["clone_run"])},
            {"source_task_id": SRC, "event": "clone_intent", "attempt": 1},
            {"source_task_id": SRC, **cloned("QUEUED")},
        )
        row = state.rows[SRC]
        assert row.new_task_id == NEW
        assert row.status == "QUEUED"
        assert row.phase is Phase.CLONED
        assert state.attributed == {NEW: SRC}

    def test_clone_failed_keeps_the_error(self) -> None:
        """clone_failed folds to CLONE_FAILED with its {status, code, message}."""
        row = row_of(
            planned(["clone_run"]),
            {"event": "clone_intent", "attempt": 1},
            {"event": "clone_failed", "error": ERROR},
        )
        assert row.status == "CLONE_FAILED"
        assert row.error == ERROR
        assert row.new_task_id is None

    def test_skipped(self) -> None:
        """skipped folds to SKIPPED with its reason."""
        row = row_of(planned([]), {"event": "skipped", "reason": "status RUNNING"})
        assert row.status == "SKIPPED"
        assert row.skip_reason == "status RUNNING"

    def test_skipped_does_not_hide_an_existing_clone(self) -> None:
        """A later skip of a source that was already cloned keeps the clone."""
        row = row_of(cloned("RUNNING"), {"event": "skipped", "reason": "done"})
        assert row.status == "RUNNING"

    def test_status_events_update_status_and_times(self) -> None:
        """status events set the platform status, start/end time, price, message."""
        row = row_of(
            planned(["clone_run"]),
            cloned("QUEUED"),
            {
                "event": "status",
                "new_task_id": NEW,
                "status": "RUNNING",
                "start_time": "2027-01-15T08:01:00Z",
            },
            {
                "event": "status",
                "new_task_id": NEW,
                "status": "COMPLETED",
                "end_time": "2027-01-15T09:00:00Z",
                "price": {"amount": "1.20", "currency": "USD"},
                "message": "done",
            },
        )
        assert row.status == "COMPLETED"
        assert row.start_time == "2027-01-15T08:01:00Z"
        assert row.end_time == "2027-01-15T09:00:00Z"
        assert row.price == {"amount": "1.20", "currency": "USD"}
        assert row.terminal
        assert not row.rerun_failed

    def test_new_intent_clears_a_previous_outcome(self) -> None:
        """A retry's intent clears the old error and counts the attempt."""
        row = row_of(
            {"event": "clone_intent"},
            {"event": "clone_failed", "error": ERROR},
            {"event": "clone_intent"},
        )
        assert row.attempts == 2
        assert row.error is None
        assert row.status == "UNCERTAIN"

    def test_reconciled_nothing_is_safe_to_resend(self) -> None:
        """Reconciling an intent and finding no task returns the row to PENDING."""
        row = row_of({"event": "clone_intent", "attempt": 1}, {"event": "reconciled"})
        assert row.status == "PENDING"

    def test_reconciled_found_is_cloned(self) -> None:
        """Reconciling an intent and finding the task attributes it to the source."""
        row = row_of(
            {"event": "clone_intent", "attempt": 1},
            {"event": "reconciled", "new_task_id": NEW},
            {"event": "cloned", "new_task_id": NEW, "status": "QUEUED"},
        )
        assert row.new_task_id == NEW
        assert row.status == "QUEUED"

    def test_rows_keep_first_seen_order(self) -> None:
        """Rows come out in the order sources first appear."""
        state = fold(
            {"event": "planned", "source_task_id": "b"},
            {"event": "planned", "source_task_id": "a"},
            {"event": "skipped", "source_task_id": "b", "reason": "x"},
        )
        assert list(state.rows) == ["b", "a"]

    def test_run_level_events_have_no_row(self) -> None:
        """run_started/run_finished (source null) count runs but make no row."""
        state = fold(
            {"event": "run_started", "source_task_id": None, "command": "run"},
            {"event": "run_finished", "source_task_id": None},
            {"event": "run_started", "source_task_id": None, "command": "status"},
        )
        assert state.rows == {}
        assert state.runs == 2
        assert state.run_info["command"] == "status"


class TestStepsLeft:
    def test_clone_patch_run_flow(self) -> None:
        """clone+patch+run: patch and run are due after the clone, then run only."""
        steps = ["clone", "patch", "run"]
        assert row_of(planned(steps)).steps_left == ()
        assert row_of(planned(steps), cloned()).steps_left == ("patch", "run")
        after_patch = row_of(planned(steps), cloned(), {"event": "patched"})
        assert after_patch.steps_left == ("run",)
        after_run = row_of(
            planned(steps),
            cloned(),
            {"event": "patched"},
            {"event": "started", "new_task_id": NEW, "status": "QUEUED"},
        )
        assert after_run.steps_left == ()

    def test_clone_patch_draft_flow(self) -> None:
        """clone+patch (draft action): only the patch is due after the clone."""
        steps = ["clone", "patch"]
        assert row_of(planned(steps), cloned()).steps_left == ("patch",)
        assert row_of(planned(steps), cloned(), {"event": "patched"}).steps_left == ()

    def test_clone_run_flow(self) -> None:
        """clone_run (one POST with action=run): nothing is due once cloned."""
        assert row_of(planned(["clone_run"]), cloned("QUEUED")).steps_left == ()

    def test_started_by_hand(self) -> None:
        """A draft that a status read shows running needs no patch or run."""
        row = row_of(
            planned(["clone", "patch", "run"]),
            cloned(),
            {"event": "status", "new_task_id": NEW, "status": "RUNNING"},
        )
        assert row.phase is Phase.STARTED
        assert row.steps_left == ()

    def test_run_failed_has_nothing_left(self) -> None:
        """A run refused by the platform leaves the draft; no step is retried."""
        row = row_of(
            planned(["clone", "patch", "run"]),
            cloned(),
            {"event": "patched"},
            {"event": "run_failed", "new_task_id": NEW, "error": ERROR},
        )
        assert row.steps_left == ()


class TestRerunFailed:
    @pytest.mark.parametrize(
        ("events", "expected"),
        [
            ([{"event": "clone_failed", "error": ERROR}], True),
            ([cloned(), {"event": "run_failed", "error": ERROR}], True),
            ([cloned("FAILED")], True),
            ([cloned("QUEUED"), {"event": "status", "status": "ABORTED"}], True),
            ([cloned("QUEUED"), {"event": "status", "status": "COMPLETED"}], False),
            ([cloned("RUNNING")], False),
            ([{"event": "skipped", "reason": "x"}], False),
            ([{"event": "clone_intent"}], False),
            ([{**cloned("DRAFT"), "task_errors": ["input missing"]}], True),
        ],
        ids=[
            "clone_failed",
            "run_failed",
            "failed",
            "aborted",
            "completed",
            "running",
            "skipped",
            "uncertain",
            "clone-task-errors",
        ],
    )
    def test_table(self, events: list[dict[str, object]], expected: bool) -> None:
        """rerun_failed is true for refused clones/runs and FAILED/ABORTED tasks."""
        assert row_of(*events).rerun_failed is expected


REPORT_KEYS = {
    "source_task_id",
    "label",
    "new_task_id",
    "status",
    "attempts",
    "error",
    "updated",
}


class TestReport:
    def test_has_the_contract_keys(self, tmp_path: Path) -> None:
        """as_report has at least the contract's keys, with the contract's types."""
        path = tmp_path / "l.jsonl"
        with ledger_at(path) as ledger:
            ledger.record(Event.PLANNED, SRC, label="sample-1", steps=["clone_run"])
            ledger.record(Event.CLONE_INTENT, SRC, attempt=1, run=True)
            ledger.record(Event.CLONE_FAILED, SRC, error=ERROR)
            ledger.record(Event.PLANNED, "other", label=None, steps=["clone_run"])
        rows = list(read_ledger(path).rows.values())
        reports = [row.as_report() for row in rows]
        for report in reports:
            assert set(report) >= REPORT_KEYS
            assert isinstance(report["updated"], str)
            assert RFC3339_UTC.match(report["updated"])
            json.dumps(report)  # serialisable as is
        failed, other = reports
        assert failed["source_task_id"] == SRC
        assert failed["label"] == "sample-1"
        assert failed["new_task_id"] is None
        assert failed["status"] == "CLONE_FAILED"
        assert failed["attempts"] == 1
        assert failed["error"] == ERROR
        assert other["status"] == "PENDING"
        assert other["error"] is None
        assert other["attempts"] == 0


# -- property: what the writer folded in memory is what a reader folds from disk --

_SOURCES = st.sampled_from([SRC, "src-b", "src-c", None])
_TEXT = st.text(max_size=6)
_ERRORS = st.fixed_dictionaries(
    {
        "status": st.none() | st.integers(min_value=400, max_value=599),
        "code": st.none() | st.integers(min_value=0, max_value=99999),
        "message": _TEXT,
    }
)
_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        "label": st.none() | _TEXT,
        "name": _TEXT,
        "steps": st.lists(st.sampled_from(["clone", "clone_run", "patch", "run"])),
        "reason": _TEXT,
        "attempt": st.integers(min_value=0, max_value=9),
        "at": st.floats(min_value=0, max_value=2e9),
        "run": st.booleans(),
        "new_task_id": st.none() | st.sampled_from([NEW, "new-2", "new-3"]),
        "status": st.sampled_from([s.value for s in TaskStatus]),
        "error": st.none() | _ERRORS,
        "task_errors": st.none() | st.lists(_TEXT, max_size=2),
        "start_time": _TEXT,
        "end_time": _TEXT,
        "message": _TEXT,
        "price": st.none() | st.fixed_dictionaries({"amount": _TEXT}),
        "via": st.sampled_from(["response", "reconciled"]),
        "overrides": st.dictionaries(_TEXT, st.integers(), max_size=2),
        "command": _TEXT,
    },
)
_RECORDS = st.lists(
    st.tuples(st.sampled_from(list(Event)), _SOURCES, _FIELDS), max_size=25
)


class TestRoundTrip:
    @settings(
        max_examples=60,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(records=_RECORDS)
    def test_reread_folds_to_the_writers_state(
        self, records: list[tuple[Event, str | None, dict[str, object]]]
    ) -> None:
        """Any recorded event sequence, read back from disk, folds to the same rows."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "l.jsonl"
            with ledger_at(path) as ledger:
                for event, source, fields in records:
                    ledger.record(event, source, **fields)
                written = ledger.state
            reread = read_ledger(path)
            with ledger_at(path) as reopened:
                resumed = reopened.state
        for state in (reread, resumed):
            assert state.rows == written.rows
            assert list(state.rows) == list(written.rows)
            assert state.attributed == written.attributed
            assert state.runs == written.runs
            assert state.lines == written.lines == len(records)
            assert state.run_info == written.run_info


class TestReportStreaming:
    @pytest.mark.parametrize("count", [0, 1, 3])
    def test_streamed_json_is_exactly_the_whole_dump(self, count: int) -> None:
        """`report --format json` streams byte for byte what one json.dumps gives."""
        import json

        from orchestrator.report import render

        state = LedgerState()
        for n in range(count):
            state.apply(
                {
                    "event": "skipped",
                    "source_task_id": f"s{n}",
                    "reason": "ü|x",
                    "ts": "t",
                }
            )
        rows = list(state.rows.values())
        expected = json.dumps(
            [r.as_report() for r in rows], indent=2, ensure_ascii=False
        )
        assert render(rows, "json") == expected + "\n"
