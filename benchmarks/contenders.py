"""The child side of the benchmark: one contender (or one CLI command) per process.

`python -m benchmarks.contenders KIND --result FILE ...` runs one of:

* `tool`: `cgc-rerun run MANIFEST --no-progress -q`, through `orchestrator.cli.main`,
  exactly as the console script does;
* `cli`: any other `cgc-rerun` command (`validate`, `plan`, `report`, ...);
  `--lift-cap` raises the manifest size cap in this process only, to time the parser
  on a manifest the cap refuses;
* `sdk-loop`: the official SDK as its docs show it, `api.tasks.get(id)` then
  `task.clone(run=True)`, one source after another;
* `sdk-pool`: the same two calls in a thread pool, optionally retried on any error
  (`--retries`), as a script wrapping the SDK typically does;

`make_ledger` writes the ledger a finished run leaves, with the real `Ledger.record`.

The endpoint and token come from `SB_API_ENDPOINT` / `SB_AUTH_TOKEN`, as for users.
The work's own wall time and CPU time (this process, all threads, after the imports)
go to the `--result` JSON file; the parent measures the whole process with `wait4`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _peak_rss_mb() -> float | None:
    """This process's own peak RSS (`VmHWM`).

    `ru_maxrss` is not used: Linux carries it across fork and exec, so a child of a
    large parent would report the parent's size.
    """
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii")
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0  # kB
    return None


def _write(path: Path, result: dict[str, object]) -> None:
    result["peak_rss_mb"] = _peak_rss_mb()
    path.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def _measure(work: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Run `work`, adding its wall time and this process's CPU time to its result."""
    cpu0, t0, started_at = _cpu_s(), time.perf_counter(), time.time()
    result = work()
    result["elapsed_s"] = time.perf_counter() - t0
    result["cpu_s"] = _cpu_s() - cpu0
    result["started_at"] = started_at  # wall clock, to line up with the platform's
    result["ended_at"] = time.time()
    return result


# ------------------------------------------------------------------------ cgc-rerun


def _cli(argv: Sequence[str], *, lift_cap: bool) -> dict[str, object]:
    import orchestrator.manifest as manifest_module
    from orchestrator.cli import main

    original_cap = manifest_module.MAX_MANIFEST_BYTES
    if lift_cap:
        manifest_module.MAX_MANIFEST_BYTES = 1 << 30  # type: ignore[misc]
    result = _measure(lambda: {"exit_code": main(list(argv))})
    result["manifest_cap_bytes"] = original_cap
    result["cap_lifted"] = lift_cap
    return result


def _tool(manifest: Path, ledger: Path) -> dict[str, object]:
    from orchestrator.ledger import read_ledger

    argv = ["run", str(manifest), "--ledger", str(ledger), "--no-progress", "-q"]
    result = _cli(argv, lift_cap=False)
    rows = read_ledger(ledger).rows.values()
    failed = [r.source_task_id for r in rows if r.rerun_failed or not r.new_task_id]
    result["ok"] = len(rows) - len(failed)
    result["failed"] = len(failed)
    result["failed_ids"] = failed
    return result


# ---------------------------------------------------------------- the official SDK


def _sdk_api(threads: int) -> Any:
    """An SDK client as its docs recommend: rate-limit and maintenance handlers on."""
    import sevenbridges as sbg
    from sevenbridges.http.error_handlers import (
        maintenance_sleeper,
        rate_limit_sleeper,
    )

    api = sbg.Api(
        url=os.environ["SB_API_ENDPOINT"],
        token=os.environ["SB_AUTH_TOKEN"],
        debug=True,  # lets the SDK use the simulator's http:// loopback endpoint
        error_handlers=[rate_limit_sleeper, maintenance_sleeper],
        max_parallel_requests=threads,
    )
    api.session.trust_env = False  # no proxy between the SDK and loopback
    return api


def _sdk(ids: list[str], *, threads: int, retries: int) -> dict[str, object]:
    api = _sdk_api(threads)
    errors: Counter[str] = Counter()

    def rerun(task_id: str) -> bool:
        for _ in range(retries + 1):
            try:
                task = api.tasks.get(id=task_id)
                task.clone(run=True)
            except Exception as exc:  # noqa: BLE001 - any failure is a failed try
                errors[type(exc).__name__] += 1
                continue
            return True
        return False

    def work() -> dict[str, object]:
        if threads <= 1:
            done = [rerun(task_id) for task_id in ids]
        else:
            with ThreadPoolExecutor(max_workers=threads) as pool:
                done = list(pool.map(rerun, ids))
        failed = [task_id for task_id, ok in zip(ids, done, strict=True) if not ok]
        return {
            "ok": len(ids) - len(failed),
            "failed": len(failed),
            "failed_ids": failed,
        }

    result = _measure(work)
    result["errors"] = dict(errors)
    result["exit_code"] = 0
    return result


# ------------------------------------------------------------------------- ledgers


def make_ledger(ids: Sequence[str], path: Path, *, seed: int = 0) -> None:
    """The ledger a finished `run` of `ids` leaves (action run, no overrides)."""
    from orchestrator.ledger import Event, Ledger

    rng = random.Random(f"bench-ledger:{seed}")
    path.unlink(missing_ok=True)
    with Ledger(path) as ledger:
        ledger.record(
            Event.RUN_STARTED, None, command="run", sources=len(ids), action="run"
        )
        for task_id in ids:
            ledger.record(
                Event.PLANNED,
                task_id,
                label=None,
                name="TCGA-00-0000-01A alignment",
                app="sim-user/scale/bwa-mem-alignment/3",
                project="sim-user/scale",
                source_status="FAILED",
                steps=["clone_run"],
                overrides=None,
            )
            ledger.record(
                Event.CLONE_INTENT, task_id, attempt=1, run=True, at=time.time()
            )
            new_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            ledger.record(
                Event.CLONED,
                task_id,
                new_task_id=new_id,
                status="QUEUED",
                via="response",
                task_errors=None,
            )
        ledger.record(Event.RUN_FINISHED, None, outcomes={"cloned": len(ids)})


def _read_ids(path: Path) -> list[str]:
    return [line for line in path.read_text(encoding="utf-8").split() if line]


# ---------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.contenders")
    parser.add_argument("kind", choices=("tool", "cli", "sdk-loop", "sdk-pool"))
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--manifest", type=Path)
    parser.add_argument("--ledger", type=Path)
    parser.add_argument("--ids", type=Path)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--lift-cap", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one contender and write its result JSON (`cli`: its argv after `--`)."""
    given = list(sys.argv[1:] if argv is None else argv)
    cut = given.index("--") if "--" in given else len(given)
    args = _parser().parse_args(given[:cut])
    if args.kind == "tool":
        result = _tool(args.manifest, args.ledger)
    elif args.kind == "cli":
        result = _cli(given[cut + 1 :], lift_cap=args.lift_cap)
    else:
        ids = _read_ids(args.ids)
        threads = 1 if args.kind == "sdk-loop" else args.threads
        result = _sdk(ids, threads=threads, retries=args.retries)
    _write(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
