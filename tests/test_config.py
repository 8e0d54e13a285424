"""Credentials and endpoint resolution: profile > environment > [default].

Every test hands in its own credentials file (under tmp_path) and a plain dict as the
environment, so the real home directory and os.environ are never read.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest

from orchestrator.config import (
    Credentials,
    check_endpoint_matches,
    is_loopback_host,
    normalise_endpoint,
    resolve_credentials,
)
from orchestrator.errors import ConfigError

CGC = "https://cgc-api.sbgenomics.com/v2"
SBG_US = "https://api.sbgenomics.com/v2"
CAVATICA = "https://cavatica-api.sbgenomics.com/v2"
TOKEN_DEFAULT = "d3f4u17d3f4u17d3f4u17d3f4u17aaaa"
TOKEN_CGC = "c9cc9cc9cc9cc9cc9cc9cc9cc9cc9ccc"
TOKEN_ENV = "e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0e0"


def write_credentials(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(name="credentials_file")
def _credentials_file(tmp_path: Path) -> Path:
    return write_credentials(
        tmp_path / "credentials",
        f"[default]\n"
        f"api_endpoint = {SBG_US}\n"
        f"auth_token = {TOKEN_DEFAULT}\n"
        f"\n"
        f"[cgc]\n"
        f"api_endpoint = {CGC}/\n"
        f"auth_token = {TOKEN_CGC}\n",
    )


ENV = {"SB_API_ENDPOINT": CAVATICA, "SB_AUTH_TOKEN": TOKEN_ENV}


class TestResolutionOrder:
    def test_profile_wins_over_environment(self, credentials_file: Path) -> None:
        """An explicit profile is used even when the environment is set."""
        found = resolve_credentials(
            profile="cgc", environ=ENV, credentials_file=credentials_file
        )
        assert found.endpoint == CGC
        assert found.token == TOKEN_CGC
        assert "cgc" in found.source

    def test_environment_wins_over_default(self, credentials_file: Path) -> None:
        """Without a profile, SB_API_ENDPOINT + SB_AUTH_TOKEN beat [default]."""
        found = resolve_credentials(
            profile=None, environ=ENV, credentials_file=credentials_file
        )
        assert found.endpoint == CAVATICA
        assert found.token == TOKEN_ENV
        assert "SB_API_ENDPOINT" in found.source

    def test_default_profile_last(self, credentials_file: Path) -> None:
        """With no profile and no environment, [default] is used."""
        found = resolve_credentials(
            profile=None, environ={}, credentials_file=credentials_file
        )
        assert found.endpoint == SBG_US
        assert found.token == TOKEN_DEFAULT
        assert "default" in found.source

    @pytest.mark.parametrize(
        "partial",
        [
            {"SB_API_ENDPOINT": CAVATICA},
            {"SB_AUTH_TOKEN": TOKEN_ENV},
            {"SB_API_ENDPOINT": " ", "SB_AUTH_TOKEN": TOKEN_ENV},
        ],
        ids=["endpoint-only", "token-only", "blank-endpoint"],
    )
    def test_partial_environment_falls_back_to_default(
        self, credentials_file: Path, partial: dict[str, str]
    ) -> None:
        """Half of the environment pair is not enough: [default] is used."""
        found = resolve_credentials(
            profile=None, environ=partial, credentials_file=credentials_file
        )
        assert found.token == TOKEN_DEFAULT

    def test_environment_without_a_file(self, tmp_path: Path) -> None:
        """The environment alone is enough when no credentials file exists."""
        found = resolve_credentials(
            profile=None, environ=ENV, credentials_file=tmp_path / "absent"
        )
        assert found.endpoint == CAVATICA

    def test_trailing_slash_dropped(self, credentials_file: Path) -> None:
        """The endpoint is normalised without its trailing slash."""
        found = resolve_credentials(
            profile="cgc", environ={}, credentials_file=credentials_file
        )
        assert found.endpoint == CGC


class TestMissing:
    def test_missing_profile(self, credentials_file: Path) -> None:
        """A profile that the file does not hold is a ConfigError naming it."""
        with pytest.raises(ConfigError, match=r"no profile \[nope\]"):
            resolve_credentials(
                profile="nope", environ=ENV, credentials_file=credentials_file
            )

    def test_profile_without_file(self, tmp_path: Path) -> None:
        """A profile with no credentials file at all is a ConfigError."""
        with pytest.raises(ConfigError, match=r"no profile \[cgc\]"):
            resolve_credentials(
                profile="cgc", environ=ENV, credentials_file=tmp_path / "absent"
            )

    @pytest.mark.parametrize(
        "section",
        [
            f"[cgc]\napi_endpoint = {CGC}\n",
            f"[cgc]\nauth_token = {TOKEN_CGC}\n",
            f"[cgc]\napi_endpoint = {CGC}\nauth_token =\n",
        ],
        ids=["no-token", "no-endpoint", "empty-token"],
    )
    def test_profile_missing_a_key(self, tmp_path: Path, section: str) -> None:
        """A profile without both api_endpoint and auth_token is a ConfigError."""
        path = write_credentials(tmp_path / "credentials", section)
        with pytest.raises(ConfigError, match="needs both api_endpoint and auth_token"):
            resolve_credentials(profile="cgc", environ={}, credentials_file=path)

    def test_nothing_anywhere(self, tmp_path: Path) -> None:
        """No profile, no environment and no file is a ConfigError saying what to do."""
        with pytest.raises(ConfigError, match="SB_API_ENDPOINT and SB_AUTH_TOKEN"):
            resolve_credentials(
                profile=None, environ={}, credentials_file=tmp_path / "absent"
            )

    def test_file_without_default(self, tmp_path: Path) -> None:
        """A file with only named profiles does not satisfy the no-profile case."""
        path = write_credentials(
            tmp_path / "credentials",
            f"[cgc]\napi_endpoint = {CGC}\nauth_token = {TOKEN_CGC}\n",
        )
        with pytest.raises(ConfigError, match="no credentials"):
            resolve_credentials(profile=None, environ={}, credentials_file=path)


class TestEndpoint:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080/v2",
            "http://127.1.2.3:8080/v2",
            "http://[::1]:8080/v2",
            "http://localhost:8080/v2",
            "https://api.sbgenomics.com/v2",
        ],
    )
    def test_accepted(self, url: str) -> None:
        """https anywhere, and http on loopback only (the simulator), are accepted."""
        assert normalise_endpoint(url + "/", origin="test") == url

    @pytest.mark.parametrize(
        "url",
        [
            "http://api.sbgenomics.com/v2",
            "http://10.0.0.1:8080/v2",
            "http://0.0.0.0:8080/v2",
            "http://localhost.example.com/v2",
            "http://127.0.0.1.nip.io/v2",
        ],
    )
    def test_plain_http_refused(self, url: str) -> None:
        """Plain http to a host that is not loopback is refused."""
        with pytest.raises(ConfigError, match="refusing plain http"):
            normalise_endpoint(url, origin="test")

    @pytest.mark.parametrize(
        "url",
        ["ftp://api.sbgenomics.com/v2", "api.sbgenomics.com/v2", "https:///v2", ""],
    )
    def test_not_a_url(self, url: str) -> None:
        """Anything but an http(s) URL with a host is refused."""
        with pytest.raises(ConfigError, match="not an http"):
            normalise_endpoint(url, origin="test")

    def test_query_refused(self) -> None:
        """An endpoint with a query string is refused."""
        with pytest.raises(ConfigError, match="query"):
            normalise_endpoint(f"{CGC}?x=1", origin="test")

    def test_http_refused_from_environment(self) -> None:
        """A non-loopback http endpoint in the environment is a ConfigError."""
        environ = {"SB_API_ENDPOINT": "http://api.example.com/v2", "SB_AUTH_TOKEN": "t"}
        with pytest.raises(ConfigError, match="SB_API_ENDPOINT"):
            resolve_credentials(profile=None, environ=environ, credentials_file=None)

    def test_http_refused_from_profile(self, tmp_path: Path) -> None:
        """A non-loopback http endpoint in a profile is a ConfigError naming it."""
        path = write_credentials(
            tmp_path / "credentials",
            "[lab]\napi_endpoint = http://api.example.com/v2\n"
            f"auth_token = {TOKEN_CGC}\n",
        )
        with pytest.raises(ConfigError, match=r"\[lab\].*plain http"):
            resolve_credentials(profile="lab", environ={}, credentials_file=path)

    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("127.0.0.1", True),
            ("::1", True),
            ("localhost", True),
            ("127.255.0.9", True),
            ("10.1.1.1", False),
            ("example.com", False),
            ("::", False),
        ],
    )
    def test_is_loopback_host(self, host: str, expected: bool) -> None:
        """Loopback is 127.0.0.0/8, ::1 and the name localhost."""
        assert is_loopback_host(host) is expected


class TestEndpointMatch:
    CREDS = Credentials(endpoint=CGC, token=TOKEN_CGC, source="test")

    def test_none_wanted(self) -> None:
        """A manifest naming no endpoint accepts any credentials."""
        check_endpoint_matches(self.CREDS, None)

    def test_same_endpoint(self) -> None:
        """The same endpoint (even with a trailing slash) matches."""
        check_endpoint_matches(self.CREDS, CGC)
        check_endpoint_matches(self.CREDS, CGC + "/")

    def test_mismatch(self) -> None:
        """A manifest for another platform than the credentials' is a ConfigError."""
        with pytest.raises(ConfigError, match="targets") as caught:
            check_endpoint_matches(self.CREDS, CAVATICA)
        assert CAVATICA in str(caught.value)
        assert CGC in str(caught.value)
        assert TOKEN_CGC not in str(caught.value)


class TestTokenNeverShown:
    def test_repr_hides_token(self) -> None:
        """repr() and str() of Credentials never contain the token."""
        creds = Credentials(endpoint=CGC, token=TOKEN_CGC, source="test")
        assert TOKEN_CGC not in repr(creds)
        assert TOKEN_CGC not in str(creds)
        assert CGC in repr(creds)

    def test_resolved_repr_hides_token(self, credentials_file: Path) -> None:
        """Credentials read from a file do not show the token in their repr."""
        found = resolve_credentials(
            profile="cgc", environ={}, credentials_file=credentials_file
        )
        assert TOKEN_CGC not in repr(found)

    @pytest.mark.parametrize(
        "text",
        [
            f"[default]\napi_endpoint = {CGC}\n{TOKEN_CGC}\n",
            f"auth_token = {TOKEN_CGC}\n[default]\napi_endpoint = {CGC}\n",
            f"[default]\napi_endpoint = {CGC}\nauth_token = {TOKEN_CGC}\n"
            f"  continued {TOKEN_CGC}\n[default]\n",
        ],
        ids=["bare-token-line", "no-section-header", "duplicate-section"],
    )
    def test_malformed_file_does_not_echo_token(
        self, tmp_path: Path, text: str
    ) -> None:
        """A malformed credentials file is a ConfigError that never quotes the token."""
        path = write_credentials(tmp_path / "credentials", text)
        with pytest.raises(ConfigError) as caught:
            resolve_credentials(profile=None, environ={}, credentials_file=path)
        assert TOKEN_CGC not in str(caught.value)
        assert str(path) in str(caught.value)
        rendered = "".join(traceback.format_exception(caught.value))
        assert TOKEN_CGC not in rendered, "the chained parser error quotes the token"
