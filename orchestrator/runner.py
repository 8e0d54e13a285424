"""The library API: plan, run, follow, abort, export; as a script or Airflow calls it.

Each function opens what it needs (session, budget, ledger lock) and closes it. The
CLI is a thin layer over these; so is any scheduler task:

    manifest = load_manifest("manifests/failed-cohort.yaml")
    creds = resolve_credentials(profile=None, environ=os.environ)
    result = asyncio.run(run_manifest(manifest, creds, RunOptions(wait=True)))
    raise SystemExit(result.exit_code)
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from orchestrator.client import ApiClient
from orchestrator.config import Credentials, check_endpoint_matches
from orchestrator.errors import ConfigError, LedgerError
from orchestrator.follow import FollowSummary, abort_all, follow
from orchestrator.ledger import Event, Ledger, LedgerState, SourceRow, read_ledger
from orchestrator.manifest import manifest_to_yaml
from orchestrator.models import (
    Action,
    Clock,
    Manifest,
    Overrides,
    RateLimit,
    Sleep,
    TaskId,
    TaskSpec,
    TaskStatus,
    WaitSettings,
)
from orchestrator.pacing import RateBudget
from orchestrator.planner import Plan, plan_sources, resolve_sources
from orchestrator.policy import Retrier, RetryPolicy
from orchestrator.pool import Pool, ProgressCallback, RunSummary
from orchestrator.reconcile import Reconciler

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_AUTH = 3
EXIT_INTERRUPTED = 130


@dataclass(frozen=True, slots=True, kw_only=True)
class RunOptions:
    """Per-run settings; CLI flags win over the manifest, which wins over defaults."""

    ledger_path: Path | None = None
    concurrency: int | None = None
    request_timeout_s: float = 60.0
    retry_failed: bool = False
    wait: bool = False
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    sleep: Sleep = asyncio.sleep
    clock: Clock = time.time
    rng: random.Random | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RunResult:
    """What `run_manifest` did, and the rows of the manifest's sources."""

    summary: RunSummary
    rows: list[SourceRow]
    followed: FollowSummary | None = None

    @property
    def exit_code(self) -> int:
        """The CONTRACT's exit code for this run."""
        if self.summary.fatal:
            return EXIT_AUTH
        if self.summary.interrupted or (self.followed and self.followed.interrupted):
            return EXIT_INTERRUPTED
        if self.summary.failed:
            return EXIT_SOME_FAILED
        return rows_exit_code(self.rows, waited=self.followed is not None)


def rows_exit_code(rows: list[SourceRow], *, waited: bool) -> int:
    """1 when some source failed (or, after waiting, did not complete), else 0."""
    for row in rows:
        if row.rerun_failed:
            return EXIT_SOME_FAILED
        if waited and row.status not in ("SKIPPED", TaskStatus.COMPLETED):
            return EXIT_SOME_FAILED
    return EXIT_OK


@dataclass(slots=True)
class _Session:
    client: ApiClient
    retrier: Retrier
    username: str | None


@asynccontextmanager
async def _open_session(
    credentials: Credentials, rate_limit: RateLimit, options: RunOptions
) -> AsyncIterator[_Session]:
    """Open the client, check the token (401/403 -> exit 3) and seed the budget."""
    budget = RateBudget(
        rate_limit, clock=options.clock, sleep=options.sleep, rng=options.rng
    )
    retrier = Retrier(
        options.policy,
        budget=budget,
        clock=options.clock,
        sleep=options.sleep,
        rng=options.rng,
    )
    async with ApiClient(
        endpoint=credentials.endpoint,
        token=credentials.token,
        budget=budget,
        timeout_s=options.request_timeout_s,
    ) as client:
        await retrier.read(client.get_rate_limit)
        user = await retrier.read(client.get_user)
        username = user.get("username")
        log.info(
            "api.connected",
            endpoint=credentials.endpoint,
            user=username,
            rate_remaining=budget.remaining,
            rate_limit=budget.limit,
        )
        yield _Session(client, retrier, username if isinstance(username, str) else None)


def default_ledger(manifest: Manifest, options: RunOptions) -> Path:
    """`--ledger`, else `<manifest>.ledger.jsonl` beside the manifest."""
    return options.ledger_path or manifest.default_ledger_path()


async def _plan(
    manifest: Manifest, session: _Session, state: LedgerState, options: RunOptions
) -> Plan:
    """The one way `plan` and `run` decide, so that `plan` shows what `run` does."""
    sources, reads = await resolve_sources(
        manifest,
        session.client,
        session.retrier,
        ledger=state,
        retry_failed=options.retry_failed,
    )
    return plan_sources(
        manifest,
        sources,
        state,
        retry_failed=options.retry_failed,
        read_requests=reads + 1,  # and GET /user (GET /rate_limit is free)
        budget=session.client.budget,
    )


async def plan_manifest(
    manifest: Manifest, credentials: Credentials, options: RunOptions | None = None
) -> Plan:
    """Resolve and read the sources and say what `run` would do. Sends no write."""
    options = options or RunOptions()
    check_endpoint_matches(credentials, manifest.endpoint)
    state = read_ledger(default_ledger(manifest, options))
    async with _open_session(credentials, manifest.rate_limit, options) as session:
        return await _plan(manifest, session, state, options)


async def run_manifest(
    manifest: Manifest,
    credentials: Credentials,
    options: RunOptions | None = None,
    *,
    stop: asyncio.Event | None = None,
    progress: ProgressCallback | None = None,
    wait_progress: ProgressCallback | None = None,
) -> RunResult:
    """Clone (patch, run) every planned source, recording each step; optionally wait."""
    options = options or RunOptions()
    check_endpoint_matches(credentials, manifest.endpoint)
    stop = stop or asyncio.Event()
    concurrency = options.concurrency or manifest.concurrency
    with Ledger(default_ledger(manifest, options)) as ledger:
        async with _open_session(credentials, manifest.rate_limit, options) as session:
            client, retrier = session.client, session.retrier
            plan = await _plan(manifest, session, ledger.state, options)
            ledger.record(
                Event.RUN_STARTED,
                None,
                command="run",
                manifest=str(manifest.path),
                endpoint=credentials.endpoint,
                platform=manifest.platform,
                api_endpoint=manifest.api_endpoint,
                profile=manifest.profile,
                action=str(manifest.action),
                sources=len(plan.items),
                counts=dict(plan.counts),
                concurrency=concurrency,
                wait={
                    "poll_seconds": manifest.wait.poll_seconds,
                    "timeout_hours": manifest.wait.timeout_hours,
                },
            )
            pool = Pool(
                client=client,
                ledger=ledger,
                retrier=retrier,
                reconciler=Reconciler(
                    client, retrier, ledger, username=session.username
                ),
                stop=stop,
                progress=progress,
                clock=options.clock,
            )
            summary = await pool.run(plan, concurrency=concurrency)
            ledger.record(
                Event.RUN_FINISHED,
                None,
                outcomes=summary.outcomes,
                requests=summary.requests,
                adopted=summary.adopted,
                retries=summary.retries,
                interrupted=summary.interrupted,
                fatal=summary.fatal,
                elapsed_s=round(summary.elapsed_s, 3),
            )
            followed = None
            if options.wait and not (summary.interrupted or summary.fatal):
                followed = await follow(
                    ledger,
                    client,
                    retrier,
                    wait=True,
                    poll_s=manifest.wait.poll_seconds,
                    timeout_s=manifest.wait.timeout_hours * 3600,
                    window_s=manifest.rate_limit.per_seconds,
                    stop=stop,
                    sleep=options.sleep,
                    on_poll=wait_progress,
                )
        ids = [item.source.id for item in plan.items]
        rows = [ledger.state.rows[i] for i in ids if i in ledger.state.rows]
    return RunResult(summary=summary, rows=rows, followed=followed)


def _ledger_endpoint_check(ledger: Ledger, credentials: Credentials) -> None:
    endpoint = ledger.state.run_info.get("endpoint")
    if isinstance(endpoint, str):
        check_endpoint_matches(credentials, endpoint)


def _ledger_wait(ledger: Ledger) -> WaitSettings:
    recorded = ledger.state.run_info.get("wait")
    if isinstance(recorded, dict):
        poll = recorded.get("poll_seconds")
        hours = recorded.get("timeout_hours")
        if isinstance(poll, int | float) and isinstance(hours, int | float):
            return WaitSettings(poll_seconds=float(poll), timeout_hours=float(hours))
    return WaitSettings()


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise LedgerError(f"{path}: no such ledger")
    return path


async def refresh_ledger(
    ledger_path: Path,
    credentials: Credentials,
    *,
    wait: bool = False,
    options: RunOptions | None = None,
    stop: asyncio.Event | None = None,
    poll_s: float | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[FollowSummary, list[SourceRow]]:
    """`status`: bring the ledger's new tasks up to date (and wait for them)."""
    options = options or RunOptions()
    with Ledger(_existing(ledger_path)) as ledger:
        _ledger_endpoint_check(ledger, credentials)
        settings = _ledger_wait(ledger)
        async with _open_session(credentials, RateLimit(), options) as session:
            followed = await follow(
                ledger,
                session.client,
                session.retrier,
                wait=wait,
                poll_s=poll_s or settings.poll_seconds,
                timeout_s=settings.timeout_hours * 3600,
                window_s=RateLimit().per_seconds,
                stop=stop or asyncio.Event(),
                sleep=options.sleep,
                on_poll=progress,
            )
        return followed, list(ledger.state.rows.values())


async def abort_ledger(
    ledger_path: Path, credentials: Credentials, options: RunOptions | None = None
) -> tuple[int, int]:
    """`abort`: abort the ledger's new tasks still QUEUED/RUNNING; (aborted, failed)."""
    options = options or RunOptions()
    with Ledger(_existing(ledger_path)) as ledger:
        _ledger_endpoint_check(ledger, credentials)
        async with _open_session(credentials, RateLimit(), options) as session:
            return await abort_all(ledger, session.client, session.retrier)


def read_rows(ledger_path: Path) -> list[SourceRow]:
    """The ledger's rows, one per source, offline."""
    return list(read_ledger(_existing(ledger_path)).rows.values())


def _overrides(recorded: dict[str, object] | None) -> Overrides:
    """Rebuild the overrides a source ran with from its ledger record."""
    if not recorded:
        return Overrides()
    suffix = recorded.get("name_suffix")
    spot = recorded.get("use_interruptible_instances")
    settings = recorded.get("execution_settings")
    inputs = recorded.get("inputs")
    return Overrides(
        name_suffix=suffix if isinstance(suffix, str) else None,
        use_interruptible_instances=spot if isinstance(spot, bool) else None,
        execution_settings=settings if isinstance(settings, dict) else None,
        inputs=inputs if isinstance(inputs, dict) else None,
    )


def export_failed(ledger_path: Path, out_path: Path) -> int:
    """Write a manifest of the sources whose rerun did not complete; return how many."""
    state = read_ledger(_existing(ledger_path))
    failed = [row for row in state.rows.values() if row.rerun_failed]
    if not failed:
        return 0
    info = state.run_info
    platform = info.get("platform")
    api_endpoint = info.get("api_endpoint")
    profile = info.get("profile")
    action = info.get("action")
    tasks = tuple(
        TaskSpec(
            id=TaskId(row.source_task_id),
            label=row.label,
            overrides=_overrides(row.overrides),
        )
        for row in failed
    )
    manifest = Manifest(
        path=out_path,
        platform=platform if isinstance(platform, str) else None,
        api_endpoint=api_endpoint if isinstance(api_endpoint, str) else None,
        profile=profile if isinstance(profile, str) else None,
        action=Action(action) if action in ("run", "draft") else Action.RUN,
        tasks=tasks,
    )
    try:
        out_path.write_text(manifest_to_yaml(manifest), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{out_path}: cannot write ({exc.strerror})") from exc
    return len(failed)
