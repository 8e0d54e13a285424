"""The command line as a user meets it: `orchestrator.cli.main(argv)` in-process, its
exit code, stdout and stderr, against the simulator served from another thread.

`main` calls `asyncio.run`, so these tests are synchronous; the simulator runs on its
own loop (`serve_in_thread`). HOME points at the test's directory: the developer's
~/.sevenbridges is never read.
"""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrator.cli import build_parser, main
from orchestrator.ledger import Ledger, read_ledger
from orchestrator.simulator import SIM_PROJECT, SIM_TOKEN, FakePlatform, serve_in_thread
from tests.conftest import FAST_BUDGET, write_manifest

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
WRITE_ROUTES = frozenset(
    {
        "POST /tasks/{id}/actions/clone",
        "POST /tasks/{id}/actions/run",
        "POST /tasks/{id}/actions/abort",
        "PATCH /tasks/{id}",
    }
)
COMMANDS = (
    "validate",
    "plan",
    "run",
    "status",
    "report",
    "export",
    "abort",
    "simulate",
    "demo",
)
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
)
TERMINAL = frozenset({"COMPLETED", "FAILED", "ABORTED"})


@dataclass(frozen=True, slots=True)
class Result:
    """What a user sees of one command."""

    code: int
    out: str
    err: str


Cli = Callable[..., Result]
Serve = Callable[[FakePlatform], str]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real credentials: HOME is the test's directory, no SB_* variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SB_API_ENDPOINT", raising=False)
    monkeypatch.delenv("SB_AUTH_TOKEN", raising=False)


@pytest.fixture(name="cli")
def _cli(capsys: pytest.CaptureFixture[str]) -> Cli:
    """Run `cgc-rerun ARGS...` in-process; return its exit code and output."""

    def run(*args: str | Path) -> Result:
        capsys.readouterr()  # start from clean buffers
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture(name="serve")
def _serve(monkeypatch: pytest.MonkeyPatch) -> Iterator[Serve]:
    """Serve a (seeded) platform in a thread and point SB_API_ENDPOINT/TOKEN at it."""
    with ExitStack() as stack:

        def start(platform: FakePlatform) -> str:
            url = stack.enter_context(serve_in_thread(platform))
            monkeypatch.setenv("SB_API_ENDPOINT", url)
            monkeypatch.setenv("SB_AUTH_TOKEN", platform.token)
            return url

        yield start


def new_platform(**kwargs: object) -> FakePlatform:
    """A real-time simulator whose rate limit does not bind unless a test says."""
    params: dict[str, object] = {"rate_limit": (100_000, 300.0), "seed": 1}
    params.update(kwargs)
    return FakePlatform(**params)  # type: ignore[arg-type]


def cohort_manifest(
    directory: Path, ids: Sequence[str], *, extra: str = "", name: str = "cohort.yaml"
) -> Path:
    """A manifest naming `ids` explicitly, with a non-binding client budget."""
    body = "version: 1\n" + FAST_BUDGET + extra + "tasks:\n"
    body += "".join(f"  - {i}\n" for i in ids)
    return write_manifest(directory, body, name)


def writes(platform: FakePlatform) -> list[str]:
    """The write requests the platform received, as `METHOD /route`."""
    return [r.route for r in platform.requests if r.route in WRITE_ROUTES]


def report_json(cli: Cli, ledger: Path) -> list[dict[str, object]]:
    """`report LEDGER --format json`, parsed."""
    result = cli("report", ledger, "--format", "json")
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert isinstance(rows, list)
    return rows


def new_ids(platform: FakePlatform, sources: Sequence[str]) -> list[str]:
    """The IDs of every clone the platform made of `sources`."""
    return [str(c["id"]) for s in sources for c in platform.clones_of(s)]


class TestValidate:
    @pytest.mark.parametrize(
        "name", ["example.yaml", "failed-cohort.yaml", "demo.yaml"]
    )
    def test_shipped_manifests_are_valid(self, cli: Cli, name: str) -> None:
        """The manifests in manifests/ validate offline with exit 0."""
        result = cli("validate", MANIFESTS / name)
        assert result.code == 0, result.err
        assert "OK" in result.out

    def test_bad_manifest_names_file_line_and_key(
        self, cli: Cli, tmp_path: Path
    ) -> None:
        """An unknown key is exit 2, and stderr says which file, line and key."""
        path = write_manifest(
            tmp_path,
            "version: 1\n"
            "tasks:\n"
            "  - 08c5da64-1329-4a3e-b014-62a1617bc7db\n"
            "concurency: 4\n",
            "typo.yaml",
        )
        result = cli("validate", path)
        assert result.code == 2
        assert f"{path}:4" in result.err
        assert "concurency" in result.err
        assert result.out == ""

    def test_one_bad_among_several_is_exit_2(self, cli: Cli, tmp_path: Path) -> None:
        """Several files, one bad: the good ones are reported OK, the exit is 2."""
        bad = write_manifest(
            tmp_path, "version: 1\ntasks:\n  - not-a-task-id\n", "bad.yaml"
        )
        good = MANIFESTS / "example.yaml"
        result = cli("validate", good, bad, MANIFESTS / "demo.yaml")
        assert result.code == 2
        assert f"{good}: OK" in result.out
        assert "demo.yaml: OK" in result.out
        assert f"{bad}:3" in result.err

    def test_missing_file_is_exit_2(self, cli: Cli, tmp_path: Path) -> None:
        """A manifest that does not exist is a usage error naming it."""
        missing = tmp_path / "nope.yaml"
        result = cli("validate", missing)
        assert result.code == 2
        assert str(missing) in result.err


class TestRun:
    def test_run_clones_each_source_and_prints_a_summary(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """Exit 0; stdout sums up and points at the ledger beside the manifest,
        whose report lists every source with its new task."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=4, aborted=2)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        result = cli("run", path, "--no-progress")
        assert result.code == 0, result.err
        assert dict(platform.clone_counts) == dict.fromkeys(ids, 1)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert "6 sources: QUEUED 6" in result.out
        assert f"cgc-rerun report {ledger}" in result.out
        assert sorted(read_ledger(ledger).rows) == sorted(ids)
        table = cli("report", ledger).out
        for source in ids:
            assert source in table
        for clone in new_ids(platform, ids):
            assert clone in table

    def test_failed_sources_are_named_with_the_way_to_retry(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """Exit 1 when a clone fails; stdout names that source and how to retry it."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        missing = "00000000-0000-4000-8000-000000000000"
        serve(platform)
        path = cohort_manifest(tmp_path, [*ids, missing])
        result = cli("run", path, "--no-progress")
        assert result.code == 1
        assert missing in result.out
        assert "CLONE_FAILED" in result.out
        assert all(source not in result.out for source in ids)
        assert "export" in result.out
        assert dict(platform.clone_counts) == dict.fromkeys(ids, 1)

    def test_second_run_clones_nothing(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """Running the same manifest again sends no clone and still exits 0."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=5)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        assert cli("run", path, "--no-progress").code == 0
        before = len(platform.requests)
        again = cli("run", path, "--no-progress")
        assert again.code == 0, again.err
        assert dict(platform.clone_counts) == dict.fromkeys(ids, 1)
        assert not [r for r in platform.requests[before:] if r.route in WRITE_ROUTES]
        assert "5 sources: QUEUED 5" in again.out

    def test_explicit_ledger_option_is_used(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`--ledger L` writes L and not the default ledger."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "elsewhere" / "mine.jsonl"
        assert cli("run", path, "--ledger", ledger, "--no-progress").code == 0
        assert sorted(read_ledger(ledger).rows) == sorted(ids)
        assert not (tmp_path / "cohort.ledger.jsonl").exists()


class TestAuth:
    def test_wrong_token_is_exit_3_after_few_requests(
        self, cli: Cli, serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A token the platform refuses: exit 3, a clear message, no clone."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=20)
        serve(platform)
        wrong = "wrong-0123456789abcdef0123456789"
        monkeypatch.setenv("SB_AUTH_TOKEN", wrong)
        result = cli("run", cohort_manifest(tmp_path, ids), "--no-progress")
        assert result.code == 3
        assert "refused" in result.err
        assert len(platform.requests) <= 3
        assert not platform.clone_counts
        assert wrong not in result.out + result.err

    def test_revoked_permission_is_exit_3_without_retry_storm(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """403 on every call (access revoked): exit 3 after a few requests."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=50)
        platform.forbidden = True
        serve(platform)
        result = cli("run", cohort_manifest(tmp_path, ids), "--no-progress")
        assert result.code == 3
        assert len(platform.requests) <= 5
        assert not platform.clone_counts

    def test_revoked_permission_mid_run_stops_early(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """Every clone refused with 403: the run stops early with exit 3."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=100)
        platform.script("POST", r"/actions/clone$", [403] * 100)
        serve(platform)
        result = cli("run", cohort_manifest(tmp_path, ids), "--no-progress")
        assert result.code == 3
        assert platform.count("POST /tasks/{id}/actions/clone") <= 20
        assert not platform.clone_counts


class TestSecrets:
    SECRET = "tok-9d41c3e07b5a4f2e8c6b1a0d9e8f7c6b"

    @pytest.mark.parametrize(
        "flags",
        [
            ("--log-format", "json"),
            ("--log-format", "console"),
            ("--log-format", "json", "-v"),
            ("--log-format", "console", "-v"),
        ],
    )
    def test_token_never_in_output_or_ledger(
        self, cli: Cli, serve: Serve, tmp_path: Path, flags: tuple[str, ...]
    ) -> None:
        """run, plan, status, report, abort: the token shows nowhere, even with -v."""
        platform = new_platform(token=self.SECRET, queued_s=1000.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        results = [
            cli(*flags, "plan", path),
            cli(*flags, "run", path, "--no-progress"),
            cli(*flags, "status", ledger),
            cli(*flags, "report", ledger),
            cli(*flags, "report", ledger, "--format", "json"),
            cli(*flags, "abort", ledger, "--yes"),
        ]
        assert [r.code for r in results] == [0] * len(results)
        assert any(r.err for r in results)  # something was logged at all
        for result in results:
            assert self.SECRET not in result.out
            assert self.SECRET not in result.err
        assert self.SECRET not in ledger.read_text(encoding="utf-8")

    def test_refused_token_not_echoed(
        self, cli: Cli, serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A refused token is not printed back, in either log format, with -v."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        serve(platform)
        wrong = "tok-wrong-00112233445566778899aabbccdd"
        monkeypatch.setenv("SB_AUTH_TOKEN", wrong)
        path = cohort_manifest(tmp_path, ids)
        for fmt in ("json", "console"):
            result = cli("-v", "--log-format", fmt, "run", path, "--no-progress")
            assert result.code == 3
            assert wrong not in result.out + result.err


class TestReport:
    @pytest.fixture(name="ledger")
    def _ledger(self, cli: Cli, serve: Serve, tmp_path: Path) -> Path:
        """A ledger of a finished run over five sources, one of them unreadable."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=4)
        missing = "00000000-0000-4000-8000-000000000000"
        serve(platform)
        body = (
            "version: 1\n" + FAST_BUDGET + "tasks:\n"
            f"  - id: {ids[0]}\n    label: 'tumour | normal, \"A\"'\n"
            + "".join(f"  - {i}\n" for i in [*ids[1:], missing])
        )
        path = write_manifest(tmp_path, body, "cohort.yaml")
        assert cli("run", path, "--no-progress").code == 1  # the missing one failed
        return tmp_path / "cohort.ledger.jsonl"

    def test_json_has_one_object_per_source(self, cli: Cli, ledger: Path) -> None:
        """`--format json`: an array, one object per source with the contract's keys."""
        rows = report_json(cli, ledger)
        assert len(rows) == 5
        keys = {
            "source_task_id",
            "label",
            "new_task_id",
            "status",
            "attempts",
            "error",
            "updated",
        }
        for row in rows:
            assert keys <= set(row)
            assert RFC3339.fullmatch(str(row["updated"])), row["updated"]
        by_status = {str(r["source_task_id"]): r for r in rows}
        failed = by_status["00000000-0000-4000-8000-000000000000"]
        assert failed["status"] == "CLONE_FAILED"
        assert failed["new_task_id"] is None
        error = failed["error"]
        assert isinstance(error, dict)
        assert {"status", "code", "message"} <= set(error)
        assert error["status"] == 404
        ok = [r for r in rows if r["status"] == "QUEUED"]
        assert len(ok) == 4
        assert all(r["error"] is None and r["new_task_id"] for r in ok)
        assert rows[0]["label"] == 'tumour | normal, "A"'

    def test_csv(self, cli: Cli, ledger: Path) -> None:
        """`--format csv` parses back to one record per source."""
        result = cli("report", ledger, "--format", "csv")
        assert result.code == 0
        records = list(csv.DictReader(io.StringIO(result.out)))
        assert len(records) == 5
        assert {"source_task_id", "new_task_id", "status"} <= set(records[0])
        assert records[0]["label"] == 'tumour | normal, "A"'
        assert sorted(r["source_task_id"] for r in records) == sorted(
            str(r["source_task_id"]) for r in report_json(cli, ledger)
        )

    def test_markdown(self, cli: Cli, ledger: Path) -> None:
        """`--format markdown` is a table with a header and one line per source."""
        result = cli("report", ledger, "--format", "markdown")
        assert result.code == 0
        table = [line for line in result.out.splitlines() if line.startswith("|")]
        assert "source_task_id" in table[0]
        assert re.fullmatch(r"\|(?:\s*:?-+:?\s*\|)+", table[1])
        assert len(table) == 2 + 5
        # A '|' inside a cell is escaped: every row has as many cells as the header.
        cells = len(re.split(r"(?<!\\)\|", table[0]))
        assert all(len(re.split(r"(?<!\\)\|", line)) == cells for line in table)

    def test_table(self, cli: Cli, ledger: Path) -> None:
        """The default table names every source and ends with a summary."""
        result = cli("report", ledger)
        assert result.code == 0
        for row in report_json(cli, ledger):
            assert str(row["source_task_id"]) in result.out
        assert "5 sources" in result.out

    @pytest.mark.parametrize("fmt", ["json", "csv", "markdown", "table"])
    def test_output_file(
        self, cli: Cli, ledger: Path, tmp_path: Path, fmt: str
    ) -> None:
        """`-o FILE` writes the report there, not to stdout."""
        target = tmp_path / f"report.{fmt}"
        result = cli("report", ledger, "--format", fmt, "-o", target)
        assert result.code == 0
        text = target.read_bytes().decode("utf-8")  # csv lines end in CRLF
        assert cli("report", ledger, "--format", fmt).out == text
        assert result.out == ""
        if fmt == "json":
            assert len(json.loads(text)) == 5

    def test_missing_ledger_is_exit_2(self, cli: Cli, tmp_path: Path) -> None:
        """`report` on a ledger that does not exist: exit 2 naming it."""
        missing = tmp_path / "none.ledger.jsonl"
        result = cli("report", missing)
        assert result.code == 2
        assert str(missing) in result.err


class TestPlan:
    def _cohort(self, platform: FakePlatform) -> dict[str, list[str]]:
        return {
            "failed": platform.seed_cohort(SIM_PROJECT, failed=4, aborted=2),
            "running": platform.seed_cohort(SIM_PROJECT, running=2),
        }

    def test_plan_sends_no_write_and_lists_actions(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`plan --format json` lists each source's action; no write is sent."""
        platform = new_platform(queued_s=1000.0)
        cohort = self._cohort(platform)
        serve(platform)
        path = cohort_manifest(tmp_path, cohort["failed"] + cohort["running"])
        result = cli("plan", path, "--format", "json")
        assert result.code == 0, result.err
        assert writes(platform) == []
        plan = json.loads(result.out)
        actions = {s["source_task_id"]: s["action"] for s in plan["sources"]}
        assert actions == {
            **dict.fromkeys(cohort["failed"], "clone"),
            **dict.fromkeys(cohort["running"], "skip"),
        }
        assert plan["counts"] == {"clone": 6, "skip": 2}
        assert all(
            s["reason"] for s in plan["sources"] if s["action"] == "skip"
        )  # and why

        # What run then does matches the plan.
        ran = cli("run", path, "--no-progress")
        assert ran.code == 0, ran.err
        assert dict(platform.clone_counts) == dict.fromkeys(cohort["failed"], 1)
        statuses = {
            str(r["source_task_id"]): r["status"]
            for r in report_json(cli, tmp_path / "cohort.ledger.jsonl")
        }
        assert [statuses[i] for i in cohort["running"]] == ["SKIPPED", "SKIPPED"]

        # Planned again: the ledger says they are done; still no write.
        before = len(writes(platform))
        again = json.loads(cli("plan", path, "--format", "json").out)
        assert again["counts"] == {"done": 6, "skip": 2}
        assert len(writes(platform)) == before

    def test_table_plan_shows_counts_and_requests(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """The default plan output names counts, skip reasons and requests needed."""
        platform = new_platform(queued_s=1000.0)
        cohort = self._cohort(platform)
        serve(platform)
        path = cohort_manifest(tmp_path, cohort["failed"] + cohort["running"])
        result = cli("plan", path)
        assert result.code == 0, result.err
        assert "clone: 6" in result.out
        assert "skip: 2" in result.out
        assert "API requests" in result.out
        assert writes(platform) == []

    def test_dry_run_is_plan_and_sends_no_write(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`run --dry-run` prints the plan, sends no write and clones nothing."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        result = cli("run", path, "--dry-run", "--format", "json")
        assert result.code == 0, result.err
        assert writes(platform) == []
        assert not platform.clone_counts
        plan = json.loads(result.out)
        assert sorted(s["source_task_id"] for s in plan["sources"]) == sorted(ids)
        assert plan["counts"] == {"clone": 3}
        assert not read_ledger(tmp_path / "cohort.ledger.jsonl").rows


class TestStatusAndWait:
    def test_status_refreshes_statuses(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """After the tasks moved on, `status` records and prints the new statuses."""
        platform = new_platform(queued_s=0.2, running_s=0.3, fail_fraction=0.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=4)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--no-progress").code == 0
        assert {r["status"] for r in report_json(cli, ledger)} == {"QUEUED"}
        deadline = time.monotonic() + 10
        while True:
            result = cli("status", ledger)
            assert result.code == 0, result.err
            statuses = {r["status"] for r in report_json(cli, ledger)}
            if statuses == {"COMPLETED"} or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert statuses == {"COMPLETED"}
        assert "COMPLETED" in result.out
        assert platform.count("GET /tasks/{id}") == 0

    def test_status_wait_ends_with_all_terminal(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`status --wait` polls until all new tasks are terminal; 0 if COMPLETED."""
        platform = new_platform(queued_s=0.2, running_s=0.3, fail_fraction=0.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=6)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--no-progress").code == 0
        result = cli("status", ledger, "--wait", "--poll-seconds", "1")
        assert result.code == 0, result.err
        rows = report_json(cli, ledger)
        assert {r["status"] for r in rows} == {"COMPLETED"}
        assert result.out.count("COMPLETED") >= len(ids)
        assert platform.count("GET /tasks/{id}") == 0

    def test_status_wait_is_exit_1_when_some_failed(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`status --wait` ends 1 when some rerun FAILED."""
        platform = new_platform(queued_s=0.1, running_s=0.2, fail_fraction=1.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--no-progress").code == 0
        result = cli("status", ledger, "--wait", "--poll-seconds", "1")
        assert result.code == 1
        assert {r["status"] for r in report_json(cli, ledger)} == {"FAILED"}

    @pytest.mark.parametrize("fail_fraction", [0.0, 0.5, 1.0])
    def test_run_wait_exit_1_exactly_when_some_failed(
        self, cli: Cli, serve: Serve, tmp_path: Path, fail_fraction: float
    ) -> None:
        """`run --wait`: 1 exactly when some rerun FAILED; polls by bulk reads only."""
        platform = new_platform(
            queued_s=0.1, running_s=0.2, fail_fraction=fail_fraction
        )
        ids = platform.seed_cohort(SIM_PROJECT, failed=8)
        serve(platform)
        path = cohort_manifest(
            tmp_path, ids, extra="wait: {poll_seconds: 1, timeout_hours: 1}\n"
        )
        result = cli("run", path, "--wait", "--no-progress")
        final = {str(platform.task(i)["status"]) for i in new_ids(platform, ids)}
        assert final <= TERMINAL
        if fail_fraction == 0.5:
            assert final == {"COMPLETED", "FAILED"}  # the seed gives a mix
        assert result.code == (1 if "FAILED" in final else 0), result.err
        rows = report_json(cli, tmp_path / "cohort.ledger.jsonl")
        assert {str(r["status"]) for r in rows} == final
        assert platform.count("GET /tasks/{id}") == 0
        assert platform.count("POST /bulk/tasks/get") >= 2


class TestExport:
    def test_export_failed_then_rerun_exactly_those(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """export --failed -> validate -> run reruns exactly the failed sources."""
        platform = new_platform(queued_s=0.1, running_s=0.2, fail_fraction=0.5)
        ids = platform.seed_cohort(SIM_PROJECT, failed=8)
        missing = "00000000-0000-4000-8000-000000000000"
        serve(platform)
        path = cohort_manifest(
            tmp_path,
            [*ids, missing],
            extra="wait: {poll_seconds: 1, timeout_hours: 1}\n",
        )
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--wait", "--no-progress").code == 1
        failed = sorted(
            str(r["source_task_id"])
            for r in report_json(cli, ledger)
            if r["status"] in ("FAILED", "ABORTED", "CLONE_FAILED")
        )
        assert missing in failed
        assert 1 < len(failed) < len(ids) + 1  # some, not all

        out = tmp_path / "new.yaml"
        exported = cli("export", ledger, "--failed", "-o", out)
        assert exported.code == 0, exported.err
        checked = cli("validate", out)
        assert checked.code == 0, checked.err

        before = dict(platform.clone_counts)
        platform.fail_fraction = 0.0
        rerun = cli("run", out, "--no-progress")
        assert rerun.code == 1  # the missing source fails again
        again = {s: platform.clone_counts[s] - before.get(s, 0) for s in ids}
        assert sorted(s for s, n in again.items() if n) == sorted(
            s for s in failed if s != missing
        )
        assert set(again.values()) <= {0, 1}
        rows = report_json(cli, tmp_path / "new.ledger.jsonl")
        assert sorted(str(r["source_task_id"]) for r in rows) == failed

    def test_export_with_nothing_failed(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """No failed source: exit 0 and a message saying there is nothing to export."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        assert cli("run", path, "--no-progress").code == 0
        out = tmp_path / "new.yaml"
        result = cli("export", tmp_path / "cohort.ledger.jsonl", "--failed", "-o", out)
        assert result.code == 0
        assert "nothing" in result.err


class TestAbort:
    def test_abort_yes_aborts_live_tasks(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """`abort --yes` aborts every new task still QUEUED or RUNNING."""
        platform = new_platform(queued_s=0.0, running_s=1000.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=5)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--no-progress").code == 0
        result = cli("abort", ledger, "--yes")
        assert result.code == 0, result.err
        assert "aborted 5" in result.out
        clones = new_ids(platform, ids)
        assert {platform.task(c)["status"] for c in clones} == {"ABORTED"}
        assert platform.count("POST /tasks/{id}/actions/abort") == 5
        assert {r["status"] for r in report_json(cli, ledger)} == {"ABORTED"}
        # Nothing is left to abort: a second abort sends none.
        assert cli("abort", ledger, "--yes").code == 0
        assert platform.count("POST /tasks/{id}/actions/abort") == 5

    def test_abort_without_yes_off_a_terminal_is_refused(
        self,
        cli: Cli,
        serve: Serve,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """No --yes and stdin is not a terminal: exit 2, nothing aborted."""
        platform = new_platform(queued_s=0.0, running_s=1000.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        ledger = tmp_path / "cohort.ledger.jsonl"
        assert cli("run", path, "--no-progress").code == 0
        before = len(platform.requests)
        monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
        result = cli("abort", ledger)
        assert result.code == 2
        assert "--yes" in result.err
        assert len(platform.requests) == before
        assert {platform.task(c)["status"] for c in new_ids(platform, ids)} == {
            "RUNNING"
        }


class TestGuards:
    def test_ledger_in_use_is_exit_2_and_sends_nothing(
        self, cli: Cli, serve: Serve, tmp_path: Path
    ) -> None:
        """A second run on a ledger held by another run stops at once, exit 2."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=3)
        serve(platform)
        path = cohort_manifest(tmp_path, ids)
        with Ledger(tmp_path / "cohort.ledger.jsonl"):
            result = cli("run", path, "--no-progress")
        assert result.code == 2
        assert "in use" in result.err
        assert platform.requests == []

    def test_http_endpoint_off_loopback_is_refused(
        self, cli: Cli, serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Plain http to a non-loopback address: exit 2 before anything is sent."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        url = serve(platform)
        path = cohort_manifest(tmp_path, ids)
        # 0.0.0.0 is not a loopback address, yet Linux would deliver to our simulator.
        monkeypatch.setenv("SB_API_ENDPOINT", url.replace("127.0.0.1", "0.0.0.0"))  # noqa: S104
        result = cli("run", path, "--no-progress")
        assert result.code == 2
        assert "http" in result.err
        assert platform.requests == []
        monkeypatch.setenv("SB_API_ENDPOINT", "http://cgc-api.sbgenomics.com/v2")
        result = cli("plan", path)
        assert result.code == 2
        assert "https" in result.err

    @pytest.mark.parametrize("command", ["run", "plan"])
    def test_manifest_platform_mismatch_is_exit_2(
        self, cli: Cli, serve: Serve, tmp_path: Path, command: str
    ) -> None:
        """`platform: cgc` with the simulator's endpoint: exit 2, nothing sent."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        serve(platform)
        path = cohort_manifest(tmp_path, ids, extra="platform: cgc\n")
        result = cli(command, path)
        assert result.code == 2
        assert "cgc-api.sbgenomics.com" in result.err
        assert platform.requests == []
        assert not platform.clone_counts

    def test_no_credentials_is_exit_2(self, cli: Cli, tmp_path: Path) -> None:
        """Neither environment nor credentials file: exit 2 with a pointer."""
        path = cohort_manifest(tmp_path, ["08c5da64-1329-4a3e-b014-62a1617bc7db"])
        result = cli("run", path)
        assert result.code == 2
        assert "SB_AUTH_TOKEN" in result.err

    def test_profile_from_credentials_file(
        self, cli: Cli, serve: Serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """`--profile NAME` reads ~/.sevenbridges/credentials (HOME is the test's)."""
        platform = new_platform()
        ids = platform.seed_cohort(SIM_PROJECT, failed=2)
        url = serve(platform)
        monkeypatch.delenv("SB_API_ENDPOINT")
        monkeypatch.delenv("SB_AUTH_TOKEN")
        creds = tmp_path / ".sevenbridges" / "credentials"
        creds.parent.mkdir()
        creds.write_text(
            f"[sim]\napi_endpoint = {url}\nauth_token = {SIM_TOKEN}\n",
            encoding="utf-8",
        )
        path = cohort_manifest(tmp_path, ids)
        result = cli("--profile", "sim", "run", path, "--no-progress")
        assert result.code == 0, result.err
        assert dict(platform.clone_counts) == dict.fromkeys(ids, 1)
        assert SIM_TOKEN not in result.out + result.err


class TestHelp:
    def test_parser_has_the_contract_commands(self) -> None:
        """The parser offers exactly the commands of the contract."""
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command")
        assert set(sub.choices or ()) == set(COMMANDS)

    @pytest.mark.parametrize("command", COMMANDS)
    def test_every_command_has_help(self, cli: Cli, command: str) -> None:
        """`cgc-rerun COMMAND --help` prints its usage and exits 0."""
        result = cli(command, "--help")
        assert result.code == 0
        assert f"usage: cgc-rerun {command}" in result.out

    def test_top_level_help_and_usage_error(self, cli: Cli) -> None:
        """`--help` is exit 0; no command or an unknown option is exit 2."""
        assert cli("--help").code == 0
        assert cli().code == 2
        assert cli("run", "--no-such-option", "m.yaml").code == 2

    @pytest.mark.parametrize("command", COMMANDS)
    def test_every_command_is_in_the_readme(self, command: str) -> None:
        """The README documents every command."""
        readme = ROOT / "README.md"
        if not readme.is_file() or not readme.read_text(encoding="utf-8").strip():
            pytest.skip("README.md is not written yet")
        assert f"cgc-rerun {command}" in readme.read_text(encoding="utf-8")


class TestSimulate:
    def test_simulate_prints_exports_serves_and_stops_on_sigint(
        self, tmp_path: Path
    ) -> None:
        """`simulate` prints two eval-able lines, answers with that token, and a
        SIGINT stops it with exit 0; a taken port is a clear exit 2."""
        import signal
        import subprocess
        import urllib.request

        argv = [sys.executable, "-m", "orchestrator", "simulate", "--port", "0"]
        argv += ["--latency-ms", "0", "--tasks", "7"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline().decode() for _ in range(2)]
            exports = dict(
                line.removeprefix("export ").strip().split("=", 1) for line in lines
            )
            url = exports["SB_API_ENDPOINT"]
            request = urllib.request.Request(  # noqa: S310 - loopback http
                f"{url}/tasks?project={SIM_PROJECT}",
                headers={"X-SBG-Auth-Token": exports["SB_AUTH_TOKEN"]},
            )
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                assert response.headers["X-Total-Matching-Query"] == "7"
            port = url.split(":")[2].split("/")[0]
            taken = subprocess.run(
                [*argv[:4], "--port", port],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            assert taken.returncode == 2
            assert "cannot serve" in taken.stderr
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
