"""Logging: the real processor chain never lets the token through, in either format."""

from __future__ import annotations

import json
from collections.abc import Iterator
from io import StringIO

import pytest
import structlog

from orchestrator.logs import REDACTED, configure_logging, redact_secrets

TOKEN = "5ecre7t0ken5ecre7t0ken5ecre7t0ke"
FORMATS = ["console", "json"]


@pytest.fixture(autouse=True)
def _reset_structlog() -> Iterator[None]:
    """Every test starts and ends with structlog's defaults and no bound context."""
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def configured(fmt: str) -> StringIO:
    stream = StringIO()
    configure_logging(fmt=fmt, stream=stream, secrets=(TOKEN,))
    return stream


def log() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


class TestRedactionByKey:
    @pytest.mark.parametrize("fmt", FORMATS)
    @pytest.mark.parametrize(
        "key",
        [
            "token",
            "auth_token",
            "X-SBG-Auth-Token",
            "x-sbg-auth-token",
            "Authorization",
            "api_key",
            "password",
            "client_secret",
        ],
    )
    def test_secret_keys(self, fmt: str, key: str) -> None:
        """A value under a secret-looking key is replaced, top level."""
        stream = configured(fmt)
        log().info("request.sent", **{key: TOKEN})
        out = stream.getvalue()
        assert "request.sent" in out
        assert TOKEN not in out
        assert REDACTED in out

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_nested_dicts(self, fmt: str) -> None:
        """Secret keys inside nested dicts (and lists of dicts) are redacted."""
        stream = configured(fmt)
        log().info(
            "request.sent",
            headers={"X-SBG-Auth-Token": TOKEN, "Accept": "application/json"},
            request={"auth": {"token": TOKEN}, "path": "/v2/tasks"},
            attempts=[{"authorization": f"Bearer {TOKEN}"}],
        )
        out = stream.getvalue()
        assert TOKEN not in out
        assert "application/json" in out
        assert "/v2/tasks" in out

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_bound_and_contextvar_values(self, fmt: str) -> None:
        """Values bound on the logger or in contextvars are redacted too."""
        stream = configured(fmt)
        structlog.contextvars.bind_contextvars(auth_token=TOKEN)
        log().bind(token=TOKEN).info("run.started")
        out = stream.getvalue()
        assert "run.started" in out
        assert TOKEN not in out


class TestScrubKnownSecret:
    @pytest.mark.parametrize("fmt", FORMATS)
    def test_in_free_text_value(self, fmt: str) -> None:
        """The literal token in a free-text value under an innocent key is blanked."""
        stream = configured(fmt)
        log().warning("api.error", detail=f"server echoed {TOKEN} back", status=500)
        out = stream.getvalue()
        assert "server echoed" in out
        assert TOKEN not in out

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_in_event_text(self, fmt: str) -> None:
        """The literal token in the event text itself is blanked."""
        stream = configured(fmt)
        log().error(f"curl -H 'X-SBG-Auth-Token: {TOKEN}' failed")
        out = stream.getvalue()
        assert "failed" in out
        assert TOKEN not in out

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_in_nested_free_text(self, fmt: str) -> None:
        """The literal token in free text nested in a dict or list is blanked."""
        stream = configured(fmt)
        log().info(
            "api.error",
            response={"body": f"invalid token {TOKEN}"},
            args=["cgc-rerun", f"--header=X-SBG-Auth-Token:{TOKEN}"],
        )
        out = stream.getvalue()
        assert "invalid token" in out
        assert TOKEN not in out

    @pytest.mark.parametrize("fmt", FORMATS)
    def test_in_exception_message(self, fmt: str) -> None:
        """A logged exception whose message quotes the token does not leak it."""
        stream = configured(fmt)
        try:
            raise RuntimeError(f"refused with token {TOKEN}")
        except RuntimeError:
            log().exception("run.crashed")
        out = stream.getvalue()
        assert "run.crashed" in out
        assert "RuntimeError" in out
        assert TOKEN not in out

    def test_short_secrets_not_scrubbed(self) -> None:
        """Secrets shorter than 8 characters are not blanked (too many false hits)."""
        stream = StringIO()
        configure_logging(fmt="json", stream=stream, secrets=("abc",))
        log().info("note", text="abc def")
        assert json.loads(stream.getvalue())["text"] == "abc def"


class TestFormats:
    def test_json_is_one_object_per_line(self) -> None:
        """JSON output is one parseable object per event, with level and timestamp."""
        stream = configured("json")
        log().info("first", token=TOKEN, n=1)
        log().warning("second")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2
        first = json.loads(lines[0])
        assert first["event"] == "first"
        assert first["token"] == REDACTED
        assert first["level"] == "info"
        assert first["timestamp"].endswith("Z")

    def test_console_has_no_colour_codes_on_a_non_tty(self) -> None:
        """Console output to a plain stream carries no ANSI escapes."""
        stream = configured("console")
        log().info("plain", token=TOKEN)
        assert "\x1b[" not in stream.getvalue()

    def test_auto_picks_json_for_a_non_tty(self) -> None:
        """fmt=auto on a stream that is not a terminal renders JSON."""
        stream = StringIO()
        configure_logging(fmt="auto", stream=stream, secrets=(TOKEN,))
        log().info("auto", token=TOKEN)
        assert json.loads(stream.getvalue())["token"] == REDACTED

    @pytest.mark.parametrize(
        ("verbosity", "shown"),
        [
            (-1, {"warning"}),
            (0, {"info", "warning"}),
            (1, {"debug", "info", "warning"}),
        ],
    )
    def test_verbosity_levels(self, verbosity: int, shown: set[str]) -> None:
        """-q shows warnings only, default adds info, -v adds debug."""
        stream = StringIO()
        configure_logging(fmt="json", stream=stream, verbosity=verbosity)
        log().debug("debug")
        log().info("info")
        log().warning("warning")
        events = {json.loads(line)["event"] for line in stream.getvalue().splitlines()}
        assert events == shown


class TestRedactProcessor:
    def test_leaves_other_values_alone(self) -> None:
        """redact_secrets changes only secret-keyed values."""
        event = {
            "event": "x",
            "path": "/v2/tasks",
            "nested": {"token": TOKEN, "id": 3},
            "items": [{"password": "p"}, "plain"],
        }
        assert redact_secrets(None, "info", event) == {
            "event": "x",
            "path": "/v2/tasks",
            "nested": {"token": REDACTED, "id": 3},
            "items": [{"password": REDACTED}, "plain"],
        }
