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
    """Last line of defence: blank out the literal token wherever it was rendered.

    It wraps the renderer, so it also covers nested values, reprs and tracebacks.
    """

    def __init__(self, renderer: Processor, secrets: tuple[str, ...]) -> None:
        self._renderer = renderer
        self._secrets = tuple(s for s in secrets if len(s) >= 8)

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        text = self._renderer(logger, name, event_dict)
        if not isinstance(text, str):
            raise TypeError("the renderer must return str")
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text


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
    ]
    renderer: Processor
    if fmt == "json":
        processors.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    processors.append(_ScrubKnownSecrets(renderer, secrets))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )
