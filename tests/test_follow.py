"""After the clones: --wait, status, export of the failed, --retry-failed and abort,
through the library API the README shows, on fake time."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from orchestrator import (
    Credentials,
    RunOptions,
    abort_ledger,
    export_failed,
    load_manifest,
    plan_manifest,
    read_rows,
    refresh_ledger,
    run_manifest,
)
from orchestrator.simulator import SIM_TOKEN, FakePlatform, serve
from tests.conftest import PROJECT, FakeTime, write_manifest

BUDGET = "rate_limit: {requests: 1000000, per_seconds: 1}\n"


@pytest.fixture(name="lifecycle")
def _lifecycle(fake_time: FakeTime) -> FakePlatform:
    """Reruns that finish in seconds of fake time, about a third of them FAILED."""
    return FakePlatform(
        clock=fake_time.time,
        rate_limit=(100_000, 300.0),
        queued_s=5.0,
        running_s=30.0,
        fail_fraction=0.35,
        seed=11,
    )


@pytest.fixture(name="lifecycle_creds")
async def _lifecycle_creds(lifecycle: FakePlatform) -> AsyncIterator[Credentials]:
    async with serve(lifecycle) as url:
        yield Credentials(endpoint=url, token=SIM_TOKEN, source="test")


def cohort_manifest(tmp_path: Path, ids: list[str], name: str = "m.yaml") -> Path:
    """A manifest of `ids` polling every 10 s."""
    body = (
        "version: 1\n" + BUDGET + "wait: {poll_seconds: 10, timeout_hours: 1}\n"
        "tasks:\n" + "".join(f"  - {i}\n" for i in ids)
    )
    return write_manifest(tmp_path, body, name)


class TestWait:
    async def test_wait_ends_terminal_and_exit_1_when_some_failed(
        self,
        lifecycle: FakePlatform,
        lifecycle_creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """--wait polls until every rerun is terminal; exit 1 since some FAILED."""
        ids = lifecycle.seed_cohort(PROJECT, failed=40)
        options = dataclasses.replace(options, wait=True)
        manifest = load_manifest(cohort_manifest(tmp_path, ids))
        result = await run_manifest(manifest, lifecycle_creds, options)
        statuses = {row.status for row in result.rows}
        assert statuses <= {"COMPLETED", "FAILED"}
        assert "FAILED" in statuses
        assert result.exit_code == 1
        assert lifecycle.count("GET /tasks/{id}") == 0  # bulk reads only
        assert result.followed is not None
        assert result.followed.polls >= 2
        # 40 tasks fit one bulk call per poll
        assert lifecycle.count("POST /bulk/tasks/get") == 1 + result.followed.polls

    async def test_wait_exit_0_when_all_completed(
        self, fake_time: FakeTime, options: RunOptions, tmp_path: Path
    ) -> None:
        """With no failure every row ends COMPLETED and the exit code is 0."""
        platform = FakePlatform(
            clock=fake_time.time, fail_fraction=0.0, queued_s=1, running_s=5
        )
        ids = platform.seed_cohort(PROJECT, failed=5)
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=SIM_TOKEN, source="test")
            manifest = load_manifest(cohort_manifest(tmp_path, ids))
            result = await run_manifest(
                manifest, creds, dataclasses.replace(options, wait=True)
            )
        assert {row.status for row in result.rows} == {"COMPLETED"}
        assert result.exit_code == 0


class TestStatusExportRetry:
    async def test_status_brings_an_old_ledger_up_to_date(
        self,
        lifecycle: FakePlatform,
        lifecycle_creds: Credentials,
        options: RunOptions,
        fake_time: FakeTime,
        tmp_path: Path,
    ) -> None:
        """A ledger left QUEUED is refreshed to the platform's current statuses."""
        ids = lifecycle.seed_cohort(PROJECT, failed=10)
        manifest = load_manifest(cohort_manifest(tmp_path, ids))
        await run_manifest(manifest, lifecycle_creds, options)
        assert options.ledger_path is not None
        assert {r.status for r in read_rows(options.ledger_path)} == {"QUEUED"}
        fake_time.now += 3600
        followed, rows = await refresh_ledger(
            options.ledger_path, lifecycle_creds, options=options
        )
        assert {r.status for r in rows} <= {"COMPLETED", "FAILED"}
        assert followed.requests == 1

    async def test_export_failed_then_run_reruns_exactly_the_failed(
        self,
        lifecycle: FakePlatform,
        lifecycle_creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """export --failed writes a valid manifest of the failed; running it reruns
        exactly those, with their labels carried over."""
        ids = lifecycle.seed_cohort(PROJECT, failed=30)
        body = (
            "version: 1\n" + BUDGET + "wait: {poll_seconds: 10, timeout_hours: 1}\n"
            "overrides: {use_interruptible_instances: false}\n"
            "tasks:\n"
            + "".join(f"  - {{id: {i}, label: s{n}}}\n" for n, i in enumerate(ids))
        )
        manifest = load_manifest(write_manifest(tmp_path, body))
        first = await run_manifest(
            manifest, lifecycle_creds, dataclasses.replace(options, wait=True)
        )
        failed = {r.source_task_id for r in first.rows if r.status == "FAILED"}
        assert failed
        assert options.ledger_path is not None
        out = tmp_path / "again.yaml"
        assert export_failed(options.ledger_path, out) == len(failed)
        again = load_manifest(out)
        assert {t.id for t in again.tasks} == failed
        assert all(t.label and t.label.startswith("s") for t in again.tasks)
        assert all(
            t.overrides.use_interruptible_instances is False for t in again.tasks
        )
        before = dict(lifecycle.clone_counts)
        second = await run_manifest(
            again,
            lifecycle_creds,
            dataclasses.replace(options, ledger_path=tmp_path / "again.ledger.jsonl"),
        )
        assert {r.source_task_id for r in second.rows} == failed
        for source in ids:
            expected = before[source] + (1 if source in failed else 0)
            assert lifecycle.clone_counts[source] == expected

    async def test_retry_failed_reruns_only_failed_and_counts_attempts(
        self,
        lifecycle: FakePlatform,
        lifecycle_creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """--retry-failed clones again the FAILED reruns only, as a new attempt."""
        ids = lifecycle.seed_cohort(PROJECT, failed=30)
        manifest = load_manifest(cohort_manifest(tmp_path, ids))
        first = await run_manifest(
            manifest, lifecycle_creds, dataclasses.replace(options, wait=True)
        )
        failed = {r.source_task_id for r in first.rows if r.status == "FAILED"}
        second = await run_manifest(
            manifest, lifecycle_creds, dataclasses.replace(options, retry_failed=True)
        )
        for row in second.rows:
            if row.source_task_id in failed:
                assert lifecycle.clone_counts[row.source_task_id] == 2
                assert row.attempts == 2
                assert row.status == "QUEUED"
            else:
                assert lifecycle.clone_counts[row.source_task_id] == 1
                assert row.status == "COMPLETED"


class TestAbort:
    async def test_abort_stops_running_and_queued_reruns(
        self,
        fake_time: FakeTime,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """abort aborts the new tasks still QUEUED or RUNNING, and records it."""
        platform = FakePlatform(clock=fake_time.time, queued_s=10, running_s=10_000)
        ids = platform.seed_cohort(PROJECT, failed=8)
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=SIM_TOKEN, source="test")
            manifest = load_manifest(cohort_manifest(tmp_path, ids))
            await run_manifest(manifest, creds, options)
            fake_time.now += 60  # some are RUNNING now, all are abortable
            assert options.ledger_path is not None
            aborted, failed = await abort_ledger(options.ledger_path, creds, options)
        assert (aborted, failed) == (8, 0)
        rows = read_rows(options.ledger_path)
        assert {r.status for r in rows} == {"ABORTED"}
        for row in rows:
            assert platform.task(str(row.new_task_id))["status"] == "ABORTED"


class TestPlanAfterRun:
    async def test_plan_of_a_rerun_select_shows_what_run_does(
        self,
        lifecycle: FakePlatform,
        lifecycle_creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """After a run whose reruns partly FAILED, `plan` on the same "FAILED tasks"
        manifest plans no clone of those reruns, exactly as `run` then does."""
        lifecycle.seed_cohort(PROJECT, failed=30)
        body = (
            "version: 1\n" + BUDGET + "wait: {poll_seconds: 10, timeout_hours: 1}\n"
            f"select: {{project: {PROJECT}, status: [FAILED]}}\n"
        )
        manifest = load_manifest(write_manifest(tmp_path, body))
        await run_manifest(
            manifest, lifecycle_creds, dataclasses.replace(options, wait=True)
        )
        plan = await plan_manifest(manifest, lifecycle_creds, options)
        assert plan.counts == {"done": 30}
        again = await run_manifest(manifest, lifecycle_creds, options)
        assert again.summary.outcomes == {"done": 30}
