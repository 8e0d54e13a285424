"""Run one child process and measure it alone: wall time, CPU time, peak memory.

`os.wait4` returns the CPU time of exactly that child (its threads included), so
nothing the parent does (the simulator it serves) is charged to the contender. Peak
memory is the child's own `VmHWM`, which it reports itself (see `contenders`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The repository: children run from here so `-m benchmarks.contenders` resolves."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcStats:
    """One child process, measured from outside."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_code: int
    timed_out: bool
    result: dict[str, object] = field(default_factory=dict)
    stderr_tail: str = ""

    @property
    def work_s(self) -> float:
        """The work's own wall time (after imports), else the whole process's."""
        value = self.result.get("elapsed_s")
        return float(value) if isinstance(value, int | float) else self.wall_s

    @property
    def work_cpu_s(self) -> float:
        """CPU time of the work alone (after imports), else the whole process's."""
        value = self.result.get("cpu_s")
        return float(value) if isinstance(value, int | float) else self.cpu_s

    def count(self, key: str) -> int:
        """An integer field of the child's result (0 if absent)."""
        value = self.result.get(key)
        return int(value) if isinstance(value, int | float) else 0


def run_child(
    args: Sequence[str],
    *,
    workdir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 300.0,
) -> ProcStats:
    """`python -m benchmarks.contenders ARGS --result ...`, measured with wait4."""
    result_path = workdir / f"{name}.result.json"
    stdout_path = workdir / f"{name}.stdout"
    stderr_path = workdir / f"{name}.stderr"
    result_path.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "benchmarks.contenders",
        args[0],
        "--result",
        str(result_path),
        *args[1:],
    ]
    child_env = {**os.environ, **(env or {})}
    timed_out = threading.Event()
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            command, stdout=out, stderr=err, env=child_env, cwd=ROOT
        )

        def kill() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, kill)
        watchdog.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    result: dict[str, object] = {}
    if result_path.is_file():
        loaded = json.loads(result_path.read_text(encoding="utf-8"))
        result = loaded if isinstance(loaded, dict) else {}
    code = result.get("exit_code", proc.returncode)
    # The child's own VmHWM; wait4's ru_maxrss also counts what the child inherited
    # at fork from this (large) process, so it is only the fallback.
    peak = result.get("peak_rss_mb")
    return ProcStats(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=float(peak)
        if isinstance(peak, int | float)
        else usage.ru_maxrss / 1024.0,
        exit_code=int(code) if isinstance(code, int) else proc.returncode,
        timed_out=timed_out.is_set(),
        result=result,
        stderr_tail=_tail(stderr_path),
    )


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])
