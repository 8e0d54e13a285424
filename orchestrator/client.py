"""The platform's REST API v2, one request at a time.

`ApiClient` owns one `aiohttp.ClientSession` per run, passes every request through
the shared `RateBudget`, accepts any 2xx, and maps the rest onto `orchestrator.errors`
(aiohttp exceptions never leak out). It does not retry: retry decisions belong to
`policy` and, for writes, to the pool, which must reconcile before resending a clone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import platform as _platform
from collections.abc import AsyncGenerator, Mapping, Sequence
from types import TracebackType
from typing import Self
from urllib.parse import quote, urlsplit

import aiohttp
import structlog

from orchestrator.errors import (
    ApiError,
    ApiStatusError,
    AuthError,
    BadRequest,
    Conflict,
    Maintenance,
    NotFound,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
)
from orchestrator.models import JsonObject, TaskId
from orchestrator.pacing import RateBudget, parse_reset
from orchestrator.policy import Retrier

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

BULK_LIMIT = 100
"""The platform reads at most 100 resources per bulk call."""

PAGE_LIMIT = 100

Json = dict[str, object]


def _user_agent() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        ours = version("cgc-rerun")
    except PackageNotFoundError:  # running from a source tree
        ours = "dev"
    return (
        f"cgc-rerun/{ours} (aiohttp/{aiohttp.__version__}; "
        f"Python/{_platform.python_version()})"
    )


def _task_path(task_id: TaskId, action: str = "") -> str:
    """`tasks/{id}` or `tasks/{id}/actions/{action}`, the ID quoted (it is a UUID,
    but a path must never be built from unchecked text)."""
    path = f"tasks/{quote(task_id, safe='')}"
    return f"{path}/actions/{action}" if action else path


def _error_class(status: int, code: int | None) -> type[ApiStatusError]:
    if status == 429:
        return RateLimited
    if status == 503 and code == 0:
        return Maintenance
    if status >= 500:
        return ServerError
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFound
    if status == 409:
        return Conflict
    return BadRequest


def status_error(
    status: int,
    body: object,
    *,
    method: str = "",
    path: str = "",
    request_id: str | None = None,
    reset_at: float | None = None,
) -> ApiStatusError:
    """Build the error for a non-2xx answer (or a bulk item's `error` object)."""
    code: int | None = None
    message = f"HTTP {status}"
    more_info: str | None = None
    if isinstance(body, Mapping):
        raw_code = body.get("code")
        code = raw_code if isinstance(raw_code, int) else None
        message = str(body.get("message") or message)
        more_info = str(body["more_info"]) if body.get("more_info") else None
    elif body is not None:
        message = f"non-JSON error response (HTTP {status})"
    return _error_class(status, code)(
        status=status,
        code=code,
        message=message,
        method=method,
        path=path,
        more_info=more_info,
        request_id=request_id,
        reset_at=reset_at,
    )


class ApiClient:
    """Async client for the endpoints cgc-rerun needs (cgc-api.md)."""

    def __init__(
        self,
        *,
        endpoint: str,
        token: str,
        budget: RateBudget,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 15.0,
        max_connections: int = 100,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._origin = urlsplit(self.endpoint)
        self._token = token
        self.budget = budget
        self._timeout = aiohttp.ClientTimeout(
            total=timeout_s, connect=min(connect_timeout_s, timeout_s)
        )
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self.requests_sent = 0

    def __repr__(self) -> str:
        return f"ApiClient(endpoint={self.endpoint!r})"

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            headers={
                "X-SBG-Auth-Token": self._token,
                "Accept": "application/json",
                "User-Agent": _user_agent(),
            },
            timeout=self._timeout,
            connector=aiohttp.TCPConnector(limit=self._max_connections),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
            await asyncio.sleep(0)  # let the connector close its transports

    # -- plumbing ---------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self.endpoint}/{path.lstrip('/')}"

    def _same_origin(self, url: str) -> bool:
        """Follow links only back to the platform: they are sent with the token."""
        parts = urlsplit(url)
        return (parts.scheme, parts.netloc) == (
            self._origin.scheme,
            self._origin.netloc,
        )

    def _transport_error(
        self, exc: BaseException, method: str, path: str
    ) -> TransportError:
        """No answer: say whether the request may have reached the platform."""
        if isinstance(exc, TimeoutError):
            return RequestTimeout(
                f"{method} {path}: no answer within {self._timeout.total} s",
                method=method,
                path=path,
                sent=not isinstance(exc, aiohttp.ConnectionTimeoutError),
            )
        if isinstance(exc, aiohttp.ClientConnectorError):
            reason, sent = f"cannot connect to {self._origin.netloc}", False
        else:
            reason, sent = f"connection lost ({type(exc).__name__})", True
        return TransportError(
            f"{method} {path}: {reason}", method=method, path=path, sent=sent
        )

    async def request(
        self,
        method: str,
        path_or_url: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
        counted: bool = True,
    ) -> tuple[object, Mapping[str, str]]:
        """Send one request; return (parsed JSON, headers) or raise an `ApiError`."""
        if self._session is None:
            raise RuntimeError("ApiClient is not open: use `async with ApiClient(...)`")
        url = path_or_url if "://" in path_or_url else self._url(path_or_url)
        path = urlsplit(url).path
        if counted:
            await self.budget.acquire()
        headers: Mapping[str, str] | None = None
        try:
            payload = None if body is None else json.dumps(body)
            self.requests_sent += 1
            async with self._session.request(
                method,
                url,
                params=params,
                data=payload,
                headers={"Content-Type": "application/json"} if payload else None,
            ) as response:
                headers = response.headers
                raw = await response.read()
                status = response.status
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise self._transport_error(exc, method, path) from exc
        finally:
            if counted:
                self.budget.release(headers)
        parsed: object = None
        if raw:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = raw[:200].decode("utf-8", "replace")
        if 200 <= status < 300:
            if raw and not isinstance(parsed, dict | list):
                raise ServerError(
                    status=status,
                    code=None,
                    message="non-JSON success response",
                    method=method,
                    path=path,
                )
            return parsed, headers
        error = status_error(
            status,
            parsed,
            method=method,
            path=path,
            request_id=headers.get("X-Request-Id"),
            reset_at=parse_reset(headers.get("X-RateLimit-Reset")),
        )
        log.debug(
            "api.error",
            method=method,
            path=path,
            status=status,
            code=error.code,
            request_id=error.request_id,
        )
        raise error

    async def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: object = None,
    ) -> Json:
        data, _ = await self.request(method, path, params=params, body=body)
        if not isinstance(data, dict):
            raise ServerError(
                status=200, code=None, message="expected a JSON object", path=path
            )
        return data

    # -- endpoints --------------------------------------------------------------------

    async def get_user(self) -> Json:
        """`GET /user`: the cheapest authenticated call; proves the token works."""
        return await self._json("GET", "user")

    async def get_rate_limit(self) -> Json:
        """`GET /rate_limit`: free; seeds the shared budget with the current window."""
        data, headers = await self.request("GET", "rate_limit", counted=False)
        if not isinstance(data, dict):
            raise ServerError(status=200, code=None, message="bad /rate_limit body")
        rate = data.get("rate")
        if isinstance(rate, dict):
            self.budget.observe(
                {
                    "X-RateLimit-Limit": str(rate.get("limit", "")),
                    "X-RateLimit-Remaining": str(rate.get("remaining", "")),
                    "X-RateLimit-Reset": str(rate.get("reset", "")),
                }
            )
        else:
            self.budget.observe(headers)
        return data

    async def get_task(self, task_id: TaskId) -> Json:
        """`GET /tasks/{id}`."""
        return await self._json("GET", _task_path(task_id))

    async def bulk_get(self, task_ids: Sequence[TaskId]) -> list[Json | ApiStatusError]:
        """`POST /bulk/tasks/get` for at most 100 IDs; results matched by position."""
        if len(task_ids) > BULK_LIMIT:
            raise ValueError(f"bulk_get takes at most {BULK_LIMIT} IDs")
        data = await self._json(
            "POST", "bulk/tasks/get", body={"task_ids": list(task_ids)}
        )
        items = data.get("items")
        if not isinstance(items, list) or len(items) != len(task_ids):
            raise ServerError(
                status=200,
                code=None,
                message="bulk read answered a different number of items",
                method="POST",
                path="/bulk/tasks/get",
            )
        out: list[Json | ApiStatusError] = []
        for item in items:
            resource = item.get("resource") if isinstance(item, dict) else None
            if isinstance(resource, dict):
                out.append(resource)
                continue
            error = item.get("error") if isinstance(item, dict) else None
            status = error.get("status") if isinstance(error, dict) else None
            out.append(
                status_error(
                    status if isinstance(status, int) else 404,
                    error,
                    method="POST",
                    path="/bulk/tasks/get",
                )
            )
        return out

    async def list_tasks_page(
        self, params: Mapping[str, str] | None = None, *, url: str | None = None
    ) -> tuple[list[Json], str | None, int | None]:
        """One page of `GET /tasks`: (items, next page URL or None, total or None)."""
        if url is not None and not self._same_origin(url):
            raise ApiError(f"refusing to follow a link off the platform: {url}")
        data, headers = await self.request(
            "GET", url or "tasks", params=None if url else params
        )
        if not isinstance(data, dict) or not isinstance(data.get("items"), list):
            raise ServerError(status=200, code=None, message="bad task list body")
        items = [i for i in data["items"] if isinstance(i, dict)]
        next_url = None
        links = data.get("links")
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict) and link.get("rel") == "next":
                    next_url = str(link.get("href"))
        total_header = headers.get("X-Total-Matching-Query")
        total = int(total_header) if total_header and total_header.isdigit() else None
        return items, next_url, total

    async def iter_task_pages(
        self, params: Mapping[str, str], retrier: Retrier
    ) -> AsyncGenerator[list[Json], None]:
        """Every page of `GET /tasks`, following `links[rel=next]`; each page is one
        idempotent read, retried on its own."""
        items, next_url, _ = await retrier.read(
            functools.partial(self.list_tasks_page, params)
        )
        yield items
        while next_url:
            items, next_url, _ = await retrier.read(
                functools.partial(self.list_tasks_page, url=next_url)
            )
            yield items

    async def clone_task(self, task_id: TaskId, *, run: bool) -> Json:
        """`POST /tasks/{id}/actions/clone` (`action=run` to start it at once)."""
        return await self._json(
            "POST",
            _task_path(task_id, "clone"),
            params={"action": "run"} if run else None,
        )

    async def patch_task(self, task_id: TaskId, changes: JsonObject) -> Json:
        """`PATCH /tasks/{id}`: DRAFT tasks only."""
        return await self._json("PATCH", _task_path(task_id), body=dict(changes))

    async def run_task(
        self, task_id: TaskId, *, use_interruptible_instances: bool | None = None
    ) -> Json:
        """`POST /tasks/{id}/actions/run`: DRAFT tasks only."""
        params = None
        if use_interruptible_instances is not None:
            params = {
                "use_interruptible_instances": str(use_interruptible_instances).lower()
            }
        return await self._json("POST", _task_path(task_id, "run"), params=params)

    async def abort_task(self, task_id: TaskId) -> Json:
        """`POST /tasks/{id}/actions/abort`: QUEUED, RUNNING or CREATING tasks only."""
        return await self._json("POST", _task_path(task_id, "abort"))
