"""Shared fixtures: a fresh simulator per test, served on loopback, and fake time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
import structlog

from orchestrator.config import Credentials
from orchestrator.manifest import load_manifest
from orchestrator.policy import RetryPolicy
from orchestrator.runner import RunOptions, RunResult, run_manifest
from orchestrator.simulator import SIM_PROJECT, SIM_TOKEN, FakePlatform, serve

PROJECT = SIM_PROJECT
START = 1_800_000_000.0  # a fixed Unix time for fake clocks


@dataclass
class FakeTime:
    """A clock that only moves when someone sleeps on it: minutes pass in no time."""

    now: float = START
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        """The fake Unix time."""
        return self.now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        """Jump the clock to this sleeper's wake-up time instead of waiting.

        Sleeps that overlap end at the latest wake-up among them, as on a real
        clock, instead of adding up.
        """
        self.sleeps.append(seconds)
        wake = self.now + max(0.0, seconds)
        await asyncio.sleep(0)
        self.now = max(self.now, wake)


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Each test starts with structlog's defaults and no bound context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.fixture(autouse=True)
def _no_real_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never read the developer's real ~/.sevenbridges/credentials."""
    monkeypatch.setenv("HOME", str(tmp_path))


@pytest.fixture(name="fake_time")
def _fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture(name="platform")
def _platform(fake_time: FakeTime) -> FakePlatform:
    """A simulator on fake time with a budget that does not bind unless a test says."""
    return FakePlatform(clock=fake_time.time, rate_limit=(100_000, 300.0), seed=1)


@pytest.fixture(name="api_url")
async def _api_url(platform: FakePlatform) -> AsyncIterator[str]:
    async with serve(platform) as url:
        yield url


@pytest.fixture(name="creds")
def _creds(api_url: str) -> Credentials:
    return Credentials(endpoint=api_url, token=SIM_TOKEN, source="test simulator")


FAST_POLICY = RetryPolicy(
    attempts=6,
    wait_initial_s=0.5,
    wait_max_s=5.0,
    jitter_s=0.1,
    maintenance_wait_s=30.0,
    maintenance_max_s=600.0,
)


@pytest.fixture(name="options")
def _options(fake_time: FakeTime, tmp_path: Path) -> RunOptions:
    """Run options on fake time (backoffs and rate-limit pauses take no real time)."""
    import random

    return RunOptions(
        ledger_path=tmp_path / "test.ledger.jsonl",
        policy=FAST_POLICY,
        sleep=fake_time.sleep,
        clock=fake_time.time,
        rng=random.Random(7),
        request_timeout_s=5.0,
    )


def write_manifest(directory: Path, body: str, name: str = "m.yaml") -> Path:
    """Write a manifest file and return its path."""
    path = directory / name
    path.write_text(body, encoding="utf-8")
    return path


FAST_BUDGET = "rate_limit: {requests: 1000000, per_seconds: 1}\n"
"""A client budget that never binds: tests of wiring, not of timing."""


def manifest_for(
    tmp_path: Path, ids: Sequence[str] = (), *, extra: str = "", select: str = ""
) -> Path:
    """A manifest listing `ids` (and/or a `select:` block), with FAST_BUDGET."""
    body = "version: 1\n" + FAST_BUDGET + extra
    if ids:
        body += "tasks:\n" + "".join(f"  - {i}\n" for i in ids)
    return write_manifest(tmp_path, body + select)


async def run(path: Path, creds: Credentials, options: RunOptions) -> RunResult:
    """Load and run a manifest, as `cgc-rerun run` does."""
    return await run_manifest(load_manifest(path), creds, options)


async def clone_behind_our_back(creds: Credentials, source: str, *, run: bool) -> str:
    """A clone POST the platform committed (sent by a killed run, or by hand)."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{creds.endpoint}/tasks/{source}/actions/clone",
            params={"action": "run"} if run else None,
            headers={"X-SBG-Auth-Token": creds.token},
        ) as response,
    ):
        assert response.status == 201
        return str((await response.json())["id"])


def look_alike_sources(
    platform: FakePlatform, count: int, *, created_time: float
) -> list[str]:
    """Sources no clone can tell apart: same project, name, app and inputs."""
    platform.files.add("a" * 24)
    same: dict[str, object] = {"reads": {"class": "File", "path": "a" * 24}}
    return [
        str(
            platform.add_task(
                project=PROJECT,
                name="same",
                app=f"{PROJECT}/wf/1",
                status="FAILED",
                inputs=same,
                created_time=created_time,
            )["id"]
        )
        for _ in range(count)
    ]
