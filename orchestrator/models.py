"""Value types shared by every module: task IDs, statuses, the manifest's parts."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NewType

TaskId = NewType("TaskId", str)

Sleep = Callable[[float], Awaitable[None]]
"""Injected sleep: tests pass one that records delays instead of waiting."""

Clock = Callable[[], float]
"""Injected wall clock in Unix seconds (rate-limit resets are Unix timestamps)."""

JsonObject = Mapping[str, object]


class Action(enum.StrEnum):
    """What to do with each clone: start it (`run`) or leave it as a DRAFT."""

    RUN = "run"
    DRAFT = "draft"


class TaskStatus(enum.StrEnum):
    """Platform task statuses (cgc-api.md §5)."""

    DRAFT = "DRAFT"
    CREATING = "CREATING"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    ABORTING = "ABORTING"
    ABORTED = "ABORTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


TERMINAL_STATUSES: frozenset[str] = frozenset(
    {TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.ABORTED}
)
"""A task in one of these will not change again."""

ABORTABLE_STATUSES: frozenset[str] = frozenset(
    {TaskStatus.CREATING, TaskStatus.QUEUED, TaskStatus.RUNNING}
)

PLATFORMS: Mapping[str, str] = {
    "cgc": "https://cgc-api.sbgenomics.com/v2",
    "sbg-us": "https://api.sbgenomics.com/v2",
    "sbg-eu": "https://eu-api.sbgenomics.com/v2",
    "sbg-cn": "https://api.sevenbridges.cn/v2",
    "cavatica": "https://cavatica-api.sbgenomics.com/v2",
    "bdc": "https://api.sb.biodatacatalyst.nhlbi.nih.gov/v2",
}
"""Manifest `platform:` names and their API base URLs (cgc-api.md §8)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Overrides:
    """Changes applied to a clone before it runs (draft, PATCH, run)."""

    name_suffix: str | None = None
    use_interruptible_instances: bool | None = None
    execution_settings: Mapping[str, object] | None = None
    inputs: Mapping[str, object] | None = None

    @property
    def is_empty(self) -> bool:
        """True when there is nothing to patch, so a single clone?action=run does."""
        return (
            self.name_suffix is None
            and self.use_interruptible_instances is None
            and not self.execution_settings
            and not self.inputs
        )

    def merged_with(self, specific: Overrides) -> Overrides:
        """These (manifest-wide) overrides, with a task's own `specific` ones winning.

        Maps (`inputs`, `execution_settings`) merge key by key.
        """

        def _merge(
            base: Mapping[str, object] | None, top: Mapping[str, object] | None
        ) -> Mapping[str, object] | None:
            if base is None:
                return top
            if top is None:
                return base
            return {**base, **top}

        return Overrides(
            name_suffix=(
                specific.name_suffix
                if specific.name_suffix is not None
                else self.name_suffix
            ),
            use_interruptible_instances=(
                specific.use_interruptible_instances
                if specific.use_interruptible_instances is not None
                else self.use_interruptible_instances
            ),
            execution_settings=_merge(
                self.execution_settings, specific.execution_settings
            ),
            inputs=_merge(self.inputs, specific.inputs),
        )

    def as_dict(self) -> dict[str, object]:
        """The manifest form, without unset fields (for export)."""
        out: dict[str, object] = {}
        if self.name_suffix is not None:
            out["name_suffix"] = self.name_suffix
        if self.use_interruptible_instances is not None:
            out["use_interruptible_instances"] = self.use_interruptible_instances
        if self.execution_settings:
            out["execution_settings"] = dict(self.execution_settings)
        if self.inputs:
            out["inputs"] = dict(self.inputs)
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class TaskSpec:
    """One source task named in a manifest's `tasks:` list."""

    id: TaskId
    label: str | None = None
    overrides: Overrides = field(default_factory=Overrides)
    line: int | None = field(default=None, compare=False)
    """Where the manifest names it, for messages; not part of its identity."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """A manifest's `select:` query over one project. Dates are ISO 8601 strings."""

    project: str
    statuses: tuple[str, ...] = ()
    created_from: str | None = None
    created_to: str | None = None
    ended_from: str | None = None
    ended_to: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """The client's own request budget; the platform's headers still rule."""

    requests: int = 1000
    per_seconds: float = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitSettings:
    """How `run --wait` and `status --wait` poll."""

    poll_seconds: float = 60.0
    timeout_hours: float = 48.0


DEFAULT_ONLY_STATUS: frozenset[str] = TERMINAL_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A validated manifest (version 1)."""

    path: Path
    version: int = 1
    platform: str | None = None
    api_endpoint: str | None = None
    profile: str | None = None
    action: Action = Action.RUN
    tasks: tuple[TaskSpec, ...] = ()
    select: Selection | None = None
    only_status: frozenset[str] = DEFAULT_ONLY_STATUS
    allow_batch: bool = False
    overrides: Overrides = field(default_factory=Overrides)
    concurrency: int = 8
    rate_limit: RateLimit = field(default_factory=RateLimit)
    wait: WaitSettings = field(default_factory=WaitSettings)
    warnings: tuple[str, ...] = ()
    """Non-fatal findings of validation (e.g. merged duplicate IDs), for the CLI."""

    @property
    def endpoint(self) -> str | None:
        """The API base URL the manifest asks for, if any."""
        if self.api_endpoint is not None:
            return self.api_endpoint
        if self.platform is not None:
            return PLATFORMS[self.platform]
        return None

    def default_ledger_path(self) -> Path:
        """`<manifest name without .yaml>.ledger.jsonl`, beside the manifest."""
        name = self.path.name
        for suffix in (".yaml", ".yml"):
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        return self.path.with_name(f"{name}.ledger.jsonl")
