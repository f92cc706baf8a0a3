"""``auto-resume``: the operators' command line.

Every command prints plain text for people, or one JSON document on stdout with ``--json`` for
scripts (errors included). Exit status: 0 success, 1 failure or invalid input, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for dagster
    from auto_resume.history import Lineage, RunSummary

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # what argparse exits with on a usage error
_TEXT_WIDTH = 88

_EPILOG = """\
exit status:
  0  success (validate: the policy is valid; demo: the run was resumed)
  1  failure: an invalid policy, an instance that cannot be opened, a failed demo
  2  usage error: unknown command or option, bad option value

environment:
  DAGSTER_HOME         directory of the Dagster instance's dagster.yaml (history)
  DAGSTER_PG_URL       PostgreSQL URL that the repo's dagster.yaml reads (history)
  AUTO_RESUME_POLICY   policy file (default ./policy.yaml)

examples:
  auto-resume validate policy.yaml
  auto-resume history LinearFlow --limit 5
  auto-resume history --json | jq '.lineages[] | select(.outcome == "gave_up")'
"""


class CommandError(Exception):
    """A command could not do its work; the message says why and how to fix it (exit status 1)."""


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


def _demo(args: argparse.Namespace) -> int:
    from auto_resume.demo import run_demo

    lines: list[str] = []
    ok = run_demo(lines.append if args.json else print, width=args.width, fail_index=args.fail_index)
    if args.json:
        print(json.dumps({"resumed": ok, "lines": lines}, indent=2))
    return EXIT_OK if ok else EXIT_FAILURE


def _validate(args: argparse.Namespace) -> int:
    from auto_resume.code_location import build_definitions
    from auto_resume.policy import PolicyError, default_policy_path

    path = Path(args.policy) if args.policy else default_policy_path()
    try:
        defs = build_definitions(path)
    except PolicyError as exc:
        if args.json:
            problems = list(exc.problems) or [str(exc)]
            print(json.dumps({"policy": str(path), "valid": False, "problems": problems}, indent=2))
        else:
            print(exc, file=sys.stderr)
        return EXIT_FAILURE
    jobs = sorted(job.name for job in defs.resolve_all_job_defs())
    _emit(
        args,
        {"policy": str(path), "valid": True, "resume_jobs": jobs},
        f"{path}: valid; resume jobs: {', '.join(jobs) or 'none'}",
    )
    return EXIT_OK


def _history(args: argparse.Namespace) -> int:
    from auto_resume.history import read_lineages

    instance = _open_instance()
    try:
        lineages = read_lineages(instance, job=args.job, limit=args.limit)
    finally:
        instance.dispose()
    document = {"job": args.job, "lineages": [lineage.model_dump(mode="json") for lineage in lineages]}
    _emit(args, document, format_history(lineages, args.job))
    return EXIT_OK


def _open_instance() -> Any:
    from dagster import DagsterInstance

    home = os.environ.get("DAGSTER_HOME")
    if not home:
        raise CommandError(
            "DAGSTER_HOME is not set: set it to the directory holding the instance's dagster.yaml "
            "(the same DAGSTER_HOME as dagster-daemon), and DAGSTER_PG_URL if that file reads it"
        )
    try:
        return DagsterInstance.get()
    except Exception as exc:
        # Whatever the cause (no such directory, bad dagster.yaml, database down), the fix is
        # in the instance's configuration: say which one was tried.
        raise CommandError(f"cannot open the Dagster instance in DAGSTER_HOME={home}: {exc}") from exc


def format_history(lineages: list[Lineage], job: str | None) -> str:
    """``auto-resume history`` as text: one block per lineage, one line per run."""
    if not lineages:
        return f"no resume lineages{f' of {job}' if job else ''} in this instance"
    blocks = []
    for lineage in lineages:
        outcome = lineage.outcome.replace("_", " ")
        if lineage.reason:
            outcome += f": {lineage.reason}"
        header = (
            f"{lineage.job_name or '?'}: failure {lineage.root_run_id}, "
            f"{len(lineage.attempts)} resume attempt(s) -> {outcome}"
        )
        lines = [header, _format_run("original", lineage.original)]
        lines += [_format_run(f"attempt {run.attempt}", run) for run in lineage.attempts]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _format_run(label: str, run: RunSummary) -> str:
    parts = [f"  {label:<10} {run.run_id}  {run.status:<9}", f"metaflow {run.metaflow_run_id or '-'}"]
    if run.tasks_cloned is not None:
        parts.append(f"cloned {run.tasks_cloned}, executed {run.tasks_executed}")
    return "  ".join(parts)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed for tests and documentation."""
    parser = argparse.ArgumentParser(
        prog="auto-resume",
        description=textwrap.fill(
            "Automatic, policy-driven resume of failed Metaflow runs on Dagster. "
            "Run `auto-resume COMMAND --help` for a command's options.",
            width=_TEXT_WIDTH,
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_demo(commands)
    _add_validate(commands)
    _add_history(commands)
    return parser


def _subparser(
    commands: Any, name: str, help_text: str, description: str, handler: Callable[[argparse.Namespace], int]
) -> argparse.ArgumentParser:
    sub: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help_text,
        description=textwrap.fill(description, width=_TEXT_WIDTH),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub.set_defaults(handler=handler)
    return sub


def _add_demo(commands: Any) -> None:
    demo = _subparser(
        commands,
        "demo",
        "run an example flow that fails, let the sensor resume it, show what was cloned",
        "Runs the foreach example on a throwaway SQLite Dagster instance and local Metaflow "
        "datastore: one item fails once, the sensor resumes the run, and the output shows which "
        "tasks were cloned and which ran again. Exit status 0 when the run was resumed, 1 otherwise.",
        _demo,
    )
    demo.add_argument("--width", type=_positive, default=6, help="foreach items in the example (default 6)")
    demo.add_argument("--fail-index", type=int, default=3, help="item that fails once (default 3)")
    demo.add_argument(
        "--json", action="store_true", help='print {"resumed": true|false, "lines": [...]} at the end'
    )


def _add_validate(commands: Any) -> None:
    validate = _subparser(
        commands,
        "validate",
        "check a policy file and every definitions file and flow it names",
        "Loads the policy, every metaflow-dagster definitions file it lists and each flow's "
        "graph, exactly as the code location does at load time. Exit status 0 when valid; 1 "
        "otherwise, with one line per problem (file, line, field, fix).",
        _validate,
    )
    validate.add_argument(
        "policy", nargs="?", help="policy file (default: $AUTO_RESUME_POLICY, else ./policy.yaml)"
    )
    validate.add_argument(
        "--json",
        action="store_true",
        help='print {"policy", "valid", "resume_jobs"} or {"policy", "valid": false, "problems"}',
    )


def _add_history(commands: Any) -> None:
    history = _subparser(
        commands,
        "history",
        "show each failure and its resume attempts, with tasks cloned and executed",
        "Reads the Dagster instance of $DAGSTER_HOME (the daemon's) and shows each lineage, "
        "newest first: the original failed run, every resume attempt (Dagster run id, status, "
        "Metaflow run id, tasks cloned and executed) and the outcome: succeeded, failed, "
        "running, canceled, or gave up (with the reason auto-resume recorded). Launches nothing.",
        _history,
    )
    history.add_argument(
        "job", nargs="?", help="only lineages of this job, e.g. LinearFlow (default: every job)"
    )
    history.add_argument(
        "--limit", type=_positive, default=20, help="show at most N lineages (default 20)", metavar="N"
    )
    history.add_argument(
        "--json", action="store_true", help='print {"job", "lineages": [...]}, one object per lineage'
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``auto-resume`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except CommandError as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}, indent=2))
        else:
            print(f"auto-resume {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
