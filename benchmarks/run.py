"""`make bench`: run every scenario, print the table, write BENCHMARKS.md.

    .venv/bin/python -m benchmarks.run            # what `make bench` runs
    .venv/bin/python -m benchmarks.run --quick    # small cohorts, short windows
    .venv/bin/python -m benchmarks.run --skip-scale --output /tmp/b.md

Scenarios (see BENCHMARKS.md for the figures):

* latency-bound: 50 ms per request, a budget that never binds;
* budget-bound: a 200 requests / 20 s window and a cohort of about three windows;
* faults: 5xx before processing and clone answers lost after committing ("drop");
* scale: a 100,000-source manifest and ledger: validate, report, plan, resume.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.proc import ROOT
from benchmarks.render import Results, render_markdown, render_summary
from benchmarks.scenarios import (
    Contender,
    Measurement,
    Scenario,
    run_contender,
    run_scale,
)
from orchestrator.simulator import FaultProfile


@dataclass(frozen=True, slots=True, kw_only=True)
class Preset:
    """Cohort sizes and windows; `full` is what `make bench` reports."""

    name: str
    latency_tool: int
    latency_pool: int
    latency_loop: int
    budget_window: tuple[int, float]
    budget_tool: int
    budget_pool: int
    budget_loop: int
    fault_tasks: int
    scale_sources: int
    scale_small: int


FULL = Preset(
    name="full",
    latency_tool=800,
    latency_pool=800,
    latency_loop=120,
    budget_window=(200, 20.0),
    budget_tool=550,
    budget_pool=275,
    budget_loop=120,
    fault_tasks=300,
    scale_sources=100_000,
    scale_small=10_000,
)
QUICK = Preset(
    name="quick",
    latency_tool=200,
    latency_pool=200,
    latency_loop=40,
    budget_window=(50, 5.0),
    budget_tool=130,
    budget_pool=65,
    budget_loop=30,
    fault_tasks=100,
    scale_sources=10_000,
    scale_small=1_000,
)
CONCURRENCY = 8
SEED = 7


def scenarios(preset: Preset) -> list[tuple[Scenario, list[Contender]]]:
    """Each scenario with its contenders, in the order they run."""
    latency = Scenario(
        key="latency",
        title="latency-bound",
        latency_s=0.05,
        rate_limit=(1_000_000, 300.0),
        concurrency=CONCURRENCY,
        seed=SEED,
    )
    budget = Scenario(
        key="budget",
        title="budget-bound",
        latency_s=0.05,
        rate_limit=preset.budget_window,
        concurrency=CONCURRENCY,
        seed=SEED,
    )
    faults = Scenario(
        key="faults",
        title="faults",
        latency_s=0.02,
        rate_limit=(1_000_000, 300.0),
        faults=FaultProfile(
            error_rate=0.02, lost_answer_rate=0.05, lost_answer_mode="drop", seed=SEED
        ),
        concurrency=CONCURRENCY,
        seed=SEED,
    )

    def trio(tool: int, loop: int, pool: int, full: int) -> list[Contender]:
        def note(n: int) -> str:
            return f"first {n} of {full} sources" if n < full else ""

        return [
            Contender(
                key="tool",
                label="cgc-rerun",
                kind="tool",
                tasks=tool,
                threads=CONCURRENCY,
                subset_note=note(tool),
            ),
            Contender(
                key="sdk-loop",
                label="SDK loop",
                kind="sdk-loop",
                tasks=loop,
                subset_note=note(loop),
            ),
            Contender(
                key="sdk-pool",
                label=f"SDK pool of {CONCURRENCY}",
                kind="sdk-pool",
                tasks=pool,
                threads=CONCURRENCY,
                subset_note=note(pool),
            ),
        ]

    fault_contenders = [
        *trio(preset.fault_tasks, preset.fault_tasks, preset.fault_tasks, 0),
        Contender(
            key="sdk-pool-retry",
            label=f"SDK pool of {CONCURRENCY} + retry x3",
            kind="sdk-pool",
            tasks=preset.fault_tasks,
            threads=CONCURRENCY,
            retries=3,
        ),
    ]
    return [
        (
            latency,
            trio(
                preset.latency_tool,
                preset.latency_loop,
                preset.latency_pool,
                preset.latency_tool,
            ),
        ),
        (
            budget,
            trio(
                preset.budget_tool,
                preset.budget_loop,
                preset.budget_pool,
                preset.budget_tool,
            ),
        ),
        (faults, fault_contenders),
    ]


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _describe(m: Measurement) -> str:
    proc = m.proc
    state = "TIMED OUT" if proc.timed_out else f"exit {proc.exit_code}"
    return (
        f"  {m.contender.label:<26} {m.ok:>5}/{m.tasks:<5} ok in {proc.work_s:7.2f} s "
        f"({m.tasks_per_s:7.1f}/s), {m.requests} requests, {m.rate_limited} x 429, "
        f"{m.duplicate_sources} duplicated, {state}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write BENCHMARKS.md."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run")
    parser.add_argument("--quick", action="store_true", help="small cohorts")
    parser.add_argument("--skip-scale", action="store_true")
    parser.add_argument(
        "--output",
        type=Path,
        default=ROOT / "BENCHMARKS.md",
        help="where to write the report (default: BENCHMARKS.md)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL
    started = time.perf_counter()
    measurements: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="cgc-rerun-bench-") as tmp:
        workdir = Path(tmp)
        for scenario, contenders in scenarios(preset):
            _say(f"{scenario.title}:")
            for contender in contenders:
                m = run_contender(scenario, contender, workdir, timeout_s=240.0)
                measurements.append(m)
                _say(_describe(m))
                if m.proc.exit_code not in (0, 1) or m.proc.timed_out:
                    _say("    stderr: " + m.proc.stderr_tail.replace("\n", "\n    "))
        scale = None
        if not args.skip_scale:
            _say(f"scale ({preset.scale_sources} sources):")
            scale = run_scale(
                workdir,
                sources=preset.scale_sources,
                small=preset.scale_small,
                seed=SEED,
                timeout_s=180.0,
            )
            for step in scale.steps.values():
                proc = step.proc
                _say(
                    f"  {step.label:<36} {step.sources:>7}: exit {proc.exit_code}, "
                    f"{proc.wall_s:6.2f} s, {proc.peak_rss_mb:6.0f} MB"
                )
    results = Results(
        preset=preset.name,
        measurements=measurements,
        scale=scale,
        total_s=time.perf_counter() - started,
    )
    print(render_summary(results))
    args.output.write_text(render_markdown(results), encoding="utf-8")
    _say(f"wrote {args.output} ({results.total_s:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
