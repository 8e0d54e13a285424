"""Render the ledger's rows: table, csv, json, markdown; and the end-of-run summary."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

from orchestrator.ledger import SourceRow

FORMATS = ("table", "csv", "json", "markdown")

_COLUMNS = ("source_task_id", "label", "new_task_id", "status", "attempts", "error")


def _cell(row: dict[str, object], column: str) -> str:
    value = row.get(column)
    if value is None:
        return ""
    if column == "error" and isinstance(value, dict):
        code = value.get("code")
        return (
            f"{code}: {value.get('message')}"
            if code is not None
            else str(value.get("message"))
        )
    return str(value)


def render(rows: Iterable[SourceRow], fmt: str) -> str:
    """The `report` command's output for one of FORMATS, as one string."""
    return "".join(iter_render(rows, fmt))


def iter_render(rows: Iterable[SourceRow], fmt: str) -> Iterator[str]:
    """The `report` output in pieces: json and csv stream row by row, so that a
    100,000-source report never holds its whole text (table and markdown align
    their columns, so they render at once)."""
    if fmt == "json":
        yield from _iter_json(rows)
    elif fmt == "csv":
        yield from _iter_csv(rows)
    else:
        yield _render_text(rows, fmt)


def _iter_json(rows: Iterable[SourceRow]) -> Iterator[str]:
    """Exactly `json.dumps(records, indent=2)`, one record at a time."""
    first = True
    for row in rows:
        record = json.dumps(row.as_report(), indent=2, ensure_ascii=False)
        yield ("[\n  " if first else ",\n  ") + record.replace("\n", "\n  ")
        first = False
    yield "[]\n" if first else "\n]\n"


def _iter_csv(rows: Iterable[SourceRow]) -> Iterator[str]:
    out = io.StringIO()
    writer: csv.DictWriter[str] | None = None
    for row in rows:
        record = row.as_report()
        if writer is None:
            writer = csv.DictWriter(out, fieldnames=list(record))
            writer.writeheader()
        writer.writerow(
            {
                k: json.dumps(v) if isinstance(v, dict | list) else v
                for k, v in record.items()
            }
        )
        yield out.getvalue()
        out.seek(0)
        out.truncate()
    if writer is None:
        yield "\r\n"  # what an empty DictWriter header writes


def _render_text(rows: Iterable[SourceRow], fmt: str) -> str:
    rows = list(rows)
    records = [row.as_report() for row in rows]
    table = [[_cell(r, c) for c in _COLUMNS] for r in records]
    if fmt == "markdown":
        lines = ["| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
        lines += [
            "| " + " | ".join(c.replace("|", "\\|") for c in line) + " |"
            for line in table
        ]
        return "\n".join(lines) + "\n\n" + summary_line(rows) + "\n"
    return _aligned([list(_COLUMNS), *table]) + "\n" + summary_line(rows) + "\n"


def _aligned(lines: Sequence[Sequence[str]]) -> str:
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(line, widths, strict=True)
        ).rstrip()
        for line in lines
    )


def summary_line(rows: Sequence[SourceRow]) -> str:
    """`240 sources: COMPLETED 200, FAILED 12, SKIPPED 28`."""
    counts = Counter(row.status for row in rows)
    parts = ", ".join(f"{status} {n}" for status, n in counts.most_common())
    return f"{len(rows)} sources: {parts}" if rows else "0 sources"


def run_summary(rows: Sequence[SourceRow], *, ledger: str, most: int = 10) -> str:
    """The one-screen summary printed at the end of every run."""
    lines = [summary_line(rows)]
    failed = [row for row in rows if row.rerun_failed]
    if failed:
        lines.append(f"did not complete ({len(failed)}):")
        for row in failed[:most]:
            error = _cell(row.as_report(), "error") or row.message or ""
            name = row.label or row.name or ""
            lines.append(
                f"  {row.source_task_id}  {row.status}  {name}  {error}".rstrip()
            )
        if len(failed) > most:
            lines.append(f"  ... and {len(failed) - most} more")
        lines.append(f"rerun them: cgc-rerun export {ledger} --failed -o retry.yaml")
    lines.append(f"full report: cgc-rerun report {ledger}")
    return "\n".join(lines) + "\n"
