"""`cgc-rerun`: the one module that reads argv, prints for users, picks exit codes."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import structlog

from orchestrator.config import Credentials, resolve_credentials
from orchestrator.errors import (
    ApiError,
    AuthError,
    ConfigError,
    LedgerError,
    ManifestError,
    OrchestratorError,
)
from orchestrator.logs import configure_logging
from orchestrator.manifest import load_manifest
from orchestrator.models import Manifest
from orchestrator.planner import Disposition, Plan
from orchestrator.progress import Progress
from orchestrator.report import FORMATS, iter_render, render, run_summary
from orchestrator.runner import (
    EXIT_AUTH,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    RunOptions,
    abort_ledger,
    default_ledger,
    export_failed,
    plan_manifest,
    read_rows,
    refresh_ledger,
    rows_exit_code,
    run_manifest,
)

log: structlog.typing.FilteringBoundLogger = structlog.get_logger()

T = TypeVar("T")
DRAIN_TIMEOUT_S = 30.0
"""After the first Ctrl-C, in-flight requests get this long to settle."""


def _global_options(defaults: bool) -> argparse.ArgumentParser:
    """Options accepted before or after the subcommand."""
    d: Any = None if defaults else argparse.SUPPRESS
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--profile", default=d, help="credentials profile to use")
    p.add_argument("-v", "--verbose", action="count", default=0 if defaults else d)
    p.add_argument(
        "-q", "--quiet", action="store_true", default=False if defaults else d
    )
    p.add_argument(
        "--log-format",
        choices=("auto", "console", "json"),
        default="auto" if defaults else d,
        help="logs on stderr: console on a terminal, JSON otherwise (auto)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        default=False if defaults else d,
        help="no live progress line",
    )
    return p


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, one subparser per command of the contract."""
    common = _global_options(defaults=False)
    parser = argparse.ArgumentParser(
        prog="cgc-rerun",
        description="Rerun Seven Bridges / CGC tasks in bulk, safely and resumably.",
        parents=[_global_options(defaults=True)],
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    p = command("validate", "check manifests offline; exit 0 or 2")
    p.add_argument("manifests", nargs="+", type=Path, metavar="MANIFEST")

    p = command("plan", "show what run would do; sends no write")
    p.add_argument("manifest", type=Path)
    p.add_argument("--ledger", type=Path)
    p.add_argument("--retry-failed", action="store_true")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = command("run", "clone (and run) every planned source, recording the ledger")
    p.add_argument("manifest", type=Path)
    p.add_argument("--ledger", type=Path)
    p.add_argument("--wait", action="store_true", help="then poll until all are done")
    p.add_argument("--concurrency", type=_positive_int)
    p.add_argument("--request-timeout", type=_positive_float, default=60.0)
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun sources whose clone failed or whose rerun ended FAILED/ABORTED",
    )
    p.add_argument("--dry-run", action="store_true", help="same as plan")
    p.add_argument("--format", choices=("table", "json"), default="table")

    p = command("status", "refresh the new tasks' statuses and print the table")
    p.add_argument("ledger", type=Path)
    p.add_argument("--wait", action="store_true")
    p.add_argument("--poll-seconds", type=_positive_float)

    p = command("report", "one row per source from the ledger (offline)")
    p.add_argument("ledger", type=Path)
    p.add_argument("--format", choices=FORMATS, default="table")
    p.add_argument("-o", "--output", type=Path)

    p = command(
        "export", "write a manifest of the sources whose rerun did not complete"
    )
    p.add_argument("ledger", type=Path)
    p.add_argument("--failed", action="store_true", required=True)
    p.add_argument("-o", "--output", type=Path, required=True)

    p = command("abort", "abort the ledger's new tasks still QUEUED or RUNNING")
    p.add_argument("ledger", type=Path)
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = command("simulate", "serve the built-in API simulator on 127.0.0.1")
    p.add_argument("--port", type=int, default=8642)
    p.add_argument("--tasks", type=_positive_int, default=200)
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument(
        "--rate-limit", type=_rate, default=(1000, 300.0), metavar="N/SECONDS"
    )
    p.add_argument("--fault-rate", type=float, default=0.0)

    command("demo", "rerun an example failed cohort on the built-in simulator")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _rate(text: str) -> tuple[int, float]:
    try:
        count, seconds = text.split("/", 1)
        return _positive_int(count), _positive_float(seconds)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N/SECONDS") from exc


# -- running coroutines with graceful signals ---------------------------------------


@contextmanager
def _signals(stop: asyncio.Event) -> Iterator[None]:
    """First SIGINT/SIGTERM: stop starting work and let in-flight requests settle
    (bounded by DRAIN_TIMEOUT_S); a second one cancels at once."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()

    def on_signal(signame: str) -> None:
        if stop.is_set():
            log.warning("run.cancelling", signal=signame)
            if main is not None:
                main.cancel()
            return
        log.warning(
            "run.stopping",
            signal=signame,
            message="letting in-flight requests settle; press Ctrl-C again to stop now",
        )
        stop.set()
        if main is not None:
            loop.call_later(DRAIN_TIMEOUT_S, main.cancel)

    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # not the main thread
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


class _Interrupted(Exception):
    pass


def _run_async(make: Callable[[asyncio.Event], Coroutine[Any, Any, T]]) -> T:
    """asyncio.run with graceful signals; raises _Interrupted on a hard cancel."""

    async def main() -> T:
        stop = asyncio.Event()
        with _signals(stop):
            try:
                return await make(stop)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                raise _Interrupted from None

    return asyncio.run(main())


# -- commands -----------------------------------------------------------------------


def _credentials(args: argparse.Namespace, manifest: Manifest | None) -> Credentials:
    profile = args.profile or (manifest.profile if manifest else None)
    return resolve_credentials(profile=profile, environ=os.environ)


def _out(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def cmd_validate(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for path in args.manifests:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            worst = EXIT_USAGE
            continue
        for warning in manifest.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        where = f", select {manifest.select.project}" if manifest.select else ""
        _out(f"{path}: OK ({len(manifest.tasks)} task IDs{where})\n")
    return worst


def _load(path: Path) -> Manifest:
    manifest = load_manifest(path)
    for warning in manifest.warnings:
        log.warning("manifest.warning", detail=warning)
    return manifest


_NOT_CLONED = (Disposition.SKIP, Disposition.DONE, Disposition.UNREADABLE)


def _print_plan(plan: Plan, fmt: str) -> None:
    if fmt == "json":
        for piece in plan.iter_json():
            sys.stdout.write(piece)
        sys.stdout.flush()
        return
    lines = ["Plan", f"  sources: {len(plan.items)}"]
    lines += [f"  {name}: {count}" for name, count in sorted(plan.counts.items())]
    reasons = Counter(
        f"{item.disposition}: {item.reason}"
        for item in plan.items
        if item.reason and item.disposition in _NOT_CLONED
    )
    if reasons:
        lines.append("  not cloned, and why:")
        lines += [f"    {n} x {reason}" for reason, n in sorted(reasons.items())]
    lines.append(
        f"  API requests: {plan.read_requests} reads done, "
        f"{plan.write_requests} more needed"
    )
    if plan.limit is not None:
        lines.append(
            f"  rate limit: {plan.remaining} of {plan.limit} left, "
            f"window resets in {plan.reset_in_s:.0f} s"
        )
    lines.append(
        "  time under the rate limit: "
        + (
            "fits in the current window"
            if plan.estimated_s == 0
            else f"at least {plan.estimated_s:.0f} s"
        )
    )
    _out("\n".join(lines) + "\n")


def cmd_plan(args: argparse.Namespace) -> int:
    manifest = _load(args.manifest)
    creds = _credentials(args, manifest)
    options = RunOptions(ledger_path=args.ledger, retry_failed=args.retry_failed)
    plan = _run_async(lambda stop: plan_manifest(manifest, creds, options))
    _print_plan(plan, args.format)
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_plan(args)
    manifest = _load(args.manifest)
    creds = _credentials(args, manifest)
    options = RunOptions(
        ledger_path=args.ledger,
        concurrency=args.concurrency,
        request_timeout_s=args.request_timeout,
        retry_failed=args.retry_failed,
        wait=args.wait,
    )
    shown = not (args.no_progress or args.quiet)
    progress = Progress(what="run", enabled=shown)
    waiting = Progress(what="wait", enabled=shown)
    try:
        result = _run_async(
            lambda stop: run_manifest(
                manifest,
                creds,
                options,
                stop=stop,
                progress=progress,
                wait_progress=waiting,
            )
        )
    finally:
        progress.close()
        waiting.close()
    summary = result.summary
    ledger = default_ledger(manifest, options)
    outcomes = ", ".join(f"{k} {v}" for k, v in sorted(summary.outcomes.items()))
    log.info(
        "run.finished",
        outcomes=outcomes,
        requests=summary.requests,
        retries=summary.retries,
        adopted=summary.adopted,
        elapsed_s=round(summary.elapsed_s, 2),
        ledger=str(ledger),
    )
    if summary.fatal:
        print(
            f"error: the platform refused the token: {summary.fatal}", file=sys.stderr
        )
    _out(run_summary(result.rows, ledger=str(ledger)))
    return result.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    creds = _credentials(args, None)
    waiting = Progress(what="wait", enabled=not (args.no_progress or args.quiet))
    try:
        followed, rows = _run_async(
            lambda stop: refresh_ledger(
                args.ledger,
                creds,
                wait=args.wait,
                stop=stop,
                poll_s=args.poll_seconds,
                progress=waiting,
            )
        )
    finally:
        waiting.close()
    _out(render(rows, "table"))
    if followed.interrupted:
        return EXIT_INTERRUPTED
    return rows_exit_code(rows, waited=args.wait)


def cmd_report(args: argparse.Namespace) -> int:
    pieces = iter_render(read_rows(args.ledger), args.format)
    if args.output:
        try:
            with args.output.open("w", encoding="utf-8", newline="") as out:
                out.writelines(pieces)
        except OSError as exc:
            raise ConfigError(f"{args.output}: cannot write ({exc.strerror})") from exc
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.writelines(pieces)
        sys.stdout.flush()
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    count = export_failed(args.ledger, args.output)
    if count == 0:
        print("no failed sources: nothing to export", file=sys.stderr)
    else:
        print(f"wrote {args.output} with {count} sources", file=sys.stderr)
    return EXIT_OK


def cmd_abort(args: argparse.Namespace) -> int:
    rows = read_rows(args.ledger)
    live = [r for r in rows if r.new_task_id and not r.terminal]
    if not args.yes:
        if not sys.stdin.isatty():
            print("error: abort needs --yes when not on a terminal", file=sys.stderr)
            return EXIT_USAGE
        answer = input(f"Abort up to {len(live)} running or queued tasks? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing aborted", file=sys.stderr)
            return EXIT_OK
    creds = _credentials(args, None)
    aborted, failed = _run_async(lambda stop: abort_ledger(args.ledger, creds))
    _out(f"aborted {aborted}, failed {failed}\n")
    return EXIT_OK if failed == 0 else 1


def cmd_simulate(args: argparse.Namespace) -> int:
    from orchestrator.simulator import serve_forever

    async def serve_until_stopped(stop: asyncio.Event) -> None:
        """Serve until SIGINT/SIGTERM (handled even where a shell ignores SIGINT)."""
        server = asyncio.ensure_future(
            serve_forever(
                port=args.port,
                tasks=args.tasks,
                latency_ms=args.latency_ms,
                rate_limit=args.rate_limit,
                fault_rate=args.fault_rate,
                out=sys.stdout,
                err=sys.stderr,
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server  # re-raises a startup error, e.g. a port in use

    try:
        _run_async(serve_until_stopped)
    except OSError as exc:  # e.g. the port is taken
        print(
            f"error: cannot serve on 127.0.0.1:{args.port}: {exc.strerror}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestrator.demo import run_demo

    return run_demo(progress=not (args.no_progress or args.quiet))


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": cmd_validate,
    "plan": cmd_plan,
    "run": cmd_run,
    "status": cmd_status,
    "report": cmd_report,
    "export": cmd_export,
    "abort": cmd_abort,
    "simulate": cmd_simulate,
    "demo": cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `cgc-rerun` and `python -m orchestrator`."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: usage error (2) or --help (0)
        return int(exc.code or 0)
    verbosity = -1 if args.quiet else min(args.verbose, 1)
    secret = os.environ.get("SB_AUTH_TOKEN", "")
    configure_logging(fmt=args.log_format, verbosity=verbosity, secrets=(secret,))
    try:
        return COMMANDS[args.command](args)
    except (ManifestError, ConfigError, LedgerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuthError as exc:
        print(f"error: the platform refused the credentials: {exc}", file=sys.stderr)
        return EXIT_AUTH
    except ApiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OrchestratorError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (_Interrupted, KeyboardInterrupt):
        print(
            "interrupted; the ledger is consistent: run again to resume",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
