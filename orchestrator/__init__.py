"""cgc-rerun: bulk, resumable, rate-limit-aware reruns of Seven Bridges / CGC tasks.

The public API is what a script or an Airflow task needs; see the README's
"Using it as a library".
"""

from __future__ import annotations

from orchestrator.config import Credentials, resolve_credentials
from orchestrator.errors import (
    ApiError,
    ApiStatusError,
    AuthError,
    ConfigError,
    LedgerError,
    LedgerLockedError,
    ManifestError,
    OrchestratorError,
)
from orchestrator.ledger import Ledger, SourceRow, read_ledger
from orchestrator.logs import configure_logging
from orchestrator.manifest import load_manifest
from orchestrator.models import Action, Manifest, Overrides, TaskSpec
from orchestrator.policy import RetryPolicy
from orchestrator.runner import (
    RunOptions,
    RunResult,
    abort_ledger,
    export_failed,
    plan_manifest,
    read_rows,
    refresh_ledger,
    run_manifest,
)


def __getattr__(name: str) -> str:
    """`__version__`, looked up on first use: importlib.metadata is slow to import."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cgc-rerun")
    except PackageNotFoundError:  # a source tree that was not installed
        return "0.0.0"


__all__ = [
    "Action",
    "ApiError",
    "ApiStatusError",
    "AuthError",
    "ConfigError",
    "Credentials",
    "Ledger",
    "LedgerError",
    "LedgerLockedError",
    "Manifest",
    "ManifestError",
    "OrchestratorError",
    "Overrides",
    "RetryPolicy",
    "RunOptions",
    "RunResult",
    "SourceRow",
    "TaskSpec",
    "__version__",
    "abort_ledger",
    "configure_logging",
    "export_failed",
    "load_manifest",
    "plan_manifest",
    "read_ledger",
    "read_rows",
    "refresh_ledger",
    "resolve_credentials",
    "run_manifest",
]
