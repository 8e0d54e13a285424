"""Credentials and endpoint resolution, the way sevenbridges-python does it.

Order (CONTRACT.md): an explicit profile (`--profile`, else the manifest's `profile:`),
then `SB_API_ENDPOINT` + `SB_AUTH_TOKEN`, then the `[default]` profile of
`~/.sevenbridges/credentials`. Nothing here reads `os.environ` or the home directory by
itself: the caller hands both in, so tests never touch the real ones.
"""

from __future__ import annotations

import configparser
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from orchestrator.errors import ConfigError

CREDENTIALS_FILE = Path("~/.sevenbridges/credentials")


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    """Where to send requests and the token to send. The token never shows in repr."""

    endpoint: str
    token: str = field(repr=False)
    source: str


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: the only hosts allowed over http."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalise_endpoint(url: str, *, origin: str) -> str:
    """Check an API base URL and drop its trailing slash.

    https is required; http is accepted only on loopback (the built-in simulator), as
    the official SDK refuses http outside its debug mode.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"{origin}: {url!r} is not an http(s) URL")
    if parts.scheme == "http" and not is_loopback_host(parts.hostname):
        raise ConfigError(
            f"{origin}: refusing plain http to {parts.hostname}; use https "
            "(http is allowed only on loopback, for the simulator)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{origin}: the API endpoint must not carry a query")
    return url.strip().rstrip("/")


def _read_profile(path: Path, profile: str) -> Credentials | None:
    """One section of the INI credentials file, or None if file or section is absent."""
    if not path.is_file():
        return None
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read(path, encoding="utf-8")
    except (configparser.Error, UnicodeDecodeError):
        # configparser messages can quote a line, which may hold a token: keep it out.
        raise ConfigError(f"{path}: not a valid credentials file") from None
    if not parser.has_section(profile):
        return None
    section = parser[profile]
    endpoint = section.get("api_endpoint", "").strip()
    token = section.get("auth_token", "").strip()
    origin = f"{path} [{profile}]"
    if not endpoint or not token:
        raise ConfigError(f"{origin}: needs both api_endpoint and auth_token")
    return Credentials(
        endpoint=normalise_endpoint(endpoint, origin=origin),
        token=token,
        source=f"profile {profile!r} of {path}",
    )


def resolve_credentials(
    *,
    profile: str | None,
    environ: Mapping[str, str],
    credentials_file: Path | None = None,
) -> Credentials:
    """Find the endpoint and token the way the official SDK would."""
    path = (credentials_file or CREDENTIALS_FILE).expanduser()
    if profile:
        found = _read_profile(path, profile)
        if found is None:
            raise ConfigError(f"no profile [{profile}] in {path}")
        return found
    endpoint = environ.get("SB_API_ENDPOINT", "").strip()
    token = environ.get("SB_AUTH_TOKEN", "").strip()
    if endpoint and token:
        return Credentials(
            endpoint=normalise_endpoint(endpoint, origin="SB_API_ENDPOINT"),
            token=token,
            source="environment (SB_API_ENDPOINT, SB_AUTH_TOKEN)",
        )
    found = _read_profile(path, "default")
    if found is not None:
        return found
    raise ConfigError(
        "no credentials: set SB_API_ENDPOINT and SB_AUTH_TOKEN, or add a profile to "
        f"{path} and pass --profile (see the README)"
    )


def check_endpoint_matches(credentials: Credentials, wanted: str | None) -> None:
    """A manifest naming another platform than the credentials' is an error."""
    if wanted is None:
        return
    if wanted.rstrip("/") != credentials.endpoint:
        raise ConfigError(
            f"the manifest targets {wanted} but the credentials ({credentials.source}) "
            f"are for {credentials.endpoint}"
        )
