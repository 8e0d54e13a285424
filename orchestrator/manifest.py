"""Load and validate YAML manifests (version 1), and render a `Manifest` back to YAML.

A manifest decides which tasks are cloned and paid for, it is often written by hand, and
`validate` must say exactly what to fix. So loading is:

- safe: PyYAML is used only up to *composition* (nodes with line marks); scalars go
  through the safe constructor one at a time, so no tag can build a Python object;
- bounded: 16 MiB (room for 400,000 task IDs), 64 levels of nesting, and no
  anchors or aliases (no alias bombs);
- strict: unknown keys, wrong types and bad values are errors naming file, line and key
  (`manifests/x.yaml:7: tasks[2].id: ...`), and never echo a value that may be a secret.

Validation is table-driven: each mapping has a table of `_Key`s (converter, required,
dataclass attribute), and `_fields` applies it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlsplit, urlunsplit

import yaml

from orchestrator.config import is_loopback_host
from orchestrator.errors import ManifestError
from orchestrator.models import (
    PLATFORMS,
    Action,
    Manifest,
    Overrides,
    RateLimit,
    Selection,
    TaskId,
    TaskSpec,
    TaskStatus,
    WaitSettings,
)

__all__ = ["MAX_MANIFEST_BYTES", "load_manifest", "manifest_to_yaml", "parse_manifest"]

MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024
"""A 100,000-task cohort listed by ID is about 4 MiB; this leaves room, and no more."""
"""Larger files are refused before parsing: no real manifest comes near it."""

_MAX_DEPTH: Final = 64
"""Deeper nesting is refused: PyYAML composes recursively, and no manifest needs it."""

_YAML_TAG: Final = "tag:yaml.org,2002:"
_STR_TAG: Final = _YAML_TAG + "str"
_NULL_TAG: Final = _YAML_TAG + "null"
_SCALAR_TAGS: Final = frozenset(
    _YAML_TAG + name for name in ("str", "int", "float", "bool", "null", "timestamp")
)
_COLLECTION_TAGS: Final[Mapping[type[yaml.Event], str]] = {
    yaml.SequenceStartEvent: _YAML_TAG + "seq",
    yaml.MappingStartEvent: _YAML_TAG + "map",
}

_EMPTY_REASON: Final = (
    "the manifest is empty (expected `version: 1` and tasks: or select:)"
)
_EXAMPLE_ID: Final = "08c5da64-1329-4a3e-b014-62a1617bc7db"
_UUID: Final = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I
)
_PROJECT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
_DATE_TEXT: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}(?P<time>T\d{2}:\d{2}:\d{2}(?:Z|[+-]\d{2}:\d{2})?)?"
)
_DATE_FORMS: Final = "yyyy-MM-dd or yyyy-MM-ddTHH:mm:ss with an optional Z or +HH:mm"

_TOKEN_KEY: Final = re.compile(
    r"[a-z0-9]*(?:tokens?|secret|password|passwd|apikey|authorization)"
)
_CREDENTIALS_HINT: Final = (
    "a token is never accepted in a manifest; "
    "use SB_AUTH_TOKEN or ~/.sevenbridges/credentials"
)
_SECRET_LIKE: Final = re.compile(r"[A-Za-z0-9_+=]{20,}")
"""An unbroken run this long may be a token (CGC's are 32 hex digits): never echo it."""

_ALL_STATUSES: Final = tuple(status.value for status in TaskStatus)
_FILTER_STATUSES: Final = (
    "QUEUED",
    "DRAFT",
    "RUNNING",
    "COMPLETED",
    "ABORTED",
    "FAILED",
)
"""The values the list filter `GET /v2/tasks?status=` documents (cgc-api.md §4)."""


# --------------------------------------------------------------------------- public


def load_manifest(path: Path | str) -> Manifest:
    """Read, decode and validate the manifest file at `path`.

    The size cap is checked before the file is read, so a huge file costs nothing.
    """
    given = Path(path)
    return parse_manifest(_decode(_read_capped(given), given), path=given)


def parse_manifest(text: str, *, path: Path | str) -> Manifest:
    """Validate manifest `text`; `path` is only used to name the file in errors."""
    given = Path(path)
    _check_size(len(text.encode("utf-8", "surrogatepass")), given)
    source = _Source(given)
    return _build(source, _read_tree(text, source))


def manifest_to_yaml(manifest: Manifest) -> str:
    """Render `manifest` as YAML that `parse_manifest` reads back to an equal Manifest.

    `version` comes first, then only the fields that differ from the defaults, in the
    order of the manifest format. The manifest must be valid (tasks or a `select:`).
    """
    return yaml.dump(
        _manifest_data(manifest),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=120,
    )


# --------------------------------------------------------------------- reading text


def _check_size(size: int, path: Path) -> None:
    """Refuse oversized input up front: a mistake or an attack, never a manifest."""
    if size > MAX_MANIFEST_BYTES:
        raise ManifestError(
            path,
            f"the file is {size / 1024 / 1024:.1f} MiB ({size:,} bytes); manifests "
            f"are capped at {MAX_MANIFEST_BYTES // 1024 // 1024} MiB "
            f"({MAX_MANIFEST_BYTES:,} bytes)",
        )


def _read_capped(path: Path) -> bytes:
    """The file's bytes: refused by size before reading, never read past the cap."""
    try:
        _check_size(path.stat().st_size, path)
        with path.open("rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ManifestError(path, f"cannot read: {exc.strerror or exc}") from exc
    _check_size(len(data), path)  # a pipe or a growing file can outrun stat()
    return data


def _decode(data: bytes, path: Path) -> str:
    """Strict UTF-8, with the line and column of the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        utf16 = data.startswith((b"\xff\xfe", b"\xfe\xff"))
        hint = " (it looks like UTF-16: save it as UTF-8)" if utf16 else ""
        reason = f"not valid UTF-8: byte 0x{data[exc.start]:02x} at column {column}"
        raise ManifestError(path, reason + hint, line=line) from None


# -------------------------------------------------------------------- YAML to a tree


if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class _ComposeBase(
        yaml.composer.Composer,
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """libyaml's scanner and parser (3x faster on big cohorts), PyYAML's own
        composer, so that the checks of `_ComposeOnly.compose_node` see every node."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    _ComposeBase = yaml.SafeLoader  # type: ignore[misc, assignment]


class _ComposeOnly(_ComposeBase):
    """A SafeLoader used only to compose nodes, refusing aliases, tags and deep nesting.

    It tracks the key path being composed, so that even a syntax error can say where.
    """

    def __init__(self, text: str, path: Path) -> None:
        super().__init__(text)
        self._path = path
        self._keys: list[str] = []

    @property
    def current_key(self) -> str:
        """The key path of the node being composed (the deepest one, after an error)."""
        return self._keys[-1] if self._keys else ""

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        """Check each node's event before PyYAML composes it."""
        event = self.next_event()
        key = self._key_for(parent, index)
        self._keys.append(key)
        line = _mark_line(event.start_mark)
        if len(self._keys) > _MAX_DEPTH:
            raise self._refuse(f"nested more than {_MAX_DEPTH} levels deep", line)
        if (
            isinstance(event, yaml.AliasEvent)
            or getattr(event, "anchor", None) is not None
        ):
            raise self._refuse(
                "YAML anchors and aliases (&name, *name) are not allowed in a manifest "
                "(they can hide an alias bomb); write each value out",
                line,
            )
        self._check_tag(event, line)
        node = super().compose_node(parent, index)
        self._keys.pop()  # only on success: after an error the path says where
        return node

    def _key_for(self, parent: yaml.Node | None, index: object) -> str:
        """A child's key path: `parent.key` for a value, `parent[i]` for an item."""
        current = self.current_key
        if isinstance(index, yaml.ScalarNode):
            return _join(current, str(index.value))
        if isinstance(parent, yaml.SequenceNode) and isinstance(index, int):
            return f"{current}[{index}]"
        return current  # the root, or a mapping key (reported at its mapping)

    def _check_tag(self, event: yaml.Event, line: int | None) -> None:
        """Allow only the standard tags, and only on values they describe.

        Nothing is ever constructed from a tag, but refusing `!!python/...` and the
        like outright makes an unsafe file fail loudly instead of loading as text.
        """
        tag = getattr(event, "tag", None)
        if tag is None or tag == "!":
            return
        if isinstance(event, yaml.ScalarEvent):
            implicit = self._implicit_tag(event.value)
            if tag == _STR_TAG or (tag in _SCALAR_TAGS and tag == implicit):
                return
            if tag in _SCALAR_TAGS:
                raise self._refuse(
                    f"the value does not match its tag {_short(tag)}", line
                )
        elif tag == _COLLECTION_TAGS.get(type(event)):
            return
        raise self._refuse(
            f"YAML tag {_short(tag)} is not allowed: a manifest holds plain values "
            "only, and loading never builds Python objects",
            line,
        )

    def next_event(self) -> yaml.Event:
        """The event about to be composed (PyYAML's `peek_event`, typed)."""
        event = self.peek_event()
        if event is None:  # only after the stream's end, which compose never asks
            raise yaml.composer.ComposerError(None, None, "unexpected end", None)
        return event

    def _implicit_tag(self, text: str) -> str:
        """The tag PyYAML would give `text` written plain (e.g. `!!int` for 8)."""
        tag: str = self.resolve(yaml.ScalarNode, text, (True, False))  # type: ignore[no-untyped-call]
        return tag

    def _refuse(self, reason: str, line: int | None) -> ManifestError:
        return ManifestError(self._path, reason, line=line, key=self.current_key)


def _read_tree(text: str, source: _Source) -> dict[str, object]:
    """The document as plain dicts, lists and scalars; lines go to `source.lines`."""
    loader: _ComposeOnly | None = None
    try:
        loader = _ComposeOnly(text, source.path)
        root = _single_document(loader, source.path)
        source.lines[""] = _node_line(root)
        return _plain_mapping(loader, root, "", source)
    except (
        yaml.reader.ReaderError
    ) as exc:  # up front (PyYAML) or while parsing (libyaml)
        line = text.count("\n", 0, exc.position) + 1
        char = exc.character if isinstance(exc.character, int) else 0
        reason = f"character U+{char:04X} is not allowed in YAML"
        raise ManifestError(source.path, reason, line=line) from None
    finally:
        if loader is not None:
            loader.dispose()


def _single_document(loader: _ComposeOnly, path: Path) -> yaml.MappingNode:
    """The root node of the one document, which must be a mapping."""
    try:
        if not loader.check_node():
            raise ManifestError(path, _EMPTY_REASON)
        root = loader.get_node()
        if loader.check_node():
            raise ManifestError(
                path,
                "a manifest is one YAML document, but a second one starts here",
                line=_mark_line(loader.next_event().start_mark),
            )
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, loader.current_key, path) from None
    if root is None or (isinstance(root, yaml.ScalarNode) and root.tag == _NULL_TAG):
        raise ManifestError(path, _EMPTY_REASON)
    if not isinstance(root, yaml.MappingNode):
        raise ManifestError(
            path,
            "the top level must be a mapping (version:, tasks:, ...), "
            f"not {_node_kind(root)}",
            line=_node_line(root),
        )
    return root


def _syntax_error(exc: yaml.MarkedYAMLError, key: str, path: Path) -> ManifestError:
    """PyYAML's problem and position, minus its source excerpt (it may hold secrets)."""
    mark = exc.problem_mark or exc.context_mark
    line = _mark_line(mark)
    column = f", column {mark.column + 1}" if mark is not None else ""
    context = f"{exc.context}{column}" if exc.context else column.lstrip(", ")
    problem = exc.problem or "invalid YAML"
    reason = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return ManifestError(path, reason, line=line, key=key)


def _plain(loader: _ComposeOnly, node: yaml.Node, key: str, source: _Source) -> object:
    """Convert one composed node (and its children) to a plain Python value."""
    if isinstance(node, yaml.MappingNode):
        return _plain_mapping(loader, node, key, source)
    if isinstance(node, yaml.SequenceNode):
        items: list[object] = []
        for index, child in enumerate(node.value):
            item_key = f"{key}[{index}]"
            source.lines[item_key] = _node_line(child)
            items.append(_plain(loader, child, item_key, source))
        return items
    if node.tag not in _SCALAR_TAGS:  # an implicit `=` or `<<`: just text here
        return str(node.value)
    try:
        value: object = loader.construct_object(node, deep=True)
    except ValueError:  # e.g. 2026-13-45: keep the text, the field says what is wrong
        return str(node.value)
    return value


def _plain_mapping(
    loader: _ComposeOnly, node: yaml.MappingNode, key: str, source: _Source
) -> dict[str, object]:
    """A mapping with text keys; refuses token keys and duplicate keys by line."""
    out: dict[str, object] = {}
    for key_node, value_node in node.value:
        line = _node_line(key_node)
        if not isinstance(key_node, yaml.ScalarNode):
            raise ManifestError(
                source.path, "a key must be plain text", line=line, key=key
            )
        name = str(key_node.value)
        child = _join(key, name)
        if _TOKEN_KEY.fullmatch(re.sub(r"[^a-z0-9]", "", name.lower())):
            raise ManifestError(source.path, _CREDENTIALS_HINT, line=line, key=child)
        if name in out:
            reason = f"duplicate key {name!r} (first on line {source.lines[child]})"
            raise ManifestError(source.path, reason, line=line, key=child)
        source.lines[child] = line
        out[name] = _plain(loader, value_node, child, source)
    return out


# --------------------------------------------------------------- validation context


@dataclass(slots=True)
class _Source:
    """Where values came from (file, line per key path), and the warnings found."""

    path: Path
    lines: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def line(self, key: str) -> int | None:
        """The line of `key`, or of its nearest parent with one (for a missing key)."""
        while key not in self.lines:
            if not key:
                return None
            key = _parent(key)
        return self.lines[key]

    def error(self, key: str, reason: str) -> ManifestError:
        return ManifestError(self.path, reason, line=self.line(key), key=key)

    def wrong_type(self, key: str, value: object, expected: str) -> ManifestError:
        numeric = expected.startswith(("an integer", "a number"))
        quoted = numeric and isinstance(value, str) and _is_number_text(value)
        hint = " (write it without quotes)" if quoted else ""
        return self.error(key, f"expected {expected}, got {_kind(value)}{hint}")

    def warn(self, key: str, reason: str) -> None:
        line = self.line(key)
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        self.warnings.append(f"{where}: {key}: {reason}")


_Convert = Callable[[_Source, str, object], Any]
"""A field converter: (source, key path, raw value) -> the model's value, or raise."""


@dataclass(frozen=True, slots=True)
class _Key:
    """One allowed key of a mapping: how to convert it, and where it goes."""

    convert: _Convert
    required: bool = False
    attr: str | None = None
    """The dataclass attribute, where it differs from the YAML key."""


def _fields(
    source: _Source, key: str, value: object, table: Mapping[str, _Key]
) -> dict[str, Any]:
    """Validate a mapping against `table`, in file order; returns attribute -> value."""
    mapping = _mapping(source, key, value)
    out: dict[str, Any] = {}
    for name, raw in mapping.items():
        spec = table.get(name)
        if spec is None:
            raise _unknown_key(source, _join(key, name), name, list(table))
        out[spec.attr or name] = spec.convert(source, _join(key, name), raw)
    for name, spec in table.items():
        if spec.required and name not in mapping:
            raise source.error(_join(key, name), "required key is missing")
    return out


def _unknown_key(
    source: _Source, key: str, name: str, allowed: Sequence[str]
) -> ManifestError:
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = (
        f"did you mean {close[0]!r}?"
        if close
        else f"expected one of: {', '.join(allowed)}"
    )
    return source.error(key, f"unknown key {name!r}; {hint}")


# ----------------------------------------------------------------- value converters


def _mapping(source: _Source, key: str, value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise source.wrong_type(key, value, "a mapping")
    return value


def _list(source: _Source, key: str, value: object) -> list[object]:
    if not isinstance(value, list):
        raise source.wrong_type(key, value, "a list")
    return value


def _str(source: _Source, key: str, value: object) -> str:
    if not isinstance(value, str):
        raise source.wrong_type(key, value, "a string")
    return value


def _nonempty_str(source: _Source, key: str, value: object) -> str:
    text = _str(source, key, value)
    if not text.strip():
        raise source.error(key, "must not be empty")
    return text


def _bool(source: _Source, key: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise source.wrong_type(key, value, "true or false")
    return value


def _int_between(low: int, high: int | None = None) -> _Convert:
    """An integer converter (booleans, floats and quoted digits are not integers)."""

    def convert(source: _Source, key: str, value: object) -> int:
        if type(value) is not int:
            raise source.wrong_type(key, value, "an integer")
        if value < low or (high is not None and value > high):
            bounds = (
                f"between {low} and {high}" if high is not None else f"at least {low}"
            )
            raise source.error(key, f"must be {bounds}, got {value}")
        return value

    return convert


def _number_above(low: float, *, inclusive: bool) -> _Convert:
    """A finite number converter: an int or a float, returned as float."""

    def convert(source: _Source, key: str, value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise source.wrong_type(key, value, "a number")
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f"at least {low:g}" if inclusive else f"greater than {low:g}"
            raise source.error(key, f"must be a finite number {bound}, got {value}")
        return float(value)

    return convert


def _choice(
    source: _Source, key: str, text: str, choices: Sequence[str], what: str
) -> str:
    """`text` if it is one of `choices`, else an error with a close match if any."""
    if text in choices:
        return text
    close = difflib.get_close_matches(text, choices, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise source.error(
        key, f"unknown {what} {_show(text)}{hint} (one of: {', '.join(choices)})"
    )


def _version(source: _Source, key: str, value: object) -> int:
    if type(value) is not int:
        raise source.wrong_type(key, value, "an integer (1)")
    if value != 1:
        raise source.error(
            key,
            f"unsupported manifest version {value} (this cgc-rerun reads version 1)",
        )
    return value


def _platform(source: _Source, key: str, value: object) -> str:
    text = _str(source, key, value).lower()
    return _choice(source, key, text, list(PLATFORMS), "platform")


def _action(source: _Source, key: str, value: object) -> Action:
    text = _str(source, key, value).lower()
    return Action(_choice(source, key, text, [a.value for a in Action], "action"))


def _endpoint(source: _Source, key: str, value: object) -> str:
    """An API base URL: https, or http on loopback only (the simulator). Normalised."""
    text = _str(source, key, value)
    try:
        parts = urlsplit(text.strip())
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        parts, host = urlsplit(""), None
    if parts.scheme not in ("https", "http") or not host:
        raise source.error(
            key, f"not an http(s) URL (expected e.g. {PLATFORMS['cgc']})"
        )
    if parts.username is not None or parts.password is not None:
        raise source.error(key, "must not carry a user name or password")
    if parts.query or parts.fragment:
        raise source.error(key, "must not have a query string or fragment")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise source.error(
            key,
            f"http:// is refused for {host}: use https (plain http is allowed only on "
            "loopback, e.g. for the simulator)",
        )
    return urlunsplit(
        (parts.scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", "")
    )


def _statuses(
    choices: Sequence[str], container: Callable[[list[str]], Any]
) -> _Convert:
    """A converter for a status or a list of them; accepts lower case, drops repeats."""

    def convert(source: _Source, key: str, value: object) -> Any:
        raw = [value] if isinstance(value, str) else _list(source, key, value)
        if not raw:
            raise source.error(key, "must name at least one status")
        found: list[str] = []
        for index, item in enumerate(raw):
            item_key = key if isinstance(value, str) else f"{key}[{index}]"
            text = _str(source, item_key, item).upper()
            status = _choice(source, item_key, text, choices, "status")
            if status not in found:
                found.append(status)
        return container(found)

    return convert


def _task_id(source: _Source, key: str, value: object) -> TaskId:
    """A canonical UUID, lower-cased; a path or URL gets its own message."""
    text = _str(source, key, value)
    if _UUID.fullmatch(text):
        return TaskId(text.lower())
    expected = f"(expected a UUID like {_EXAMPLE_ID})"
    if any(mark in text for mark in ("/", "\\", "://")) or text.startswith((".", "~")):
        inner = _UUID.search(text)
        hint = f"; did you mean {inner.group().lower()}?" if inner else ""
        raise source.error(
            key, f"{_show(text)} is a path or URL, not a task ID {expected}{hint}"
        )
    raise source.error(key, f"{_show(text)} is not a task ID {expected}")


def _task(source: _Source, key: str, value: object) -> TaskSpec:
    """One `tasks:` item: an ID string, or a mapping {id, label, overrides}."""
    if isinstance(value, str):
        return TaskSpec(id=_task_id(source, key, value), line=source.line(key))
    if not isinstance(value, dict):
        raise source.wrong_type(
            key, value, "a task ID or a mapping {id, label, overrides}"
        )
    return TaskSpec(line=source.line(key), **_fields(source, key, value, _TASK_KEYS))


def _tasks(source: _Source, key: str, value: object) -> tuple[TaskSpec, ...]:
    """The task list; a repeated ID merges into its first occurrence, with a warning."""
    first: dict[str, tuple[int, TaskSpec]] = {}
    for index, item in enumerate(_list(source, key, value)):
        item_key = f"{key}[{index}]"
        spec = _task(source, item_key, item)
        if spec.id not in first:
            first[spec.id] = (index, spec)
            continue
        kept_index, kept = first[spec.id]
        ignored = (spec.label, spec.overrides) != (kept.label, kept.overrides)
        source.warn(
            item_key,
            f"duplicate of {key}[{kept_index}] (line {kept.line}); merged"
            + ("; its own label and overrides are ignored" if ignored else ""),
        )
    return tuple(spec for _, spec in first.values())


def _project(source: _Source, key: str, value: object) -> str:
    text = _str(source, key, value)
    if not _PROJECT.fullmatch(text):
        raise source.error(
            key, f"{_show(text)} is not a project ID (expected owner/project)"
        )
    return text


def _iso_date(source: _Source, key: str, value: object) -> str:
    """A YAML date/datetime or ISO text, in the list filter's form: date, or UTC `Z`."""
    if isinstance(value, str):
        value = _parse_date_text(source, key, value)
    if isinstance(value, datetime):
        if value.microsecond:
            raise source.error(key, "fractional seconds are not supported by the API")
        return _utc_text(source, key, value)
    if isinstance(value, date):
        return value.isoformat()
    raise source.wrong_type(key, value, f"a date ({_DATE_FORMS})")


def _parse_date_text(source: _Source, key: str, text: str) -> date:
    """Quoted ISO text, in the forms the list filter documents (cgc-api.md §4)."""
    match = _DATE_TEXT.fullmatch(text)
    if match is None:
        raise source.error(key, f"{_show(text)} is not a date ({_DATE_FORMS})")
    parse = datetime.fromisoformat if match["time"] else date.fromisoformat
    try:
        return parse(text)
    except ValueError:
        raise source.error(key, f"{_show(text)} is not a valid date") from None


def _utc_text(source: _Source, key: str, moment: datetime) -> str:
    """`moment` in UTC as `yyyy-MM-ddTHH:mm:ssZ`; a time without an offset is UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        utc = moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+05:00
        raise source.error(key, "the date is out of range") from None
    return utc.replace(tzinfo=None).isoformat(timespec="seconds") + "Z"


def _select(source: _Source, key: str, value: object) -> Selection:
    fields = _fields(source, key, value, _SELECT_KEYS)
    for prefix in ("created", "ended"):
        start, end = fields.get(f"{prefix}_from"), fields.get(f"{prefix}_to")
        if start is not None and end is not None and _after(start, end):
            raise source.error(
                _join(key, f"{prefix}_from"), f"{start} is after {prefix}_to {end}"
            )
    return Selection(**fields)


def _after(start: str, end: str) -> bool:
    """Compare normalised ISO strings, at day precision unless both have a time."""
    if "T" in start and "T" in end:
        return start > end  # same fixed-width UTC form, so text order is time order
    return start[:10] > end[:10]


def _overrides(source: _Source, key: str, value: object) -> Overrides:
    return Overrides(**_fields(source, key, value, _OVERRIDE_KEYS))


def _execution_settings(
    source: _Source, key: str, value: object
) -> dict[str, object] | None:
    """Known settings only; `{}` means none (so that equal manifests compare equal)."""
    return _fields(source, key, value, _EXECUTION_SETTINGS_KEYS) or None


def _inputs(source: _Source, key: str, value: object) -> dict[str, object] | None:
    """Input ID -> a JSON value (a partial inputs map); `{}` means none."""
    mapping = _mapping(source, key, value)
    for name, item in mapping.items():
        if not name.strip():
            raise source.error(_join(key, name), "an input ID must not be empty")
        _check_json(source, _join(key, name), item)
    return dict(mapping) or None


def _check_json(source: _Source, key: str, value: object) -> None:
    """Refuse what JSON cannot carry: dates, NaN and infinities."""
    if isinstance(value, dict):
        for name, item in value.items():
            _check_json(source, _join(key, name), item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(source, f"{key}[{index}]", item)
    elif isinstance(value, date):
        raise source.error(key, "a date is not a JSON value; quote it to pass text")
    elif isinstance(value, float) and not math.isfinite(value):
        raise source.error(key, f"{value} is not a JSON value")


def _rate_limit(source: _Source, key: str, value: object) -> RateLimit:
    return RateLimit(**_fields(source, key, value, _RATE_LIMIT_KEYS))


def _wait(source: _Source, key: str, value: object) -> WaitSettings:
    return WaitSettings(**_fields(source, key, value, _WAIT_KEYS))


# ------------------------------------------------------------------------ key tables

_EXECUTION_SETTINGS_KEYS: Final[Mapping[str, _Key]] = {
    "instance_type": _Key(_nonempty_str),
    "max_parallel_instances": _Key(_int_between(1)),
    "use_memoization": _Key(_bool),
    "use_elastic_disk": _Key(_bool),
}
_OVERRIDE_KEYS: Final[Mapping[str, _Key]] = {
    "name_suffix": _Key(_str),
    "use_interruptible_instances": _Key(_bool),
    "execution_settings": _Key(_execution_settings),
    "inputs": _Key(_inputs),
}
_TASK_KEYS: Final[Mapping[str, _Key]] = {
    "id": _Key(_task_id, required=True),
    "label": _Key(_nonempty_str),
    "overrides": _Key(_overrides),
}
_SELECT_KEYS: Final[Mapping[str, _Key]] = {
    "project": _Key(_project, required=True),
    "status": _Key(_statuses(_FILTER_STATUSES, tuple), attr="statuses"),
    "created_from": _Key(_iso_date),
    "created_to": _Key(_iso_date),
    "ended_from": _Key(_iso_date),
    "ended_to": _Key(_iso_date),
}
_RATE_LIMIT_KEYS: Final[Mapping[str, _Key]] = {
    "requests": _Key(_int_between(1)),
    "per_seconds": _Key(_number_above(0, inclusive=False)),
}
_WAIT_KEYS: Final[Mapping[str, _Key]] = {
    "poll_seconds": _Key(_number_above(1, inclusive=True)),
    "timeout_hours": _Key(_number_above(0, inclusive=False)),
}
_MANIFEST_KEYS: Final[Mapping[str, _Key]] = {
    "version": _Key(_version, required=True),
    "platform": _Key(_platform),
    "api_endpoint": _Key(_endpoint),
    "profile": _Key(_nonempty_str),
    "action": _Key(_action),
    "tasks": _Key(_tasks),
    "select": _Key(_select),
    "only_status": _Key(_statuses(_ALL_STATUSES, frozenset)),
    "allow_batch": _Key(_bool),
    "overrides": _Key(_overrides),
    "concurrency": _Key(_int_between(1, 64)),
    "rate_limit": _Key(_rate_limit),
    "wait": _Key(_wait),
}


# ------------------------------------------------------------------------ the whole


def _build(source: _Source, tree: dict[str, object]) -> Manifest:
    """The Manifest from the top-level mapping, checking the version before anything."""
    if "version" not in tree:
        raise source.error("version", "required key is missing (add `version: 1`)")
    _version(source, "version", tree["version"])
    fields = _fields(source, "", tree, _MANIFEST_KEYS)
    _check_endpoint_agrees(source, fields)
    if not fields.get("tasks") and fields.get("select") is None:
        raise source.error(
            "tasks",
            "no tasks to rerun: list task IDs under `tasks:` "
            "and/or give a `select:` query",
        )
    return Manifest(path=source.path, warnings=tuple(source.warnings), **fields)


def _check_endpoint_agrees(source: _Source, fields: Mapping[str, Any]) -> None:
    platform, endpoint = fields.get("platform"), fields.get("api_endpoint")
    if (
        platform is not None
        and endpoint is not None
        and endpoint != PLATFORMS[platform]
    ):
        raise source.error(
            "api_endpoint",
            f"does not match platform {platform!r} ({PLATFORMS[platform]}); "
            "give one or the other",
        )


# ---------------------------------------------------------------------- rendering


class _Dumper(yaml.SafeDumper):
    """SafeDumper that indents lists under their key and never writes anchors/aliases.

    Aliases would appear when two tasks share one overrides object; the loader refuses
    them, so the output must not contain any.
    """

    def ignore_aliases(self, data: object) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


_UNICODE_BREAKS: Final = frozenset("\x85\u2028\u2029")


def _represent_text(dumper: _Dumper, data: str) -> yaml.ScalarNode:
    """Any str (StrEnum members too) as text; double-quoted if it has a Unicode break.

    With allow_unicode, PyYAML writes NEL/LS/PS raw in other styles, and they read
    back as line folds; double quotes escape them.
    """
    text = str(data)
    if _UNICODE_BREAKS.isdisjoint(text):
        return dumper.represent_str(text)
    return dumper.represent_scalar(_STR_TAG, text, style='"')


_Dumper.add_representer(str, _represent_text)
_Dumper.add_multi_representer(str, _represent_text)
_Dumper.add_representer(tuple, _Dumper.represent_list)


def _task_data(task: TaskSpec) -> object:
    """A plain ID when there is nothing else to say, else {id, label, overrides}."""
    overrides = task.overrides.as_dict()
    if task.label is None and not overrides:
        return str(task.id)
    data: dict[str, object] = {"id": str(task.id)}
    if task.label is not None:
        data["label"] = task.label
    if overrides:
        data["overrides"] = overrides
    return data


def _selection_data(selection: Selection) -> dict[str, object]:
    data: dict[str, object] = {"project": selection.project}
    if selection.statuses:
        data["status"] = [str(status) for status in selection.statuses]
    for name in ("created_from", "created_to", "ended_from", "ended_to"):
        value = getattr(selection, name)
        if value is not None:
            data[name] = value
    return data


_RENDERERS: Final[Mapping[str, Callable[[Any], object]]] = {
    "platform": str,
    "api_endpoint": str,
    "profile": str,
    "action": str,
    "tasks": lambda tasks: [_task_data(task) for task in tasks],
    "select": _selection_data,
    "only_status": lambda statuses: sorted(str(status) for status in statuses),
    "allow_batch": bool,
    "overrides": Overrides.as_dict,
    "concurrency": int,
    "rate_limit": dataclasses.asdict,
    "wait": dataclasses.asdict,
}
"""Manifest attribute -> its YAML form, in the order of the manifest format."""


def _manifest_data(manifest: Manifest) -> dict[str, object]:
    """`version`, then each field that differs from a default Manifest."""
    defaults = Manifest(path=manifest.path)
    data: dict[str, object] = {"version": manifest.version}
    for name, render in _RENDERERS.items():
        value = getattr(manifest, name)
        if value == getattr(defaults, name):
            continue
        rendered = render(value)
        if rendered != {}:  # overrides made only of empty maps carry nothing
            data[name] = rendered
    return data


# ------------------------------------------------------------------------- helpers


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def _parent(key: str) -> str:
    """`a.b[2]` -> `a.b` -> `a` -> ``."""
    cut = max(key.rfind("."), key.rfind("["))
    return key[:cut] if cut > 0 else ""


class _Mark(Protocol):
    """PyYAML's Python and C marks alike."""

    line: int
    column: int


def _mark_line(mark: _Mark | None) -> int | None:
    return mark.line + 1 if mark is not None else None


def _node_line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def _node_kind(node: yaml.Node) -> str:
    return "a list" if isinstance(node, yaml.SequenceNode) else "a single value"


def _kind(value: object) -> str:
    """A value's YAML kind, for type errors (the value itself is never shown)."""
    kinds: tuple[tuple[type, str], ...] = (
        (bool, "a boolean"),
        (int, "an integer"),
        (float, "a decimal number"),
        (str, "a string"),
        (datetime, "a date and time"),
        (date, "a date"),
        (list, "a list"),
        (dict, "a mapping"),
    )
    if value is None:
        return "nothing (null)"
    return next((name for kind, name in kinds if isinstance(value, kind)), "a value")


def _is_number_text(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _show(text: str) -> str:
    """`text` quoted for an error message, unless it might be a secret."""
    if len(text) > 100 or _SECRET_LIKE.search(text):
        return f"a {len(text)}-character value (not shown: it may be a secret)"
    return repr(text)
