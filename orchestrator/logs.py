"""structlog configuration: console or JSON to stderr, with secrets redacted.

The CLI configures logging once; library modules only call `structlog.get_logger()`.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"
_SECRET_KEY = re.compile(
    r"token|authorization|^x-.*-auth-|api_key|password|secret|session", re.IGNORECASE
)


def _redact(value: object) -> object:
    if isinstance(value, MutableMapping):
        return {
            k: (REDACTED if _SECRET_KEY.search(str(k)) else _redact(v))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact(v) for v in value]
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Replace values whose key looks secret (token, authorization...), nested too."""
    for key in list(event_dict):
        if _SECRET_KEY.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


class _ScrubKnownSecrets:
    """Last line of defence: blank out the literal token wherever it appears."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self._secrets = tuple(s for s in secrets if len(s) >= 8)

    def __call__(self, _: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
        if not self._secrets:
            return event_dict
        for key, value in event_dict.items():
            if isinstance(value, str):
                for secret in self._secrets:
                    if secret in value:
                        value = value.replace(secret, REDACTED)
                event_dict[key] = value
        return event_dict


def configure_logging(
    *,
    fmt: str = "auto",
    verbosity: int = 0,
    stream: TextIO | None = None,
    secrets: tuple[str, ...] = (),
) -> None:
    """Configure structlog once, from the CLI. Verbosity: -1 quiet, 0 info, 1 debug."""
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        _ScrubKnownSecrets(secrets),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=out.isatty()))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
