"""Turn measurements into the tables `make bench` prints and BENCHMARKS.md.

Every figure comes from the run being reported; the targets are checked here, and the
reason given for a missed one is computed from the same measurements.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from benchmarks.scenarios import Measurement, ScaleResult, ScaleStep
from orchestrator import pacing
from orchestrator.models import RateLimit

MB = 1024 * 1024
PLATFORM = RateLimit()
"""The platform's documented budget (cgc-api.md section 7): 1000 requests / 300 s."""
TARGET_CPU_MS = 1.0
TARGET_SCALE_S = 10.0
TARGET_SCALE_MB = 500.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Results:
    """Everything one benchmark run measured."""

    preset: str
    measurements: list[Measurement]
    scale: ScaleResult | None
    total_s: float

    def find(self, scenario: str, contender: str) -> Measurement | None:
        """The measurement of one contender in one scenario, if it ran."""
        for m in self.measurements:
            if m.scenario.key == scenario and m.contender.key == contender:
                return m
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One target of issue #6: met or not, with the figure that decides it."""

    name: str
    met: bool | None  # None: not measured in this run
    figure: str
    why: str = ""
    note: str = ""


# --------------------------------------------------------------------------- tables


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(tool: Measurement | None, m: Measurement) -> str:
    if tool is None or m.tasks_per_s <= 0:
        return "n/a"
    return f"{tool.tasks_per_s / m.tasks_per_s:.2f}x"


def _sources(m: Measurement) -> str:
    note = f" ({m.contender.subset_note})" if m.contender.subset_note else ""
    return f"{m.tasks}{note}"


def _failed(m: Measurement) -> str:
    if m.proc.timed_out:
        return "timed out"
    if "failed" not in m.proc.result:
        return f"crashed (exit {m.proc.exit_code})"
    return str(m.failed)


def main_table(results: Results) -> str:
    """One row per scenario and contender."""
    rows = []
    for m in results.measurements:
        tool = results.find(m.scenario.key, "tool")
        rows.append(
            [
                m.scenario.title,
                m.contender.label,
                _sources(m),
                _f(m.tasks_per_s),
                _ratio(tool, m),
                f"{m.requests_per_task:.3f}",
                str(m.rate_limited),
                f"{m.injected_5xx} / {m.lost_answers}",
                str(m.duplicate_sources),
                _failed(m),
                str(m.failed_but_cloned),
                f"{_f(m.cpu_ms_per_task, 2)} / {_f(m.work_cpu_ms_per_task, 2)}",
                _f(m.proc.peak_rss_mb, 0),
            ]
        )
    return _table(
        [
            "scenario",
            "contender",
            "sources",
            "tasks/s",
            "cgc-rerun is",
            "requests/task",
            "429s",
            "faults 5xx / lost",
            "duplicated sources",
            "failed",
            "failed, yet cloned",
            "CPU s per 1000 tasks (process / work)",
            "peak RSS MB",
        ],
        rows,
    )


def budget_table(results: Results) -> str:
    """The budget-bound scenario against its physical limit."""
    rows = []
    for m in results.measurements:
        if m.scenario.key != "budget":
            continue
        rows.append(
            [
                m.contender.label,
                _sources(m),
                str(m.counted_requests),
                str(len(m.windows)),
                _f(m.proc.work_s),
                _f(m.floor_budget_s),
                _f(m.floor_window_s),
                "n/a" if m.budget_used is None else f"{100 * m.budget_used:.1f}%",
                _f(m.gap_per_window_s, 2),
            ]
        )
    return _table(
        [
            "contender",
            "sources",
            "requests counted",
            "windows",
            "measured s",
            "floor: requests / budget, s",
            "floor: fixed windows, s",
            "budget used (full windows)",
            "s lost per window turn",
        ],
        rows,
    )


def _requests(step: ScaleStep) -> str:
    if not step.requests:
        return "-"
    return ", ".join(f"{route} x{n}" for route, n in sorted(step.requests.items()))


def _exit(step: ScaleStep) -> str:
    return "timed out" if step.proc.timed_out else str(step.proc.exit_code)


def scale_table(scale: ScaleResult) -> str:
    """validate / report / plan / resume at scale (and at a tenth, for the slope)."""
    rows = [
        [
            step.label,
            f"{step.sources:,}",
            _exit(step),
            _f(step.proc.wall_s, 2),
            _f(step.proc.work_s, 2),
            _f(step.proc.cpu_s, 2),
            _f(step.proc.peak_rss_mb, 0),
            _requests(step),
            "-" if not step.requests else str(step.clones),
        ]
        for step in scale.steps.values()
    ]
    return _table(
        [
            "command",
            "sources",
            "exit",
            "wall s",
            "work s",
            "CPU s",
            "peak RSS MB",
            "API requests",
            "clones sent",
        ],
        rows,
    )


# -------------------------------------------------------------------------- targets


def _met(value: bool) -> str:
    return "met" if value else "NOT met"


def targets(results: Results) -> list[Target]:
    """Issue #6's targets, each decided by this run's figures."""
    out: list[Target] = []
    lat = results.find("latency", "tool")
    loop = results.find("latency", "sdk-loop")
    pool = results.find("latency", "sdk-pool")
    if lat is not None:
        sc = lat.scenario
        need = 0.8 * sc.concurrency / sc.latency_s
        ideal = math.ceil(lat.tasks / sc.concurrency) * sc.latency_s
        out.append(
            Target(
                name=(
                    f"latency-bound rate >= 0.8 x concurrency / latency "
                    f"(= {need:.0f} tasks/s at {sc.concurrency} and "
                    f"{sc.latency_s * 1000:.0f} ms)"
                ),
                met=lat.tasks_per_s >= need,
                figure=f"{lat.tasks_per_s:.1f} tasks/s",
                note=_phase_note(lat, ideal),
            )
        )
        for other, factor in ((loop, 10.0), (pool, 1.5)):
            if other is None or other.tasks_per_s <= 0:
                continue
            ratio = lat.tasks_per_s / other.tasks_per_s
            out.append(
                Target(
                    name=f"at concurrency {sc.concurrency}: >= {factor:g}x the "
                    f"{other.contender.label}",
                    met=ratio >= factor,
                    figure=(
                        f"{ratio:.2f}x ({lat.tasks_per_s:.1f} vs "
                        f"{other.tasks_per_s:.1f} tasks/s)"
                    ),
                    why=(
                        f"the {other.contender.label} spends "
                        f"{other.requests_per_task:.2f} requests per task, "
                        f"cgc-rerun {lat.requests_per_task:.3f}"
                    ),
                )
            )
        out.append(
            Target(
                name="requests per task for `run` without overrides <= 1.02",
                met=lat.requests_per_task <= 1.02,
                figure=(
                    f"{lat.requests_per_task:.4f} ({lat.requests} requests for "
                    f"{lat.tasks} sources: "
                    + ", ".join(f"{r} x{n}" for r, n in sorted(lat.by_route.items()))
                    + "; the free GET /rate_limit not counted)"
                ),
            )
        )
        out.append(
            Target(
                name=f"CPU under {TARGET_CPU_MS:g} ms per task, end to end",
                met=lat.cpu_ms_per_task < TARGET_CPU_MS,
                figure=(
                    f"{lat.cpu_ms_per_task:.3f} ms per task for the whole process "
                    f"({lat.proc.cpu_s:.2f} s CPU for {lat.tasks} tasks, interpreter "
                    f"start and imports included); {lat.work_cpu_ms_per_task:.3f} ms "
                    "for the run itself"
                ),
                why=(
                    f"start-up costs {lat.proc.cpu_s - lat.proc.work_cpu_s:.2f} s of "
                    "CPU before the first request"
                ),
                note=_cpu_note(lat),
            )
        )
    bud = results.find("budget", "tool")
    if bud is not None:
        used = bud.budget_used
        gap = bud.gap_per_window_s
        _, per = bud.scenario.rate_limit
        note = ""
        margin = float(getattr(pacing, "_RESET_MARGIN_S", 0.0))
        low = margin + bud.scenario.latency_s
        high = low + 1.0
        if gap is not None:
            note = (
                f"each window turn loses {gap:.2f} s on average: the client waits "
                "for X-RateLimit-Reset, which is whole seconds (rounded up), plus a "
                f"{margin:g} s margin and a little jitter; that is "
                f"{100 * gap / per:.1f}% of a {per:g} s window, and would be "
                f"{100 * gap / PLATFORM.per_seconds:.2f}% of the platform's "
                f"{PLATFORM.per_seconds:g} s window. Where the "
                "window's start falls within its second decides the rounding, so a "
                f"turn costs between {low:.2f} and {high:.2f} s plus jitter (the "
                "request's latency included) and this figure varies from run to run "
                f"between about {100 * per / (per + high):.0f}% and "
                f"{100 * per / (per + low):.0f}%"
            )
        out.append(
            Target(
                name="budget-bound: at least 95% of the budget used",
                met=None if used is None else used >= 0.95,
                figure=(
                    "n/a (one window)"
                    if used is None
                    else f"{100 * used:.1f}% over {len(bud.windows) - 1} full "
                    f"windows; {bud.proc.work_s:.1f} s measured vs "
                    f"{bud.floor_window_s:.1f} s floor under the fixed window "
                    f"({bud.floor_budget_s:.1f} s = requests / budget)"
                ),
                note=note,
            )
        )
        out.append(
            Target(
                name="budget-bound: at most 2 x 429",
                met=bud.rate_limited <= 2,
                figure=f"{bud.rate_limited} x 429",
            )
        )
    dup = [
        m
        for m in (bud, results.find("faults", "tool"))
        if m is not None and m.contender.key == "tool"
    ]
    if dup:
        out.append(
            Target(
                name="zero duplicates (budget-bound, and under faults)",
                met=all(m.duplicate_sources == 0 for m in dup),
                figure="; ".join(
                    f"{m.scenario.title}: {m.duplicate_sources} duplicated sources "
                    f"({m.injected_5xx} x 5xx, {m.lost_answers} answers lost)"
                    for m in dup
                ),
            )
        )
    if results.scale is not None:
        out += _scale_targets(results.scale)
    return out


def _cpu_note(m: Measurement) -> str:
    """From which cohort size the fixed start-up cost fits in the CPU target."""
    startup_s = m.proc.cpu_s - m.proc.work_cpu_s
    per_task_ms = m.work_cpu_ms_per_task
    if per_task_ms >= TARGET_CPU_MS:
        return ""
    tasks = math.ceil(1000.0 * startup_s / (TARGET_CPU_MS - per_task_ms))
    return (
        f"with {startup_s:.2f} s of start-up and {per_task_ms:.3f} ms per task "
        f"after it, the whole process stays under {TARGET_CPU_MS:g} ms per task "
        f"from about {tasks:,} tasks up"
    )


def _phase_note(m: Measurement, ideal_s: float) -> str:
    phases = m.phases()
    reads = m.by_route.get("POST /bulk/tasks/get", 0)
    if phases is None:
        return ""
    limit = m.scenario.concurrency / m.scenario.latency_s
    return (
        f"of its {m.proc.work_s:.2f} s, {phases['start']:.2f} s passed before the "
        f"first request (manifest, ledger), {phases['reads']:.2f} s on the session "
        f"and {reads} bulk reads, {phases['clones']:.2f} s cloning (the clones alone "
        f"need {ideal_s:.2f} s at full concurrency: "
        f"{_f(m.clone_phase_per_s)} clones/s against {limit:.0f}), and "
        f"{phases['finish']:.2f} s after the last clone (ledger, final table)"
    )


def _scale_targets(scale: ScaleResult) -> list[Target]:
    out: list[Target] = []
    steps = scale.steps
    n = f"{scale.sources:,}"
    validate, lifted = steps.get("validate"), steps.get("validate_lifted")
    if validate is not None:
        met = (
            not validate.refused
            and validate.proc.wall_s < TARGET_SCALE_S
            and validate.proc.peak_rss_mb < TARGET_SCALE_MB
        )
        why = ""
        cap = validate.proc.result.get("manifest_cap_bytes")
        if validate.refused and isinstance(cap, int):
            why = (
                f"refused with exit 2: the {n}-source manifest is "
                f"{scale.manifest_bytes / MB:.1f} MiB and manifests are capped at "
                f"{cap / MB:.0f} MiB, so `validate`, `plan` and `run` cannot read it"
            )
            if lifted is not None:
                why += (
                    f"; with the cap lifted, it takes {lifted.proc.wall_s:.1f} s "
                    f"({lifted.proc.peak_rss_mb:.0f} MB peak)"
                )
        out.append(
            Target(
                name=f"{n}-source validate under {TARGET_SCALE_S:g} s and "
                f"{TARGET_SCALE_MB:g} MB",
                met=met,
                figure=(
                    f"exit {validate.proc.exit_code} in {validate.proc.wall_s:.2f} s, "
                    f"{validate.proc.peak_rss_mb:.0f} MB peak"
                    + (
                        ""
                        if lifted is None
                        else f"; cap lifted: {lifted.proc.wall_s:.2f} s, "
                        f"{lifted.proc.peak_rss_mb:.0f} MB"
                    )
                ),
                why=why,
            )
        )
    report = steps.get("report")
    if report is not None:
        out.append(
            Target(
                name=f"{n}-source report under {TARGET_SCALE_S:g} s and "
                f"{TARGET_SCALE_MB:g} MB",
                met=report.proc.exit_code == 0
                and report.proc.wall_s < TARGET_SCALE_S
                and report.proc.peak_rss_mb < TARGET_SCALE_MB,
                figure=(
                    f"{report.proc.wall_s:.2f} s, {report.proc.peak_rss_mb:.0f} MB "
                    f"peak ({scale.ledger_lines:,} ledger lines, "
                    f"{scale.ledger_bytes / MB:.0f} MiB)"
                ),
            )
        )
    out += [t for t in (_plan_target(scale), _resume_target(scale)) if t is not None]
    validate_key = "validate_lifted" if "validate_lifted" in steps else "validate"
    for big, small, label in (
        (validate_key, "validate_small", "validate"),
        ("report", "report_small", "report"),
    ):
        a, b = steps.get(big), steps.get(small)
        if a is None or b is None or b.proc.work_s <= 0:
            continue
        growth = a.proc.work_s / b.proc.work_s
        size = scale.sources / scale.small
        out.append(
            Target(
                name=f"{label}: linear in the sources (no quadratic scan)",
                met=growth < 2 * size,
                figure=(
                    f"{size:g}x the sources -> {growth:.1f}x the time "
                    f"({b.proc.work_s:.2f} s -> {a.proc.work_s:.2f} s)"
                ),
            )
        )
    return out


def _writes(step: ScaleStep) -> int:
    return sum(
        n
        for route, n in step.requests.items()
        if route.startswith(("POST /tasks", "PATCH"))
    )


def _failure(step: ScaleStep) -> str:
    if step.proc.exit_code == 0 or not step.proc.stderr_tail:
        return ""
    return step.proc.stderr_tail.splitlines()[-1]


def _plan_target(scale: ScaleResult) -> Target | None:
    step = scale.steps.get("plan")
    if step is None:
        return None
    reads = step.requests.get("POST /bulk/tasks/get", 0)
    needed = math.ceil(scale.sources / 100)
    bounded = step.proc.peak_rss_mb < TARGET_SCALE_MB
    return Target(
        name=f"{scale.sources:,}-source plan: {needed} bulk reads at most, no write, "
        f"peak under {TARGET_SCALE_MB:g} MB (bounded)",
        met=step.proc.exit_code == 0
        and _writes(step) == 0
        and reads <= needed
        and bounded,
        figure=(
            f"exit {step.proc.exit_code}, {step.proc.wall_s:.1f} s "
            f"({step.proc.cpu_s:.1f} s CPU), {step.proc.peak_rss_mb:.0f} MB peak, "
            f"{reads} bulk reads, {_writes(step)} writes"
        ),
        why=_failure(step),
    )


def _resume_target(scale: ScaleResult) -> Target | None:
    step = scale.steps.get("resume")
    if step is None:
        return None
    reads = step.requests.get("POST /bulk/tasks/get", 0)
    bounded = step.proc.peak_rss_mb < TARGET_SCALE_MB
    return Target(
        name=f"{scale.sources:,}-source resume of a finished ledger: no clone, "
        f"peak under {TARGET_SCALE_MB:g} MB (bounded)",
        met=step.proc.exit_code == 0 and step.clones == 0 and bounded,
        figure=(
            f"exit {step.proc.exit_code}, {step.clones} clones, "
            f"{step.proc.wall_s:.1f} s ({step.proc.cpu_s:.1f} s CPU), "
            f"{step.proc.peak_rss_mb:.0f} MB peak, {reads} bulk reads"
            + (
                f" (for no unfinished source: {reads / PLATFORM.requests:.0%} of the "
                f"real platform's {PLATFORM.requests} requests / "
                f"{PLATFORM.per_seconds:g} s)"
                if reads
                else ""
            )
        ),
        why=_failure(step),
    )


# --------------------------------------------------------------------------- output


def render_summary(results: Results) -> str:
    """What `make bench` prints to stdout."""
    parts = ["## Contenders", "", main_table(results), ""]
    if any(m.scenario.key == "budget" for m in results.measurements):
        parts += ["## Budget-bound", "", budget_table(results), ""]
    if results.scale is not None:
        parts += ["## Scale", "", scale_table(results.scale), ""]
    parts += ["## Targets", ""]
    parts += [_target_line(t) for t in targets(results)]
    return "\n".join(parts)


def _target_line(target: Target) -> str:
    state = "not measured" if target.met is None else _met(target.met)
    why = f" Why: {target.why}." if target.why and target.met is not True else ""
    note = f" Note: {target.note}." if target.note else ""
    return f"- **{state}**: {target.name}: {target.figure}.{why}{note}"


def _machine() -> list[str]:
    cpus = len(os.sched_getaffinity(0))
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        sdk = version("sevenbridges-python")
    except PackageNotFoundError:
        sdk = "not installed"
    return [
        f"- date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpus} CPUs (`nproc`), {model}, {platform.system()} "
        f"{platform.release()}",
        f"- Python {platform.python_version()}; sevenbridges-python {sdk}",
    ]


def _parameters(results: Results) -> list[str]:
    seen: dict[str, list[Measurement]] = {}
    for m in results.measurements:
        seen.setdefault(m.scenario.key, []).append(m)
    lines = []
    for group in seen.values():
        sc = group[0].scenario
        limit, per = sc.rate_limit
        faults = sc.faults
        fault_text = (
            f"; faults: {faults.error_rate:.0%} of requests answered 5xx before "
            f"processing, {faults.lost_answer_rate:.0%} of writes committed and "
            f"their answer lost ({faults.lost_answer_mode})"
            if faults.error_rate or faults.lost_answer_rate
            else ""
        )
        who = ", ".join(f"{m.contender.label} on {m.tasks}" for m in group)
        lines.append(
            f"- **{sc.title}**: latency {sc.latency_s * 1000:g} ms per request, "
            f"rate limit {limit:,} requests / {per:g} s, concurrency "
            f"{sc.concurrency}{fault_text}. Sources: {who}."
        )
    if results.scale is not None:
        s = results.scale
        lines.append(
            f"- **scale**: {s.sources:,} sources in an explicit-ID manifest "
            f"({s.manifest_bytes / MB:.1f} MiB) and a finished run's ledger "
            f"({s.ledger_lines:,} lines, {s.ledger_bytes / MB:.0f} MiB); the "
            f"slope is checked against {s.small:,} sources; the simulator answers "
            "with no latency."
        )
    return lines


def _cap_sentence(scale: ScaleResult) -> str:
    validate = scale.steps.get("validate")
    if validate is not None and validate.refused:
        return (
            "The shipped manifest size cap refuses this manifest (exit 2, see "
            "Targets), so `validate (size cap lifted)`, `plan` and `resume` raise the "
            "cap inside their own process (`benchmarks.contenders --lift-cap`) to "
            "measure the rest of the code."
        )
    cap = validate.proc.result.get("manifest_cap_bytes") if validate else None
    limit = f" ({cap / MB:g} MiB)" if isinstance(cap, int) else ""
    return f"The manifest size cap{limit} does not bind at this size."


def render_markdown(results: Results) -> str:
    """BENCHMARKS.md."""
    parts = [
        "# Benchmarks",
        "",
        "Reproduce with `make bench` (it runs `.venv/bin/python -m benchmarks.run`, "
        "prints the tables below and rewrites this file). Every figure below is "
        "from that one run"
        + (" (preset `quick`: small cohorts)" if results.preset != "full" else "")
        + f"; it took {results.total_s:.0f} s.",
        "",
        *_machine(),
        "",
        "## How it is measured",
        "",
        "- Each contender runs in its own process against a fresh simulator "
        "(`orchestrator.simulator.FakePlatform`, same seed, same cohort of FAILED "
        "tasks) served from a thread of the benchmark's process, so the simulator's "
        "CPU is not the contender's. CPU time comes from `wait4` on the child, peak "
        "RSS from the child's own `VmHWM` (Linux carries `ru_maxrss` over fork and "
        "exec, so a child of the large benchmark process would report the parent's "
        "size); requests, 429s and clones per source from the simulator.",
        "- **cgc-rerun**: `cgc-rerun run MANIFEST --no-progress -q` (through "
        "`orchestrator.cli.main`, as the console script), the manifest naming the "
        "sources by ID, with the simulator's window as `rate_limit:`.",
        "- **SDK loop**: sevenbridges-python as its docs show, "
        "`api.tasks.get(id)` then `task.clone(run=True)` per source, with "
        "`error_handlers=[rate_limit_sleeper, maintenance_sleeper]` and "
        "`debug=True` (to allow the simulator's http:// endpoint). **SDK pool**: the "
        "same in a `ThreadPoolExecutor` of the same concurrency "
        "(`max_parallel_requests` too). **+ retry x3**: each source's get+clone "
        "retried up to 3 times on any exception, as scripts wrapping the SDK often "
        "do. An exception is a failed source, not a crash.",
        "- tasks/s: sources rerun / the contender's own wall time after its imports "
        "(the interpreter start is left out for every contender alike). "
        '"cgc-rerun is": its tasks/s divided by the contender\'s. '
        "requests/task: every request the simulator received except the free "
        "`GET /rate_limit`, 429 answers included, per source. CPU: whole process "
        "(interpreter and imports included) / the run alone, per 1000 sources. "
        '"duplicated sources": sources cloned more than once; "failed, yet '
        'cloned": sources the contender reported as failed although the platform '
        "made their clone (a lost answer it gave up on: a rerun of the script "
        "would clone them again).",
        "- Budget used: requests the platform counted in the full windows (all but "
        "the last), divided by the time from the first window's start to the last "
        "one's, as a fraction of the budget (limit / window). The floor under a "
        "fixed window is (windows needed - 1) x window + the last share at full "
        "speed; requests / budget is the sustained-rate floor.",
        "- One run, one sample: on a shared 2-CPU machine rates and CPU times move "
        "by several per cent from run to run, and the budget figure also moves with "
        "where each window's start falls within its second (see its note), so a "
        "target close to its threshold can flip between runs.",
        "",
        "## Parameters",
        "",
        *_parameters(results),
        "",
        "## Results",
        "",
        main_table(results),
        "",
    ]
    if any(m.scenario.key == "budget" for m in results.measurements):
        parts += [
            "### Budget-bound, against the physical limit",
            "",
            budget_table(results),
            "",
        ]
    if results.scale is not None:
        parts += [
            f"### Scale: {results.scale.sources:,} sources",
            "",
            _cap_sentence(results.scale)
            + " Set-up (seeding the simulator, writing the files) took "
            f"{results.scale.setup_s:.0f} s and is not part of any figure. "
            "work s: the command's own time after its imports.",
            "",
            scale_table(results.scale),
            "",
        ]
    parts += ["## Targets", ""]
    parts += [_target_line(t) for t in targets(results)]
    parts.append("")
    return "\n".join(parts)
