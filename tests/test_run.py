"""The run path end to end over real HTTP against the simulator: clone, patch, run,
guards, resume, reconciliation and faults. Time is fake: no test really waits."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from orchestrator.config import Credentials
from orchestrator.ledger import Event, Ledger, read_ledger
from orchestrator.runner import RunOptions, RunResult
from orchestrator.simulator import FakePlatform, FaultProfile
from tests.conftest import (
    FAST_BUDGET,
    PROJECT,
    FakeTime,
    clone_behind_our_back,
    manifest_for,
    run,
    write_manifest,
)


def assert_ledger_matches_platform(
    platform: FakePlatform, result: RunResult, sources: Sequence[str]
) -> None:
    """Every source cloned exactly once, and the ledger names that very clone."""
    rows = {row.source_task_id: row for row in result.rows}
    for source in sources:
        clones = platform.clones_of(source)
        assert len(clones) == 1, f"{source} cloned {len(clones)} times"
        assert rows[source].new_task_id == clones[0]["id"]


class TestCleanRun:
    async def test_every_source_cloned_once_and_recorded(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A clean run clones each source once with action=run; the ledger matches."""
        ids = platform.seed_cohort(PROJECT, failed=30, aborted=10)
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert result.exit_code == 0
        assert_ledger_matches_platform(platform, result, ids)
        assert all(row.status == "QUEUED" for row in result.rows)
        clone_calls = [r for r in platform.requests if r.route.endswith("/clone")]
        assert all(r.query.get("action") == "run" for r in clone_calls)
        assert platform.count("GET /tasks/{id}") == 0  # sources read in bulk only
        assert platform.count("POST /bulk/tasks/get") == 1

    async def test_draft_action_leaves_drafts(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """`action: draft` clones without action=run and the new tasks stay DRAFT."""
        ids = platform.seed_cohort(PROJECT, failed=5)
        path = manifest_for(tmp_path, ids, extra="action: draft\n")
        result = await run(path, creds, options)
        assert result.exit_code == 0
        assert {row.status for row in result.rows} == {"DRAFT"}
        assert platform.count("POST /tasks/{id}/actions/run") == 0
        clone_calls = [r for r in platform.requests if r.route.endswith("/clone")]
        assert all("action" not in r.query for r in clone_calls)

    async def test_second_run_clones_nothing(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Running the same manifest on the same ledger again sends no clone."""
        ids = platform.seed_cohort(PROJECT, failed=12)
        path = manifest_for(tmp_path, ids)
        await run(path, creds, options)
        reads = platform.count("POST /bulk/tasks/get")
        again = await run(path, creds, options)
        assert again.summary.outcomes == {"done": 12}
        assert sum(platform.clone_counts.values()) == 12
        assert platform.count("POST /bulk/tasks/get") == reads  # the ledger settles it

    async def test_ledger_lines_are_whole_and_intent_precedes_outcome(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Each clone's intent line comes before its outcome line in the ledger."""
        ids = platform.seed_cohort(PROJECT, failed=6)
        await run(manifest_for(tmp_path, ids), creds, options)
        assert options.ledger_path is not None
        lines = options.ledger_path.read_text().splitlines()
        events = [json.loads(line) for line in lines]
        for source in ids:
            mine = [e["event"] for e in events if e["source_task_id"] == source]
            assert mine.index("clone_intent") < mine.index("cloned")
        for event in events:
            assert {"ts", "run_id", "event", "source_task_id"} <= set(event)


class TestSelectAndGuards:
    async def test_select_over_pages_clones_exactly_the_matching_tasks(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A select across several pages picks every FAILED/ABORTED task, once."""
        platform.seed_cohort(PROJECT, failed=230, aborted=70, completed=40, running=5)
        wanted = {
            tid
            for tid, task in platform.tasks.items()
            if task["status"] in ("FAILED", "ABORTED")
        }
        select = f"select:\n  project: {PROJECT}\n  status: [FAILED, ABORTED]\n"
        result = await run(manifest_for(tmp_path, select=select), creds, options)
        assert {row.source_task_id for row in result.rows} == wanted
        assert_ledger_matches_platform(platform, result, sorted(wanted))
        assert platform.count("GET /tasks") >= 4  # 230/100 + 70/100 pages

    async def test_guards_skip_batch_and_running_and_record_unreadable(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Batch parents/children and running sources are skipped with a reason;
        unknown and forbidden IDs are recorded with the platform's error."""
        good = platform.seed_cohort(PROJECT, failed=2)
        running = platform.seed_cohort(PROJECT, running=1)
        parent, children = platform.add_batch(PROJECT, children=2, status="FAILED")
        forbidden = platform.add_forbidden_task()
        missing = "00000000-0000-4000-8000-000000000000"
        ids = [*good, *running, parent, children[0], forbidden, missing]
        result = await run(manifest_for(tmp_path, ids), creds, options)
        rows = {row.source_task_id: row for row in result.rows}
        assert [rows[i].status for i in good] == ["QUEUED", "QUEUED"]
        assert rows[running[0]].status == "SKIPPED"
        assert "only_status" in str(rows[running[0]].skip_reason)
        assert "batch parent" in str(rows[parent].skip_reason)
        assert "child of batch" in str(rows[children[0]].skip_reason)
        assert rows[missing].status == "CLONE_FAILED"
        assert (rows[missing].error or {}).get("code") == 7002
        assert rows[forbidden].status == "CLONE_FAILED"
        assert (rows[forbidden].error or {}).get("status") == 403
        assert result.exit_code == 1
        assert platform.clone_counts.keys() == set(good)

    async def test_allow_batch_opts_in(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """With allow_batch: true a batch parent is cloned."""
        parent, _ = platform.add_batch(PROJECT, children=2, status="FAILED")
        path = manifest_for(tmp_path, [parent], extra="allow_batch: true\n")
        result = await run(path, creds, options)
        assert platform.clone_counts[parent] == 1
        assert result.exit_code == 0


class TestOverrides:
    async def test_overrides_land_and_per_task_ones_win(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Draft, PATCH, run: the new tasks carry the overrides; a task's own win."""
        first, second = platform.seed_cohort(PROJECT, failed=2)
        body = (
            "version: 1\n" + FAST_BUDGET + "overrides:\n"
            '  name_suffix: " (rerun)"\n'
            "  use_interruptible_instances: false\n"
            "  execution_settings: {instance_type: c5.2xlarge}\n"
            "tasks:\n"
            f"  - {first}\n"
            f"  - id: {second}\n"
            "    label: big sample\n"
            "    overrides:\n"
            "      execution_settings: {instance_type: 'r5.4xlarge;ebs-gp2;1024'}\n"
        )
        result = await run(write_manifest(tmp_path, body), creds, options)
        assert result.exit_code == 0
        new_first = platform.task(str(result.rows[0].new_task_id))
        new_second = platform.task(str(result.rows[1].new_task_id))
        assert new_first["name"] == f"{platform.task(first)['name']} (rerun)"
        assert new_first["use_interruptible_instances"] is False
        assert new_first["execution_settings"]["instance_type"] == "c5.2xlarge"  # type: ignore[index]
        assert (
            new_second["execution_settings"]["instance_type"]  # type: ignore[index]
            == "r5.4xlarge;ebs-gp2;1024"
        )
        assert new_first["status"] == "QUEUED"
        assert result.rows[1].label == "big sample"
        assert platform.count("PATCH /tasks/{id}") == 2

    async def test_validation_error_is_recorded_not_fatal(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A 7024 from run is recorded with its message; the draft stays; others run."""
        bad, good = platform.seed_cohort(PROJECT, failed=2)
        body = (
            "version: 1\n" + FAST_BUDGET + "tasks:\n"
            f"  - id: {bad}\n"
            "    overrides:\n"
            "      execution_settings: {instance_type: z9.huge}\n"
            f"  - id: {good}\n"
            "    overrides: {use_interruptible_instances: false}\n"
        )
        result = await run(write_manifest(tmp_path, body), creds, options)
        rows = {row.source_task_id: row for row in result.rows}
        assert (rows[bad].error or {}).get("code") == 7024
        assert platform.task(str(rows[bad].new_task_id))["status"] == "DRAFT"
        assert rows[good].status == "QUEUED"
        assert result.exit_code == 1


class TestUncertainWrites:
    async def test_dropped_clone_answer_is_adopted_not_resent(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """The clone was committed but the answer lost: reconcile adopts it."""
        ids = platform.seed_cohort(PROJECT, failed=3)
        platform.script("POST", r"/actions/clone", ["drop"])
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.summary.adopted == 1
        assert sorted(r.via or "" for r in result.rows) == [
            "reconciled",
            "response",
            "response",
        ]

    async def test_stalled_clone_answer_times_out_and_is_adopted(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """An answer that comes after the client's timeout: no duplicate either."""
        platform.faults = dataclasses.replace(platform.faults, stall_s=2.0)
        ids = platform.seed_cohort(PROJECT, failed=2)
        platform.script("POST", r"/actions/clone", ["stall"])
        options = dataclasses.replace(options, request_timeout_s=0.3)
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.summary.adopted == 1

    async def test_5xx_before_processing_is_resent_after_reconciling(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """A 500 that created nothing: reconcile finds none; the clone is resent."""
        ids = platform.seed_cohort(PROJECT, failed=1)
        platform.script("POST", r"/actions/clone", [500, 502])
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.rows[0].attempts == 3
        assert result.summary.adopted == 0

    async def test_same_name_and_app_other_inputs_are_not_confused(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Two sources alike but for their inputs each end with their own clone."""
        platform.files.update({"a" * 24, "b" * 24})
        a = platform.add_task(
            project=PROJECT,
            name="same",
            app=f"{PROJECT}/wf/1",
            status="FAILED",
            inputs={"reads": {"class": "File", "path": "a" * 24}},
        )
        b = platform.add_task(
            project=PROJECT,
            name="same",
            app=f"{PROJECT}/wf/1",
            status="FAILED",
            inputs={"reads": {"class": "File", "path": "b" * 24}},
        )
        ids = [str(a["id"]), str(b["id"])]
        platform.script("POST", r"/actions/clone", ["drop", "drop"])
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.summary.adopted == 2

    async def test_intent_without_outcome_is_reconciled_on_resume(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
        fake_time: FakeTime,
    ) -> None:
        """A crash between the POST and its record: the next run adopts the clone."""
        ids = platform.seed_cohort(PROJECT, failed=2)
        assert options.ledger_path is not None
        # What a kill -9 right after sending leaves: an intent, and a committed clone.
        with Ledger(options.ledger_path) as ledger:
            ledger.record(
                Event.CLONE_INTENT, ids[0], attempt=1, run=True, at=fake_time.now
            )
        await clone_behind_our_back(creds, ids[0], run=True)
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.summary.adopted == 1
        assert result.rows[0].attempts == 1


class TestChaos:
    async def test_hundreds_of_sources_under_faults_end_cloned_exactly_once(
        self, fake_time: FakeTime, tmp_path: Path, options: RunOptions
    ) -> None:
        """5xx faults, lost answers on writes and a tight rate-limit window: every
        source ends with exactly one clone, and the ledger says which."""
        from orchestrator.simulator import serve

        platform = FakePlatform(
            clock=fake_time.time,
            rate_limit=(60, 10.0),
            faults=FaultProfile(error_rate=0.08, lost_answer_rate=0.06, seed=3),
            seed=3,
        )
        ids = platform.seed_cohort(PROJECT, failed=250, aborted=50)
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=platform.token, source="chaos")
            result = await run(manifest_for(tmp_path, ids), creds, options)
        print(
            f"chaos: 429s={platform.rate_limited} adopted={result.summary.adopted} "
            f"requests={result.summary.requests} retries={result.summary.retries} "
            f"pauses={result.summary.rate_limit_pauses}"
        )
        assert result.exit_code == 0
        assert_ledger_matches_platform(platform, result, ids)
        state = read_ledger(options.ledger_path or Path())
        assert {r.new_task_id for r in state.rows.values()} == {
            str(platform.clones_of(i)[0]["id"]) for i in ids
        }
        # Paced from the headers: 429s stay rare even though the window is tight.
        assert platform.rate_limited <= 5
        assert result.summary.adopted > 0


class TestResumeSteps:
    def _stopped_after_clone(
        self, options: RunOptions, source: str, new_id: str
    ) -> None:
        assert options.ledger_path is not None
        with Ledger(options.ledger_path) as ledger:
            ledger.record(
                Event.PLANNED, source, steps=["clone", "patch", "run"], name="x"
            )
            ledger.record(Event.CLONE_INTENT, source, attempt=1, run=False, at=0.0)
            ledger.record(
                Event.CLONED, source, new_task_id=new_id, status="DRAFT", via="response"
            )

    async def test_draft_left_by_a_stopped_run_is_patched_and_run(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Killed after the clone: the next run patches and runs that same draft."""
        (source,) = platform.seed_cohort(PROJECT, failed=1)
        new_id = await clone_behind_our_back(creds, source, run=False)
        self._stopped_after_clone(options, source, new_id)
        path = manifest_for(
            tmp_path, [source], extra="overrides: {name_suffix: ' R'}\n"
        )
        result = await run(path, creds, options)
        assert platform.clone_counts[source] == 1
        assert result.rows[0].new_task_id == new_id
        assert platform.task(new_id)["status"] == "QUEUED"
        assert str(platform.task(new_id)["name"]).endswith(" R")
        assert result.exit_code == 0

    async def test_run_step_that_went_through_is_not_sent_again(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """Killed after the run POST but before its record: no second run, no error."""
        (source,) = platform.seed_cohort(PROJECT, failed=1)
        new_id = await clone_behind_our_back(creds, source, run=False)
        await _run_draft(creds, new_id)
        self._stopped_after_clone(options, source, new_id)
        runs_before = platform.count("POST /tasks/{id}/actions/run")
        path = manifest_for(
            tmp_path, [source], extra="overrides: {name_suffix: ' R'}\n"
        )
        result = await run(path, creds, options)
        assert platform.count("POST /tasks/{id}/actions/run") == runs_before
        assert platform.clone_counts[source] == 1
        assert result.rows[0].status == "QUEUED"
        assert result.exit_code == 0


class TestSelectWhileStatusesChange:
    async def test_no_page_skipped_or_repeated(
        self, tmp_path: Path, options: RunOptions
    ) -> None:
        """Running tasks fail while the query pages through the project: every task
        FAILED at the start is cloned once, and none twice."""
        from orchestrator.simulator import serve

        ticks = {"now": 1_800_000_000.0}

        def ticking() -> float:
            ticks["now"] += 0.05  # time moves on every look at the clock
            return ticks["now"]

        platform = FakePlatform(
            clock=ticking, queued_s=1.0, running_s=5.0, fail_fraction=0.5, seed=5
        )
        platform.seed_cohort(PROJECT, failed=150, running=150, queued=60)
        failed_at_start = {
            tid for tid, task in platform.tasks.items() if task["status"] == "FAILED"
        }
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=platform.token, source="test")
            select = f"select:\n  project: {PROJECT}\n  status: [FAILED]\n"
            result = await run(manifest_for(tmp_path, select=select), creds, options)
        changed = {
            tid for tid, task in platform.tasks.items() if task["status"] == "FAILED"
        } - failed_at_start
        assert changed, "no status changed during the listing: the test is moot"
        cloned = set(platform.clone_counts)
        assert failed_at_start <= cloned
        assert max(platform.clone_counts.values()) == 1
        assert {r.source_task_id for r in result.rows} == cloned


class TestSharedBudget:
    async def test_another_client_on_the_token_causes_no_429_storm(
        self, fake_time: FakeTime, tmp_path: Path, options: RunOptions
    ) -> None:
        """Another script spends a third of the same window: the pool slows down
        from the headers and sees at most a couple of 429s; every source once."""
        from orchestrator.simulator import serve

        platform: FakePlatform | None = None
        looks = {"n": 0, "busy": False}

        def clock_with_competitor() -> float:
            looks["n"] += 1
            if platform is not None and not looks["busy"] and looks["n"] % 6 == 0:
                looks["busy"] = True
                platform.spend_budget(1)  # the other client's request
                looks["busy"] = False
            return fake_time.now

        platform = FakePlatform(clock=clock_with_competitor, rate_limit=(100, 10.0))
        ids = platform.seed_cohort(PROJECT, failed=300)
        async with serve(platform) as url:
            creds = Credentials(endpoint=url, token=platform.token, source="test")
            opts = dataclasses.replace(options, clock=clock_with_competitor)
            result = await run(manifest_for(tmp_path, ids), creds, opts)
        assert result.exit_code == 0
        assert_ledger_matches_platform(platform, result, ids)
        assert platform.rate_limited <= 3
        assert result.summary.rate_limit_pauses >= 3  # it did wait for resets


class TestLateCommit:
    async def test_clone_committed_after_the_client_gave_up_is_adopted(
        self,
        platform: FakePlatform,
        creds: Credentials,
        options: RunOptions,
        tmp_path: Path,
    ) -> None:
        """The backend finishes the clone after the connection dropped: the pool
        backs off before it looks, finds it, and sends no second clone."""
        platform.late_commit_s = 0.4  # within the first backoff (0.5 s + jitter)
        ids = platform.seed_cohort(PROJECT, failed=2)
        platform.script("POST", r"/actions/clone", ["late"])
        result = await run(manifest_for(tmp_path, ids), creds, options)
        assert_ledger_matches_platform(platform, result, ids)
        assert result.summary.adopted == 1


async def _run_draft(creds: Credentials, task_id: str) -> None:
    """Start a draft behind our back (the run POST a killed run had sent)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{creds.endpoint}/tasks/{task_id}/actions/run",
            headers={"X-SBG-Auth-Token": creds.token},
        ) as response,
    ):
        assert response.status == 200
