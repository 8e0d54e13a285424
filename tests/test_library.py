"""The README's library example, run as written against the simulator."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from orchestrator.simulator import SIM_PROJECT, SIM_TOKEN, FakePlatform, serve_in_thread

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_library_example() -> str:
    """The Python block under "Using it as a library" in the README."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Using it as a library", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README lost its library example"
    return match.group(1)


class TestReadmeLibraryExample:
    def test_example_runs_a_manifest_and_exits_with_the_cli_code(
        self, tmp_path: Path
    ) -> None:
        """The snippet reruns a cohort, prints one line per source, and exits 0."""
        platform = FakePlatform(queued_s=0.1, running_s=0.2, fail_fraction=0.0)
        ids = platform.seed_cohort(SIM_PROJECT, failed=5)
        manifest = tmp_path / "cohort.yaml"
        manifest.write_text(
            "version: 1\nwait: {poll_seconds: 1, timeout_hours: 1}\ntasks:\n"
            + "".join(f"  - {i}\n" for i in ids),
            encoding="utf-8",
        )
        code = readme_library_example().replace(
            "manifests/failed-cohort.yaml", str(manifest)
        )
        with serve_in_thread(platform) as url:
            env = {
                **os.environ,
                "SB_API_ENDPOINT": url,
                "SB_AUTH_TOKEN": SIM_TOKEN,
                "HOME": str(tmp_path),
            }
            done = subprocess.run(
                [sys.executable, "-c", code],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert len(lines) == len(ids)
        for source, line in zip(ids, lines, strict=True):
            assert line.startswith(source)
            assert "COMPLETED" in line
        assert SIM_TOKEN not in done.stdout + done.stderr
        assert all(platform.clone_counts[i] == 1 for i in ids)
