"""Exactly-once clones without an idempotency key.

When a clone POST's outcome is uncertain (timeout or lost connection after sending, or
a 5xx), the platform may or may not have created the task. Before sending again we look:
list the project's tasks created since the intent (ordered, paged) and adopt one whose
name, app and inputs equal the source's, that the ledger does not already attribute to
another source, and that the same user created. Only when none matches is it resent.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from datetime import UTC, datetime

import structlog

from orchestrator.client import PAGE_LIMIT, ApiClient, Json
from orchestrator.ledger import Event, Ledger
from orchestrator.policy import Retrier

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

CLOCK_SKEW_MARGIN_S = 300.0
"""Look this far before the intent: the platform's clock is not ours."""


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def is_clone_of(candidate: Json, source: Json) -> bool:
    """Would a fresh clone of `source` look like `candidate`? (name, app, inputs)"""
    return (
        candidate.get("name") == source.get("name")
        and candidate.get("app") == source.get("app")
        and (candidate.get("inputs") or {}) == (source.get("inputs") or {})
        and candidate.get("project") == source.get("project")
    )


class Reconciler:
    """Finds (and records) the clone an uncertain POST may have created."""

    def __init__(
        self,
        client: ApiClient,
        retrier: Retrier,
        ledger: Ledger,
        *,
        username: str | None,
    ) -> None:
        self._client = client
        self._retrier = retrier
        self._ledger = ledger
        self._username = username
        self._lock = asyncio.Lock()  # one look-and-attribute at a time
        self.adopted = 0

    async def adopt(self, source_id: str, source: Json, since: float) -> Json | None:
        """Record and return the clone made by an uncertain POST, or record none."""
        async with self._lock:
            found = await self._find(source_id, source, since)
            self._ledger.record(
                Event.RECONCILED,
                source_id,
                new_task_id=None if found is None else found.get("id"),
            )
            if found is None:
                log.info("clone.reconciled", outcome="not_created")
                return None
            self.adopted += 1
            self._ledger.record(
                Event.CLONED,
                source_id,
                new_task_id=found.get("id"),
                status=found.get("status"),
                via="reconciled",
                task_errors=found.get("errors") or None,
            )
            log.info("clone.reconciled", outcome="adopted", new_task_id=found.get("id"))
            return found

    async def _find(self, source_id: str, source: Json, since: float) -> Json | None:
        params = {
            "project": str(source.get("project", "")),
            "created_from": _iso(since - CLOCK_SKEW_MARGIN_S),
            "order_by": "created_time",
            "order": "desc",  # newest first: ours, not an older look-alike
            "limit": str(PAGE_LIMIT),
            "fields": "_all",
        }
        known = self._ledger.state
        pages = self._client.iter_task_pages(params, self._retrier)
        async with aclosing(pages):
            async for page in pages:
                for task in page:
                    task_id = task.get("id")
                    if task_id in known.attributed or task_id in known.rows:
                        continue
                    if self._username and task.get("created_by") not in (
                        None,
                        self._username,
                    ):
                        continue
                    if is_clone_of(task, source):
                        return task
        return None
