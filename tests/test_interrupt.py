"""Stopping a real `cgc-rerun run` process: SIGKILL at several points, SIGINT, SIGTERM.

The CLI runs as `python -m orchestrator` in a subprocess against the simulator served
from a thread of the test process, with enough latency that a run over the cohort
takes a few seconds. Real time is unavoidable here; the tests poll the ledger with
short sleeps under deadlines and never assert on timings.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.ledger import read_ledger
from orchestrator.simulator import SIM_PROJECT, FakePlatform, serve_in_thread
from tests.conftest import write_manifest

SOURCES = 150
CONCURRENCY = 4
LATENCY_S = 0.05
DEADLINE_S = 20.0


@dataclass
class Cohort:
    """A served simulator, its sources and the manifest that names them."""

    platform: FakePlatform
    url: str
    ids: list[str]
    manifest: Path
    ledger: Path
    env: dict[str, str]


@dataclass
class Proc:
    """A `cgc-rerun` child process and the files holding its output."""

    popen: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def output(self) -> str:
        """Its stdout and stderr, for assertion messages."""
        out = self.stdout.read_text(encoding="utf-8", errors="replace")
        err = self.stderr.read_text(encoding="utf-8", errors="replace")
        return f"--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"


@pytest.fixture(name="cohort")
def _cohort(tmp_path: Path) -> Iterator[Cohort]:
    """150 FAILED sources on a simulator with 50 ms latency, served in a thread."""
    platform = FakePlatform(
        rate_limit=(100_000, 300.0), latency_s=LATENCY_S, queued_s=1000.0, seed=5
    )
    ids = platform.seed_cohort(SIM_PROJECT, failed=SOURCES)
    body = (
        "version: 1\n"
        f"concurrency: {CONCURRENCY}\n"
        "rate_limit: {requests: 1000000, per_seconds: 1}\n"
        "tasks:\n" + "".join(f"  - {i}\n" for i in ids)
    )
    manifest = write_manifest(tmp_path, body, "cohort.yaml")
    with serve_in_thread(platform) as url:
        env = {
            **os.environ,
            "SB_API_ENDPOINT": url,
            "SB_AUTH_TOKEN": platform.token,
            "HOME": str(tmp_path),
        }
        yield Cohort(
            platform, url, ids, manifest, tmp_path / "cohort.ledger.jsonl", env
        )


@pytest.fixture(name="spawn")
def _spawn(cohort: Cohort) -> Iterator[list[Proc]]:
    """The processes a test started; any still alive at the end are killed (before
    the simulator they talk to stops, hence the dependency on `cohort`)."""
    del cohort
    procs: list[Proc] = []
    yield procs
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(timeout=10)


def start_run(cohort: Cohort, procs: list[Proc], *extra: str) -> Proc:
    """Start `cgc-rerun run MANIFEST` in a new process."""
    n = len(procs)
    out = cohort.manifest.with_name(f"run{n}.out")
    err = cohort.manifest.with_name(f"run{n}.err")
    argv = [
        sys.executable,
        "-m",
        "orchestrator",
        "--no-progress",
        "--log-format",
        "json",
        "run",
        str(cohort.manifest),
        *extra,
    ]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        popen = subprocess.Popen(
            argv,
            env=cohort.env,
            cwd=cohort.manifest.parent,
            stdout=stdout,
            stderr=stderr,
        )
    proc = Proc(popen, out, err)
    procs.append(proc)
    return proc


def cloned_lines(ledger: Path) -> int:
    """How many `cloned` events the ledger holds so far."""
    try:
        data = ledger.read_bytes()
    except FileNotFoundError:
        return 0
    return data.count(b'"event":"cloned"')


def wait_for_clones(cohort: Cohort, proc: Proc, at_least: int) -> None:
    """Poll the ledger until it records `at_least` clones (the process still runs)."""
    deadline = time.monotonic() + DEADLINE_S
    while cloned_lines(cohort.ledger) < at_least:
        assert proc.popen.poll() is None, f"the run ended early\n{proc.output()}"
        assert time.monotonic() < deadline, f"no progress\n{proc.output()}"
        time.sleep(0.01)


def wait_for_event(cohort: Cohort, proc: Proc, event: str) -> None:
    """Poll the ledger until it holds an `event` line (the process still runs)."""
    needle = f'"event":"{event}"'.encode()
    deadline = time.monotonic() + DEADLINE_S
    while not (cohort.ledger.exists() and needle in cohort.ledger.read_bytes()):
        assert proc.popen.poll() is None, f"the run ended early\n{proc.output()}"
        assert time.monotonic() < deadline, f"no {event}\n{proc.output()}"
        time.sleep(0.01)


def finish(proc: Proc) -> int:
    """Wait for the process to end; return its exit code."""
    try:
        return proc.popen.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the run did not end\n{proc.output()}")


def assert_whole_ledger(ledger: Path) -> None:
    """Every line is a complete JSON event ending in a newline."""
    data = ledger.read_bytes()
    assert data.endswith(b"\n")
    for number, line in enumerate(data.splitlines(), start=1):
        entry = json.loads(line)
        assert isinstance(entry, dict), f"line {number}"
        assert {"ts", "run_id", "event", "source_task_id"} <= set(entry)


def assert_each_cloned_once(cohort: Cohort, sources: Sequence[str]) -> None:
    """Every source has exactly one clone, and the ledger names that very clone."""
    platform = cohort.platform
    assert sum(platform.clone_counts.values()) == len(sources)
    state = read_ledger(cohort.ledger)
    assert sorted(state.rows) == sorted(sources)
    for source in sources:
        clones = platform.clones_of(source)
        assert platform.clone_counts[source] == 1, f"{source} cloned {len(clones)}x"
        assert len(clones) == 1
        row = state.rows[source]
        assert row.new_task_id == clones[0]["id"], source
        assert row.status == "QUEUED", (source, row.status)
    recorded = {row.new_task_id for row in state.rows.values()}
    made = {str(c["id"]) for s in sources for c in platform.clones_of(s)}
    assert recorded == made


class TestKill:
    def test_sigkill_three_times_then_finish_clones_each_source_once(
        self, cohort: Cohort, spawn: list[Proc]
    ) -> None:
        """kill -9 at three points, then a run to the end: one clone per source."""
        for at_least in (10, 50, 95):
            proc = start_run(cohort, spawn)
            wait_for_clones(cohort, proc, at_least)
            proc.popen.send_signal(signal.SIGKILL)
            assert finish(proc) == -signal.SIGKILL, proc.output()
            assert sum(cohort.platform.clone_counts.values()) < SOURCES
        last = start_run(cohort, spawn)
        assert finish(last) == 0, last.output()
        assert_whole_ledger(cohort.ledger)
        assert read_ledger(cohort.ledger).runs == 4
        assert_each_cloned_once(cohort, cohort.ids)
        # The kills left clones in flight that the platform committed: adopted.
        vias = [row.via for row in read_ledger(cohort.ledger).rows.values()]
        assert vias.count("reconciled") >= 1


class TestGracefulStop:
    @pytest.mark.parametrize(
        "signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"]
    )
    def test_signal_stops_with_130_and_a_resumable_ledger(
        self, cohort: Cohort, spawn: list[Proc], signum: signal.Signals
    ) -> None:
        """SIGINT/SIGTERM: exit 130, in-flight requests settled, ledger whole; a
        second run completes the cohort with no duplicate."""
        proc = start_run(cohort, spawn)
        wait_for_clones(cohort, proc, 20)
        proc.popen.send_signal(signum)
        assert finish(proc) == 130, proc.output()
        assert "interrupted" in proc.stderr.read_text(encoding="utf-8")
        assert_whole_ledger(cohort.ledger)
        state = read_ledger(cohort.ledger)
        statuses = {row.status for row in state.rows.values()}
        # Settled: no clone whose outcome is unknown; the run stopped part way.
        assert statuses <= {"QUEUED", "PENDING"}, statuses
        assert "PENDING" in statuses
        recorded = {r.new_task_id for r in state.rows.values() if r.new_task_id}
        made = {str(c["id"]) for s in cohort.ids for c in cohort.platform.clones_of(s)}
        assert recorded == made

        again = start_run(cohort, spawn)
        assert finish(again) == 0, again.output()
        assert_whole_ledger(cohort.ledger)
        assert_each_cloned_once(cohort, cohort.ids)

    def test_sigint_during_a_backoff_stops_with_130(
        self, cohort: Cohort, spawn: list[Proc]
    ) -> None:
        """SIGINT while a clone backs off after a 5xx: exit 130, that source is left
        to resend (not uncertain), and the next run clones it once."""
        flaky = cohort.ids[5]
        cohort.platform.script("POST", rf"/tasks/{flaky}/actions/clone$", [500])
        proc = start_run(cohort, spawn)
        wait_for_event(cohort, proc, "clone_uncertain")
        proc.popen.send_signal(signal.SIGINT)
        assert finish(proc) == 130, proc.output()
        assert_whole_ledger(cohort.ledger)
        row = read_ledger(cohort.ledger).rows[flaky]
        assert row.status == "PENDING"
        assert cohort.platform.clone_counts[flaky] == 0

        again = start_run(cohort, spawn)
        assert finish(again) == 0, again.output()
        assert_each_cloned_once(cohort, cohort.ids)

    def test_sigint_while_waiting_stops_with_130(
        self, cohort: Cohort, spawn: list[Proc]
    ) -> None:
        """SIGINT during `run --wait` polling: exit 130 and every clone recorded."""
        body = cohort.manifest.read_text(encoding="utf-8")
        cohort.manifest.write_text(
            body + "wait: {poll_seconds: 1, timeout_hours: 1}\n", encoding="utf-8"
        )
        proc = start_run(cohort, spawn, "--wait")
        wait_for_event(cohort, proc, "run_finished")
        proc.popen.send_signal(signal.SIGINT)
        assert finish(proc) == 130, proc.output()
        assert_whole_ledger(cohort.ledger)
        assert_each_cloned_once(cohort, cohort.ids)

    def test_second_sigint_cancels_at_once_and_stays_resumable(
        self, cohort: Cohort, spawn: list[Proc]
    ) -> None:
        """A second SIGINT does not wait for a backoff: exit 130; the next run
        reconciles what was in flight and clones each source once."""
        flaky = cohort.ids[5]
        cohort.platform.script("POST", rf"/tasks/{flaky}/actions/clone$", [500])
        proc = start_run(cohort, spawn)
        wait_for_event(cohort, proc, "clone_uncertain")
        proc.popen.send_signal(signal.SIGINT)
        time.sleep(0.1)
        proc.popen.send_signal(signal.SIGINT)
        assert finish(proc) == 130, proc.output()
        assert_whole_ledger(cohort.ledger)

        again = start_run(cohort, spawn)
        assert finish(again) == 0, again.output()
        assert_each_cloned_once(cohort, cohort.ids)


class TestConcurrentRuns:
    def test_second_process_on_a_busy_ledger_is_refused(
        self, cohort: Cohort, spawn: list[Proc]
    ) -> None:
        """A second `run` while another process holds the ledger: exit 2 at once,
        and the first run finishes with one clone per source."""
        first = start_run(cohort, spawn)
        wait_for_clones(cohort, first, 10)
        first.popen.send_signal(signal.SIGSTOP)  # still holding the ledger, paused
        try:
            second = start_run(cohort, spawn)
            assert finish(second) == 2, second.output()
        finally:
            first.popen.send_signal(signal.SIGCONT)
        assert "in use" in second.stderr.read_text(encoding="utf-8")
        assert finish(first) == 0, first.output()
        assert_each_cloned_once(cohort, cohort.ids)
        assert read_ledger(cohort.ledger).runs == 1
