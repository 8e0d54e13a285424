"""A faithful, in-process fake of the Seven Bridges / CGC API v2 (the task calls).

Why it exists: the orchestrator's hard parts (the rate-limit window, answers lost
after a write was committed, maintenance, reconciliation, resume) can only be tested
against a server that misbehaves on demand and deterministically. It speaks the
platform's dialect closely enough that the official SDK runs against it (see
`tests/test_sdk_dialect.py`); it backs `cgc-rerun simulate`, `make demo` and the
benchmark.

The facts modelled come from `cgc-api.md`. State lives in one `FakePlatform`;
`make_app` wraps it in an aiohttp application. Time comes from an injected clock, so
a test steps rate-limit windows and task lifecycles by hand.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import copy
import dataclasses
import hashlib
import heapq
import itertools
import json
import math
import random
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Final, TextIO

from aiohttp import web
from yarl import URL

from orchestrator.models import ABORTABLE_STATUSES, TERMINAL_STATUSES, TaskStatus

__all__ = [
    "DEFAULT_LIST_FIELDS",
    "PLATFORM_KEY",
    "SIM_PROJECT",
    "SIM_TOKEN",
    "SIM_USER",
    "FakePlatform",
    "FaultProfile",
    "RecordedRequest",
    "make_app",
    "serve",
    "serve_forever",
    "serve_in_thread",
]

SIM_TOKEN: Final = "sim-5f1b8c0e3a7d4e29b6c1f0a2d8e47b93"  # noqa: S105 - not a secret
"""The token a default `FakePlatform` accepts (fixed: scripts and the demo use it)."""
SIM_USER: Final = "sim-user"
SIM_PROJECT: Final = "sim-user/rerun-demo"
"""The project `serve_forever` seeds."""

DEFAULT_LIST_FIELDS: Final = (
    "href",
    "id",
    "name",
    "status",
    "project",
    "app",
    "created_by",
    "created_time",
    "start_time",
    "end_time",
    "batch",
    "parent",
)
"""What `GET /tasks` returns per item without a `fields` parameter."""

MORE_INFO: Final = "https://docs.sevenbridges.com/docs/api-status-codes"
MAX_BULK: Final = 100
MAX_LIMIT: Final = 100
DEFAULT_LIMIT: Final = 50
INT64_MAX: Final = 9223372036854775807
_API: Final = "/v2"
_DAY: Final = 86400.0
_STEPS_TOTAL: Final = 6

_MESSAGES: Final[Mapping[int, str]] = {
    0: "Service is under maintenance",
    1000: "Rate limit exceeded! Check response headers.",
    3001: "Insufficient privileges to access the requested project.",
    3002: "Requested project does not exist.",
    7000: "Task service is currently unavailable.",
    7001: "Insufficient privileges to access the requested task.",
    7002: "Requested task does not exist.",
    7003: "Task already exists.",
    7005: "Task ID is not a valid UUID.",
    7006: "Invalid task status.",
    7007: "Action is only available for DRAFT tasks.",
    7010: "Action is only available for DRAFT tasks.",
    7011: "Action is only available for CREATING, RUNNING or QUEUED tasks.",
    7013: "Invalid task action.",
    7023: "Batch input and batch criteria must be set together.",
    7024: "Task can not be started due to validation errors.",
    7026: (
        "Editing is only allowed for DRAFT tasks; "
        "RUNNING and COMPLETED tasks can only be renamed."
    ),
    90000: "Bad request.",
    90001: "Unauthorized",
    90002: "Forbidden",
    90003: "Not found.",
    90004: "Unexpected error.",
    90005: "Service unavailable.",
    90006: "Method not allowed.",
    90007: "Conflict.",
    90009: "Request decoding error.",
}

_DEFAULT_CODES: Final[Mapping[int, int]] = {
    400: 90000,
    401: 90001,
    403: 90002,
    404: 7002,
    405: 90006,
    409: 90007,
    429: 1000,
    500: 90004,
    503: 0,
}
"""The platform code a scripted bare HTTP status gets (cgc-api.md §6)."""

_GATEWAY_STATUSES: Final = frozenset({502, 504})
_GATEWAY_REASONS: Final[Mapping[int, str]] = {
    502: "Bad Gateway",
    504: "Gateway Time-out",
}

_LOST_MODES: Final = frozenset({"drop", "stall", "mixed"})
_STATUSES: Final = frozenset(s.value for s in TaskStatus)
_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_INSTANCE_RE: Final = re.compile(
    r"(?:c4|c5|m4|m5|r4|r5)\.(?:\d*x?large|metal)(?:;ebs-gp2;[1-9]\d*)?"
)
_DATE_RE: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:?\d{2})?)?"
)

_PATCHABLE: Final = frozenset(
    {
        "name",
        "description",
        "inputs",
        "execution_settings",
        "use_interruptible_instances",
        "batch",
        "batch_input",
        "batch_by",
        "output_location",
    }
)
_ORDER_BY: Final = frozenset(
    {"created_time", "start_time", "name", "end_time", "created_by"}
)

_ROUTE_CLONE: Final = "POST /tasks/{id}/actions/clone"
_ROUTE_RUN: Final = "POST /tasks/{id}/actions/run"
_ROUTE_ABORT: Final = "POST /tasks/{id}/actions/abort"
_ROUTE_PATCH: Final = "PATCH /tasks/{id}"
_ROUTE_RATE: Final = "GET /rate_limit"
_ROUTE_ROOT: Final = "GET /"
_WRITE_ROUTES: Final = frozenset({_ROUTE_CLONE, _ROUTE_RUN, _ROUTE_ABORT, _ROUTE_PATCH})
"""Writes whose answer `lost_answer_rate` may lose after committing them."""
_FREE_ROUTES: Final = frozenset({_ROUTE_RATE})
"""Authenticated routes that do not count against the rate limit."""

_FAILURE_MESSAGES: Final = (
    "Job bwa_mem failed: insufficient memory (exit code 137).",
    "Job samtools_sort failed: no space left on device.",
    "Spot instance was terminated by the cloud provider.",
    "Job bwa_mem failed: input file is truncated or corrupted.",
    "Instance could not be provisioned: insufficient capacity.",
)
_SITES: Final = ("A1", "A2", "AR", "B6", "BH", "C8", "D8", "E2", "GM", "OL")
_PATIENT_CHARS: Final = "0123456789ABCDEFGHJKLMNPRSTVWXYZ"
_INSTANCE_TYPES: Final = (
    "c5.4xlarge;ebs-gp2;1024",
    "c5.2xlarge;ebs-gp2;512",
    "m5.4xlarge;ebs-gp2;1024",
)
_GATEWAY_HTML: Final = (
    "<html><head><title>{status} {reason}</title></head><body>"
    "<center><h1>{status} {reason}</h1></center><hr><center>nginx</center>"
    "</body></html>"
)


# ----------------------------------------------------------------------- public types


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultProfile:
    """Background misbehaviour, drawn from a seeded RNG so a run is reproducible.

    `error_rate` answers a counted request with a 5xx *before* processing it (nothing
    is committed); `lost_answer_rate` commits a write, then loses its answer ("drop"
    closes the connection, "stall" answers only after `stall_s`, "mixed" picks one per
    request).
    """

    error_rate: float = 0.0
    lost_answer_rate: float = 0.0
    lost_answer_mode: str = "drop"
    stall_s: float = 30.0
    maintenance: tuple[tuple[float, float], ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value in (
            ("error_rate", self.error_rate),
            ("lost_answer_rate", self.lost_answer_rate),
        ):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], not {value!r}")
        if self.lost_answer_mode not in _LOST_MODES:
            raise ValueError(
                f"lost_answer_mode must be one of {sorted(_LOST_MODES)}, "
                f"not {self.lost_answer_mode!r}"
            )
        if self.stall_s < 0:
            raise ValueError(f"stall_s must be >= 0, not {self.stall_s!r}")
        for start, end in self.maintenance:
            if end < start:
                raise ValueError(
                    f"maintenance window ends before it starts: {start, end}"
                )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedRequest:
    """One request as the platform saw it, for assertions (`platform.requests`).

    `status` is the answer the platform produced; `lost` says whether the client never
    got it ("drop" or "stall"). `body` is the parsed JSON body, if any.
    """

    method: str
    route: str
    path: str
    query: dict[str, str]
    status: int
    at: float
    request_id: str = ""
    body: object = None
    lost: str | None = None


# -------------------------------------------------------------------------- internals


class _Fault(Exception):
    """Raised by a handler to answer with the platform's error body."""

    def __init__(self, status: int, code: int, message: str | None = None) -> None:
        super().__init__(message or _MESSAGES.get(code, "Error."))
        self.status = status
        self.code = code
        self.message = message or _MESSAGES.get(code, "Error.")

    def body(self) -> dict[str, object]:
        """The `{status, code, message, more_info}` error object."""
        return {
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "more_info": f"{MORE_INFO}#{self.code}",
        }

    def reply(self) -> _Reply:
        """As a whole HTTP answer."""
        return _Reply(status=self.status, body=self.body(), exhausted=self.code == 1000)


@dataclass(slots=True, kw_only=True)
class _Reply:
    """An answer before it becomes an aiohttp response."""

    status: int
    body: object = None
    text: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    rate_headers: bool = True
    exhausted: bool = False


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One entry of a fault script, normalised."""

    kind: str  # "error", "gateway", "drop", "stall", "late" or "pass"
    status: int = 0
    code: int = 0


@dataclass(slots=True)
class _Script:
    method: str
    pattern: re.Pattern[str]
    queue: collections.deque[_Outcome]


@dataclass(slots=True, kw_only=True)
class _Meta:
    """What the simulator keeps beside a task's JSON: float times, access, lineage."""

    project: str
    created: float
    start: float | None = None
    end: float | None = None
    source: str | None = None
    forbidden: bool = False


@dataclass(frozen=True, slots=True)
class _ListFilter:
    project: str | None
    status: str | None
    parent: str | None
    batch: bool | None
    origin_id: str | None
    created: tuple[float | None, float | None]
    started: tuple[float | None, float | None]
    ended: tuple[float | None, float | None]
    order_by: str
    descending: bool


@dataclass(slots=True, kw_only=True)
class _Call:
    """What a route handler needs from the request."""

    params: dict[str, str]
    query: Mapping[str, str]
    body: object
    body_invalid: bool
    now: float
    base: str
    url: URL

    def json_body(self) -> object:
        """The parsed body; an undecodable one is the platform's 400 code 90009."""
        if self.body_invalid:
            raise _Fault(400, 90009)
        return self.body


_Handler = Callable[["FakePlatform", _Call], _Reply]


@dataclass(frozen=True, slots=True)
class _Match:
    route: str
    handler: _Handler
    params: dict[str, str]
    public: bool = False


@dataclass(slots=True)
class _AppState:
    """Per-application state: wakes stalled answers when the server shuts down."""

    closing: asyncio.Event | None = None

    async def stall(self, seconds: float) -> bool:
        """Sleep `seconds`; True if the server began shutting down meanwhile."""
        if self.closing is None:
            self.closing = asyncio.Event()
        try:
            async with asyncio.timeout(seconds):
                await self.closing.wait()
        except TimeoutError:
            return False
        return True


def _iso(t: float) -> str:
    """Unix seconds as the platform writes times: `2018-07-03T14:24:10Z`."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    """A filter date (`yyyy-MM-dd`, `yyyy-MM-ddTHH:mm:ss`, optional offset or Z; UTC).

    A `+` in an unencoded query string arrives as a space, so that is read back as `+`.
    """
    text = value.strip().replace(" ", "+")
    if not _DATE_RE.fullmatch(text):
        raise ValueError(value)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _fraction(*parts: object) -> float:
    """A stable pseudo-random number in [0, 1) from `parts` (per-task determinism)."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def _as_dict(value: object) -> dict[str, object]:
    return value if isinstance(value, dict) else {}


def _file_paths(value: object) -> Iterator[str]:
    """Every File/Directory path referenced in an inputs value, however nested."""
    if isinstance(value, list):
        for item in value:
            yield from _file_paths(item)
    elif isinstance(value, dict):
        if value.get("class") in ("File", "Directory"):
            yield str(value.get("path"))
            yield from _file_paths(value.get("secondaryFiles", []))
        else:
            for item in value.values():
                yield from _file_paths(item)


def _bool_param(query: Mapping[str, str], name: str) -> bool | None:
    raw = query.get(name)
    if raw is None:
        return None
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise _Fault(400, 90000, f"Bad request: {name} must be true or false.")


def _int_param(
    query: Mapping[str, str], name: str, default: int, low: int, high: int | None
) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Fault(400, 90000, f"Bad request: {name} must be an integer.") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise _Fault(400, 90000, f"Bad request: {name} must be {bounds}.")
    return value


def _time_range(
    query: Mapping[str, str], prefix: str
) -> tuple[float | None, float | None]:
    out: list[float | None] = []
    for suffix in ("from", "to"):
        raw = query.get(f"{prefix}_{suffix}")
        if raw is None:
            out.append(None)
            continue
        try:
            out.append(_parse_time(raw))
        except ValueError:
            raise _Fault(
                400, 90000, f"Bad request: {prefix}_{suffix} is not an ISO 8601 date."
            ) from None
    return out[0], out[1]


def _in_range(value: float | None, bounds: tuple[float | None, float | None]) -> bool:
    low, high = bounds
    if low is None and high is None:
        return True
    if value is None:
        return False
    return (low is None or value >= low) and (high is None or value <= high)


class _Selector:
    """A parsed `fields` parameter: which keys of a task document to return."""

    __slots__ = ("exclude", "include")

    def __init__(self, raw: str | None, default: tuple[str, ...] | None) -> None:
        names = [n.strip() for n in (raw or "").split(",") if n.strip()]
        self.exclude = frozenset(n[1:] for n in names if n.startswith("!"))
        wanted = [n for n in names if not n.startswith("!")]
        self.include: tuple[str, ...] | None
        if "_all" in wanted:
            self.include = None
        elif wanted:
            self.include = tuple(wanted)
        else:
            self.include = default

    def apply(self, doc: dict[str, object]) -> dict[str, object]:
        keys: Iterable[str] = doc if self.include is None else self.include
        return {k: doc[k] for k in keys if k in doc and k not in self.exclude}


def _parse_outcome(entry: int | str) -> _Outcome:
    """A script entry: an HTTP status (default code), `"503:7000"`, or a word."""
    if isinstance(entry, bool):
        raise TypeError(f"script entry must be int or str, not {entry!r}")
    if isinstance(entry, str):
        if entry in ("drop", "stall", "late", "pass"):
            return _Outcome(entry)
        status_text, sep, code_text = entry.partition(":")
        if not sep or not status_text.isdigit() or not code_text.isdigit():
            raise ValueError(
                f"script entry {entry!r}: use an int status, 'STATUS:CODE', "
                "'drop', 'stall', 'late' or 'pass'"
            )
        status, code = int(status_text), int(code_text)
    else:
        status = entry
        code = _DEFAULT_CODES.get(status, 90000 if status < 500 else 90004)
    if not 400 <= status <= 599:
        raise ValueError(f"script status must be 4xx or 5xx, not {status}")
    if status in _GATEWAY_STATUSES and not isinstance(entry, str):
        return _Outcome("gateway", status)
    return _Outcome("error", status, code)


# ----------------------------------------------------------------------- the platform


class FakePlatform:
    """The simulated platform: tasks, files, one user's token, rate limit and faults.

    Deterministic for a given `seed`: the same calls in the same order produce the same
    task IDs, file IDs, outcomes and faults. Not thread-safe: seed it before serving it
    from another thread (`serve_in_thread`).
    """

    def __init__(
        self,
        *,
        token: str = SIM_TOKEN,
        username: str = SIM_USER,
        clock: Callable[[], float] = time.time,
        rate_limit: tuple[int, float] = (1000, 300.0),
        latency_s: float = 0.0,
        faults: FaultProfile = FaultProfile(),
        queued_s: float = 2.0,
        running_s: float = 10.0,
        fail_fraction: float = 0.1,
        seed: int = 0,
    ) -> None:
        limit, per = rate_limit
        if limit < 1 or per <= 0:
            raise ValueError(
                f"rate_limit must be (>= 1 requests, > 0 s), not {rate_limit}"
            )
        if not 0.0 <= fail_fraction <= 1.0:
            raise ValueError(
                f"fail_fraction must be within [0, 1], not {fail_fraction}"
            )
        if queued_s < 0 or running_s < 0 or latency_s < 0:
            raise ValueError("queued_s, running_s and latency_s must be >= 0")
        self.token = token
        self.username = username
        self.clock = clock
        self.limit = limit
        self.per = float(per)
        self.latency_s = latency_s
        self.faults = faults
        self.queued_s = queued_s
        self.running_s = running_s
        self.fail_fraction = fail_fraction
        self.seed = seed

        self.forbidden = False
        """When True, every authenticated call gets 403 code 90002 (revoked access)."""
        self.tasks: dict[str, dict[str, object]] = {}
        """Task JSON by ID (without `href`), updated as lifecycles advance."""
        self.files: set[str] = set()
        """File IDs that exist; an input referring to any other fails validation."""
        self.projects: set[str] = set()
        """Projects that exist; listing another one is 404 code 3002."""
        self.clone_counts: collections.Counter[str] = collections.Counter()
        """Source task ID -> clones committed, including those whose answer was lost."""
        self.requests: list[RecordedRequest] = []
        self.rate_limited = 0
        """How many 429s were sent (real and scripted)."""

        self._route_counts: collections.Counter[str] = collections.Counter()
        self._meta: dict[str, _Meta] = {}
        self._by_project: dict[str, list[str]] = collections.defaultdict(list)
        self._children: dict[str, list[str]] = collections.defaultdict(list)
        self._clones: dict[str, list[str]] = collections.defaultdict(list)
        self._forbidden_projects: set[str] = set()
        self._heap: list[tuple[float, int, str, str]] = []
        self._heap_seq = itertools.count()
        self._ids = random.Random(f"sim-ids:{seed}")
        self._file_ids = random.Random(f"sim-files:{seed}")
        self._fault_rng = random.Random(f"sim-faults:{faults.seed}")
        self._seedings = itertools.count()
        self._scripts: list[_Script] = []
        self._late: list[tuple[float, _Match, _Call]] = []
        self.late_commit_s = 2.0
        """How long after its lost answer a "late" scripted write commits."""
        self._window_start: float | None = None
        self._window_used = 0
        self._request_seq = itertools.count(1)
        self._version = 0
        self._list_cache: dict[_ListFilter, list[str]] = {}
        self._list_cache_version = -1

    # ------------------------------------------------------------------------ seeding

    def seed_cohort(
        self,
        project: str,
        *,
        failed: int = 0,
        aborted: int = 0,
        completed: int = 0,
        running: int = 0,
        queued: int = 0,
        draft: int = 0,
        app: str | None = None,
    ) -> list[str]:
        """Create realistic source tasks in `project`; return IDs in creation order.

        One app revision; one reads file per task (plus a shared reference), so every
        task's inputs differ; every sixth task re-runs an earlier sample (same name and
        app, another lane's reads), the case a name+app match alone gets wrong.
        Creation times spread over the week before yesterday; terminal tasks have start
        and end times.
        """
        counts = {
            TaskStatus.FAILED: failed,
            TaskStatus.ABORTED: aborted,
            TaskStatus.COMPLETED: completed,
            TaskStatus.RUNNING: running,
            TaskStatus.QUEUED: queued,
            TaskStatus.DRAFT: draft,
        }
        if any(n < 0 for n in counts.values()):
            raise ValueError("task counts must be >= 0")
        rng = random.Random(f"sim-cohort:{self.seed}:{project}:{next(self._seedings)}")
        app_id = app or f"{project}/bwa-mem-alignment/3"
        statuses = [str(status) for status, n in counts.items() for _ in range(n)]
        rng.shuffle(statuses)
        self.projects.add(project)
        now = self.clock()
        reference = self._new_file()
        span_start = now - 8 * _DAY
        step = 7 * _DAY / max(len(statuses), 1)
        samples: list[str] = []
        lanes: collections.Counter[str] = collections.Counter()
        ids: list[str] = []
        for i, status in enumerate(statuses):
            if samples and i % 6 == 5:
                sample = rng.choice(samples)
            else:
                sample = self._sample_name(rng)
                samples.append(sample)
            lanes[sample] += 1
            inputs: dict[str, object] = {
                "reads": {
                    "class": "File",
                    "path": self._new_file(),
                    "name": f"{sample}_L{lanes[sample]:03d}.bam",
                },
                "reference": {"class": "File", "path": reference, "name": "GRCh38.fa"},
                "threads": 8,
            }
            created = span_start + (i + rng.random() / 2) * step
            task = self._create(
                project=project,
                name=f"{sample} alignment",
                app=app_id,
                created=created,
                inputs=inputs,
                execution_settings={
                    "instance_type": rng.choice(_INSTANCE_TYPES),
                    "max_parallel_instances": 1,
                    "use_memoization": False,
                    "use_elastic_disk": False,
                },
                use_interruptible_instances=rng.random() < 0.5,
            )
            task_id = str(task["id"])
            if status in TERMINAL_STATUSES:
                start = created + rng.randint(30, 900)
                end = start + rng.randint(20 * 60, 6 * 3600)
                message = {
                    TaskStatus.FAILED: rng.choice(_FAILURE_MESSAGES),
                    TaskStatus.ABORTED: "Aborted by user.",
                    TaskStatus.COMPLETED: "Completed.",
                }[TaskStatus(status)]
                self._finish(task_id, status, start=start, end=end, message=message)
            elif status == TaskStatus.RUNNING:
                self._start(
                    task_id, now - self.queued_s - rng.random() * self.running_s / 2
                )
            elif status == TaskStatus.QUEUED:
                self._start(task_id, now - rng.random() * self.queued_s / 2)
            ids.append(task_id)
        self._advance(now)
        return ids

    def add_task(
        self,
        *,
        project: str,
        name: str,
        app: str,
        status: str,
        inputs: dict[str, object] | None = None,
        created_time: float | None = None,
        end_time: float | None = None,
        start_time: float | None = None,
        **fields: object,
    ) -> dict[str, object]:
        """Add one task as given; QUEUED and RUNNING ones then follow the lifecycle.

        `fields` are set on the task JSON as they are (an `id` picks the task's ID;
        `parent` links it to a batch parent). Returns the stored task.
        """
        if status not in _STATUSES:
            raise ValueError(f"unknown task status {status!r}")
        now = self.clock()
        created = now if created_time is None else created_time
        task_id = str(fields.pop("id")) if "id" in fields else None
        if task_id is not None and (
            not _UUID_RE.fullmatch(task_id) or task_id in self.tasks
        ):
            raise ValueError(f"task id {task_id!r} is not a new UUID")
        self.projects.add(project)
        task = self._create(
            project=project,
            name=name,
            app=app,
            created=created,
            inputs=copy.deepcopy(inputs) if inputs is not None else {},
            task_id=task_id,
        )
        task_id = str(task["id"])
        if status == TaskStatus.QUEUED:
            self._start(task_id, now)
        elif status == TaskStatus.RUNNING:
            self._start(task_id, now - self.queued_s)
        elif status in TERMINAL_STATUSES:
            self._finish(
                task_id,
                status,
                start=created if start_time is None else start_time,
                end=max(created, now) if end_time is None else end_time,
                message={
                    TaskStatus.FAILED: _FAILURE_MESSAGES[0],
                    TaskStatus.ABORTED: "Aborted by user.",
                    TaskStatus.COMPLETED: "Completed.",
                }[TaskStatus(status)],
            )
        else:
            task["status"] = str(status)
        self._advance(now)
        if start_time is not None:
            self._set_time(task_id, "start_time", start_time)
        for key, value in fields.items():
            if value is None:
                task.pop(key, None)
            else:
                task[key] = copy.deepcopy(value)
        parent = fields.get("parent")
        if isinstance(parent, str):
            self._children[parent].append(task_id)
        self._version += 1
        return task

    def add_batch(
        self, project: str, *, children: int, status: str = "FAILED"
    ) -> tuple[str, list[str]]:
        """A batch parent (`batch: true`, by file) and its children; their IDs."""
        if children < 1:
            raise ValueError("a batch needs at least one child")
        app_id = f"{project}/bwa-mem-alignment/3"
        reference = self._new_file()
        files = [
            {
                "class": "File",
                "path": self._new_file(),
                "name": f"sample_{i + 1:03d}.bam",
            }
            for i in range(children)
        ]
        parent_name = f"Batch alignment of {children} samples"
        parent = self.add_task(
            project=project,
            name=parent_name,
            app=app_id,
            status=status,
            inputs={
                "reads": files,
                "reference": {"class": "File", "path": reference, "name": "GRCh38.fa"},
            },
            batch=True,
            batch_input="reads",
            batch_by={"type": "ITEM"},
        )
        parent_id = str(parent["id"])
        child_ids: list[str] = []
        for reads in files:
            child = self.add_task(
                project=project,
                name=f"{parent_name} - {reads['name']}",
                app=app_id,
                status=status,
                inputs={
                    "reads": reads,
                    "reference": {
                        "class": "File",
                        "path": reference,
                        "name": "GRCh38.fa",
                    },
                },
                parent=parent_id,
                batch_group={"value": reads["name"], "fields": {}},
            )
            child_ids.append(str(child["id"]))
        if status in TERMINAL_STATUSES:
            execution_status = _as_dict(parent.get("execution_status"))
            for name in ("queued", "running", "completed", "failed", "aborted"):
                execution_status[name] = children if name == status.lower() else 0
        return parent_id, child_ids

    def add_forbidden_task(
        self,
        *,
        project: str = "other-lab/restricted",
        name: str = "restricted alignment",
        app: str | None = None,
        status: str = "FAILED",
    ) -> str:
        """A task in a project the user cannot access: get/clone -> 403 code 7001."""
        task = self.add_task(
            project=project,
            name=name,
            app=app or f"{project}/bwa-mem-alignment/1",
            status=status,
            inputs={"reads": {"class": "File", "path": self._new_file()}},
        )
        task_id = str(task["id"])
        self._meta[task_id].forbidden = True
        self._forbidden_projects.add(project)
        self.projects.discard(project)
        return task_id

    # --------------------------------------------------------------- faults, per test

    def script(self, method: str, path_regex: str, responses: list[int | str]) -> None:
        """The next requests matching `method` ("*" for any) and `path_regex` get these.

        Entries, used in order: an HTTP status (with the platform's error body: 429
        code 1000, 503 code 0, 500 code 90004, 404 code 7002, ...; 502/504 are a
        gateway's non-JSON page), `"STATUS:CODE"` (e.g. `"503:7000"`), `"drop"` /
        `"stall"` (commit, then lose the answer), `"late"` (drop the connection at once,
        and commit only `late_commit_s` later on the platform's clock: a slow backend
        finishing after the client gave up) or `"pass"`. The regex is searched in
        the full path (`/v2/tasks/<id>/actions/clone`). Once used up, requests behave
        normally.
        """
        outcomes = collections.deque(_parse_outcome(entry) for entry in responses)
        self._scripts.append(_Script(method.upper(), re.compile(path_regex), outcomes))

    def _commit_late(self, now: float) -> None:
        """Apply the "late" writes whose time has come (see `script`)."""
        due = [entry for entry in self._late if entry[0] <= now]
        if not due:
            return
        self._late = [entry for entry in self._late if entry[0] > now]
        for _, match, call in due:
            _run_handler(self, match, call)

    def spend_budget(self, n: int) -> None:
        """Another client on the same token spent `n` requests of the current window."""
        if n < 0:
            raise ValueError("n must be >= 0")
        now = self.clock()
        self._roll_window(now)
        self._window_used = min(self.limit, self._window_used + n)

    # --------------------------------------------------------------------- inspection

    @property
    def rate_limit(self) -> tuple[int, float]:
        """(requests, window seconds), as given to the constructor."""
        return self.limit, self.per

    def task(self, task_id: str) -> dict[str, object]:
        """The task as it is now (its lifecycle advanced to the clock)."""
        self._advance(self.clock())
        return self.tasks[task_id]

    def clones_of(self, source_id: str) -> list[dict[str, object]]:
        """The tasks cloned from `source_id`, oldest first (the API hides this)."""
        self._advance(self.clock())
        return [
            self.tasks[i] for i in self._clones.get(source_id, []) if i in self.tasks
        ]

    def source_of(self, task_id: str) -> str | None:
        """The source a clone was made from, or None."""
        meta = self._meta.get(task_id)
        return meta.source if meta else None

    def count(self, route: str) -> int:
        """How many requests matched this route template, e.g. `"GET /tasks/{id}"`."""
        return self._route_counts[route]

    def rate_status(self) -> tuple[int, int, int]:
        """(limit, remaining, reset) as the headers would show them now."""
        return self._rate_headers(self.clock())

    def stats(self) -> dict[str, object]:
        """The body of `GET /_sim/stats`."""
        return {
            "clone_counts": dict(self.clone_counts),
            "requests": dict(self._route_counts),
            "rate_limited": self.rate_limited,
            "tasks": len(self.tasks),
        }

    # --------------------------------------------------------------------- task state

    def _new_id(self) -> str:
        return str(uuid.UUID(int=self._ids.getrandbits(128), version=4))

    def _new_file(self) -> str:
        """A new file ID in the platform's style (24 hex digits), known from now on."""
        file_id = f"{self._file_ids.getrandbits(96):024x}"
        self.files.add(file_id)
        return file_id

    @staticmethod
    def _sample_name(rng: random.Random) -> str:
        patient = "".join(rng.choice(_PATIENT_CHARS) for _ in range(4))
        return f"TCGA-{rng.choice(_SITES)}-{patient}-01A"

    def _create(
        self,
        *,
        project: str,
        name: str,
        app: str,
        created: float,
        inputs: dict[str, object],
        task_id: str | None = None,
        execution_settings: dict[str, object] | None = None,
        use_interruptible_instances: bool = False,
    ) -> dict[str, object]:
        """A new DRAFT task, indexed; empty optional fields omitted, as by the API."""
        task_id = task_id or self._new_id()
        task: dict[str, object] = {
            "id": task_id,
            "name": name,
            "status": TaskStatus.DRAFT.value,
            "project": project,
            "app": app,
            "type": "v2",
            "created_by": self.username,
            "created_time": _iso(created),
            "batch": False,
            "errors": [],
            "warnings": [],
            "inputs": inputs,
            "outputs": {},
            "execution_settings": (
                execution_settings
                if execution_settings is not None
                else {
                    "max_parallel_instances": 1,
                    "use_memoization": False,
                    "use_elastic_disk": False,
                }
            ),
            "use_interruptible_instances": use_interruptible_instances,
        }
        self.tasks[task_id] = task
        self._meta[task_id] = _Meta(project=project, created=created)
        self._by_project[project].append(task_id)
        self._version += 1
        return task

    def _set_time(self, task_id: str, key: str, value: float | None) -> None:
        task, meta = self.tasks[task_id], self._meta[task_id]
        if key == "start_time":
            meta.start = value
        else:
            meta.end = value
        if value is None:
            task.pop(key, None)
        else:
            task[key] = _iso(value)

    def _start(self, task_id: str, queued_at: float) -> None:
        """Put a task in the queue at `queued_at`; `_advance` moves it on from there."""
        task = self.tasks[task_id]
        task["status"] = TaskStatus.QUEUED.value
        task["executed_by"] = self.username
        task["errors"] = []
        task["execution_status"] = {
            "message": "In queue.",
            "steps_completed": 0,
            "steps_total": _STEPS_TOTAL,
            "system_limit": False,
            "account_limit": False,
            "instance_init": False,
        }
        heapq.heappush(
            self._heap,
            (
                queued_at + self.queued_s,
                next(self._heap_seq),
                task_id,
                TaskStatus.QUEUED,
            ),
        )
        self._version += 1

    def _advance(self, now: float) -> None:
        """Apply every lifecycle transition due by `now` (lazily, O(log n) each)."""
        heap = self._heap
        while heap and heap[0][0] <= now:
            at, _, task_id, expected = heapq.heappop(heap)
            task = self.tasks.get(task_id)
            if task is None or task["status"] != expected:
                continue  # aborted or deleted meanwhile
            if expected == TaskStatus.QUEUED:
                task["status"] = TaskStatus.RUNNING.value
                self._set_time(task_id, "start_time", at)
                status = _as_dict(task.get("execution_status"))
                status["message"] = "Running."
                status["queued_duration"] = round(self.queued_s * 1000)
                heapq.heappush(
                    heap,
                    (
                        at + self.running_s,
                        next(self._heap_seq),
                        task_id,
                        TaskStatus.RUNNING,
                    ),
                )
            else:
                failed = _fraction(self.seed, task_id, "outcome") < self.fail_fraction
                status_name = TaskStatus.FAILED if failed else TaskStatus.COMPLETED
                message = (
                    _FAILURE_MESSAGES[
                        int(_fraction(task_id, "why") * len(_FAILURE_MESSAGES))
                    ]
                    if failed
                    else "Completed."
                )
                start = self._meta[task_id].start
                self._finish(
                    task_id,
                    status_name,
                    start=at - self.running_s if start is None else start,
                    end=at,
                    message=message,
                    queued_s=self.queued_s,
                )
            self._version += 1

    def _finish(
        self,
        task_id: str,
        status: str,
        *,
        start: float,
        end: float,
        message: str,
        queued_s: float = 60.0,
    ) -> None:
        """Make a task terminal with the fields the platform fills in at the end."""
        task = self.tasks[task_id]
        task["status"] = str(status)
        task["executed_by"] = self.username
        self._set_time(task_id, "start_time", start)
        self._set_time(task_id, "end_time", end)
        running_ms = max(0, round((end - start) * 1000))
        queued_ms = round(queued_s * 1000)
        done = (
            _STEPS_TOTAL
            if status == TaskStatus.COMPLETED
            else int(_fraction(task_id, "steps") * _STEPS_TOTAL)
        )
        task["execution_status"] = {
            "message": message,
            "steps_completed": done,
            "steps_total": _STEPS_TOTAL,
            "system_limit": False,
            "account_limit": False,
            "instance_init": False,
            "queued_duration": queued_ms,
            "running_duration": running_ms,
            "execution_duration": running_ms,
            "duration": queued_ms + running_ms,
        }
        if status != TaskStatus.ABORTED or running_ms > 0:
            amount = 0.05 + (end - start) / 3600 * 0.35 * (
                0.5 + _fraction(task_id, "cost")
            )
            task["price"] = {
                "currency": "USD",
                "amount": f"{amount:.2f}",
                "breakdown": {"storage": "0.00", "computation": f"{amount:.2f}"},
            }
        if status == TaskStatus.COMPLETED:
            out_id = hashlib.sha256(f"{task_id}:out".encode()).hexdigest()[:24]
            self.files.add(out_id)
            task["outputs"] = {
                "aligned_reads": {
                    "class": "File",
                    "path": out_id,
                    "name": f"{str(task['name']).replace(' ', '_')}.bam",
                }
            }
        self._version += 1

    def _visible(self, task_id: str) -> dict[str, object]:
        """The task, or the platform's 400 7005 / 404 7002 / 403 7001."""
        if not _UUID_RE.fullmatch(task_id):
            raise _Fault(400, 7005)
        task = self.tasks.get(task_id)
        if task is None:
            raise _Fault(404, 7002)
        if self._meta[task_id].forbidden:
            raise _Fault(403, 7001)
        return task

    def _validation_errors(self, task: Mapping[str, object]) -> list[dict[str, object]]:
        """What would stop a task from starting: unknown files, a bad instance type."""
        errors: list[dict[str, object]] = []
        for key, value in _as_dict(task.get("inputs")).items():
            errors.extend(
                {"message": f"Input '{key}': file '{path}' does not exist."}
                for path in _file_paths(value)
                if path not in self.files
            )
        instance = _as_dict(task.get("execution_settings")).get("instance_type")
        if instance is not None and not (
            isinstance(instance, str) and _INSTANCE_RE.fullmatch(instance)
        ):
            errors.append({"message": f"Instance type '{instance}' is not valid."})
        return errors

    def _clone(self, source_id: str, *, run: bool, now: float) -> dict[str, object]:
        """Commit a clone: a new DRAFT (or started) task; the mapping stays internal."""
        source = self.tasks[source_id]
        task = self._create(
            project=str(source["project"]),
            name=str(source["name"]),
            app=str(source["app"]),
            created=now,
            inputs=copy.deepcopy(_as_dict(source.get("inputs"))),
            execution_settings=copy.deepcopy(
                _as_dict(source.get("execution_settings"))
            ),
            use_interruptible_instances=bool(source.get("use_interruptible_instances")),
        )
        for key in (
            "description",
            "batch",
            "batch_input",
            "batch_by",
            "output_location",
        ):
            if key in source:
                task[key] = copy.deepcopy(source[key])
        new_id = str(task["id"])
        self.clone_counts[source_id] += 1
        self._clones[source_id].append(new_id)
        self._meta[new_id].source = source_id
        if run:
            errors = self._validation_errors(task)
            if errors:
                task["errors"] = errors
            else:
                self._start(new_id, now)
                self._advance(now)
        return task

    # --------------------------------------------------------------------- rate limit

    def _roll_window(self, now: float) -> None:
        if self._window_start is None or now >= self._window_start + self.per:
            self._window_start = now
            self._window_used = 0

    def _consume(self, now: float) -> bool:
        """Count a request in the current window; False (uncounted) if none remain."""
        self._roll_window(now)
        if self._window_used >= self.limit:
            return False
        self._window_used += 1
        return True

    def _rate_headers(
        self, now: float, exhausted: bool = False
    ) -> tuple[int, int, int]:
        if self._window_start is None or now >= self._window_start + self.per:
            remaining, reset = self.limit, math.ceil(now + self.per)
        else:
            remaining = self.limit - self._window_used
            reset = math.ceil(self._window_start + self.per)
        return self.limit, 0 if exhausted else remaining, reset

    # --------------------------------------------------------------- request pipeline

    def _authenticated(self, headers: Mapping[str, str]) -> bool:
        token = headers.get("X-SBG-Auth-Token")
        if token is None:
            scheme, _, value = headers.get("Authorization", "").partition(" ")
            token = value.strip() if scheme.lower() == "bearer" else None
        return token == self.token

    def _in_maintenance(self, now: float) -> bool:
        return any(start <= now < end for start, end in self.faults.maintenance)

    def _matching_script(self, method: str, path: str) -> _Script | None:
        for script in self._scripts:
            if (
                script.queue
                and script.method in ("*", method)
                and script.pattern.search(path)
            ):
                return script
        return None

    def _random_5xx(self) -> _Reply:
        """One of the three ways the platform fails before processing a request."""
        pick = self._fault_rng.randrange(3)
        if pick == 0:
            return _Fault(500, 90004).reply()
        if pick == 1:
            return _gateway_reply(502)
        return _Fault(503, 7000).reply()

    def _exchange(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        match: _Match,
        call: _Call,
    ) -> tuple[_Reply, str | None, bool]:
        """Auth, maintenance, rate limit, faults, then the handler.

        Returns the reply, whether its answer is to be lost ("drop"/"stall") and whether
        the request was authenticated (which decides the rate-limit headers).
        """
        if match.public:
            return _run_handler(self, match, call), None, False
        if not self._authenticated(headers):
            return _Fault(401, 90001).reply(), None, False
        now = call.now
        self._commit_late(now)
        if self._in_maintenance(now):
            return _Fault(503, 0).reply(), None, True
        script = self._matching_script(method, path)
        head = script.queue[0] if script is not None else None
        if (
            script is not None
            and head is not None
            and head.kind == "error"
            and head.status == 429
        ):
            script.queue.popleft()
            self.rate_limited += 1
            reply = _Fault(429, head.code).reply()
            reply.exhausted = True
            return reply, None, True
        counted = match.route not in _FREE_ROUTES
        if counted and not self._consume(now):
            self.rate_limited += 1
            return _Fault(429, 1000).reply(), None, True
        if self.forbidden:
            return _Fault(403, 90002).reply(), None, True
        lost: str | None = None
        if script is not None and head is not None:
            script.queue.popleft()
            if head.kind == "error":
                return _Fault(head.status, head.code).reply(), None, True
            if head.kind == "gateway":
                return _gateway_reply(head.status), None, True
            if head.kind in ("drop", "stall"):
                lost = head.kind
            if head.kind == "late":
                due = now + self.late_commit_s
                self._late.append((due, match, dataclasses.replace(call, now=due)))
                return _ok({}, 202), "drop", True
        elif counted:
            faults, rng = self.faults, self._fault_rng
            if faults.error_rate > 0 and rng.random() < faults.error_rate:
                return self._random_5xx(), None, True
            if (
                match.route in _WRITE_ROUTES
                and faults.lost_answer_rate > 0
                and rng.random() < faults.lost_answer_rate
            ):
                lost = faults.lost_answer_mode
                if lost == "mixed":
                    lost = rng.choice(("drop", "stall"))
        return _run_handler(self, match, call), lost, True


def _run_handler(platform: FakePlatform, match: _Match, call: _Call) -> _Reply:
    try:
        return match.handler(platform, call)
    except _Fault as fault:
        return fault.reply()


def _gateway_reply(status: int) -> _Reply:
    """What a proxy in front of the API sends: HTML, no platform headers."""
    reason = _GATEWAY_REASONS.get(status, "Bad Gateway")
    return _Reply(
        status=status,
        text=_GATEWAY_HTML.format(status=status, reason=reason),
        rate_headers=False,
    )


# --------------------------------------------------------------------- route handlers


def _ok(body: object, status: int = 200) -> _Reply:
    return _Reply(status=status, body=body)


def _doc(task: dict[str, object], base: str) -> dict[str, object]:
    return {"href": f"{base}/tasks/{task['id']}", **task}


def _h_root(platform: FakePlatform, call: _Call) -> _Reply:
    base = call.base
    return _ok(
        {
            "rate_limit_url": f"{base}/rate_limit",
            "user_url": f"{base}/user",
            "users_url": f"{base}/users",
            "projects_url": f"{base}/projects",
            "tasks_url": f"{base}/tasks",
            "bulk_tasks_url": f"{base}/bulk/tasks",
            "apps_url": f"{base}/apps",
            "files_url": f"{base}/files",
            "billing_url": f"{base}/billing",
            "action_url": f"{base}/action",
        }
    )


def _h_user(platform: FakePlatform, call: _Call) -> _Reply:
    name = platform.username
    return _ok(
        {
            "href": f"{call.base}/users/{name}",
            "username": name,
            "email": f"{name}@example.org",
            "first_name": "Sim",
            "last_name": "User",
            "affiliation": "Simulated Lab",
            "phone": "",
            "address": "",
            "state": "",
            "country": "",
            "zip_code": "",
            "city": "",
            "role": "USER",
        }
    )


def _h_rate_limit(platform: FakePlatform, call: _Call) -> _Reply:
    limit, remaining, reset = platform._rate_headers(call.now)
    return _ok(
        {
            "rate": {"limit": limit, "remaining": remaining, "reset": reset},
            "instance_limit": {"limit": -1, "remaining": INT64_MAX},
        }
    )


def _h_get_task(platform: FakePlatform, call: _Call) -> _Reply:
    task = platform._visible(call.params["id"])
    selector = _Selector(call.query.get("fields"), None)
    return _ok(selector.apply(_doc(task, call.base)))


def _h_list_tasks(platform: FakePlatform, call: _Call) -> _Reply:
    query = call.query
    limit = _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(query, "offset", 0, 0, None)
    status = query.get("status")
    if status is not None and status not in _STATUSES:
        raise _Fault(400, 7006)
    project = query.get("project")
    if project is not None:
        if project in platform._forbidden_projects:
            raise _Fault(403, 3001)
        if project not in platform.projects:
            raise _Fault(404, 3002)
    order_by = query.get("order_by")
    descending = False
    if order_by is None:
        order_by = "created_time"  # `order` is honoured only with `order_by`
    else:
        if order_by not in _ORDER_BY:
            raise _Fault(400, 90000, f"Bad request: cannot order by {order_by!r}.")
        order = query.get("order", "asc").lower()
        if order not in ("asc", "desc"):
            raise _Fault(400, 90000, "Bad request: order must be asc or desc.")
        descending = order == "desc"
    flt = _ListFilter(
        project=project,
        status=status,
        parent=query.get("parent"),
        batch=_bool_param(query, "batch"),
        origin_id=query.get("origin_id"),
        created=_time_range(query, "created"),
        started=_time_range(query, "started"),
        ended=_time_range(query, "ended"),
        order_by=order_by,
        descending=descending,
    )
    ids = _query_ids(platform, flt)
    total = len(ids)
    selector = _Selector(query.get("fields"), DEFAULT_LIST_FIELDS)
    items = [
        selector.apply(_doc(platform.tasks[i], call.base))
        for i in ids[offset : offset + limit]
    ]
    links: list[dict[str, object]] = []
    if offset + limit < total:
        links.append(_link(call.url, offset + limit, limit, "next"))
    if offset > 0:
        links.append(_link(call.url, max(0, offset - limit), limit, "prev"))
    body = {"href": str(call.url), "items": items, "links": links}
    return _Reply(status=200, body=body, headers={"X-Total-Matching-Query": str(total)})


def _link(url: URL, offset: int, limit: int, rel: str) -> dict[str, object]:
    href = url.update_query({"offset": str(offset), "limit": str(limit)})
    return {"href": str(href), "rel": rel, "method": "GET"}


def _query_ids(platform: FakePlatform, flt: _ListFilter) -> list[str]:
    """IDs matching a list filter, sorted (ties by ID so pages are stable); cached."""
    if platform._list_cache_version != platform._version:
        platform._list_cache.clear()
        platform._list_cache_version = platform._version
    cached = platform._list_cache.get(flt)
    if cached is not None:
        return cached
    candidates: Iterable[str]
    if flt.parent is not None:
        candidates = platform._children.get(flt.parent, [])
    elif flt.project is not None:
        candidates = platform._by_project.get(flt.project, [])
    else:
        candidates = platform._meta.keys()
    tasks, metas = platform.tasks, platform._meta
    out: list[str] = []
    for task_id in candidates:
        meta, task = metas[task_id], tasks[task_id]
        if (
            meta.forbidden
            or (flt.project is not None and meta.project != flt.project)
            or (flt.parent is not None and task.get("parent") != flt.parent)
            or (flt.status is not None and task["status"] != flt.status)
            or (flt.batch is not None and bool(task.get("batch")) != flt.batch)
            or (flt.origin_id is not None and task.get("origin_id") != flt.origin_id)
            or not _in_range(meta.created, flt.created)
            or not _in_range(meta.start, flt.started)
            or not _in_range(meta.end, flt.ended)
        ):
            continue
        out.append(task_id)
    if flt.order_by in ("name", "created_by"):
        column = flt.order_by

        def text_key(task_id: str) -> tuple[str, str]:
            return str(tasks[task_id].get(column, "")), task_id

        out.sort(key=text_key, reverse=flt.descending)
    else:
        attr = {"created_time": "created", "start_time": "start", "end_time": "end"}[
            flt.order_by
        ]
        descending = flt.descending

        def time_key(task_id: str) -> tuple[bool, float, str]:
            value: float | None = getattr(metas[task_id], attr)
            # Tasks without the time sort last in either direction.
            missing = value is None
            return (not missing if descending else missing), value or 0.0, task_id

        out.sort(key=time_key, reverse=descending)
    platform._list_cache[flt] = out
    return out


def _h_bulk_get(platform: FakePlatform, call: _Call) -> _Reply:
    body = call.json_body()
    task_ids = body.get("task_ids") if isinstance(body, dict) else None
    if not isinstance(task_ids, list) or not all(isinstance(i, str) for i in task_ids):
        raise _Fault(400, 90000, "Bad request: task_ids must be a list of task IDs.")
    if len(task_ids) > MAX_BULK:
        raise _Fault(
            400, 90000, f"Bad request: at most {MAX_BULK} task IDs may be sent at once."
        )
    selector = _Selector(call.query.get("fields"), None)
    items: list[dict[str, object]] = []
    for task_id in task_ids:
        try:
            task = platform._visible(str(task_id))
        except _Fault as fault:
            items.append({"error": fault.body()})
        else:
            items.append({"resource": selector.apply(_doc(task, call.base))})
    return _ok({"items": items})


def _h_action(platform: FakePlatform, call: _Call) -> _Reply:
    action = call.params["action"]
    if action == "clone":
        return _h_clone(platform, call)
    if action == "run":
        return _h_run(platform, call)
    if action == "abort":
        return _h_abort(platform, call)
    platform._visible(call.params["id"])
    raise _Fault(400, 7013)


def _h_clone(platform: FakePlatform, call: _Call) -> _Reply:
    action = call.query.get("action")
    if action is not None and action.lower() != "run":
        raise _Fault(400, 7013)
    body = call.json_body()
    if body is not None and not isinstance(body, dict):
        raise _Fault(400, 90000, "Bad request: the body must be empty, null or {}.")
    source_id = call.params["id"]
    platform._visible(source_id)
    task = platform._clone(source_id, run=action is not None, now=call.now)
    selector = _Selector(call.query.get("fields"), None)
    return _ok(selector.apply(_doc(task, call.base)), status=201)


def _h_run(platform: FakePlatform, call: _Call) -> _Reply:
    task_id = call.params["id"]
    task = platform._visible(task_id)
    batch = _bool_param(call.query, "batch")
    interruptible = _bool_param(call.query, "use_interruptible_instances")
    if task["status"] != TaskStatus.DRAFT:
        raise _Fault(400, 7007)
    errors = platform._validation_errors(task)
    if errors:
        task["errors"] = errors
        platform._version += 1
        raise _Fault(400, 7024)
    if interruptible is not None:
        task["use_interruptible_instances"] = interruptible
    if batch is False:
        task["batch"] = False
    platform._start(task_id, call.now)
    platform._advance(call.now)
    selector = _Selector(call.query.get("fields"), None)
    return _ok(selector.apply(_doc(task, call.base)))


def _h_abort(platform: FakePlatform, call: _Call) -> _Reply:
    task_id = call.params["id"]
    task = platform._visible(task_id)
    if task["status"] not in ABORTABLE_STATUSES:
        raise _Fault(400, 7011)
    started = platform._meta[task_id].start
    platform._finish(
        task_id,
        TaskStatus.ABORTED,
        start=call.now if started is None else started,
        end=call.now,
        message="Aborted by user.",
        queued_s=platform.queued_s,
    )
    if started is None:  # aborted while still QUEUED: it never started
        platform._set_time(task_id, "start_time", None)
    selector = _Selector(call.query.get("fields"), None)
    return _ok(selector.apply(_doc(task, call.base)))


def _check_patch(body: dict[str, object]) -> None:
    """Reject what the platform would: unknown keys, wrong types, half a batch."""
    unknown = sorted(set(body) - _PATCHABLE)
    if unknown:
        raise _Fault(
            400, 90000, f"Bad request: unknown field(s): {', '.join(unknown)}."
        )
    kinds: dict[str, tuple[type, ...]] = {
        "name": (str,),
        "description": (str, type(None)),
        "inputs": (dict,),
        "execution_settings": (dict,),
        "use_interruptible_instances": (bool,),
        "batch": (bool,),
        "batch_input": (str, type(None)),
        "batch_by": (dict, type(None)),
        "output_location": (dict,),
    }
    for key, value in body.items():
        if not isinstance(value, kinds[key]):
            raise _Fault(400, 90000, f"Bad request: invalid value for {key}.")
    if body.get("name") == "":
        raise _Fault(400, 90000, "Bad request: name must not be empty.")
    if ("batch_input" in body) != ("batch_by" in body):
        raise _Fault(400, 7023)


def _merge_inputs(
    inputs: dict[str, object], changes: dict[str, object]
) -> dict[str, object]:
    """Merge a PATCH's `inputs` key by key into a task's.

    A value with a `class` (or any non-object) replaces the old one. A partial object
    without one merges into the old object: the official SDK's `save()` sends only the
    changed nested keys (`{"reads": {"path": "<new id>"}}`), so that is what the
    platform must accept (how it treats such partials is UNCONFIRMED; merging is the
    reading under which the SDK works).
    """
    for key, value in changes.items():
        old = inputs.get(key)
        if isinstance(value, dict) and "class" not in value and isinstance(old, dict):
            inputs[key] = _merge_inputs(old, value)
        else:
            inputs[key] = copy.deepcopy(value)
    return inputs


def _h_patch(platform: FakePlatform, call: _Call) -> _Reply:
    task_id = call.params["id"]
    task = platform._visible(task_id)
    body = call.json_body()
    if not isinstance(body, dict):
        raise _Fault(400, 90000, "Bad request: the body must be a JSON object.")
    _check_patch(body)
    if task["status"] != TaskStatus.DRAFT:
        raise _Fault(400, 7026)
    for key in (
        "name",
        "description",
        "use_interruptible_instances",
        "output_location",
    ):
        if key in body:
            if body[key] is None:
                task.pop(key, None)
            else:
                task[key] = copy.deepcopy(body[key])
    if "inputs" in body:
        task["inputs"] = _merge_inputs(
            _as_dict(task.get("inputs")), _as_dict(body["inputs"])
        )
    if "execution_settings" in body:
        settings = _as_dict(task.get("execution_settings"))
        for key, value in _as_dict(body["execution_settings"]).items():
            if value is None:
                settings.pop(key, None)
            else:
                settings[key] = copy.deepcopy(value)
        task["execution_settings"] = settings
    if "batch_input" in body:
        if body["batch_input"] is None or body["batch_by"] is None:
            for key in ("batch_input", "batch_by"):
                task.pop(key, None)
            task["batch"] = False
        else:
            task["batch_input"] = body["batch_input"]
            task["batch_by"] = copy.deepcopy(body["batch_by"])
            task["batch"] = True
    if "batch" in body:
        task["batch"] = body["batch"]
        if body["batch"] is False:
            task.pop("batch_input", None)
            task.pop("batch_by", None)
    if task.get("errors"):
        task["errors"] = platform._validation_errors(
            task
        )  # stale errors clear on a fix
    platform._version += 1
    selector = _Selector(call.query.get("fields"), None)
    return _ok(selector.apply(_doc(task, call.base)))


_TASK_ID: Final = r"(?P<id>[^/]+)"
_ROUTES: Final[
    tuple[tuple[re.Pattern[str], Mapping[str, tuple[str, _Handler]]], ...]
] = (
    (re.compile(r"/"), {"GET": (_ROUTE_ROOT, _h_root)}),
    (re.compile(r"/user"), {"GET": ("GET /user", _h_user)}),
    (re.compile(r"/rate_limit"), {"GET": (_ROUTE_RATE, _h_rate_limit)}),
    (re.compile(r"/tasks"), {"GET": ("GET /tasks", _h_list_tasks)}),
    (re.compile(r"/bulk/tasks/get"), {"POST": ("POST /bulk/tasks/get", _h_bulk_get)}),
    (
        re.compile(rf"/tasks/{_TASK_ID}"),
        {"GET": ("GET /tasks/{id}", _h_get_task), "PATCH": (_ROUTE_PATCH, _h_patch)},
    ),
    (
        re.compile(rf"/tasks/{_TASK_ID}/actions/(?P<action>[^/]+)"),
        {"POST": ("POST /tasks/{id}/actions/{action}", _h_action)},
    ),
)


def _h_not_found(platform: FakePlatform, call: _Call) -> _Reply:
    raise _Fault(404, 90003)


def _h_not_allowed(platform: FakePlatform, call: _Call) -> _Reply:
    raise _Fault(405, 90006)


def _match(method: str, path: str) -> _Match:
    """Route a request path (`/v2/...`) to its template and handler."""
    if path == _API or path.startswith(f"{_API}/"):
        rest = path[len(_API) :].rstrip("/") or "/"
        for pattern, methods in _ROUTES:
            found = pattern.fullmatch(rest)
            if found is None:
                continue
            if method not in methods:
                return _Match(f"{method} {pattern.pattern}", _h_not_allowed, {})
            route, handler = methods[method]
            params = found.groupdict()
            if "action" in params and params["action"] in ("clone", "run", "abort"):
                route = f"POST /tasks/{{id}}/actions/{params['action']}"
            return _Match(route, handler, params, public=route == _ROUTE_ROOT)
    return _Match(f"{method} <unknown>", _h_not_found, {})


# ----------------------------------------------------------------------- aiohttp glue

PLATFORM_KEY: Final = web.AppKey("platform", FakePlatform)
"""Where `make_app` stores the platform: `request.app[PLATFORM_KEY]`."""
_STATE_KEY: Final = web.AppKey("sim_state", _AppState)
_BODY_METHODS: Final = frozenset({"POST", "PATCH", "PUT", "DELETE"})
_INVALID: Final = object()


def _parse_body(raw: bytes) -> object:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID


def _response(
    reply: _Reply, request_id: str, rate: tuple[int, int, int] | None
) -> web.Response:
    headers = {"X-Request-Id": request_id}
    if rate is not None and reply.rate_headers:
        limit, remaining, reset = rate
        headers["X-RateLimit-Limit"] = str(limit)
        headers["X-RateLimit-Remaining"] = str(remaining)
        headers["X-RateLimit-Reset"] = str(reset)
    headers.update(reply.headers)
    if reply.text is not None:
        return web.Response(
            status=reply.status,
            text=reply.text,
            content_type="text/html",
            headers=headers,
        )
    if reply.body is None:
        return web.Response(status=reply.status, headers=headers)
    return web.Response(
        status=reply.status,
        body=json.dumps(reply.body, separators=(",", ":")).encode(),
        content_type="application/json",
        headers=headers,
    )


def _drop(request: web.Request) -> None:
    """Close the connection without an answer; aiohttp then discards the response."""
    transport = request.transport
    if transport is not None:
        transport.close()


async def _entry(request: web.Request) -> web.StreamResponse:
    """The one aiohttp handler: route, run the pipeline, record, maybe lose it."""
    platform = request.app[PLATFORM_KEY]
    path = request.path
    request_id = f"{platform.seed & 0xFFFFFFFF:08x}{next(platform._request_seq):024x}"
    if path == "/_sim/stats":
        return _response(_ok(platform.stats()), request_id, None)
    if platform.latency_s > 0:
        await asyncio.sleep(platform.latency_s)
    now = platform.clock()
    platform._advance(now)
    raw = await request.read() if request.method in _BODY_METHODS else b""
    body = _parse_body(raw)
    match = _match(request.method, path)
    call = _Call(
        params=match.params,
        query=request.query,
        body=None if body is _INVALID else body,
        body_invalid=body is _INVALID,
        now=now,
        base=f"{request.scheme}://{request.host}{_API}",
        url=request.url,
    )
    reply, lost, authenticated = platform._exchange(
        request.method, path, request.headers, match, call
    )
    rate = platform._rate_headers(now, reply.exhausted) if authenticated else None
    response = _response(reply, request_id, rate)
    platform._route_counts[match.route] += 1
    platform.requests.append(
        RecordedRequest(
            method=request.method,
            route=match.route,
            path=path,
            query=dict(request.query),
            status=reply.status,
            at=now,
            request_id=request_id,
            body=None if body is _INVALID else body,
            lost=lost,
        )
    )
    if lost == "drop":
        _drop(request)
    elif lost == "stall" and await request.app[_STATE_KEY].stall(
        platform.faults.stall_s
    ):
        _drop(request)  # the server is shutting down: give up on the stalled answer
    return response


async def _on_startup(app: web.Application) -> None:
    app[_STATE_KEY].closing = asyncio.Event()


async def _on_shutdown(app: web.Application) -> None:
    closing = app[_STATE_KEY].closing
    if closing is not None:
        closing.set()


def make_app(platform: FakePlatform) -> web.Application:
    """An aiohttp application serving `platform` under `/v2` (and `GET /_sim/stats`)."""
    app = web.Application()
    app[PLATFORM_KEY] = platform
    app[_STATE_KEY] = _AppState()
    app.on_startup.append(_on_startup)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_route("*", "/{tail:.*}", _entry)
    return app


@asynccontextmanager
async def serve(
    platform: FakePlatform, *, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[str]:
    """Serve `platform` on `host:port` (0 = any free port); yield the API base URL."""
    runner = web.AppRunner(make_app(platform), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}{_API}"
    finally:
        await runner.cleanup()


@contextmanager
def serve_in_thread(platform: FakePlatform, *, port: int = 0) -> Iterator[str]:
    """`serve` on its own event loop in a daemon thread, for sync clients (the SDK).

    Leaving the block stops the server cleanly and joins the thread.
    """
    started: concurrent.futures.Future[
        tuple[str, asyncio.AbstractEventLoop, asyncio.Event]
    ]
    started = concurrent.futures.Future()

    async def main() -> None:
        stop = asyncio.Event()
        async with serve(platform, port=port) as url:
            started.set_result((url, asyncio.get_running_loop(), stop))
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            if started.done():
                raise
            started.set_exception(exc)

    thread = threading.Thread(target=run, name="cgc-rerun-simulator", daemon=True)
    thread.start()
    url, loop, stop = started.result(timeout=30)
    try:
        yield url
    finally:
        with suppress(RuntimeError):  # the loop already ended
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=30)


async def serve_forever(
    *,
    port: int,
    tasks: int,
    latency_ms: float,
    rate_limit: tuple[int, float],
    fault_rate: float,
    out: TextIO,
    err: TextIO,
    seed: int = 0,
    stall_s: float = 30.0,
) -> None:
    """`cgc-rerun simulate`: serve a seeded FAILED/ABORTED cohort until cancelled.

    Prints the two `export` lines a shell can `eval` to `out`, a note to `err`.
    """
    if tasks < 0:
        raise ValueError("tasks must be >= 0")
    platform = FakePlatform(
        rate_limit=rate_limit,
        latency_s=latency_ms / 1000.0,
        faults=FaultProfile(
            error_rate=fault_rate,
            lost_answer_rate=fault_rate,
            lost_answer_mode="mixed",
            stall_s=stall_s,
            seed=seed,
        ),
        seed=seed,
    )
    aborted = tasks // 5
    platform.seed_cohort(SIM_PROJECT, failed=tasks - aborted, aborted=aborted)
    async with serve(platform, port=port) as url:
        out.write(
            f"export SB_API_ENDPOINT={url}\nexport SB_AUTH_TOKEN={platform.token}\n"
        )
        out.flush()
        limit, per = rate_limit
        err.write(
            f"simulator: serving {url}; project {SIM_PROJECT} with {tasks} "
            f"source tasks ({tasks - aborted} FAILED, {aborted} ABORTED); "
            f"rate limit {limit}/{per:g}s, latency {latency_ms:g} ms, "
            f"fault rate {fault_rate:g}. Ctrl-C stops it.\n"
        )
        err.flush()
        await asyncio.Event().wait()
