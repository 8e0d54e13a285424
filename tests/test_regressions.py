"""Regressions found in review: each test is one user-visible fault, now fixed."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from pathlib import Path

from orchestrator.client import ApiClient
from orchestrator.config import Credentials
from orchestrator.follow import follow
from orchestrator.ledger import Event, Ledger, read_ledger
from orchestrator.models import RateLimit
from orchestrator.pacing import RateBudget
from orchestrator.policy import Retrier
from orchestrator.runner import RunOptions
from orchestrator.simulator import FakePlatform, FaultProfile, serve
from tests.conftest import (
    FAST_BUDGET,
    FAST_POLICY,
    PROJECT,
    START,
    FakeTime,
    clone_behind_our_back,
    look_alike_sources,
    manifest_for,
    run,
    write_manifest,
)


class TestLedgerFold:
    async def test_kill_between_reconciled_and_cloned_is_not_uncertain_forever(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
        fake_time: FakeTime,
    ) -> None:
        """kill -9 after adopt's RECONCILED(new id) line, before its CLONED line."""
        (source,) = platform.seed_cohort(PROJECT, failed=1)
        new_id = await clone_behind_our_back(creds, source, run=True)
        assert options.ledger_path is not None
        with Ledger(options.ledger_path) as ledger:
            ledger.record(Event.PLANNED, source, steps=["clone_run"], name="x")
            ledger.record(
                Event.CLONE_INTENT, source, attempt=1, run=True, at=fake_time.now
            )
            ledger.record(Event.RECONCILED, source, new_task_id=new_id)
        result = await run(manifest_for(tmp_path, [source]), creds, options)
        assert platform.clone_counts[source] == 1
        assert result.rows[0].new_task_id == new_id
        assert result.rows[0].status != "UNCERTAIN"

    def test_torn_tail_longer_than_64k_does_not_wipe_the_ledger(
        self, tmp_path: Path
    ) -> None:
        """A kill -9 mid-write of one big line must not truncate the whole file."""
        path = tmp_path / "big.ledger.jsonl"
        with Ledger(path) as ledger:
            ledger.record(Event.CLONE_INTENT, "src-1", attempt=1, run=True, at=0.0)
            ledger.record(Event.CLONED, "src-1", new_task_id="new-1", status="QUEUED")
            ledger.record(
                Event.RUN_FAILED,
                "src-2",
                new_task_id="new-2",
                error={"status": 400, "code": 7024, "message": "x" * 70_000},
            )
        whole = path.read_bytes()
        path.write_bytes(whole[:-20])  # the last line was torn by the kill
        with Ledger(path) as ledger:
            assert ledger.state.rows["src-1"].new_task_id == "new-1"


class TestWorkerErrors:
    async def test_one_unreadable_resumed_draft_does_not_crash_the_run(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A draft deleted by hand between runs (GET 404): the rest still runs."""
        gone, fresh = platform.seed_cohort(PROJECT, failed=2)
        deleted_draft = "0badc0de-0000-4000-8000-000000000000"
        assert options.ledger_path is not None
        with Ledger(options.ledger_path) as ledger:
            ledger.record(Event.PLANNED, gone, steps=["clone", "patch", "run"])
            ledger.record(Event.CLONE_INTENT, gone, attempt=1, run=False, at=0.0)
            ledger.record(Event.CLONED, gone, new_task_id=deleted_draft, status="DRAFT")
        path = manifest_for(
            tmp_path, [gone, fresh], extra="overrides: {name_suffix: ' R'}\n"
        )
        result = await run(path, creds, options)
        assert platform.clone_counts[fresh] == 1
        assert result.exit_code == 1


class TestPacing:
    async def test_clock_ahead_of_the_platform_causes_no_429_storm(
        self, fake_time: FakeTime, tmp_path: Path, options: RunOptions
    ) -> None:
        """Our clock 2 s ahead: a 429's reset looks past, and we resend at once."""
        platform = FakePlatform(clock=fake_time.time, rate_limit=(50, 10.0), seed=2)
        ids = platform.seed_cohort(PROJECT, failed=120)

        def skewed() -> float:
            return fake_time.now + 2.0

        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=platform.token, source="test")
            opts = dataclasses.replace(options, clock=skewed)
            result = await run(manifest_for(tmp_path, ids), creds, opts)
        assert result.exit_code == 0  # not: 429s resent at once until the cap
        assert platform.rate_limited <= 20

    async def test_maintenance_at_start_is_waited_out(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """503 code 0 on the very first call (GET /rate_limit) is waited out."""
        platform.faults = FaultProfile(maintenance=((START - 10, START + 100),))
        ids = platform.seed_cohort(PROJECT, failed=2)
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert result.exit_code == 0
        assert sum(platform.clone_counts.values()) == 2


class TestReconcileAttribution:
    async def test_identical_sources_each_keep_their_own_clone(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A's clone 500s while B's is committed, unanswered: A must not adopt it."""
        ids = look_alike_sources(platform, 2, created_time=START - 86_400.0)
        platform.faults = dataclasses.replace(platform.faults, stall_s=0.3)
        platform.script("POST", r"/actions/clone", ["stall", 500])
        path = manifest_for(tmp_path, ids, extra="concurrency: 2\n")
        result = await run(path, creds, options)
        assert [len(platform.clones_of(i)) for i in ids] == [1, 1]
        assert len({row.new_task_id for row in result.rows}) == 2

    async def test_never_adopts_another_source_task(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Two look-alike sources that failed a minute ago: B's 500 must not adopt A."""
        ids = look_alike_sources(platform, 2, created_time=START - 60.0)
        platform.script("POST", r"/actions/clone", ["pass", 500])
        path = manifest_for(tmp_path, ids, extra="concurrency: 1\n")
        result = await run(path, creds, options)
        assert [len(platform.clones_of(i)) for i in ids] == [1, 1]
        assert not {row.new_task_id for row in result.rows} & set(ids)

    async def test_adopts_the_clone_it_sent_not_an_older_one(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
        fake_time: FakeTime,
    ) -> None:
        """A hand-made clone a minute earlier; ours is committed, its answer lost."""
        (source,) = platform.seed_cohort(PROJECT, failed=1)
        await clone_behind_our_back(creds, source, run=True)
        fake_time.now += 60
        platform.script("POST", r"/actions/clone", ["drop"])
        result = await run(manifest_for(tmp_path, [source]), creds, options)
        ours = platform.clones_of(source)[-1]
        assert result.rows[0].new_task_id == ours["id"]

    async def test_select_does_not_rerun_a_clone_made_by_a_killed_run(
        self, fake_time: FakeTime, tmp_path: Path, options: RunOptions
    ) -> None:
        """A killed run's clone that FAILED is adopted, never cloned as a source."""
        platform = FakePlatform(
            clock=fake_time.time,
            rate_limit=(100_000, 300.0),
            queued_s=1.0,
            running_s=5.0,
            fail_fraction=1.0,
            seed=4,
        )
        (source,) = platform.seed_cohort(PROJECT, failed=1)
        assert options.ledger_path is not None
        with Ledger(options.ledger_path) as ledger:
            ledger.record(
                Event.CLONE_INTENT, source, attempt=1, run=True, at=fake_time.now
            )
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=platform.token, source="test")
            orphan = await clone_behind_our_back(creds, source, run=True)
            fake_time.now += 60  # the orphan clone ran and FAILED
            select = f"select:\n  project: {PROJECT}\n  status: [FAILED]\n"
            result = await run(manifest_for(tmp_path, select=select), creds, options)
        assert platform.clone_counts[orphan] == 0
        rows = {row.source_task_id: row for row in result.rows}
        assert rows[source].new_task_id == orphan


class TestWait:
    async def test_wait_does_not_poll_a_refused_draft_until_the_timeout(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
        fake_time: FakeTime,
    ) -> None:
        """A run refused with 7024 leaves a DRAFT that never turns terminal."""
        (bad,) = platform.seed_cohort(PROJECT, failed=1)
        body = (
            "version: 1\n" + FAST_BUDGET + "tasks:\n"
            f"  - id: {bad}\n"
            "    overrides:\n"
            "      execution_settings: {instance_type: z9.huge}\n"
        )
        await run(write_manifest(tmp_path, body), creds, options)
        assert options.ledger_path is not None
        with Ledger(options.ledger_path) as ledger:
            budget = RateBudget(RateLimit(), clock=fake_time.time)
            retrier = Retrier(FAST_POLICY, sleep=fake_time.sleep, rng=random.Random(1))
            async with ApiClient(
                endpoint=creds.endpoint, token=creds.token, budget=budget
            ) as client:
                summary = await follow(
                    ledger,
                    client,
                    retrier,
                    wait=True,
                    poll_s=60.0,
                    timeout_s=3600.0,
                    window_s=300.0,
                    stop=asyncio.Event(),
                    sleep=fake_time.sleep,
                    clock=fake_time.time,
                )
        assert not summary.timed_out
        assert summary.polls == 1
        assert read_ledger(options.ledger_path).rows[bad].status == "DRAFT"
