"""`cgc-rerun demo`: a whole rerun, end to end, against the built-in simulator.

It serves the simulator on loopback, reruns the FAILED/ABORTED cohort of
`manifests/demo.yaml` with progress, waits for the new tasks, prints the report, then
runs the same manifest on the same ledger again to show that nothing is cloned twice.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from orchestrator.config import Credentials
from orchestrator.manifest import load_manifest
from orchestrator.progress import Progress
from orchestrator.report import render
from orchestrator.runner import RunOptions, run_manifest
from orchestrator.simulator import SIM_PROJECT, SIM_TOKEN, FakePlatform, serve

DEMO_MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "demo.yaml"


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def _demo(*, progress: bool, workdir: Path) -> int:
    platform = FakePlatform(
        latency_s=0.01, queued_s=1.0, running_s=3.0, fail_fraction=0.05, seed=7
    )
    platform.seed_cohort(SIM_PROJECT, failed=210, aborted=40, completed=30, running=5)
    platform.add_batch(SIM_PROJECT, children=4, status="FAILED")
    manifest = load_manifest(DEMO_MANIFEST)
    ledger = workdir / "demo.ledger.jsonl"
    async with serve(platform) as url:
        credentials = Credentials(
            endpoint=url, token=SIM_TOKEN, source="the built-in simulator"
        )
        _say(f"simulator: {url}, project {SIM_PROJECT}; ledger: {ledger}")
        bar = Progress(what="run", enabled=progress)
        waiting = Progress(what="wait", enabled=progress)
        try:
            first = await run_manifest(
                manifest,
                credentials,
                RunOptions(ledger_path=ledger, wait=True),
                progress=bar,
                wait_progress=waiting,
            )
        finally:
            bar.close()
            waiting.close()
        sys.stdout.write(render(first.rows, "table"))
        _say(
            f"first pass: {first.summary.requests} API requests for "
            f"{len(first.rows)} sources; exit code would be {first.exit_code}"
        )
        _say("second pass, same manifest and ledger (nothing should be cloned):")
        second = await run_manifest(
            manifest, credentials, RunOptions(ledger_path=ledger)
        )
        twice = sum(1 for n in platform.clone_counts.values() if n > 1)
        cloned = second.summary.outcomes.get("cloned", 0)
        _say(
            f"second pass: {cloned} cloned, "
            f"{second.summary.outcomes.get('done', 0)} already done; "
            f"sources cloned more than once on the platform: {twice}"
        )
        return 0 if cloned == 0 and twice == 0 else 1


def run_demo(*, progress: bool = True) -> int:
    """Run the demo in a fresh directory (kept, for `report`); 0 when all went well."""
    workdir = Path(tempfile.mkdtemp(prefix="cgc-rerun-demo-"))
    code = asyncio.run(_demo(progress=progress, workdir=workdir))
    ledger = workdir / "demo.ledger.jsonl"
    _say(f"the ledger stays: try `cgc-rerun report {ledger}`")
    return code
