"""From a manifest to a plan: which sources exist, which to clone, skip or resume.

Reads only: `select:` queries (paged, ordered, 100 per page) and bulk reads of explicit
IDs (100 per call). The plan is what `plan` prints and what `run` executes.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import structlog

from orchestrator.client import BULK_LIMIT, PAGE_LIMIT, ApiClient, Json
from orchestrator.errors import ApiStatusError
from orchestrator.ledger import LedgerState, Phase, SourceRow
from orchestrator.models import Action, Manifest, Overrides, TaskId, TaskSpec
from orchestrator.pacing import RateBudget
from orchestrator.policy import Retrier
from orchestrator.reconcile import is_clone_of

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()


class Disposition(enum.StrEnum):
    """What `run` will do with a source."""

    CLONE = "clone"  # clone it (and patch/run it)
    RESUME = "resume"  # a clone exists; finish its patch/run steps
    RECONCILE = "reconcile"  # a clone was maybe sent by a stopped run: look first
    DONE = "done"  # the ledger already has its rerun
    SKIP = "skip"  # a guard refuses it (status, batch)
    UNREADABLE = "unreadable"  # the platform refused to read it (404, 403)


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """A source task as named by the manifest and read from the platform."""

    id: TaskId
    label: str | None = None
    overrides: Overrides = field(default_factory=Overrides)
    task: Json | None = None
    read_error: ApiStatusError | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class PlannedSource:
    """One source and what `run` will do with it."""

    source: Source
    disposition: Disposition
    steps: tuple[str, ...] = ()
    reason: str | None = None
    ledger_row: SourceRow | None = None

    @property
    def requests(self) -> int:
        """Writes (and reconciliation reads) this source needs."""
        if self.disposition is Disposition.RECONCILE:
            return 1 + len(self.steps)
        if self.disposition in (Disposition.CLONE, Disposition.RESUME):
            return len(self.steps)
        return 0

    def as_json(self) -> dict[str, object]:
        """The `plan --format json` entry."""
        task = self.source.task or {}
        return {
            "source_task_id": self.source.id,
            "label": self.source.label,
            "name": task.get("name"),
            "source_status": task.get("status"),
            "action": str(self.disposition),
            "steps": list(self.steps),
            "reason": self.reason,
            "new_task_id": self.ledger_row.new_task_id if self.ledger_row else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """Everything `run` would do, with its cost under the rate limit."""

    items: tuple[PlannedSource, ...]
    read_requests: int
    limit: int | None = None
    remaining: int | None = None
    reset_in_s: float = 0.0
    window_s: float = 300.0

    @property
    def counts(self) -> Counter[str]:
        """How many sources per disposition."""
        return Counter(str(i.disposition) for i in self.items)

    @property
    def write_requests(self) -> int:
        """API requests `run` needs beyond the reads already done."""
        return sum(i.requests for i in self.items)

    @property
    def estimated_s(self) -> float:
        """Floor time under the platform's budget (0: fits in what remains now)."""
        needed = self.write_requests
        if self.limit is None or self.remaining is None or needed <= self.remaining:
            return 0.0
        windows = math.ceil((needed - self.remaining) / max(1, self.limit))
        return self.reset_in_s + (windows - 1) * self.window_s

    def iter_json(self) -> Iterator[str]:
        """`plan --format json` in pieces: a 100,000-source plan is never one string."""
        head = json.dumps(self.as_json(with_sources=False), indent=2)
        yield head[: head.rindex("}")].rstrip() + ',\n  "sources": ['
        for number, item in enumerate(self.items):
            yield ("," if number else "") + "\n    " + json.dumps(item.as_json())
        yield "\n  ]\n}\n"

    def as_json(self, *, with_sources: bool = True) -> dict[str, object]:
        """`plan --format json`: the exact sources, for a scheduler to review."""
        summary: dict[str, object] = {
            "counts": dict(self.counts),
            "read_requests": self.read_requests,
            "write_requests": self.write_requests,
            "rate_limit": {
                "limit": self.limit,
                "remaining": self.remaining,
                "reset_in_s": round(self.reset_in_s, 1),
            },
            "estimated_seconds": round(self.estimated_s, 1),
        }
        if with_sources:
            summary["sources"] = [i.as_json() for i in self.items]
        return summary


def steps_for(action: Action, overrides: Overrides) -> tuple[str, ...]:
    """The requests one source needs: 1 without overrides, 2 or 3 with them."""
    if overrides.is_empty:
        return ("clone_run",) if action is Action.RUN else ("clone",)
    if action is Action.RUN:
        return ("clone", "patch", "run")
    return ("clone", "patch")


def _select_params(manifest: Manifest) -> list[dict[str, str]]:
    """One list query per status (the filter takes one), ordered for stable pages."""
    select = manifest.select
    if select is None:
        return []
    base = {
        "project": select.project,
        "order_by": "created_time",
        "order": "asc",
        "limit": str(PAGE_LIMIT),
        "fields": "_all",
    }
    for key in ("created_from", "created_to", "ended_from", "ended_to"):
        value = getattr(select, key)
        if value is not None:
            base[key] = value
    if not select.statuses:
        return [base]
    return [{**base, "status": status} for status in select.statuses]


async def bulk_read(
    client: ApiClient,
    retrier: Retrier,
    ids: Sequence[TaskId],
    *,
    concurrency: int = 1,
) -> list[Json | ApiStatusError]:
    """Read many tasks, 100 per call and `concurrency` calls at a time, in order."""
    gate = asyncio.Semaphore(concurrency)

    async def read(chunk: Sequence[TaskId]) -> list[Json | ApiStatusError]:
        async with gate:
            found = await retrier.read(functools.partial(client.bulk_get, chunk))
        return [
            item if isinstance(item, ApiStatusError) else slim(item) for item in found
        ]

    chunks = [ids[i : i + BULK_LIMIT] for i in range(0, len(ids), BULK_LIMIT)]
    results = await asyncio.gather(*(read(chunk) for chunk in chunks))
    return [item for chunk in results for item in chunk]


_SOURCE_FIELDS = (
    "id",
    "name",
    "app",
    "project",
    "status",
    "batch",
    "parent",
    "inputs",
    "execution_settings",
    "use_interruptible_instances",
    "created_by",
    "created_time",
)
"""What planning, guards, reconciliation and patches use of a source task."""


def slim(task: Json) -> Json:
    """Keep only the fields a source needs: a 100,000-source plan stays small."""
    return {key: task[key] for key in _SOURCE_FIELDS if key in task}


def needs_read(row: SourceRow | None, *, retry_failed: bool) -> bool:
    """Whether planning must read a source, or the ledger already settles it."""
    if row is None:
        return True
    if row.new_task_id is not None:
        return bool(row.steps_left) or (retry_failed and row.rerun_failed)
    if row.phase is Phase.CLONE_FAILED:
        return retry_failed
    return True  # planned, uncertain, skipped: look again


async def resolve_sources(
    manifest: Manifest,
    client: ApiClient,
    retrier: Retrier,
    *,
    ledger: LedgerState | None = None,
    retry_failed: bool = False,
) -> tuple[list[Source], int]:
    """Explicit tasks first (manifest order), then the query's, de-duplicated.

    A query never selects the tasks this ledger created: run again, a "FAILED tasks
    of project X" manifest must not rerun its own failed reruns. Explicit sources the
    ledger already settles are not read again (a resumed 100,000-source run costs no
    bulk reads for what is done). Returns the sources and the read requests spent.
    """
    state = ledger or LedgerState()
    reads = 0
    selected: dict[str, Json] = {}
    excluded = 0
    for params in _select_params(manifest):
        async for page in client.iter_task_pages(params, retrier):
            reads += 1
            for task in page:
                task_id = task.get("id")
                if not isinstance(task_id, str):
                    continue
                if task_id in state.attributed:
                    excluded += 1
                    continue
                selected.setdefault(task_id, slim(task))
    if excluded:
        log.info("plan.own_clones_excluded", count=excluded)
    specs: dict[str, TaskSpec] = {spec.id: spec for spec in manifest.tasks}
    to_read = [
        TaskId(i)
        for i in specs
        if i not in selected
        and needs_read(state.rows.get(i), retry_failed=retry_failed)
    ]
    read_back = await bulk_read(
        client, retrier, to_read, concurrency=manifest.concurrency
    )
    reads += math.ceil(len(to_read) / BULK_LIMIT)
    results: dict[str, Json | ApiStatusError] = dict(
        zip(to_read, read_back, strict=True)
    )
    sources: list[Source] = []
    for spec in manifest.tasks:
        found = selected.get(spec.id) or results.get(spec.id)
        sources.append(_source(manifest, spec, found))
    # A select must not pick up the clone a stopped run sent but never recorded: it
    # is reconciled (and attributed) below, never cloned as a source of its own.
    known: dict[str, Json] = dict(selected)
    known.update({s.id: s.task for s in sources if s.task is not None})
    uncertain = {
        i: t
        for i, t in known.items()
        if i in state.rows and state.rows[i].phase is Phase.INTENT
    }
    for task_id, task in selected.items():
        if task_id in specs:
            continue
        if any(is_clone_of(task, t) for i, t in uncertain.items() if i != task_id):
            log.info("plan.maybe_own_clone_deferred", task_id=task_id)
            continue
        sources.append(_source(manifest, TaskSpec(id=TaskId(task_id)), task))
    log.info("plan.sources_resolved", sources=len(sources), read_requests=reads)
    return sources, reads


def _source(
    manifest: Manifest, spec: TaskSpec, found: Json | ApiStatusError | None
) -> Source:
    """A source as read (`found`), or as the ledger settles it (None: not read)."""
    overrides = manifest.overrides.merged_with(spec.overrides)
    if isinstance(found, ApiStatusError):
        return Source(
            id=spec.id, label=spec.label, overrides=overrides, read_error=found
        )
    return Source(id=spec.id, label=spec.label, overrides=overrides, task=found)


def _guard(manifest: Manifest, task: Json) -> str | None:
    """Why a readable source must not be cloned, or None."""
    status = str(task.get("status", ""))
    if status not in manifest.only_status:
        allowed = ", ".join(sorted(manifest.only_status))
        return f"status {status} is not in only_status ({allowed})"
    if not manifest.allow_batch:
        if task.get("batch") is True:
            return "batch parent task (set allow_batch: true to clone it)"
        if task.get("parent"):
            return "child of batch task (set allow_batch: true to clone it)"
    return None


def plan_sources(
    manifest: Manifest,
    sources: Iterable[Source],
    ledger: LedgerState,
    *,
    retry_failed: bool = False,
    read_requests: int = 0,
    budget: RateBudget | None = None,
) -> Plan:
    """Decide, per source, what `run` does; pure given the reads and the ledger."""
    items: list[PlannedSource] = []
    for source in sources:
        row = ledger.rows.get(source.id)
        steps = steps_for(manifest.action, source.overrides)
        items.append(_decide(manifest, source, row, steps, retry_failed))
    return Plan(
        items=tuple(items),
        read_requests=read_requests,
        limit=budget.limit if budget else None,
        remaining=budget.remaining if budget else None,
        reset_in_s=budget.seconds_until_reset() if budget else 0.0,
        window_s=manifest.rate_limit.per_seconds,
    )


def _decide(
    manifest: Manifest,
    source: Source,
    row: SourceRow | None,
    steps: tuple[str, ...],
    retry_failed: bool,
) -> PlannedSource:
    def planned(disposition: Disposition, reason: str | None = None) -> PlannedSource:
        chosen = steps
        if disposition is Disposition.RESUME and row is not None:
            chosen = row.steps_left
        elif disposition not in (Disposition.CLONE, Disposition.RECONCILE):
            chosen = ()
        return PlannedSource(
            source=source,
            disposition=disposition,
            steps=chosen,
            reason=reason,
            ledger_row=row,
        )

    if row is not None and row.new_task_id is not None:
        if retry_failed and row.rerun_failed:
            return planned(Disposition.CLONE, f"retry: previous rerun {row.status}")
        if row.steps_left:
            return planned(Disposition.RESUME, f"clone {row.new_task_id} exists")
        return planned(Disposition.DONE, f"already rerun as {row.new_task_id}")
    if row is not None and row.phase is Phase.INTENT:
        return planned(Disposition.RECONCILE, "a clone was sent but not recorded")
    if row is not None and row.phase is Phase.CLONE_FAILED and not retry_failed:
        return planned(
            Disposition.DONE, "clone failed earlier (use --retry-failed to try again)"
        )
    if source.read_error is not None:
        return planned(Disposition.UNREADABLE, source.read_error.message)
    assert source.task is not None  # noqa: S101 - a Source has a task or an error
    reason = _guard(manifest, source.task)
    if reason is not None:
        return planned(Disposition.SKIP, reason)
    return planned(Disposition.CLONE)
