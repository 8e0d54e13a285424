"""The parent side: build a simulator per contender, run the contender, read the counts.

Every contender gets a fresh `FakePlatform` with the same seed and cohort, served from a
thread of this process (its CPU is not the contender's), and is measured from outside
(`benchmarks.proc`). What the platform saw (requests, 429s, clones per source) is read
from the platform itself after the contender ends.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.contenders import make_ledger
from benchmarks.proc import ProcStats, run_child
from orchestrator.simulator import (
    FakePlatform,
    FaultProfile,
    RecordedRequest,
    serve_in_thread,
)

PROJECT = "sim-user/bench"
FREE_ROUTES = frozenset({"GET /rate_limit", "GET /"})
"""Routes that do not count against the budget (and are not counted as requests)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Scenario:
    """One simulator set-up, run by several contenders on (a prefix of) one cohort."""

    key: str
    title: str
    latency_s: float
    rate_limit: tuple[int, float]
    faults: FaultProfile = field(default_factory=FaultProfile)
    concurrency: int = 8
    seed: int = 7

    @property
    def budget_per_s(self) -> float:
        """The platform's sustained budget, requests per second."""
        limit, per = self.rate_limit
        return limit / per


@dataclass(frozen=True, slots=True, kw_only=True)
class Contender:
    """Who reruns the cohort, and on how many of its sources."""

    key: str
    label: str
    kind: str  # "tool", "sdk-loop" or "sdk-pool"
    tasks: int
    threads: int = 1
    retries: int = 0
    subset_note: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Window:
    """One rate-limit window as the platform counted it."""

    start: float
    counted: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """One contender in one scenario: the child's figures and the platform's."""

    scenario: Scenario
    contender: Contender
    proc: ProcStats
    requests: int  # all but the free routes, 429 answers included
    by_route: dict[str, int]
    rate_limited: int
    clones: int
    sources_cloned: int
    duplicate_sources: int
    failed_but_cloned: int  # reported failed, yet the platform made a clone
    injected_5xx: int
    lost_answers: int
    windows: tuple[Window, ...]
    clone_times: tuple[float, float, int] | None  # first, last, how many
    first_request_at: float | None  # when the platform handled the first request

    @property
    def tasks(self) -> int:
        """Sources in this contender's cohort."""
        return self.contender.tasks

    @property
    def ok(self) -> int:
        """Sources the contender reported as rerun."""
        return self.proc.count("ok")

    @property
    def failed(self) -> int:
        """Sources the contender reported as failed (all of them if it crashed)."""
        if "failed" not in self.proc.result:
            return self.tasks - self.ok
        return self.proc.count("failed")

    @property
    def tasks_per_s(self) -> float:
        """Sources rerun per second of the contender's work (imports excluded)."""
        return self.ok / self.proc.work_s if self.proc.work_s > 0 else 0.0

    @property
    def clone_phase_per_s(self) -> float | None:
        """Clones per second between the platform's first and last clone."""
        if self.clone_times is None:
            return None
        first, last, count = self.clone_times
        return (count - 1) / (last - first) if last > first else None

    def phases(self) -> dict[str, float] | None:
        """The work's wall time split by what the platform saw, in seconds.

        `start`: from the work's start to the first request sent (manifest, ledger);
        `reads`: session set-up and source reads, up to the first clone sent;
        `clones`: first clone sent to last clone answered; `finish`: the rest.
        A request is handled `latency_s` after it is sent.
        """
        started = self.proc.result.get("started_at")
        ended = self.proc.result.get("ended_at")
        if (
            not isinstance(started, float)
            or not isinstance(ended, float)
            or self.first_request_at is None
            or self.clone_times is None
        ):
            return None
        latency = self.scenario.latency_s
        first_clone, last_clone, _ = self.clone_times
        return {
            "start": self.first_request_at - latency - started,
            "reads": first_clone - self.first_request_at,
            "clones": last_clone - first_clone + latency,
            "finish": ended - last_clone,
        }

    @property
    def requests_per_task(self) -> float:
        """API requests the platform received per source of the cohort."""
        return self.requests / self.tasks if self.tasks else 0.0

    @property
    def counted_requests(self) -> int:
        """Requests the platform counted against the budget (429 answers are not)."""
        return sum(w.counted for w in self.windows)

    @property
    def cpu_ms_per_task(self) -> float:
        """Whole-process CPU (interpreter start and imports included) per source."""
        return 1000.0 * self.proc.cpu_s / self.tasks if self.tasks else 0.0

    @property
    def work_cpu_ms_per_task(self) -> float:
        """CPU of the work alone (after imports) per source."""
        return 1000.0 * self.proc.work_cpu_s / self.tasks if self.tasks else 0.0

    @property
    def budget_used(self) -> float | None:
        """Requests per second over the full windows, as a fraction of the budget.

        Full windows are all but the last (the contender had work left through each).
        The span runs from the first window's start to the last one's, so time lost
        between windows (waiting past a reset) counts against the figure.
        """
        if len(self.windows) < 2:
            return None
        sent = sum(w.counted for w in self.windows[:-1])
        span = self.windows[-1].start - self.windows[0].start
        return (sent / span) / self.scenario.budget_per_s if span > 0 else None

    @property
    def gap_per_window_s(self) -> float | None:
        """Average time lost per window boundary: span minus the windows' length."""
        if len(self.windows) < 2:
            return None
        _, per = self.scenario.rate_limit
        span = self.windows[-1].start - self.windows[0].start
        return (span - (len(self.windows) - 1) * per) / (len(self.windows) - 1)

    @property
    def floor_budget_s(self) -> float:
        """The brief's floor: requests needed divided by the budget."""
        return self.counted_requests / self.scenario.budget_per_s

    @property
    def floor_window_s(self) -> float:
        """The floor under a fixed window: full windows, then the rest at full speed.

        A fixed window lets a client spend a whole window's budget at once, so N
        requests need (ceil(N / limit) - 1) window lengths plus the time to send the
        last window's share at the contender's concurrency and the platform latency.
        """
        limit, per = self.scenario.rate_limit
        needed = self.counted_requests
        windows = max(1, math.ceil(needed / limit))
        rest = needed - (windows - 1) * limit
        lanes = max(1, self.contender.threads)
        return (windows - 1) * per + math.ceil(rest / lanes) * self.scenario.latency_s


def counted_windows(
    requests: Sequence[RecordedRequest], per: float
) -> tuple[Window, ...]:
    """Replay the platform's fixed window over the requests it counted."""
    times = sorted(
        r.at for r in requests if r.route not in FREE_ROUTES and r.status != 429
    )
    windows: list[list[float]] = []
    for at in times:
        if not windows or at >= windows[-1][0] + per:
            windows.append([at, 0])
        windows[-1][1] += 1
    return tuple(Window(start=w[0], counted=int(w[1])) for w in windows)


def fresh_platform(scenario: Scenario, cohort: int) -> tuple[FakePlatform, list[str]]:
    """A new platform with the scenario's seed, and its FAILED cohort's IDs."""
    platform = FakePlatform(
        seed=scenario.seed,
        latency_s=scenario.latency_s,
        rate_limit=scenario.rate_limit,
        faults=scenario.faults,
    )
    return platform, platform.seed_cohort(PROJECT, failed=cohort)


def write_manifest(
    path: Path, ids: Sequence[str], *, concurrency: int, rate_limit: tuple[int, float]
) -> None:
    """A `run` manifest naming `ids` explicitly, with the platform's budget."""
    requests, per = rate_limit
    lines = [
        "# Written by benchmarks/scenarios.py",
        "version: 1",
        "action: run",
        f"concurrency: {concurrency}",
        f"rate_limit: {{requests: {requests}, per_seconds: {per:g}}}",
        "tasks:",
        *(f"  - {task_id}" for task_id in ids),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def run_contender(
    scenario: Scenario, contender: Contender, workdir: Path, *, timeout_s: float
) -> Measurement:
    """Rerun the first `contender.tasks` sources of a fresh platform; measure both."""
    platform, ids = fresh_platform(scenario, contender.tasks)
    name = f"{scenario.key}-{contender.key}"
    with serve_in_thread(platform) as url:
        env = {"SB_API_ENDPOINT": url, "SB_AUTH_TOKEN": platform.token}
        if contender.kind == "tool":
            manifest = workdir / f"{name}.yaml"
            ledger = workdir / f"{name}.ledger.jsonl"
            ledger.unlink(missing_ok=True)
            write_manifest(
                manifest,
                ids,
                concurrency=scenario.concurrency,
                rate_limit=scenario.rate_limit,
            )
            args = ["tool", "--manifest", str(manifest), "--ledger", str(ledger)]
        else:
            ids_file = workdir / f"{name}.ids"
            ids_file.write_text("\n".join(ids) + "\n", encoding="utf-8")
            args = [
                contender.kind,
                "--ids",
                str(ids_file),
                "--threads",
                str(contender.threads),
                "--retries",
                str(contender.retries),
            ]
        proc = run_child(args, workdir=workdir, name=name, env=env, timeout_s=timeout_s)
    seen = [r for r in platform.requests if r.route not in FREE_ROUTES]
    counts = platform.clone_counts
    return Measurement(
        scenario=scenario,
        contender=contender,
        proc=proc,
        requests=len(seen),
        by_route=dict(Counter(r.route for r in seen)),
        rate_limited=platform.rate_limited,
        clones=sum(counts.values()),
        sources_cloned=len(counts),
        duplicate_sources=sum(1 for n in counts.values() if n > 1),
        failed_but_cloned=_failed_but_cloned(proc, counts),
        injected_5xx=sum(1 for r in seen if r.status >= 500 and r.lost is None),
        lost_answers=sum(1 for r in seen if r.lost is not None),
        windows=counted_windows(platform.requests, scenario.rate_limit[1]),
        clone_times=_clone_times(seen),
        first_request_at=platform.requests[0].at if platform.requests else None,
    )


def _failed_but_cloned(proc: ProcStats, counts: Counter[str]) -> int:
    failed = proc.result.get("failed_ids")
    if not isinstance(failed, list):
        return 0
    return sum(1 for task_id in failed if counts.get(str(task_id), 0) > 0)


def _clone_times(
    requests: Sequence[RecordedRequest],
) -> tuple[float, float, int] | None:
    times = [r.at for r in requests if r.route == "POST /tasks/{id}/actions/clone"]
    return (min(times), max(times), len(times)) if len(times) > 1 else None


# --------------------------------------------------------------------------- scale


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleStep:
    """One command over the large manifest or ledger."""

    key: str
    label: str
    sources: int
    proc: ProcStats
    requests: dict[str, int] = field(default_factory=dict)
    clones: int = 0
    note: str = ""

    @property
    def refused(self) -> bool:
        """The command exited 2 (usage/manifest error: nothing was done)."""
        return self.proc.exit_code == 2


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaleResult:
    """Every scale step, plus the sizes of what they read."""

    sources: int
    small: int
    manifest_bytes: int
    ledger_bytes: int
    ledger_lines: int
    setup_s: float
    steps: dict[str, ScaleStep]


def _manifest_note(proc: ProcStats) -> str:
    cap = proc.result.get("manifest_cap_bytes")
    return f"manifest cap {cap} bytes" if isinstance(cap, int) else ""


def run_scale(
    workdir: Path, *, sources: int, small: int, seed: int, timeout_s: float
) -> ScaleResult:
    """validate / report / plan / resume over a `sources`-sized manifest and ledger."""
    started = time.perf_counter()
    scenario = Scenario(
        key="scale",
        title="scale",
        latency_s=0.0,
        rate_limit=(1_000_000_000, 300.0),
        seed=seed,
    )
    platform, ids = fresh_platform(scenario, sources)
    manifest = workdir / "scale.yaml"
    manifest_small = workdir / "scale-small.yaml"
    limits = (1_000_000, 1.0)  # the client's own meter must not be what is timed
    write_manifest(manifest, ids, concurrency=8, rate_limit=limits)
    write_manifest(manifest_small, ids[:small], concurrency=8, rate_limit=limits)
    ledger = workdir / "scale.ledger.jsonl"
    ledger_small = workdir / "scale-small.ledger.jsonl"
    make_ledger(ids, ledger, seed=seed)
    make_ledger(ids[:small], ledger_small, seed=seed)
    fresh_ledger = workdir / "scale-plan.ledger.jsonl"
    fresh_ledger.unlink(missing_ok=True)
    with ledger.open("rb") as handle:
        ledger_lines = sum(1 for _ in handle)
    ledger_bytes = ledger.stat().st_size
    setup_s = time.perf_counter() - started

    steps: dict[str, ScaleStep] = {}

    def cli(
        key: str, label: str, n: int, argv: list[str], *, lift: bool = False
    ) -> ScaleStep:
        args = ["cli", *(["--lift-cap"] if lift else []), "--", *argv]
        proc = run_child(
            args, workdir=workdir, name=f"scale-{key}", timeout_s=timeout_s
        )
        step = ScaleStep(
            key=key, label=label, sources=n, proc=proc, note=_manifest_note(proc)
        )
        steps[key] = step
        return step

    validate = cli("validate", "validate", sources, ["validate", str(manifest)])
    cap = validate.proc.result.get("manifest_cap_bytes")
    if validate.refused and isinstance(cap, int) and cap < manifest.stat().st_size:
        cli(
            "validate_lifted",
            "validate (size cap lifted)",
            sources,
            ["validate", str(manifest)],
            lift=True,
        )
    cli("validate_small", "validate", small, ["validate", str(manifest_small)])
    report_out = workdir / "scale-report.json"
    cli(
        "report",
        "report --format json",
        sources,
        ["report", str(ledger), "--format", "json", "-o", str(report_out)],
    )
    cli(
        "report_small",
        "report --format json",
        small,
        ["report", str(ledger_small), "--format", "json", "-o", str(report_out)],
    )
    with serve_in_thread(platform) as url:
        env = {"SB_API_ENDPOINT": url, "SB_AUTH_TOKEN": platform.token}
        for key, label, argv in (
            (
                "plan",
                "plan (bulk reads)",
                ["plan", str(manifest), "--ledger", str(fresh_ledger)],
            ),
            (
                "resume",
                "resume: run on the finished ledger",
                ["run", str(manifest), "--ledger", str(ledger), "--no-progress", "-q"],
            ),
        ):
            seen_before = len(platform.requests)
            clones_before = sum(platform.clone_counts.values())
            proc = run_child(
                ["cli", "--lift-cap", "--", "-q", *argv, "--format", "json"]
                if key == "plan"
                else ["cli", "--lift-cap", "--", *argv],
                workdir=workdir,
                name=f"scale-{key}",
                env=env,
                timeout_s=timeout_s,
            )
            new = platform.requests[seen_before:]
            steps[key] = ScaleStep(
                key=key,
                label=label,
                sources=sources,
                proc=proc,
                requests=dict(
                    Counter(r.route for r in new if r.route not in FREE_ROUTES)
                ),
                clones=sum(platform.clone_counts.values()) - clones_before,
                note=_manifest_note(proc),
            )
    return ScaleResult(
        sources=sources,
        small=small,
        manifest_bytes=manifest.stat().st_size,
        ledger_bytes=ledger_bytes,
        ledger_lines=ledger_lines,
        setup_s=setup_s,
        steps=steps,
    )
