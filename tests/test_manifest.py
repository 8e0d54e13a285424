"""Tests for orchestrator.manifest: loading, validation errors, the YAML round trip."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import textwrap
from datetime import date
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ManifestError
from orchestrator.manifest import (
    MAX_MANIFEST_BYTES,
    load_manifest,
    manifest_to_yaml,
    parse_manifest,
)
from orchestrator.models import (
    DEFAULT_ONLY_STATUS,
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

PATH = Path("manifests/x.yaml")
REPO = Path(__file__).resolve().parent.parent
ID_A = "08c5da64-1329-4a3e-b014-62a1617bc7db"
ID_B = "196fa3d0-8bc7-4c52-b6a1-a8c393d4c22a"
TOKEN = "0123456789abcdef0123456789abcdef"


_YAML_PIECES = (
    *f"version: 1\ntasks: [{ID_A}]\nselect:\n  project: o/p".splitlines(),
    *("- ", ": ", "[", "{", "&a ", "*a", "!!str ", "!x ", "\t", "'", "---", "? "),
    *("<<: ", "=", "~", ".nan", "2026-13-01", "only_status: [", "wait: {"),
)
"""Fragments of YAML, good and bad, for the fuzz test."""


def _parse(text: str) -> Manifest:
    return parse_manifest(textwrap.dedent(text), path=PATH)


def _error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        _parse(text)
    return info.value


def _assert_at(error: ManifestError, line: int, key: str) -> None:
    """The message starts with `file:line: key: ` and the attributes agree."""
    assert str(error).startswith(f"{PATH}:{line}: {key}: "), str(error)
    assert (error.path, error.line, error.key) == (PATH, line, key)


def _without_lines(manifest: Manifest) -> Manifest:
    """What a round trip must preserve: all but warnings and source line numbers."""
    tasks = tuple(dataclasses.replace(task, line=None) for task in manifest.tasks)
    return dataclasses.replace(manifest, tasks=tasks, warnings=())


class TestExamples:
    def test_example_loads(self) -> None:
        """manifests/example.yaml is the smallest valid manifest."""
        manifest = load_manifest(REPO / "manifests" / "example.yaml")
        assert manifest.platform == "cgc"
        assert manifest.tasks
        assert manifest.warnings == ()

    def test_failed_cohort_loads(self) -> None:
        """manifests/failed-cohort.yaml uses select, labels, overrides, wait."""
        manifest = load_manifest(REPO / "manifests" / "failed-cohort.yaml")
        assert manifest.select is not None
        assert manifest.select.statuses == ("FAILED", "ABORTED")
        assert manifest.select.created_from == "2026-11-01"
        assert manifest.overrides.use_interruptible_instances is False
        assert manifest.overrides.execution_settings
        assert any(t.label and not t.overrides.is_empty for t in manifest.tasks)
        assert manifest.only_status == {"FAILED", "ABORTED"}
        assert manifest.warnings == ()

    @pytest.mark.parametrize("name", ["example.yaml", "failed-cohort.yaml"])
    def test_examples_round_trip(self, name: str) -> None:
        """Each example renders back to YAML that loads as the same manifest."""
        manifest = load_manifest(REPO / "manifests" / name)
        again = parse_manifest(manifest_to_yaml(manifest), path=manifest.path)
        assert _without_lines(again) == _without_lines(manifest)


class TestDefaults:
    def test_minimal_manifest_gets_defaults(self) -> None:
        """Only version and tasks given: every other field is the documented default."""
        manifest = _parse(f"version: 1\ntasks: [{ID_A}]\n")
        assert manifest == Manifest(
            path=PATH, tasks=(TaskSpec(id=TaskId(ID_A), line=2),)
        )
        assert manifest.action is Action.RUN
        assert manifest.only_status == DEFAULT_ONLY_STATUS
        assert manifest.allow_batch is False
        assert manifest.concurrency == 8
        assert manifest.rate_limit == RateLimit(requests=1000, per_seconds=300)
        assert manifest.wait == WaitSettings(poll_seconds=60, timeout_hours=48)
        assert manifest.overrides.is_empty
        assert manifest.endpoint is None

    def test_path_is_kept_as_given(self) -> None:
        """Manifest.path is the path as given, relative paths included."""
        manifest = parse_manifest(f"version: 1\ntasks: [{ID_A}]\n", path="rel/m.yaml")
        assert manifest.path == Path("rel/m.yaml")

    def test_task_lines_are_recorded(self) -> None:
        """Each TaskSpec carries the line of its item."""
        manifest = _parse(f"""\
            version: 1
            tasks:
              - {ID_A}
              - id: {ID_B}
                label: second
            """)
        assert [task.line for task in manifest.tasks] == [3, 4]


class TestValues:
    def test_ids_are_lower_cased(self) -> None:
        """Task IDs are normalised to lower-case UUID text."""
        manifest = _parse(f"version: 1\ntasks: [{ID_A.upper()}]\n")
        assert manifest.tasks[0].id == ID_A

    def test_statuses_are_normalised(self) -> None:
        """Lower-case statuses are accepted and upper-cased; repeats are dropped."""
        manifest = _parse("""\
            version: 1
            select: {project: o/p, status: [failed, Aborted, FAILED]}
            only_status: [completed]
            """)
        assert manifest.select == Selection(
            project="o/p", statuses=("FAILED", "ABORTED")
        )
        assert manifest.only_status == {TaskStatus.COMPLETED}

    def test_single_status_string(self) -> None:
        """`status: FAILED` is the same as `status: [FAILED]`."""
        manifest = _parse("version: 1\nselect: {project: o/p, status: FAILED}\n")
        assert manifest.select is not None
        assert manifest.select.statuses == ("FAILED",)

    @pytest.mark.parametrize(
        ("written", "normalised"),
        [
            ("2026-11-01", "2026-11-01"),
            ("'2026-11-01'", "2026-11-01"),
            ("2026-11-01T12:00:00Z", "2026-11-01T12:00:00Z"),
            ("2026-11-01T14:00:00+02:00", "2026-11-01T12:00:00Z"),
            ("'2026-11-01T12:00:00'", "2026-11-01T12:00:00Z"),
            ("'2026-11-01T07:00:00-05:00'", "2026-11-01T12:00:00Z"),
            ("2026-11-01 12:00:00", "2026-11-01T12:00:00Z"),
        ],
    )
    def test_dates_are_normalised(self, written: str, normalised: str) -> None:
        """YAML dates, datetimes and ISO text become a date or a UTC `Z` time."""
        manifest = _parse(
            f"version: 1\nselect: {{project: o/p, ended_to: {written}}}\n"
        )
        assert manifest.select is not None
        assert manifest.select.ended_to == normalised

    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080/v2",
            "http://127.1.2.3/v2",
            "http://[::1]:9000/v2",
            "http://localhost:8080/v2",
            "https://example.org/v2",
        ],
    )
    def test_allowed_endpoints(self, url: str) -> None:
        """https anywhere, and http on loopback only (the simulator)."""
        manifest = _parse(f"version: 1\napi_endpoint: {url}\ntasks: [{ID_A}]\n")
        assert manifest.endpoint == url

    def test_endpoint_agreeing_with_platform(self) -> None:
        """platform and api_endpoint may both be given when they agree."""
        manifest = _parse(f"""\
            version: 1
            platform: cavatica
            api_endpoint: https://CAVATICA-api.sbgenomics.com/v2/
            tasks: [{ID_A}]
            """)
        assert manifest.api_endpoint == PLATFORMS["cavatica"]

    def test_task_overrides_and_label(self) -> None:
        """A task mapping carries its label and its own overrides."""
        manifest = _parse(f"""\
            version: 1
            action: draft
            tasks:
              - id: {ID_A}
                label: TCGA-A1
                overrides:
                  use_interruptible_instances: false
                  execution_settings:
                    instance_type: c5.9xlarge
                    use_memoization: true
                  inputs: {{threads: 8, ref: {{class: File, path: abc}}}}
            """)
        (task,) = manifest.tasks
        assert manifest.action is Action.DRAFT
        assert task.label == "TCGA-A1"
        assert task.overrides == Overrides(
            use_interruptible_instances=False,
            execution_settings={"instance_type": "c5.9xlarge", "use_memoization": True},
            inputs={"threads": 8, "ref": {"class": "File", "path": "abc"}},
        )

    def test_empty_override_maps_mean_none(self) -> None:
        """`inputs: {}` and `execution_settings: {}` are the same as leaving out."""
        manifest = _parse(f"""\
            version: 1
            tasks: [{ID_A}]
            overrides: {{inputs: {{}}, execution_settings: {{}}}}
            """)
        assert manifest.overrides == Overrides()

    def test_explicit_str_tag_is_text(self) -> None:
        """The standard `!!str` tag is allowed and makes a number text."""
        manifest = _parse(f"version: 1\nprofile: !!str 8\ntasks: [{ID_A}]\n")
        assert manifest.profile == "8"

    def test_byte_order_mark_is_accepted(self) -> None:
        """A UTF-8 BOM, as some editors write, does not break loading."""
        manifest = parse_manifest(f"\ufeffversion: 1\ntasks: [{ID_A}]\n", path=PATH)
        assert manifest.tasks[0].id == ID_A


class TestSyntax:
    def test_syntax_error_names_line_column_and_key(self) -> None:
        """A YAML syntax error reports PyYAML's line and column, under its key."""
        error = _error(f"""\
            version: 1
            tasks:
              - {ID_A}
              label: [
            """)
        _assert_at(error, 4, "tasks")
        assert "YAML syntax error" in str(error)
        assert "column 3" in str(error)

    def test_syntax_error_does_not_echo_source(self) -> None:
        """PyYAML's source excerpt is left out: the broken line may hold a secret."""
        error = _error(f"version: 1\nprofile: '{TOKEN}\n")
        assert TOKEN not in str(error)
        assert error.line is not None

    def test_multiple_documents(self) -> None:
        """A second YAML document is an error at its start."""
        error = _error(f"version: 1\ntasks: [{ID_A}]\n---\nversion: 1\n")
        assert str(error).startswith(f"{PATH}:3: ")
        assert "one YAML document" in str(error)

    @pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "~\n"])
    def test_empty_file(self, text: str) -> None:
        """A file with no content is an error, not an empty manifest."""
        error = _error(text)
        assert str(error).startswith(f"{PATH}: ")
        assert "empty" in str(error)

    @pytest.mark.parametrize("text", ["- a\n- b\n", "just text\n", "42\n"])
    def test_top_level_not_a_mapping(self, text: str) -> None:
        """The top level must be a mapping."""
        error = _error(text)
        assert str(error).startswith(f"{PATH}:1: ")
        assert "must be a mapping" in str(error)

    def test_control_character(self) -> None:
        """A character YAML does not allow is reported at its line."""
        error = _error(f"version: 1\nprofile: a\x07b\ntasks: [{ID_A}]\n")
        assert str(error).startswith(f"{PATH}:2: ")
        assert "U+0007" in str(error)


class TestSafety:
    @pytest.mark.parametrize(
        "tag",
        [
            "!!python/object/apply:os.system ['touch /tmp/pwned']",
            "!!python/name:os.system",
            "!!python/object:collections.OrderedDict {}",
            "!!binary aGVsbG8=",
            "!!set {a: null}",
            "!custom value",
        ],
    )
    def test_unsafe_tag_is_refused(
        self, tag: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Any non-standard tag is an error naming its line; nothing is constructed."""

        def _forbidden(*_: object) -> int:
            raise AssertionError("os.system was called")

        monkeypatch.setattr(os, "system", _forbidden)
        error = _error(f"version: 1\ntasks:\n  - {ID_A}\n  - {tag}\n")
        _assert_at(error, 4, "tasks[1]")
        assert "tag" in str(error)
        assert "not allowed" in str(error)

    def test_tag_that_does_not_match_its_value(self) -> None:
        """A standard tag on a value it does not describe is an error."""
        _assert_at(_error("version: !!int abc\n"), 1, "version")

    def test_alias_bomb_is_refused(self) -> None:
        """The "billion laughs" document fails at its first anchor, before expanding."""
        bomb = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
        for level in "bcdefghi":
            previous = chr(ord(level) - 1)
            bomb.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")
        text = "version: 1\n" + "\n".join(bomb) + "\n"
        error = _error(text)
        _assert_at(error, 2, "a")
        assert "anchors and aliases" in str(error)

    def test_alias_is_refused(self) -> None:
        """A plain alias to a task list is refused too, with a clear message."""
        error = _error(f"""\
            version: 1
            x-common: &ids [{ID_A}]
            tasks: *ids
            """)
        _assert_at(error, 2, "x-common")
        assert "anchors and aliases" in str(error)

    def test_oversized_text_is_refused(self) -> None:
        """Past the cap (16 MiB) is refused before parsing, saying the size and cap."""
        text = "version: 1\n" + "#" * MAX_MANIFEST_BYTES
        with pytest.raises(ManifestError) as info:
            parse_manifest(text, path=PATH)
        message = str(info.value)
        assert message.startswith(f"{PATH}: ")
        assert f"{len(text):,} bytes" in message
        assert f"{MAX_MANIFEST_BYTES:,} bytes" in message

    def test_oversized_file_is_refused_before_reading(self, tmp_path: Path) -> None:
        """load_manifest refuses a big file by its size (this one is sparse: 2 GiB)."""
        path = tmp_path / "big.yaml"
        with path.open("wb") as stream:
            stream.truncate(2 * 1024**3)
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert str(info.value).startswith(f"{path}: ")
        assert "2,147,483,648 bytes" in str(info.value)
        assert "16 MiB" in str(info.value)

    def test_deep_nesting_is_refused(self) -> None:
        """Nesting deeper than any manifest needs is an error, not a RecursionError."""
        text = f"version: 1\ntasks: [{ID_A}]\noverrides: {{inputs: {{x: {'[' * 100}"
        text += "]" * 100 + "}}\n"
        error = _error(text)
        assert str(error).startswith(f"{PATH}:3: overrides.inputs.x[0]")
        assert "levels deep" in str(error)

    def test_very_deep_nesting_is_refused_by_the_parser(self) -> None:
        """5,000 levels: refused (by libyaml's own bound, or ours), naming the line."""
        text = f"version: 1\ntasks: [{ID_A}]\noverrides: {{inputs: {{x: {'[' * 5000}"
        text += "]" * 5000 + "}}\n"
        error = _error(text)
        assert str(error).startswith(f"{PATH}:3: overrides.inputs.x")
        assert "nesting depth" in str(error) or "levels deep" in str(error)


class TestKeys:
    @pytest.mark.parametrize(
        ("text", "line", "key", "suggestion"),
        [
            (
                f"version: 1\nconcurency: 4\ntasks: [{ID_A}]\n",
                2,
                "concurency",
                "concurrency",
            ),
            ("version: 1\nselect:\n  projet: o/p\n", 3, "select.projet", "project"),
            (
                f"version: 1\ntasks: [{ID_A}]\noverrides:\n  execution_settings:\n"
                "    instance_typ: c5.large\n",
                5,
                "overrides.execution_settings.instance_typ",
                "instance_type",
            ),
            (
                f"version: 1\ntasks:\n  - id: {ID_A}\n    lable: x\n",
                4,
                "tasks[0].lable",
                "label",
            ),
            (
                "version: 1\nwait: {poll_second: 5}\n",
                2,
                "wait.poll_second",
                "poll_seconds",
            ),
        ],
    )
    def test_unknown_key_with_suggestion(
        self, text: str, line: int, key: str, suggestion: str
    ) -> None:
        """An unknown key is an error at its line, suggesting the close known key."""
        error = _error(text)
        _assert_at(error, line, key)
        assert f"did you mean {suggestion!r}?" in str(error)

    def test_unknown_key_without_close_match_lists_known(self) -> None:
        """With nothing close, the message lists the keys allowed there."""
        error = _error("version: 1\nrate_limit: {zzz: 1}\n")
        _assert_at(error, 2, "rate_limit.zzz")
        assert "requests, per_seconds" in str(error)

    def test_duplicate_keys_name_both_lines(self) -> None:
        """A key given twice is an error naming both lines."""
        error = _error(f"""\
            version: 1
            concurrency: 4
            tasks: [{ID_A}]
            concurrency: 8
            """)
        _assert_at(error, 4, "concurrency")
        assert "first on line 2" in str(error)

    @pytest.mark.parametrize(
        ("text", "line", "key"),
        [
            (f"version: 1\ntoken: {TOKEN}\n", 2, "token"),
            (f"version: 1\nauth_token: '{TOKEN}'\n", 2, "auth_token"),
            (f"version: 1\nSB_AUTH_TOKEN: {TOKEN}\n", 2, "SB_AUTH_TOKEN"),
            (f"version: 1\nX-SBG-Auth-Token: {TOKEN}\n", 2, "X-SBG-Auth-Token"),
            (
                f"version: 1\ntasks: [{ID_A}]\noverrides:\n  inputs:\n"
                f"    api_token: {TOKEN}\n",
                5,
                "overrides.inputs.api_token",
            ),
        ],
    )
    def test_token_key_is_refused_without_echo(
        self, text: str, line: int, key: str
    ) -> None:
        """A token-like key anywhere is a specific error that never shows the value."""
        error = _error(text)
        _assert_at(error, line, key)
        assert "a token is never accepted in a manifest" in str(error)
        assert "SB_AUTH_TOKEN or ~/.sevenbridges/credentials" in str(error)
        assert TOKEN not in str(error)
        assert TOKEN not in repr(error.args)

    def test_key_must_be_text(self) -> None:
        """A list or mapping used as a key is refused at its line."""
        error = _error(f"version: 1\ntasks: [{ID_A}]\n? [a, b]\n: x\n")
        assert str(error).startswith(f"{PATH}:3: ")
        assert "plain text" in str(error)

    @pytest.mark.parametrize(
        ("text", "line", "key"),
        [
            (f"tasks: [{ID_A}]\n", 1, "version"),
            ("version: 1\nselect:\n  status: FAILED\n", 2, "select.project"),
            ("version: 1\ntasks:\n  - label: x\n", 3, "tasks[0].id"),
        ],
    )
    def test_missing_required_key(self, text: str, line: int, key: str) -> None:
        """A missing required key is reported at its parent's line."""
        error = _error(text)
        _assert_at(error, line, key)
        assert "required key is missing" in str(error)


class TestRobustness:
    @settings(deadline=None)
    @given(pieces=st.lists(st.sampled_from(_YAML_PIECES) | st.text(max_size=5)))
    def test_only_manifest_errors(self, pieces: list[str]) -> None:
        """Whatever the text, parsing returns a Manifest or raises ManifestError."""
        with contextlib.suppress(ManifestError):
            parse_manifest("\n".join(pieces), path=PATH)


class TestTypes:
    @pytest.mark.parametrize(
        ("line_text", "key", "expected"),
        [
            ("concurrency: true", "concurrency", "expected an integer, got a boolean"),
            (
                "concurrency: '8'",
                "concurrency",
                "got a string (write it without quotes)",
            ),
            ("concurrency: 1.5", "concurrency", "expected an integer"),
            ("allow_batch: 1", "allow_batch", "expected true or false, got an integer"),
            ("profile: 7", "profile", "expected a string, got an integer"),
            ("tasks: " + ID_A, "tasks", "expected a list, got a string"),
            ("select: o/p", "select", "expected a mapping, got a string"),
            (
                "rate_limit: {requests: 10.0}",
                "rate_limit.requests",
                "expected an integer",
            ),
            ("wait: {poll_seconds: '60'}", "wait.poll_seconds", "expected a number"),
            ("overrides: {name_suffix: 3}", "overrides.name_suffix", "a string"),
            ("overrides: {inputs: [a]}", "overrides.inputs", "expected a mapping"),
            ("only_status: {a: 1}", "only_status", "expected a list"),
        ],
    )
    def test_wrong_type(self, line_text: str, key: str, expected: str) -> None:
        """Types are strict: booleans, quoted digits and fractions are not integers."""
        error = _error(f"version: 1\n{line_text}\n")
        _assert_at(error, 2, key)
        assert expected in str(error)

    @pytest.mark.parametrize(
        ("line_text", "key", "expected"),
        [
            ("concurrency: 0", "concurrency", "between 1 and 64"),
            ("concurrency: 65", "concurrency", "between 1 and 64"),
            ("rate_limit: {requests: 0}", "rate_limit.requests", "at least 1"),
            (
                "rate_limit: {per_seconds: 0}",
                "rate_limit.per_seconds",
                "greater than 0",
            ),
            ("wait: {poll_seconds: 0.5}", "wait.poll_seconds", "at least 1"),
            ("wait: {timeout_hours: .inf}", "wait.timeout_hours", "finite"),
            (
                "overrides: {execution_settings: {max_parallel_instances: 0}}",
                "overrides.execution_settings.max_parallel_instances",
                "at least 1",
            ),
        ],
    )
    def test_out_of_range(self, line_text: str, key: str, expected: str) -> None:
        """Numbers outside their documented range are errors."""
        error = _error(f"version: 1\n{line_text}\n")
        _assert_at(error, 2, key)
        assert expected in str(error)

    @pytest.mark.parametrize(
        ("line_text", "key"),
        [
            ("overrides: {inputs: {day: 2026-11-01}}", "overrides.inputs.day"),
            ("overrides: {inputs: {x: [1, .nan]}}", "overrides.inputs.x[1]"),
        ],
    )
    def test_inputs_must_be_json(self, line_text: str, key: str) -> None:
        """Input values must be JSON-like: no dates, no NaN or infinity."""
        _assert_at(_error(f"version: 1\n{line_text}\n"), 2, key)


class TestVersion:
    @pytest.mark.parametrize("version", ["2", "0", "99"])
    def test_unsupported_version(self, version: str) -> None:
        """Any version but 1 is "unsupported manifest version"."""
        error = _error(f"version: {version}\nnew_v2_key: x\n")
        _assert_at(error, 1, "version")
        assert f"unsupported manifest version {version}" in str(error)

    @pytest.mark.parametrize("version", ["'1'", "1.0", "true"])
    def test_version_must_be_integer(self, version: str) -> None:
        """The version is the integer 1, not text or a float."""
        error = _error(f"version: {version}\ntasks: [{ID_A}]\n")
        _assert_at(error, 1, "version")
        assert "expected an integer" in str(error)


class TestTaskIds:
    def test_bad_id(self) -> None:
        """Text that is not a UUID is an error quoting it, with an example UUID."""
        error = _error(f"version: 1\ntasks:\n  - {ID_A}\n  - 08c5da64-1329\n")
        _assert_at(error, 4, "tasks[1]")
        assert "'08c5da64-1329' is not a task ID" in str(error)
        assert f"expected a UUID like {ID_A}" in str(error)

    @pytest.mark.parametrize(
        "written", ["../etc", "a/b", "~/tasks.txt", "C:\\\\tasks", "./x"]
    )
    def test_path_like_id(self, written: str) -> None:
        """A path in place of an ID says it is a path."""
        error = _error(
            f'version: 1\ntasks:\n  - {ID_A}\n  - {ID_B}\n  - id: "{written}"\n'
        )
        _assert_at(error, 5, "tasks[2].id")
        assert "is a path or URL, not a task ID" in str(error)

    def test_task_url_suggests_its_id(self) -> None:
        """A task's web address is refused, suggesting the UUID inside it."""
        url = f"https://cgc.sbgenomics.com/u/o/p/tasks/{ID_A.upper()}/"
        error = _error(f"version: 1\ntasks: ['{url}']\n")
        _assert_at(error, 2, "tasks[0]")
        assert f"did you mean {ID_A}?" in str(error)

    def test_secret_like_id_is_not_echoed(self) -> None:
        """A token pasted as a task ID is refused without repeating it."""
        error = _error(f"version: 1\ntasks: [{TOKEN}]\n")
        _assert_at(error, 2, "tasks[0]")
        assert TOKEN not in str(error)
        assert "not shown" in str(error)

    def test_non_string_item(self) -> None:
        """An item that is neither text nor a mapping is a type error."""
        error = _error("version: 1\ntasks: [12345]\n")
        _assert_at(error, 2, "tasks[0]")
        assert "got an integer" in str(error)

    def test_duplicates_are_merged_with_warning(self) -> None:
        """A repeated ID keeps its first occurrence and warns with both lines."""
        manifest = _parse(f"""\
            version: 1
            tasks:
              - {ID_A}
              - {ID_B}
              - {ID_A.upper()}
            """)
        assert [task.id for task in manifest.tasks] == [ID_A, ID_B]
        assert manifest.warnings == (
            f"{PATH}:5: tasks[2]: duplicate of tasks[0] (line 3); merged",
        )

    def test_duplicate_with_other_settings_says_they_are_ignored(self) -> None:
        """A duplicate's own label and overrides are dropped; the warning says so."""
        manifest = _parse(f"""\
            version: 1
            tasks:
              - id: {ID_A}
                label: first
              - id: {ID_A}
                label: second
            """)
        assert [task.label for task in manifest.tasks] == ["first"]
        (warning,) = manifest.warnings
        assert warning.startswith(f"{PATH}:5: tasks[1]: duplicate of tasks[0] (line 3)")
        assert "ignored" in warning

    @pytest.mark.parametrize(
        ("text", "line"),
        [("version: 1\nplatform: cgc\n", 1), ("version: 1\n\ntasks: []\n", 3)],
    )
    def test_empty_task_set(self, text: str, line: int) -> None:
        """No tasks and no select is an error."""
        error = _error(text)
        _assert_at(error, line, "tasks")
        assert "no tasks to rerun" in str(error)

    def test_select_alone_is_enough(self) -> None:
        """`tasks: []` with a select is a valid manifest."""
        manifest = _parse("version: 1\ntasks: []\nselect: {project: o/p}\n")
        assert manifest.tasks == ()
        assert manifest.select == Selection(project="o/p")


class TestStatuses:
    @pytest.mark.parametrize(
        ("text", "line", "key"),
        [
            (
                "version: 1\nselect:\n  project: o/p\n  status: [FAILED, FIALED]\n",
                4,
                "select.status[1]",
            ),
            ("version: 1\nselect: {project: o/p, status: DONE}\n", 2, "select.status"),
            (
                f"version: 1\ntasks: [{ID_A}]\nonly_status:\n  - FAILD\n",
                4,
                "only_status[0]",
            ),
        ],
    )
    def test_bad_status(self, text: str, line: int, key: str) -> None:
        """An unknown status is an error listing the valid ones."""
        error = _error(text)
        _assert_at(error, line, key)
        assert "unknown status" in str(error)
        assert "COMPLETED" in str(error)

    def test_status_suggestion(self) -> None:
        """A misspelt status gets a suggestion."""
        error = _error("version: 1\nselect: {project: o/p, status: [FIALED]}\n")
        assert "did you mean 'FAILED'?" in str(error)

    def test_select_status_only_filterable(self) -> None:
        """The list filter takes six statuses; CREATING is refused in select."""
        error = _error("version: 1\nselect: {project: o/p, status: [CREATING]}\n")
        _assert_at(error, 2, "select.status[0]")

    def test_only_status_takes_every_status(self) -> None:
        """only_status accepts any platform status."""
        manifest = _parse(f"version: 1\ntasks: [{ID_A}]\nonly_status: [CREATING]\n")
        assert manifest.only_status == {"CREATING"}

    def test_empty_status_list(self) -> None:
        """An empty status list selects nothing, so it is an error."""
        _assert_at(
            _error(f"version: 1\ntasks: [{ID_A}]\nonly_status: []\n"), 3, "only_status"
        )


class TestDates:
    @pytest.mark.parametrize(
        ("written", "reason"),
        [
            ("yesterday", "is not a date"),
            ("'2026/11/01'", "is not a date"),
            ("2026-13-01", "is not a valid date"),
            ("'2026-02-30'", "is not a valid date"),
            ("'2026-11-01T25:00:00'", "is not a valid date"),
            ("2026-11-01T12:00:00.5Z", "fractional seconds"),
            ("20261101", "expected a date"),
        ],
    )
    def test_bad_date(self, written: str, reason: str) -> None:
        """A date that is not ISO 8601 in a documented form is an error."""
        error = _error(
            f"version: 1\nselect:\n  project: o/p\n  created_to: {written}\n"
        )
        _assert_at(error, 4, "select.created_to")
        assert reason in str(error)

    @pytest.mark.parametrize("prefix", ["created", "ended"])
    def test_from_after_to(self, prefix: str) -> None:
        """A `_from` after its `_to` is an error at the `_from` key."""
        error = _error(f"""\
            version: 1
            select:
              project: o/p
              {prefix}_to: 2026-11-01
              {prefix}_from: 2026-11-02T00:00:01Z
              status: FAILED
            """)
        _assert_at(error, 5, f"select.{prefix}_from")
        assert "is after" in str(error)

    def test_same_day_range_is_allowed(self) -> None:
        """A time on the `_to` day is not after it: a bare date compares by day."""
        manifest = _parse("""\
            version: 1
            select:
              project: o/p
              created_from: 2026-11-01T12:00:00Z
              created_to: 2026-11-01
            """)
        assert manifest.select is not None
        assert manifest.select.created_from == "2026-11-01T12:00:00Z"


class TestEndpoint:
    def test_platform_and_endpoint_mismatch(self) -> None:
        """platform and api_endpoint must name the same API."""
        error = _error(f"""\
            version: 1
            platform: cgc
            api_endpoint: https://api.sbgenomics.com/v2
            tasks: [{ID_A}]
            """)
        _assert_at(error, 3, "api_endpoint")
        assert PLATFORMS["cgc"] in str(error)

    @pytest.mark.parametrize(
        "url",
        [
            "http://cgc-api.sbgenomics.com/v2",
            "http://10.0.0.1/v2",
            "http://localhost.evil.org/",
        ],
    )
    def test_http_off_loopback_is_refused(self, url: str) -> None:
        """Plain http is allowed only on loopback."""
        error = _error(f"version: 1\ntasks: [{ID_A}]\napi_endpoint: {url}\n")
        _assert_at(error, 3, "api_endpoint")
        assert "use https" in str(error)

    @pytest.mark.parametrize(
        "url", ["cgc-api.sbgenomics.com/v2", "ftp://x.org/", "https://"]
    )
    def test_not_a_url(self, url: str) -> None:
        """Something that is not an http(s) URL is an error."""
        _assert_at(_error(f"version: 1\napi_endpoint: '{url}'\n"), 2, "api_endpoint")

    def test_credentials_in_url_are_refused_without_echo(self) -> None:
        """A user name or password in the URL is refused and not repeated."""
        error = _error(f"version: 1\napi_endpoint: https://me:{TOKEN}@example.org/v2\n")
        _assert_at(error, 2, "api_endpoint")
        assert TOKEN not in str(error)

    def test_unknown_platform(self) -> None:
        """An unknown platform name suggests a close one and lists all."""
        error = _error(f"version: 1\nplatform: cgx\ntasks: [{ID_A}]\n")
        _assert_at(error, 2, "platform")
        assert "did you mean 'cgc'?" in str(error)
        assert "cavatica" in str(error)

    def test_unknown_action(self) -> None:
        """action is run or draft."""
        error = _error(f"version: 1\naction: start\ntasks: [{ID_A}]\n")
        _assert_at(error, 2, "action")
        assert "run, draft" in str(error)


class TestLoad:
    def test_load_reads_the_file(self, tmp_path: Path) -> None:
        """load_manifest reads, decodes and validates a file."""
        path = tmp_path / "m.yaml"
        path.write_text(f"version: 1\ntasks: [{ID_A}]\n", encoding="utf-8")
        assert load_manifest(str(path)).path == path

    def test_missing_file(self, tmp_path: Path) -> None:
        """An unreadable file is a ManifestError naming it."""
        path = tmp_path / "missing.yaml"
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert str(info.value).startswith(f"{path}: cannot read")

    def test_undecodable_utf8(self, tmp_path: Path) -> None:
        """Bytes that are not UTF-8 are an error at their line and column."""
        path = tmp_path / "latin1.yaml"
        path.write_bytes(
            f"version: 1\ntasks: [{ID_A}]\nprofile: caf\xe9\n".encode("latin-1")
        )
        with pytest.raises(ManifestError) as info:
            load_manifest(path)
        assert str(info.value).startswith(f"{path}:3: not valid UTF-8: byte 0xe9")
        assert "column 13" in str(info.value)

    def test_utf16_gets_a_hint(self, tmp_path: Path) -> None:
        """A UTF-16 file (as some Windows editors save) says so."""
        path = tmp_path / "utf16.yaml"
        path.write_bytes(f"version: 1\ntasks: [{ID_A}]\n".encode("utf-16"))
        with pytest.raises(ManifestError, match="looks like UTF-16"):
            load_manifest(path)


# --------------------------------------------------------- hypothesis strategies

_FORBIDDEN_KEY_PARTS = ("token", "secret", "pass", "apikey", "authorization")


def _safe_key(key: str) -> bool:
    squashed = "".join(ch for ch in key.lower() if ch.isalnum())
    return not any(part in squashed for part in _FORBIDDEN_KEY_PARTS)


_NONBLANK = st.text(min_size=1, max_size=20).filter(lambda text: bool(text.strip()))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=10).filter(_safe_key), children, max_size=3)
    ),
    max_leaves=8,
)
_OVERRIDES = st.builds(
    Overrides,
    name_suffix=st.none() | st.text(max_size=20),
    use_interruptible_instances=st.none() | st.booleans(),
    execution_settings=st.none()
    | st.fixed_dictionaries(
        {},
        optional={
            "instance_type": _NONBLANK,
            "max_parallel_instances": st.integers(1, 1000),
            "use_memoization": st.booleans(),
            "use_elastic_disk": st.booleans(),
        },
    ).filter(bool),
    inputs=st.none()
    | st.dictionaries(_NONBLANK.filter(_safe_key), _JSON, min_size=1, max_size=3),
)
_TASKS = st.lists(
    st.builds(
        TaskSpec,
        id=st.uuids().map(lambda uuid: TaskId(str(uuid))),
        label=st.none() | _NONBLANK,
        overrides=_OVERRIDES,
    ),
    max_size=4,
    unique_by=lambda task: task.id,
).map(tuple)
_DAYS = st.dates(date(2000, 1, 1), date(2100, 1, 1))
_DATE = _DAYS.map(date.isoformat) | st.tuples(_DAYS, st.times()).map(
    lambda day_time: f"{day_time[0]}T{day_time[1].replace(microsecond=0)}Z"
)
_RANGE = st.none() | st.lists(_DATE, min_size=2, max_size=2).map(sorted)
_SELECTIONS = st.builds(
    lambda project, statuses, created, ended: Selection(
        project=project,
        statuses=tuple(statuses),
        created_from=created and created[0],
        created_to=created and created[1],
        ended_from=ended and ended[0],
        ended_to=ended and ended[1],
    ),
    st.from_regex(
        r"[a-z0-9][a-z0-9_.-]{0,10}/[a-z0-9][a-z0-9_.-]{0,10}", fullmatch=True
    ),
    st.lists(
        st.sampled_from(
            ["QUEUED", "DRAFT", "RUNNING", "COMPLETED", "ABORTED", "FAILED"]
        ),
        unique=True,
    ),
    _RANGE,
    _RANGE,
)
_ENDPOINTS = (
    st.tuples(st.none(), st.none())
    | st.sampled_from(sorted(PLATFORMS)).flatmap(
        lambda name: st.tuples(st.just(name), st.sampled_from([None, PLATFORMS[name]]))
    )
    | st.tuples(
        st.none(),
        st.sampled_from(
            [
                "https://example.org/v2",
                "http://127.0.0.1:8080/v2",
                "http://[::1]:9000/v2",
            ]
        ),
    )
)


@st.composite
def _manifests(draw: st.DrawFn) -> Manifest:
    platform, endpoint = draw(_ENDPOINTS)
    tasks = draw(_TASKS)
    select = draw(st.none() | _SELECTIONS if tasks else _SELECTIONS)
    return Manifest(
        path=PATH,
        platform=platform,
        api_endpoint=endpoint,
        profile=draw(st.none() | _NONBLANK),
        action=draw(st.sampled_from(Action)),
        tasks=tasks,
        select=select,
        only_status=draw(
            st.frozensets(st.sampled_from([s.value for s in TaskStatus]), min_size=1)
        ),
        allow_batch=draw(st.booleans()),
        overrides=draw(_OVERRIDES),
        concurrency=draw(st.integers(1, 64)),
        rate_limit=RateLimit(
            requests=draw(st.integers(1, 10**6)),
            per_seconds=draw(st.floats(0, 1e6, exclude_min=True)),
        ),
        wait=WaitSettings(
            poll_seconds=draw(st.floats(1, 1e6)),
            timeout_hours=draw(st.floats(0, 1e6, exclude_min=True)),
        ),
    )


class TestRender:
    def test_version_first_then_non_defaults(self) -> None:
        """Only version and non-default fields are written, version first."""
        manifest = Manifest(
            path=PATH,
            tasks=(TaskSpec(id=TaskId(ID_A)),),
            concurrency=4,
            action=Action.DRAFT,
        )
        assert manifest_to_yaml(manifest) == (
            f"version: 1\naction: draft\ntasks:\n  - {ID_A}\nconcurrency: 4\n"
        )

    def test_tasks_as_ids_or_mappings(self) -> None:
        """A task with a label or overrides is a mapping; without, a plain ID."""
        shared = Overrides(inputs={"threads": 4})
        manifest = Manifest(
            path=PATH,
            tasks=(
                TaskSpec(id=TaskId(ID_A)),
                TaskSpec(id=TaskId(ID_B), label="b", overrides=shared),
            ),
            overrides=shared,
        )
        text = manifest_to_yaml(manifest)
        assert f"  - {ID_A}\n  - id: {ID_B}\n    label: b\n" in text
        assert "&" not in text  # a shared object is written twice, never aliased
        assert "*" not in text
        again = parse_manifest(text, path=PATH)
        assert _without_lines(again) == manifest

    def test_dates_are_quoted_iso_text(self) -> None:
        """Selection dates are written as ISO strings."""
        selection = Selection(
            project="o/p",
            statuses=("FAILED",),
            created_from="2026-11-01",
            ended_to="2026-11-02T12:00:00Z",
        )
        text = manifest_to_yaml(Manifest(path=PATH, select=selection))
        assert "created_from: '2026-11-01'" in text
        assert "ended_to: '2026-11-02T12:00:00Z'" in text

    @settings(deadline=None, max_examples=150)
    @given(manifest=_manifests())
    def test_round_trip(self, manifest: Manifest) -> None:
        """manifest_to_yaml -> parse_manifest gives an equal Manifest."""
        text = manifest_to_yaml(manifest)
        again = parse_manifest(text, path=PATH)
        assert _without_lines(again) == manifest
        assert again.warnings == ()
