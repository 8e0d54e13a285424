"""The simulator speaks the platform's dialect: the official SDK runs against it.

`sevenbridges-python` is strict about what it parses (pagination links, the
X-Total-Matching-Query header, UUIDs, time formats, error bodies), so driving it
against the simulator keeps the fake honest where our own client might be lenient.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from typing import Any

import pytest
import sevenbridges as sbg

from orchestrator.simulator import SIM_TOKEN, FakePlatform, serve_in_thread

PROJECT = "sim-user/sdk-dialect"
T0 = 1_700_000_000.0
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


class FakeClock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(name="platform")
def _platform() -> FakePlatform:
    return FakePlatform(clock=FakeClock(), seed=11)


@pytest.fixture(name="api")
def _api(platform: FakePlatform) -> Iterator[Any]:
    """An SDK client on the simulator, served from a background thread."""
    with serve_in_thread(platform) as url:
        api = sbg.Api(url=url, token=SIM_TOKEN, debug=True)
        api.session.trust_env = False  # no proxy between the SDK and loopback
        try:
            yield api
        finally:
            api.session.close()


def test_query_iterates_all_pages(platform: FakePlatform, api: Any) -> None:
    """`tasks.query(...).all()` follows `next` links across pages to every match."""
    ids = platform.seed_cohort(PROJECT, failed=25, aborted=5)
    failed = {i for i in ids if platform.tasks[i]["status"] == "FAILED"}
    collection = api.tasks.query(project=PROJECT, status="FAILED", limit=10)
    assert collection.total == 25
    assert len(collection) == 10
    listed = [task.id for task in collection.all()]
    assert len(listed) == 25
    assert set(listed) == failed
    lists = [r for r in platform.requests if r.route == "GET /tasks"]
    assert {r.query.get("offset", "0") for r in lists} == {"0", "10", "20"}
    assert all(r.query["fields"] == "_all" for r in lists)
    assert all(r.query["status"] == "FAILED" for r in lists)


def test_get_parses_every_field(platform: FakePlatform, api: Any) -> None:
    """`tasks.get` parses times, price, execution status and File inputs."""
    task_id = platform.seed_cohort(PROJECT, completed=1)[0]
    stored = platform.tasks[task_id]
    task = api.tasks.get(task_id)
    assert task.id == task_id
    assert task.name == stored["name"]
    assert task.status == "COMPLETED"
    assert task.app == stored["app"]
    assert task.project == PROJECT
    assert isinstance(task.created_time, datetime.datetime)
    assert task.end_time > task.start_time >= task.created_time
    assert task.price.currency == "USD"
    assert task.price.amount > 0
    assert task.execution_status.message == "Completed."
    assert task.inputs["reads"].id == stored["inputs"]["reads"]["path"]  # type: ignore[index]
    assert task.batch is False


def test_clone_as_draft_and_run(platform: FakePlatform, api: Any) -> None:
    """`clone(run=False)` gives a new DRAFT, `clone(run=True)` a started task."""
    source_id = platform.seed_cohort(PROJECT, failed=1)[0]
    source = api.tasks.get(source_id)
    draft = source.clone(run=False)
    started = source.clone(run=True)
    assert draft.id != source_id
    assert started.id not in (source_id, draft.id)
    assert draft.status == "DRAFT"
    assert started.status == "QUEUED"
    assert draft.name == source.name
    assert platform.clone_counts[source_id] == 2
    clones = [r for r in platform.requests if r.route.endswith("/actions/clone")]
    assert [r.query for r in clones] == [{}, {"action": "run"}]


def test_edit_draft_then_run(platform: FakePlatform, api: Any) -> None:
    """A draft edited with `save()` (a PATCH of nested changes only) then `run()`s."""
    source_id = platform.seed_cohort(PROJECT, failed=1)[0]
    draft = api.tasks.get(source_id).clone(run=False)
    new_reads = next(iter(sorted(platform.files)))
    draft.name = f"{draft.name} (rerun)"
    draft.inputs["reads"] = {"class": "File", "path": new_reads}
    draft.save()
    patch = platform.requests[-1]
    assert patch.route == "PATCH /tasks/{id}"
    # The SDK diffs nested dicts: the unchanged "class" of the File is not sent.
    assert patch.body == {"name": draft.name, "inputs": {"reads": {"path": new_reads}}}
    stored = platform.tasks[draft.id]
    inputs = stored["inputs"]
    assert isinstance(inputs, dict)
    assert stored["name"] == draft.name
    assert inputs["reads"]["class"] == "File"
    assert inputs["reads"]["path"] == new_reads
    assert "reference" in inputs
    draft.run()
    assert draft.status == "QUEUED"
    with pytest.raises(sbg.BadRequest) as again:
        draft.run()
    assert again.value.code == 7007


def test_bulk_get(platform: FakePlatform, api: Any) -> None:
    """`tasks.bulk_get` pairs resources and errors with requested IDs by position."""
    task_id = platform.seed_cohort(PROJECT, aborted=1)[0]
    forbidden = platform.add_forbidden_task()
    records = api.tasks.bulk_get([task_id, UNKNOWN_ID, forbidden])
    assert [record.valid for record in records] == [True, False, False]
    assert records[0].resource.id == task_id
    assert records[0].resource.status == "ABORTED"
    assert (records[1].error.status, records[1].error.code) == (404, 7002)
    assert (records[2].error.status, records[2].error.code) == (403, 7001)


def test_errors_and_rate_limit_headers(platform: FakePlatform, api: Any) -> None:
    """Error bodies map to the SDK's exceptions; the rate-limit calls parse."""
    with pytest.raises(sbg.NotFound) as missing:
        api.tasks.get(UNKNOWN_ID)
    assert missing.value.code == 7002
    source_id = platform.add_task(
        project=PROJECT,
        name="broken",
        app=f"{PROJECT}/app/1",
        status="FAILED",
        inputs={"reads": {"class": "File", "path": "0" * 24}},
    )["id"]
    draft = api.tasks.get(source_id).clone(run=False)
    with pytest.raises(sbg.BadRequest) as invalid:
        draft.run()
    assert invalid.value.code == 7024
    assert api.limit == 1000
    assert api.remaining == platform.rate_status()[1]
    assert api.request_id
