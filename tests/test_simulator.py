"""The API simulator, exercised over real HTTP (aiohttp's TestServer on loopback)."""

from __future__ import annotations

import asyncio
import io
import json
import math
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from orchestrator.simulator import (
    DEFAULT_LIST_FIELDS,
    PLATFORM_KEY,
    SIM_PROJECT,
    SIM_TOKEN,
    SIM_USER,
    FakePlatform,
    FaultProfile,
    make_app,
    serve,
    serve_forever,
    serve_in_thread,
)

PROJECT = "sim-user/cohort"
AUTH = {"X-SBG-Auth-Token": SIM_TOKEN}
T0 = 1_700_000_000.0
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"

Client = TestClient[web.Request, web.Application]
Connect = Callable[..., Awaitable[Client]]


class FakeClock:
    """A wall clock that moves only when a test says so."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(name="clock")
def _clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="platform")
def _platform(clock: FakeClock) -> FakePlatform:
    return FakePlatform(clock=clock, seed=7)


@pytest.fixture(name="connect")
async def _connect() -> AsyncIterator[Connect]:
    """A factory of test clients (closed at teardown), with or without the token."""
    clients: list[Client] = []

    async def connect(platform: FakePlatform, *, auth: bool = True) -> Client:
        client: Client = TestClient(
            TestServer(make_app(platform)), headers=AUTH if auth else {}
        )
        await client.start_server()
        clients.append(client)
        return client

    yield connect
    for client in clients:
        await client.close()


@pytest.fixture(name="client")
async def _client(platform: FakePlatform, connect: Connect) -> Client:
    return await connect(platform)


async def body_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """The JSON object of a response (asserting it is one)."""
    data = await response.json()
    assert isinstance(data, dict)
    return data


def assert_error(body: dict[str, Any], status: int, code: int) -> None:
    """The platform's error shape with the expected status and code."""
    assert body["status"] == status
    assert body["code"] == code
    assert isinstance(body["message"], str)
    assert body["message"]
    assert isinstance(body["more_info"], str)


class TestAuth:
    async def test_missing_token_is_401(
        self, platform: FakePlatform, connect: Connect
    ) -> None:
        """Without a token every API call is 401 code 90001 and nothing is counted."""
        client = await connect(platform, auth=False)
        response = await client.get("/v2/user")
        assert response.status == 401
        assert_error(await body_of(response), 401, 90001)
        assert "X-RateLimit-Remaining" not in response.headers
        assert platform.rate_status()[1] == platform.limit

    async def test_wrong_token_is_401(self, client: Client) -> None:
        """A token other than the platform's is refused."""
        response = await client.get("/v2/user", headers={"X-SBG-Auth-Token": "nope"})
        assert response.status == 401

    async def test_bearer_token_is_accepted(
        self, platform: FakePlatform, connect: Connect
    ) -> None:
        """`Authorization: Bearer <token>` works like the developer-token header."""
        client = await connect(platform, auth=False)
        response = await client.get(
            "/v2/user", headers={"Authorization": f"Bearer {SIM_TOKEN}"}
        )
        assert response.status == 200
        assert (await body_of(response))["username"] == SIM_USER

    async def test_path_listing_needs_no_token(
        self, platform: FakePlatform, connect: Connect
    ) -> None:
        """`GET /v2/` lists the API paths without authentication."""
        client = await connect(platform, auth=False)
        response = await client.get("/v2/")
        body = await body_of(response)
        assert response.status == 200
        assert body["tasks_url"].endswith("/v2/tasks")
        assert platform.count("GET /") == 1

    async def test_revoked_permission_is_403(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """With `forbidden` set, authenticated calls get 403 code 90002."""
        platform.forbidden = True
        response = await client.get("/v2/user")
        assert response.status == 403
        assert_error(await body_of(response), 403, 90002)

    async def test_user(self, client: Client) -> None:
        """`GET /v2/user` describes the token's user."""
        body = await body_of(await client.get("/v2/user"))
        assert body["username"] == SIM_USER
        assert {"href", "email", "first_name", "last_name"} <= body.keys()


class TestHeaders:
    async def test_every_answer_has_a_unique_request_id(self, client: Client) -> None:
        """X-Request-Id differs per response, errors included."""
        ids = set()
        for path in ("/v2/user", "/v2/tasks/nope", "/v2/", "/v2/nowhere"):
            response = await client.get(path)
            ids.add(response.headers["X-Request-Id"])
        assert len(ids) == 4

    async def test_rate_headers_and_json(
        self, client: Client, clock: FakeClock
    ) -> None:
        """Authenticated answers carry integer rate-limit headers and JSON bodies."""
        response = await client.get("/v2/user")
        assert response.content_type == "application/json"
        assert response.headers["X-RateLimit-Limit"] == "1000"
        assert response.headers["X-RateLimit-Remaining"] == "999"
        assert response.headers["X-RateLimit-Reset"] == str(math.ceil(clock.now + 300))

    async def test_unknown_route_and_method(self, client: Client) -> None:
        """Unknown paths are 404 code 90003; a wrong method is 405 code 90006."""
        missing = await client.get("/v2/projects")
        assert_error(await body_of(missing), 404, 90003)
        wrong = await client.delete("/v2/tasks")
        assert_error(await body_of(wrong), 405, 90006)


class TestRateLimit:
    @pytest.fixture(name="limited")
    def _limited(self, clock: FakeClock) -> FakePlatform:
        clock.now = T0 + 0.5
        return FakePlatform(clock=clock, rate_limit=(3, 60.0), seed=7)

    async def test_fixed_window(
        self, limited: FakePlatform, connect: Connect, clock: FakeClock
    ) -> None:
        """Three requests fit; the fourth is 429 until the window ends; then anew."""
        client = await connect(limited)
        reset = str(math.ceil(T0 + 0.5 + 60))
        seen = []
        for _ in range(3):
            response = await client.get("/v2/user")
            assert response.status == 200
            assert response.headers["X-RateLimit-Reset"] == reset
            seen.append(response.headers["X-RateLimit-Remaining"])
            clock.advance(10)
        assert seen == ["2", "1", "0"]
        refused = await client.get("/v2/user")
        assert refused.status == 429
        body = await body_of(refused)
        assert_error(body, 429, 1000)
        assert body["message"] == "Rate limit exceeded! Check response headers."
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert refused.headers["X-RateLimit-Reset"] == reset
        assert limited.rate_limited == 1
        clock.now = T0 + 60.5  # the window [T0 + 0.5, T0 + 60.5) is over
        again = await client.get("/v2/user")
        assert again.status == 200
        assert again.headers["X-RateLimit-Remaining"] == "2"
        assert again.headers["X-RateLimit-Reset"] == str(math.ceil(T0 + 60.5 + 60))

    async def test_refused_request_is_not_processed(
        self, limited: FakePlatform, connect: Connect
    ) -> None:
        """A clone refused with 429 commits nothing."""
        (source,) = limited.seed_cohort(PROJECT, failed=1)
        limited.spend_budget(3)
        client = await connect(limited)
        response = await client.post(f"/v2/tasks/{source}/actions/clone")
        assert response.status == 429
        assert limited.clone_counts[source] == 0

    async def test_rate_limit_endpoint_is_free(
        self, limited: FakePlatform, connect: Connect
    ) -> None:
        """`GET /v2/rate_limit` reports the window without spending from it."""
        client = await connect(limited)
        await client.get("/v2/user")
        for _ in range(5):
            body = await body_of(await client.get("/v2/rate_limit"))
            assert body["rate"] == {
                "limit": 3,
                "remaining": 2,
                "reset": math.ceil(T0 + 0.5 + 60),
            }
            assert body["instance_limit"] == {
                "limit": -1,
                "remaining": 9223372036854775807,
            }
        assert limited.rate_status() == (3, 2, math.ceil(T0 + 0.5 + 60))

    async def test_spend_budget(self, limited: FakePlatform, connect: Connect) -> None:
        """Another client's spending shows in Remaining and leads to 429 sooner."""
        client = await connect(limited)
        limited.spend_budget(2)
        response = await client.get("/v2/user")
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert (await client.get("/v2/user")).status == 429


class TestGetTask:
    async def test_full_task(self, platform: FakePlatform, client: Client) -> None:
        """A task has the platform's fields, an href and second-resolution UTC times."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        response = await client.get(f"/v2/tasks/{task_id}")
        body = await body_of(response)
        assert response.status == 200
        assert body["href"] == str(client.make_url(f"/v2/tasks/{task_id}"))
        assert body["id"] == task_id
        assert body["status"] == "FAILED"
        assert body["project"] == PROJECT
        assert body["app"] == f"{PROJECT}/bwa-mem-alignment/3"
        assert body["type"] == "v2"
        for key in ("created_time", "start_time", "end_time"):
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body[key])
        assert body["execution_status"]["message"]
        assert body["price"]["currency"] == "USD"
        assert body["inputs"]["reads"]["class"] == "File"

    async def test_fields_select(self, platform: FakePlatform, client: Client) -> None:
        """`fields=a,b` returns just those keys."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        response = await client.get(
            f"/v2/tasks/{task_id}", params={"fields": "id,status"}
        )
        assert await body_of(response) == {"id": task_id, "status": "FAILED"}

    async def test_errors(self, platform: FakePlatform, client: Client) -> None:
        """Unknown: 404/7002; not a UUID: 400/7005; another's project: 403/7001."""
        forbidden = platform.add_forbidden_task()
        cases = [
            (UNKNOWN_ID, 404, 7002),
            ("not-a-uuid", 400, 7005),
            (forbidden, 403, 7001),
        ]
        for task_id, status, code in cases:
            response = await client.get(f"/v2/tasks/{task_id}")
            assert response.status == status
            assert_error(await body_of(response), status, code)


class TestListTasks:
    async def test_pages_follow_next_links(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """Pages link next/prev and carry the total; following `next` lists all once."""
        ids = platform.seed_cohort(PROJECT, failed=25)
        response = await client.get(
            "/v2/tasks", params={"project": PROJECT, "limit": "10"}
        )
        body = await body_of(response)
        assert response.headers["X-Total-Matching-Query"] == "25"
        assert body["href"] == str(response.url)
        assert [link["rel"] for link in body["links"]] == ["next"]
        seen = [item["id"] for item in body["items"]]
        pages = 1
        while True:
            nexts = [link for link in body["links"] if link["rel"] == "next"]
            if not nexts:
                break
            assert nexts[0]["method"] == "GET"
            response = await client.session.get(nexts[0]["href"])
            body = await body_of(response)
            assert {link["rel"] for link in body["links"]} <= {"next", "prev"}
            assert any(link["rel"] == "prev" for link in body["links"])
            seen.extend(item["id"] for item in body["items"])
            pages += 1
        assert pages == 3
        assert seen == ids  # created_time ascending by default = creation order

    async def test_default_fields_all_and_selection(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """List items carry default fields only, unless `fields` says otherwise."""
        platform.seed_cohort(PROJECT, failed=2)
        plain = await body_of(await client.get("/v2/tasks"))
        assert all(set(item) <= set(DEFAULT_LIST_FIELDS) for item in plain["items"])
        assert all("inputs" not in item for item in plain["items"])
        full = await body_of(await client.get("/v2/tasks", params={"fields": "_all"}))
        assert all("inputs" in item for item in full["items"])
        some = await body_of(
            await client.get("/v2/tasks", params={"fields": "id,name"})
        )
        assert all(set(item) == {"id", "name"} for item in some["items"])
        fewer = await body_of(
            await client.get("/v2/tasks", params={"fields": "!href,!app"})
        )
        assert all("href" not in i and "id" in i for i in fewer["items"])

    async def test_status_and_date_filters(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """status, created_* and ended_* filter, in the documented ISO forms (UTC)."""
        old = platform.add_task(
            project=PROJECT,
            name="a",
            app="x/y/z/1",
            status="FAILED",
            created_time=T0 - 86400,
            end_time=T0 - 86000,
        )
        new = platform.add_task(
            project=PROJECT, name="b", app="x/y/z/1", status="DRAFT", created_time=T0
        )

        async def ids(**params: str) -> list[str]:
            body = await body_of(await client.get("/v2/tasks", params=params))
            return [item["id"] for item in body["items"]]

        assert await ids(status="FAILED") == [old["id"]]
        assert await ids(status="DRAFT") == [new["id"]]
        assert await ids(created_from="2023-11-14") == [new["id"]]  # T0 is 22:13:20Z
        assert await ids(created_from="2023-11-14T22:13:20Z") == [new["id"]]
        assert await ids(created_to="2023-11-14T23:13:19+01:00") == [old["id"]]
        assert await ids(created_from="2023-11-13T22:13:20") == [old["id"], new["id"]]
        assert await ids(ended_to="2023-11-14T00:00:00") == [old["id"]]
        assert await ids(started_from="2023-11-01") == [old["id"]]

    async def test_order_by(self, platform: FakePlatform, client: Client) -> None:
        """order_by name desc sorts by name, ties by id; `order` alone is ignored."""
        for name in ("b", "a", "b", "c"):
            platform.add_task(
                project=PROJECT, name=name, app="x/y/z/1", status="FAILED"
            )
        body = await body_of(
            await client.get("/v2/tasks", params={"order_by": "name", "order": "desc"})
        )
        got = [(item["name"], item["id"]) for item in body["items"]]
        assert got == sorted(got, reverse=True)
        plain = await body_of(await client.get("/v2/tasks", params={"order": "desc"}))
        times = [(item["created_time"], item["id"]) for item in plain["items"]]
        assert times == sorted(times)

    async def test_bad_parameters(self, client: Client) -> None:
        """limit > 100, a bad status, date or order_by are 400s."""
        cases = [
            ({"limit": "101"}, 90000),
            ({"limit": "0"}, 90000),
            ({"offset": "-1"}, 90000),
            ({"status": "DONE"}, 7006),
            ({"created_from": "yesterday"}, 90000),
            ({"order_by": "size"}, 90000),
        ]
        for params, code in cases:
            response = await client.get("/v2/tasks", params=params)
            assert response.status == 400, params
            assert_error(await body_of(response), 400, code)

    async def test_projects(self, platform: FakePlatform, client: Client) -> None:
        """Unknown project 404/3002; another's 403/3001; its tasks are never listed."""
        forbidden = platform.add_forbidden_task(project="lab/secret")
        platform.seed_cohort(PROJECT, failed=1)
        missing = await client.get("/v2/tasks", params={"project": "sim-user/none"})
        assert_error(await body_of(missing), 404, 3002)
        denied = await client.get("/v2/tasks", params={"project": "lab/secret"})
        assert_error(await body_of(denied), 403, 3001)
        everything = await body_of(await client.get("/v2/tasks"))
        assert forbidden not in {item["id"] for item in everything["items"]}

    async def test_parent_lists_batch_children(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """`parent=<id>` lists the batch's children, which carry `parent`."""
        parent, children = platform.add_batch(PROJECT, children=3)
        body = await body_of(await client.get("/v2/tasks", params={"parent": parent}))
        assert sorted(item["id"] for item in body["items"]) == sorted(children)
        assert all(item["parent"] == parent for item in body["items"])
        parent_doc = await body_of(await client.get(f"/v2/tasks/{parent}"))
        assert parent_doc["batch"] is True
        assert parent_doc["batch_input"] == "reads"


class TestBulkGet:
    async def test_items_in_request_order(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """One entry per ID, in order: a resource, or an error without the ID."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        forbidden = platform.add_forbidden_task()
        response = await client.post(
            "/v2/bulk/tasks/get",
            json={"task_ids": [UNKNOWN_ID, task_id, forbidden]},
        )
        body = await body_of(response)
        assert response.status == 200
        first, second, third = body["items"]
        assert_error(first["error"], 404, 7002)
        assert second["resource"]["id"] == task_id
        assert "inputs" in second["resource"]
        assert_error(third["error"], 403, 7001)

    async def test_limits_and_body(self, client: Client) -> None:
        """More than 100 IDs, or a body without `task_ids`, is 400 code 90000."""
        too_many = await client.post(
            "/v2/bulk/tasks/get", json={"task_ids": [UNKNOWN_ID] * 101}
        )
        assert_error(await body_of(too_many), 400, 90000)
        wrong = await client.post("/v2/bulk/tasks/get", json={"task_id": [UNKNOWN_ID]})
        assert_error(await body_of(wrong), 400, 90000)
        hundred = await client.post(
            "/v2/bulk/tasks/get", json={"task_ids": [UNKNOWN_ID] * 100}
        )
        assert len((await body_of(hundred))["items"]) == 100


class TestClone:
    async def test_draft_clone(
        self, platform: FakePlatform, client: Client, clock: FakeClock
    ) -> None:
        """201 with a new DRAFT task: same name/app/inputs, no pointer to the source."""
        (source_id,) = platform.seed_cohort(PROJECT, failed=1)
        source = platform.tasks[source_id]
        response = await client.post(f"/v2/tasks/{source_id}/actions/clone")
        body = await body_of(response)
        assert response.status == 201
        assert body["id"] != source_id
        assert body["status"] == "DRAFT"
        for key in (
            "name",
            "project",
            "app",
            "inputs",
            "execution_settings",
            "use_interruptible_instances",
        ):
            assert body[key] == source[key], key
        assert body["created_time"] == "2023-11-14T22:13:20Z"
        assert "start_time" not in body
        assert "end_time" not in body
        assert source_id not in json.dumps(body)
        assert platform.clone_counts[source_id] == 1
        assert [t["id"] for t in platform.clones_of(source_id)] == [body["id"]]
        assert platform.source_of(body["id"]) == source_id

    async def test_clone_and_run(self, platform: FakePlatform, client: Client) -> None:
        """`?action=run` starts the clone: QUEUED."""
        (source_id,) = platform.seed_cohort(PROJECT, aborted=1)
        response = await client.post(
            f"/v2/tasks/{source_id}/actions/clone", params={"action": "run"}
        )
        body = await body_of(response)
        assert response.status == 201
        assert body["status"] == "QUEUED"
        assert body["errors"] == []

    async def test_clone_run_with_validation_errors_stays_draft(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """A clone that cannot start is still created (201), as a DRAFT with errors."""
        source = platform.add_task(
            project=PROJECT,
            name="x",
            app="x/y/z/1",
            status="FAILED",
            inputs={"reads": {"class": "File", "path": "f" * 24}},
        )
        response = await client.post(
            f"/v2/tasks/{source['id']}/actions/clone", params={"action": "run"}
        )
        body = await body_of(response)
        assert response.status == 201
        assert body["status"] == "DRAFT"
        assert body["errors"]
        assert platform.clone_counts[str(source["id"])] == 1

    async def test_bodies_and_bad_action(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """No body, `null` and `{}` are fine; another action is 400 code 7013."""
        (source_id,) = platform.seed_cohort(PROJECT, failed=1)
        url = f"/v2/tasks/{source_id}/actions/clone"
        for data in (b"", b"null", b"{}"):
            assert (await client.post(url, data=data)).status == 201
        bad = await client.post(url, params={"action": "stop"})
        assert_error(await body_of(bad), 400, 7013)
        garbled = await client.post(url, data=b"{nope")
        assert_error(await body_of(garbled), 400, 90009)
        assert platform.clone_counts[source_id] == 3

    async def test_clone_errors(self, platform: FakePlatform, client: Client) -> None:
        """Cloning an unknown or inaccessible task fails like a get."""
        forbidden = platform.add_forbidden_task()
        missing = await client.post(f"/v2/tasks/{UNKNOWN_ID}/actions/clone")
        assert_error(await body_of(missing), 404, 7002)
        denied = await client.post(f"/v2/tasks/{forbidden}/actions/clone")
        assert_error(await body_of(denied), 403, 7001)
        assert sum(platform.clone_counts.values()) == 0

    async def test_batch_tasks_can_be_cloned(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """Parents and children clone (skipping them is the orchestrator's call)."""
        parent, children = platform.add_batch(PROJECT, children=2)
        parent_clone = await client.post(f"/v2/tasks/{parent}/actions/clone")
        assert (await body_of(parent_clone))["batch"] is True
        child_clone = await client.post(f"/v2/tasks/{children[0]}/actions/clone")
        assert "parent" not in await body_of(child_clone)


class TestDraftEditing:
    async def draft(self, platform: FakePlatform, client: Client) -> str:
        """A fresh draft clone of a seeded task."""
        (source_id,) = platform.seed_cohort(PROJECT, failed=1)
        response = await client.post(f"/v2/tasks/{source_id}/actions/clone")
        return str((await body_of(response))["id"])

    async def test_patch_merges(self, platform: FakePlatform, client: Client) -> None:
        """PATCH renames and merges `inputs` and `execution_settings` key by key."""
        draft_id = await self.draft(platform, client)
        before = platform.tasks[draft_id]
        reference = before["inputs"]["reference"]  # type: ignore[index]
        response = await client.patch(
            f"/v2/tasks/{draft_id}",
            json={
                "name": "renamed",
                "inputs": {"threads": 16},
                "execution_settings": {"instance_type": "r5.2xlarge"},
                "use_interruptible_instances": False,
            },
        )
        body = await body_of(response)
        assert response.status == 200
        assert body["name"] == "renamed"
        assert body["inputs"]["threads"] == 16
        assert body["inputs"]["reference"] == reference
        assert body["execution_settings"]["instance_type"] == "r5.2xlarge"
        assert body["execution_settings"]["max_parallel_instances"] == 1
        assert platform.requests[-1].body == {
            "name": "renamed",
            "inputs": {"threads": 16},
            "execution_settings": {"instance_type": "r5.2xlarge"},
            "use_interruptible_instances": False,
        }

    async def test_patch_partial_input_objects(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """An input object without `class` merges; one with `class` replaces."""
        draft_id = await self.draft(platform, client)
        url = f"/v2/tasks/{draft_id}"
        old = await body_of(await client.get(url))
        partial = await client.patch(url, json={"inputs": {"reads": {"path": "p1"}}})
        reads = (await body_of(partial))["inputs"]["reads"]
        assert reads == {**old["inputs"]["reads"], "path": "p1"}
        whole = {"class": "File", "path": "p2"}
        replaced = await client.patch(url, json={"inputs": {"reads": whole}})
        assert (await body_of(replaced))["inputs"]["reads"] == whole

    async def test_patch_refusals(self, platform: FakePlatform, client: Client) -> None:
        """Unknown keys 90000; half a batch setting 7023; a non-draft 7026."""
        draft_id = await self.draft(platform, client)
        unknown = await client.patch(f"/v2/tasks/{draft_id}", json={"colour": "red"})
        assert_error(await body_of(unknown), 400, 90000)
        half = await client.patch(f"/v2/tasks/{draft_id}", json={"batch_input": "r"})
        assert_error(await body_of(half), 400, 7023)
        (failed_id,) = platform.seed_cohort(PROJECT, failed=1)
        frozen = await client.patch(f"/v2/tasks/{failed_id}", json={"name": "x"})
        assert_error(await body_of(frozen), 400, 7026)

    async def test_run_draft(self, platform: FakePlatform, client: Client) -> None:
        """run starts a DRAFT (query flags applied); running it again is 7007."""
        draft_id = await self.draft(platform, client)
        response = await client.post(
            f"/v2/tasks/{draft_id}/actions/run",
            params={"use_interruptible_instances": "true", "batch": "false"},
        )
        body = await body_of(response)
        assert response.status == 200
        assert body["status"] == "QUEUED"
        assert body["use_interruptible_instances"] is True
        again = await client.post(f"/v2/tasks/{draft_id}/actions/run")
        assert_error(await body_of(again), 400, 7007)

    async def test_run_validation(self, platform: FakePlatform, client: Client) -> None:
        """An invalid instance type or unknown file is 7024 and the task stays DRAFT."""
        draft_id = await self.draft(platform, client)
        url = f"/v2/tasks/{draft_id}"
        for bad in ("x9.large", "c5.4xlarge;ebs-gp3;10", "c5.4xlarge;ebs-gp2;0"):
            await client.patch(url, json={"execution_settings": {"instance_type": bad}})
            refused = await client.post(f"{url}/actions/run")
            assert_error(await body_of(refused), 400, 7024)
            assert platform.tasks[draft_id]["status"] == "DRAFT"
            assert platform.tasks[draft_id]["errors"]
        await client.patch(
            url,
            json={
                "execution_settings": {"instance_type": "c5.4xlarge;ebs-gp2;1024"},
                "inputs": {"extra": {"class": "File", "path": "a" * 24}},
            },
        )
        refused = await client.post(f"{url}/actions/run")
        assert_error(await body_of(refused), 400, 7024)
        platform.files.add("a" * 24)
        started = await client.post(f"{url}/actions/run")
        assert (await body_of(started))["status"] == "QUEUED"
        assert platform.tasks[draft_id]["errors"] == []

    async def test_abort(self, platform: FakePlatform, client: Client) -> None:
        """abort ends a RUNNING task as ABORTED; a finished one is 7011."""
        running = platform.add_task(
            project=PROJECT, name="r", app="x/y/z/1", status="RUNNING"
        )
        response = await client.post(f"/v2/tasks/{running['id']}/actions/abort")
        body = await body_of(response)
        assert response.status == 200
        assert body["status"] == "ABORTED"
        assert "end_time" in body
        again = await client.post(f"/v2/tasks/{running['id']}/actions/abort")
        assert_error(await body_of(again), 400, 7011)

    async def test_unknown_action(self, platform: FakePlatform, client: Client) -> None:
        """An action other than clone/run/abort is 400 code 7013."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        response = await client.post(f"/v2/tasks/{task_id}/actions/pause")
        assert_error(await body_of(response), 400, 7013)


class TestLifecycle:
    async def test_queued_running_finished(
        self, clock: FakeClock, connect: Connect
    ) -> None:
        """A started task is QUEUED, RUNNING, then COMPLETED with cost and times."""
        platform = FakePlatform(
            clock=clock, queued_s=2, running_s=10, fail_fraction=0.0, seed=1
        )
        client = await connect(platform)
        (source_id,) = platform.seed_cohort(PROJECT, failed=1)
        clone = await body_of(
            await client.post(
                f"/v2/tasks/{source_id}/actions/clone", params={"action": "run"}
            )
        )
        url = f"/v2/tasks/{clone['id']}"
        assert (await body_of(await client.get(url)))["status"] == "QUEUED"
        clock.advance(2)
        running = await body_of(await client.get(url))
        assert running["status"] == "RUNNING"
        assert running["start_time"] == "2023-11-14T22:13:22Z"
        clock.advance(10)
        done = await body_of(await client.get(url))
        assert done["status"] == "COMPLETED"
        assert done["end_time"] == "2023-11-14T22:13:32Z"
        assert float(done["price"]["amount"]) > 0
        assert done["execution_status"]["running_duration"] == 10_000
        assert done["outputs"]

    async def test_outcome_is_deterministic_per_task(self, clock: FakeClock) -> None:
        """The same seed ends the same tasks FAILED; fail_fraction 1 fails them all."""

        def outcomes(fail_fraction: float) -> list[object]:
            platform = FakePlatform(
                clock=FakeClock(), fail_fraction=fail_fraction, seed=3
            )
            ids = platform.seed_cohort(PROJECT, queued=20)
            platform.clock = FakeClock(T0 + 3600)
            return [platform.task(i)["status"] for i in ids]

        assert outcomes(0.3) == outcomes(0.3)
        assert set(outcomes(0.3)) == {"COMPLETED", "FAILED"}
        assert set(outcomes(1.0)) == {"FAILED"}
        assert set(outcomes(0.0)) == {"COMPLETED"}


class TestFaults:
    async def test_scripted_errors_then_normal(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """Scripted statuses come in order with the platform's codes, then normal."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        platform.script(
            "GET", r"/tasks/[^/]+$", [503, 500, "503:7000", 404, "pass", 409]
        )
        expected = [(503, 0), (500, 90004), (503, 7000), (404, 7002)]
        for status, code in expected:
            response = await client.get(f"/v2/tasks/{task_id}")
            assert_error(await body_of(response), status, code)
        assert (await client.get(f"/v2/tasks/{task_id}")).status == 200
        assert (await client.get(f"/v2/tasks/{task_id}")).status == 409
        assert (await client.get(f"/v2/tasks/{task_id}")).status == 200
        assert (await client.get("/v2/user")).status == 200

    async def test_scripted_5xx_commits_nothing(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """A faulted write was answered before processing: no clone exists."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        platform.script("POST", "/actions/clone", [500])
        response = await client.post(f"/v2/tasks/{task_id}/actions/clone")
        assert response.status == 500
        assert platform.clone_counts[task_id] == 0

    async def test_scripted_429(self, platform: FakePlatform, client: Client) -> None:
        """A scripted 429 looks like a real one and spends no budget."""
        platform.script("*", "/user", [429])
        response = await client.get("/v2/user")
        assert_error(await body_of(response), 429, 1000)
        assert response.headers["X-RateLimit-Remaining"] == "0"
        assert platform.rate_limited == 1
        assert platform.rate_status()[1] == platform.limit

    async def test_gateway_502(self, platform: FakePlatform, client: Client) -> None:
        """A 502 comes from a gateway: an HTML body and no rate-limit headers."""
        platform.script("GET", "/user", [502])
        response = await client.get("/v2/user")
        assert response.status == 502
        assert response.content_type == "text/html"
        assert "X-RateLimit-Remaining" not in response.headers
        assert "Bad Gateway" in await response.text()

    async def test_drop_commits_then_disconnects(
        self, platform: FakePlatform, client: Client
    ) -> None:
        """ "drop": the clone is committed, the client sees the server disconnect."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        platform.script("POST", "/actions/clone", ["drop"])
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await client.post(f"/v2/tasks/{task_id}/actions/clone")
        assert platform.clone_counts[task_id] == 1
        assert len(platform.clones_of(task_id)) == 1
        assert platform.requests[-1].lost == "drop"
        assert platform.requests[-1].status == 201

    async def test_stall_commits_then_times_out(
        self, platform: FakePlatform, connect: Connect
    ) -> None:
        """ "stall": committed, the client times out, shutdown does not wait stall_s."""
        platform.faults = FaultProfile(stall_s=30.0)
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        platform.script("POST", "/actions/run", ["stall"])
        client = await connect(platform)
        clone = await body_of(await client.post(f"/v2/tasks/{task_id}/actions/clone"))
        with pytest.raises(asyncio.TimeoutError):
            await client.post(
                f"/v2/tasks/{clone['id']}/actions/run",
                timeout=aiohttp.ClientTimeout(total=0.05),
            )
        assert platform.tasks[str(clone["id"])]["status"] == "QUEUED"
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.close()
        assert loop.time() - started < 5

    async def test_error_rate(self, clock: FakeClock, connect: Connect) -> None:
        """error_rate=1: counted requests fail with each 5xx kind, uncommitted."""
        platform = FakePlatform(clock=clock, faults=FaultProfile(error_rate=1.0))
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        client = await connect(platform)
        statuses = set()
        for _ in range(30):
            response = await client.post(f"/v2/tasks/{task_id}/actions/clone")
            statuses.add(response.status)
            await response.read()
        assert statuses == {500, 502, 503}
        assert platform.clone_counts[task_id] == 0
        assert (await client.get("/v2/rate_limit")).status == 200

    async def test_lost_answer_rate(self, clock: FakeClock, connect: Connect) -> None:
        """lost_answer_rate=1: every write is committed and its answer dropped."""
        platform = FakePlatform(clock=clock, faults=FaultProfile(lost_answer_rate=1.0))
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        client = await connect(platform)
        for _ in range(2):
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await client.post(f"/v2/tasks/{task_id}/actions/clone")
        assert platform.clone_counts[task_id] == 2
        assert (await client.get(f"/v2/tasks/{task_id}")).status == 200

    async def test_faults_are_deterministic_for_a_seed(
        self, clock: FakeClock, connect: Connect
    ) -> None:
        """The same fault seed fails the same requests the same way."""

        async def statuses(seed: int) -> list[int]:
            faults = FaultProfile(error_rate=0.5, seed=seed)
            client = await connect(FakePlatform(clock=clock, faults=faults))
            out = []
            for _ in range(20):
                response = await client.get("/v2/user")
                await response.read()
                out.append(response.status)
            return out

        first = await statuses(3)
        assert first == await statuses(3)
        assert first != await statuses(4)
        assert 200 in first
        assert set(first) - {200}

    async def test_maintenance_window(self, clock: FakeClock, connect: Connect) -> None:
        """Inside a maintenance window every authenticated call is 503 code 0."""
        platform = FakePlatform(
            clock=clock, faults=FaultProfile(maintenance=((T0, T0 + 60),))
        )
        client = await connect(platform)
        response = await client.get("/v2/user")
        body = await body_of(response)
        assert_error(body, 503, 0)
        assert body["message"] == "Service is under maintenance"
        clock.advance(60)
        assert (await client.get("/v2/user")).status == 200

    def test_bad_profiles_and_scripts(self, platform: FakePlatform) -> None:
        """Nonsense fault settings fail loudly, at once."""
        with pytest.raises(ValueError, match="error_rate"):
            FaultProfile(error_rate=1.5)
        with pytest.raises(ValueError, match="lost_answer_mode"):
            FaultProfile(lost_answer_mode="vanish")
        with pytest.raises(ValueError, match="script"):
            platform.script("GET", "/user", ["explode"])
        with pytest.raises(ValueError, match="4xx or 5xx"):
            platform.script("GET", "/user", [200])


class TestSeeding:
    def test_deterministic_for_a_seed(self) -> None:
        """The same seed gives the same IDs and tasks; another seed does not."""

        def cohort(seed: int) -> list[dict[str, object]]:
            platform = FakePlatform(clock=FakeClock(), seed=seed)
            return [platform.tasks[i] for i in platform.seed_cohort(PROJECT, failed=5)]

        assert cohort(1) == cohort(1)
        assert [t["id"] for t in cohort(1)] != [t["id"] for t in cohort(2)]

    def test_realistic_cohort(self, platform: FakePlatform) -> None:
        """Names, one app, known distinct inputs, ordered times, repeated samples."""
        ids = platform.seed_cohort(PROJECT, failed=12, aborted=4, completed=2, draft=1)
        tasks = [platform.tasks[i] for i in ids]
        assert len(ids) == 19
        assert all(str(t["name"]).endswith(" alignment") for t in tasks)
        assert len({t["app"] for t in tasks}) == 1
        reads = [t["inputs"]["reads"]["path"] for t in tasks]  # type: ignore[index]
        assert len(set(reads)) == len(reads)
        assert set(reads) <= platform.files
        names = [t["name"] for t in tasks]
        assert len(set(names)) < len(names)  # same name + app, different inputs
        created = [str(t["created_time"]) for t in tasks]
        assert created == sorted(created)
        for task in tasks:
            if task["status"] in ("FAILED", "ABORTED", "COMPLETED"):
                assert str(task["created_time"]) <= str(task["start_time"])
                assert str(task["start_time"]) < str(task["end_time"])
                assert str(task["end_time"]) < "2023-11-14T22:13:20Z"
        statuses = [t["status"] for t in tasks]
        assert statuses.count("FAILED") == 12
        assert statuses.count("DRAFT") == 1

    def test_live_seeded_tasks_progress(
        self, platform: FakePlatform, clock: FakeClock
    ) -> None:
        """Seeded RUNNING and QUEUED tasks follow the lifecycle as the clock moves."""
        ids = platform.seed_cohort(PROJECT, running=3, queued=3)
        assert {platform.task(i)["status"] for i in ids} == {"RUNNING", "QUEUED"}
        clock.advance(platform.queued_s + platform.running_s)
        assert {platform.task(i)["status"] for i in ids} <= {"COMPLETED", "FAILED"}

    def test_add_task_fields(self, platform: FakePlatform) -> None:
        """add_task takes an ID and extra fields as given."""
        task = platform.add_task(
            project=PROJECT,
            name="n",
            app="x/y/z/1",
            status="COMPLETED",
            id=UNKNOWN_ID,
            description="hello",
        )
        assert task["id"] == UNKNOWN_ID
        assert task["description"] == "hello"
        assert "end_time" in task
        with pytest.raises(ValueError, match="status"):
            platform.add_task(project=PROJECT, name="n", app="a", status="DONE")


class TestInspection:
    async def test_stats_route(self, platform: FakePlatform, connect: Connect) -> None:
        """`GET /_sim/stats` needs no token and is neither counted nor recorded."""
        (task_id,) = platform.seed_cohort(PROJECT, failed=1)
        client = await connect(platform)
        await client.post(f"/v2/tasks/{task_id}/actions/clone")
        anonymous = await connect(platform, auth=False)
        stats = await body_of(await anonymous.get("/_sim/stats"))
        assert stats == {
            "clone_counts": {task_id: 1},
            "requests": {"POST /tasks/{id}/actions/clone": 1},
            "rate_limited": 0,
            "tasks": 2,
        }
        assert platform.rate_status()[1] == platform.limit - 1

    async def test_requests_are_recorded(
        self, platform: FakePlatform, client: Client, clock: FakeClock
    ) -> None:
        """Each API request is recorded with its route template, query and status."""
        await client.get("/v2/tasks", params={"status": "FAILED"})
        await client.get(f"/v2/tasks/{UNKNOWN_ID}")
        first, second = platform.requests
        assert (first.method, first.route, first.query) == (
            "GET",
            "GET /tasks",
            {"status": "FAILED"},
        )
        assert (second.route, second.path, second.status, second.at) == (
            "GET /tasks/{id}",
            f"/v2/tasks/{UNKNOWN_ID}",
            404,
            clock.now,
        )
        assert platform.count("GET /tasks/{id}") == 1

    def test_app_holds_platform(self, platform: FakePlatform) -> None:
        """make_app stores the platform under the typed PLATFORM_KEY."""
        assert make_app(platform)[PLATFORM_KEY] is platform


class TestServe:
    async def test_serve_yields_base_url(self, platform: FakePlatform) -> None:
        """serve() listens on a free loopback port and stops on exit."""
        async with serve(platform) as url:
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v2", url)
            async with (
                aiohttp.ClientSession(headers=AUTH) as session,
                session.get(f"{url}/user") as response,
            ):
                assert response.status == 200
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientConnectionError):
                await session.get(f"{url}/user")

    def test_serve_in_thread(self, platform: FakePlatform) -> None:
        """serve_in_thread() serves sync clients from a background loop."""
        with serve_in_thread(platform) as url:
            request = urllib.request.Request(f"{url}/user", headers=AUTH)  # noqa: S310
            with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
                assert json.load(response)["username"] == SIM_USER
        assert platform.count("GET /user") == 1

    async def test_serve_forever(self) -> None:
        """simulate prints two eval-able lines, a note, and serves the cohort."""

        class Output(io.StringIO):
            """Signals each flush, so the test waits for output without sleeping."""

            def __init__(self) -> None:
                super().__init__()
                self.flushed = asyncio.Event()

            def flush(self) -> None:
                super().flush()
                self.flushed.set()

        out, err = Output(), io.StringIO()
        server = asyncio.create_task(
            serve_forever(
                port=0,
                tasks=10,
                latency_ms=0,
                rate_limit=(1000, 300.0),
                fault_rate=0.0,
                out=out,
                err=err,
            )
        )
        await out.flushed.wait()
        first, second = out.getvalue().splitlines()
        assert re.fullmatch(r"export SB_API_ENDPOINT=http://127\.0\.0\.1:\d+/v2", first)
        assert second == f"export SB_AUTH_TOKEN={SIM_TOKEN}"
        assert SIM_PROJECT in err.getvalue()
        url = first.split("=", 1)[1]
        async with (
            aiohttp.ClientSession(headers=AUTH) as session,
            session.get(
                f"{url}/tasks", params={"project": SIM_PROJECT, "limit": "100"}
            ) as response,
        ):
            assert response.headers["X-Total-Matching-Query"] == "10"
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
