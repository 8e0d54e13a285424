"""The one exception tree of cgc-rerun.

Every error the package raises on purpose derives from `OrchestratorError`; `cli.main`
maps each branch to a message and an exit code. Exceptions carry data as attributes and
render as one readable line. They never hold request headers or bodies: those can carry
the token.

    OrchestratorError(Exception)
    ├── ManifestError(OrchestratorError, ValueError)     file, line, key   -> exit 2
    ├── ConfigError(OrchestratorError, ValueError)       credentials, URL  -> exit 2
    ├── LedgerError(OrchestratorError, OSError)          unreadable        -> exit 2
    │   └── LedgerLockedError                            held by a run     -> exit 2
    └── ApiError(OrchestratorError)                      anything from the REST layer
        ├── TransportError(ApiError)                     reset, DNS, refused; .sent
        │   └── RequestTimeout(TransportError, TimeoutError)
        └── ApiStatusError(ApiError)                     non-2xx; status, code, message
            ├── RateLimited          429 (code 1000): wait for X-RateLimit-Reset
            ├── Maintenance          503 with code 0: wait minutes
            ├── ServerError          other 5xx: back off, reconcile writes
            ├── AuthError            401 / 403                                -> exit 3
            ├── NotFound             404
            ├── Conflict             409
            └── BadRequest           400, 422 and other 4xx
"""

from __future__ import annotations

from pathlib import Path


class OrchestratorError(Exception):
    """Root of every error cgc-rerun raises on purpose."""


class ManifestError(OrchestratorError, ValueError):
    """A manifest is unreadable or invalid; names the file, line and key."""

    def __init__(
        self, path: Path | str, reason: str, *, line: int | None = None, key: str = ""
    ) -> None:
        self.path = Path(path)
        self.line = line
        self.key = key
        self.reason = reason
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {key}: {reason}" if key else f"{where}: {reason}")


class ConfigError(OrchestratorError, ValueError):
    """Credentials or endpoint are missing, unsafe or inconsistent."""


class LedgerError(OrchestratorError, OSError):
    """The ledger cannot be opened, read or appended to."""

    def __init__(self, message: str) -> None:
        # OSError's constructor would reinterpret the arguments; keep a plain message.
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class LedgerLockedError(LedgerError):
    """Another cgc-rerun process holds this ledger."""


class ApiError(OrchestratorError):
    """A call to the platform did not succeed."""

    def __init__(self, message: str, *, method: str = "", path: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.path = path


class TransportError(ApiError):
    """No HTTP answer: connection refused or reset, DNS failure, timeout.

    `sent` is True when the request may have reached the server, so a write's outcome
    is uncertain and must be reconciled before it is sent again.
    """

    def __init__(
        self, message: str, *, method: str = "", path: str = "", sent: bool = True
    ) -> None:
        super().__init__(message, method=method, path=path)
        self.sent = sent


class RequestTimeout(TransportError, TimeoutError):
    """The request took longer than the configured timeout."""


class ApiStatusError(ApiError):
    """The platform answered with a non-2xx status and (usually) a JSON error body."""

    def __init__(
        self,
        *,
        status: int,
        code: int | None,
        message: str,
        method: str = "",
        path: str = "",
        more_info: str | None = None,
        request_id: str | None = None,
        reset_at: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.more_info = more_info
        self.request_id = request_id
        self.reset_at = reset_at
        code_part = f" code {code}" if code is not None else ""
        super().__init__(
            f"{method} {path}: HTTP {status}{code_part}: {message}".strip(),
            method=method,
            path=path,
        )

    def as_record(self) -> dict[str, object]:
        """The `error` object of the ledger and the report."""
        return {"status": self.status, "code": self.code, "message": self.message}


class RateLimited(ApiStatusError):
    """HTTP 429: the request was not processed; resend after `reset_at`."""


class Maintenance(ApiStatusError):
    """HTTP 503 with code 0: the platform is under maintenance."""


class ServerError(ApiStatusError):
    """Any other 5xx: the platform failed; a write may or may not have happened."""


class AuthError(ApiStatusError):
    """HTTP 401 or 403: the token is wrong, expired or lacks permission."""


class NotFound(ApiStatusError):
    """HTTP 404."""


class Conflict(ApiStatusError):
    """HTTP 409."""


class BadRequest(ApiStatusError):
    """HTTP 400, 422 or another 4xx: the platform refused the request as such."""


def error_record(exc: BaseException) -> dict[str, object]:
    """Render any error as the ledger's `{status, code, message}` object."""
    if isinstance(exc, ApiStatusError):
        return exc.as_record()
    return {"status": None, "code": None, "message": str(exc) or type(exc).__name__}


__all__ = [
    "ApiError",
    "ApiStatusError",
    "AuthError",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "LedgerError",
    "LedgerLockedError",
    "Maintenance",
    "ManifestError",
    "NotFound",
    "OrchestratorError",
    "RateLimited",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "error_record",
]
