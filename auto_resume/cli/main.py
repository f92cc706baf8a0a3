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
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2  # what argparse exits with on a usage error
_TEXT_WIDTH = 88

_EPILOG = """\
exit status:
  0  success (validate: the policy is valid and every flow loads; demo: the run was resumed;
     resume: the resume was requested (and created, or pending), or shown with --dry-run)
  1  failure: an invalid policy, an instance that cannot be opened, a failed demo; explain and
     resume: a bad or unknown run id, a run of a job not in the policy, a run still going;
     resume: a run the policy refuses (without --force), a succeeded run without --from-step
  2  usage error: unknown command or option, bad option value
  3  validate: the policy is valid, but a flow's file cannot be read: that flow is disabled
     alone, the others load

environment:
  DAGSTER_HOME         directory of the Dagster instance's dagster.yaml (history, explain, resume,
                       backtest)
  DAGSTER_PG_URL       PostgreSQL URL that the repo's dagster.yaml reads
  AUTO_RESUME_POLICY   policy file (default ./policy.yaml)

examples:
  auto-resume validate policy.yaml
  auto-resume history LinearFlow --limit 5
  auto-resume history --json | jq '.lineages[] | select(.outcome == "gave_up")'
  auto-resume explain 4dcbbd80-5b1e-4c55-9d4e-1f0a3c2b7e61
  auto-resume resume 4dcbbd80-5b1e-4c55-9d4e-1f0a3c2b7e61 --dry-run
  auto-resume resume 4dcbbd80-5b1e-4c55-9d4e-1f0a3c2b7e61 --from-step train --force
  auto-resume backtest --since 7d --against strict-policy.yaml
"""


class CommandError(Exception):
    """A command could not do its work; the message says why and how to fix it (exit status 1)."""


def _emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    print(json.dumps(document, indent=2) if args.json else text)


def _demo(args: argparse.Namespace) -> int:
    from auto_resume.cli.demo import run_demo

    lines: list[str] = []
    ok = run_demo(lines.append if args.json else print, width=args.width, fail_index=args.fail_index)
    if args.json:
        print(json.dumps({"resumed": ok, "lines": lines}, indent=2))
    return EXIT_OK if ok else EXIT_FAILURE


def _ui(args: argparse.Namespace) -> int:
    from auto_resume.cli.ui import UiError, run_ui

    try:
        # Flushed line by line: the command runs until Ctrl-C, often with its output in a file.
        run_ui(
            lambda line: print(line, flush=True),
            port=args.port,
            keep=args.keep,
            width=args.width,
            fail_index=args.fail_index,
        )
    except UiError as exc:
        raise CommandError(str(exc)) from exc
    return EXIT_OK


def _validate(args: argparse.Namespace) -> int:
    from auto_resume.cli.validate import validate
    from auto_resume.policy.loading import default_policy_path

    return validate(Path(args.policy) if args.policy else default_policy_path(), args.json)


def _history(args: argparse.Namespace) -> int:
    from auto_resume.cli.history import read_lineages
    from auto_resume.cli.render import format_history

    instance = _open_instance()
    try:
        lineages = read_lineages(instance, job=args.job, limit=args.limit)
    finally:
        instance.dispose()
    document = {"job": args.job, "lineages": [lineage.model_dump(mode="json") for lineage in lineages]}
    _emit(args, document, format_history(lineages, args.job))
    return EXIT_OK


def _explain(args: argparse.Namespace) -> int:
    from auto_resume.cli.explain import OperatorError, check_dagster_run_id, explain_run
    from auto_resume.cli.render import explanation_document, format_explanation
    from auto_resume.policy.loading import default_policy_path

    policy = Path(args.policy) if args.policy else default_policy_path()
    _check_run_id(check_dagster_run_id, args.run_id, OperatorError)
    instance = _open_instance()
    try:
        explanation = explain_run(instance, policy, args.run_id)
    except OperatorError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        instance.dispose()
    _emit(args, explanation_document(explanation, policy), format_explanation(explanation, policy))
    return EXIT_OK


def _resume(args: argparse.Namespace) -> int:
    from auto_resume.cli.explain import OperatorError, check_dagster_run_id, explain_run
    from auto_resume.cli.render import format_resume, resume_document
    from auto_resume.cli.submit import prepare_resume, request_resume
    from auto_resume.core.resume_changes import ResumeChanges
    from auto_resume.policy.loading import default_policy_path

    policy = (Path(args.policy) if args.policy else default_policy_path()).absolute()
    _check_run_id(check_dagster_run_id, args.run_id, OperatorError)
    instance = _open_instance()
    try:
        explanation = explain_run(instance, policy, args.run_id, from_step=args.from_step)
        changes = ResumeChanges(
            with_specs=tuple(args.with_specs),
            metaflow_tags=tuple(args.tags),
            max_runtime_seconds=args.max_runtime,
            because=("auto-resume resume",),
        )
        manual = prepare_resume(explanation, args.from_step, args.force, changes=changes)
        answer = None if args.dry_run else request_resume(instance, manual, args.wait)
    except OperatorError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        instance.dispose()
    _emit(
        args,
        resume_document(explanation, policy, manual, args.dry_run, answer),
        format_resume(explanation, manual, args.dry_run, answer, args.wait),
    )
    return EXIT_OK


def _backtest(args: argparse.Namespace) -> int:
    from auto_resume.cli.backtest import BacktestError, backtest
    from auto_resume.cli.backtest_report import backtest_document, format_backtest
    from auto_resume.policy.loading import default_policy_path

    policy = Path(args.policy) if args.policy else default_policy_path()
    against = Path(args.against) if args.against else None
    instance = _open_instance()
    try:
        result = backtest(instance, policy, against=against, since=args.since, job=args.job)
    except BacktestError as exc:
        raise CommandError(str(exc)) from exc
    finally:
        instance.dispose()
    _emit(args, backtest_document(result), format_backtest(result))
    return EXIT_OK


def _check_run_id(check: Callable[[str], str], run_id: str, error: type[Exception]) -> None:
    # Before the instance is opened: a typo should not wait for the database.
    try:
        check(run_id)
    except error as exc:
        raise CommandError(str(exc)) from exc


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


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"must be a number of seconds from 0 to 3600, got {text!r}")
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
    _add_explain(commands)
    _add_resume(commands)
    _add_backtest(commands)
    _add_ui(commands)
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
        "graph, exactly as the code location does at load time. Exit status 0 when valid and "
        "every flow loads (flows auto-resume refuses are listed); 3 when valid but a flow's file "
        "cannot be read (that flow is disabled alone: one line each, `broken: field: what; fix`); "
        "1 when invalid, with one line per problem (file, line, field, fix) and the policy in "
        "force instead: the last good one kept in the instance of $DAGSTER_HOME, and since when.",
        _validate,
    )
    validate.add_argument(
        "policy", nargs="?", help="policy file (default: $AUTO_RESUME_POLICY, else ./policy.yaml)"
    )
    validate.add_argument(
        "--json",
        action="store_true",
        help='print {"policy", "valid", "resume_jobs", "refused", "broken"} or {"policy", "valid": false, '
        '"problems", "in_force", "in_force_note"}',
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


_POLICY_HELP = "policy file (default: $AUTO_RESUME_POLICY, else ./policy.yaml)"


def _add_explain(commands: Any) -> None:
    explain = _subparser(
        commands,
        "explain",
        "say what auto_resume_sensor would decide about a failed run, and which tasks a resume clones",
        "Reads the run from the Dagster instance of $DAGSTER_HOME and decides it as "
        "auto_resume_sensor would now, under the current policy and with the resume runs queued "
        "or running (the failure counts as seen now): resume, wait (backoff, time window, "
        "in-flight cap), skip or give up, with the check or error rule that decided; a run the "
        "sensor never resumes says so (skip): a succeeded or canceled run, a failure that already "
        "has a resume run. Then the plan of a resume: every task of the new Metaflow run, cloned "
        "from the run's Metaflow run or executed, and why. Launches nothing, writes nothing. Exit "
        "status 0 when explained; 1 for a bad or unknown run id, a run of a job not in the "
        "policy, a run still going.",
        _explain,
    )
    explain.add_argument("run_id", metavar="RUN_ID", help="Dagster run id of the failed run")
    explain.add_argument("--policy", metavar="PATH", help=_POLICY_HELP)
    explain.add_argument(
        "--json",
        action="store_true",
        help='print {"run_id", "job_name", "status", "metaflow_run_id", "policy", "policy_note", '
        '"failure", "decision", "resumes", "plan", "plan_error"}',
    )


def _add_resume(commands: Any) -> None:
    resume = _subparser(
        commands,
        "resume",
        "resume a finished run now, by hand, as the sensor would (same job, run config and tags)",
        "Decides the run as `explain` does and asks auto_resume_sensor to resume it: the request "
        "is recorded on the run (tags auto_resume/resume_requested and auto_resume/resume_request) "
        "and the sensor, on its next tick, creates the run of the flow's <job>_resume with its "
        "own run config, tags and run key (resume-of-RUN_ID), so a manual resume and the "
        "sensor's own decision never make two runs. The resume counts as the next attempt of the "
        "failure's lineage and is tagged auto_resume/manual. A decision to wait (backoff, time "
        "window, in-flight cap) is overridden. Refused, unless --force: what the policy skips or "
        "gives up on (opted out, flow disabled, too old, an error rule `never`, max_attempts "
        "spent, the same failure again), a canceled run, a run already resumed. Always refused: "
        "a bad or unknown run id, a run of a job not in the policy, a run still going, a "
        "succeeded run without --from-step, a run with no Metaflow run to resume. Then waits "
        "(--wait) for the resume run and prints its id, or says the request is pending (the "
        "sensor has not ticked since, or is stopped: it is answered once the sensor runs). Exit "
        "status 0 when requested (resumed or pending) or shown with --dry-run, 1 when refused.",
        _resume,
    )
    resume.add_argument("run_id", metavar="RUN_ID", help="Dagster run id of the run to resume")
    resume.add_argument(
        "--from-step",
        metavar="STEP",
        help="re-run this step and every step after it, even if they finished (allowed on a succeeded run)",
    )
    resume.add_argument(
        "--with",
        dest="with_specs",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject this decorator into every task the resume executes (not clones), e.g. "
        "resources:memory=32000; only the policy's allowed_decorators; repeatable",
    )
    resume.add_argument(
        "--tag",
        dest="tags",
        action="append",
        default=[],
        metavar="TAG",
        help="add this Metaflow tag to the new Metaflow run; repeatable",
    )
    resume.add_argument(
        "--max-runtime",
        type=int,
        metavar="SECONDS",
        help="stop the resume run after this many seconds (dagster/max_runtime; needs run monitoring)",
    )
    resume.add_argument(
        "--dry-run", action="store_true", help="print the run config, tags and plan; request nothing"
    )
    resume.add_argument(
        "--force", action="store_true", help="resume even what the policy skips or gives up on"
    )
    resume.add_argument("--policy", metavar="PATH", help=_POLICY_HELP)
    resume.add_argument(
        "--wait",
        type=_seconds,
        default=60,
        metavar="SECONDS",
        help="wait this long for the sensor to create the resume run (default 60; 0: do not wait)",
    )
    resume.add_argument(
        "--json",
        action="store_true",
        help='print what explain --json prints, plus "resume": {"job_name", "run_config", "tags", '
        '"run_key", "notes", "dry_run", "requested", "run_id", "manual", "pending"}',
    )


def _duration(text: str) -> float:
    from auto_resume.cli.backtest import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_backtest(commands: Any) -> None:
    backtest = _subparser(
        commands,
        "backtest",
        "replay the policy over the instance's past failures: what it would have done, beside what happened",
        "Reads the failures of the policy's flows from the Dagster instance of $DAGSTER_HOME, with "
        "their lineages (a failure and the failures of its resumes), times and failure facts, and "
        "decides each one in time order as auto_resume_sensor would have at the failure's time: "
        "resume, wait (and for how long: backoff, time window, in-flight cap), skip or give up, "
        "and why; beside it, what happened (the resume runs that exist, the give-up or observe "
        "tag). With --against, the same under a second policy and the failures the two decide "
        "differently. Compute: the recorded wall-clock durations of the resume runs each policy "
        "would have made or not made. Launches nothing, writes nothing. Exit status 0 when "
        "replayed; 1 for an invalid policy or an instance that cannot be opened.",
        _backtest,
    )
    backtest.add_argument("--policy", metavar="FILE", help=_POLICY_HELP)
    backtest.add_argument(
        "--against", metavar="FILE", help="a second policy file to replay and compare with the first"
    )
    backtest.add_argument(
        "--since",
        type=_duration,
        default="7d",
        metavar="DURATION",
        help="lineages whose original failure is this recent: 90m, 12h, 7d, 2w (default 7d)",
    )
    backtest.add_argument(
        "--job", metavar="JOB", help="only this flow's job (or its <job>_resume), e.g. LinearFlow"
    )
    backtest.add_argument(
        "--json",
        action="store_true",
        help='print {"policy", "against", "since", "until", "flows": [...], "compute", "differences"}',
    )


def _add_ui(commands: Any) -> None:
    ui = _subparser(
        commands,
        "ui",
        "serve the Dagster UI on a throwaway SQLite instance, with a failing run the sensor resumes",
        "Writes a throwaway DAGSTER_HOME (SQLite instance, a policy whose sensor ticks every 5 s "
        "and starts running, the foreach example compiled by metaflow-dagster), runs `dagster dev` "
        "(webserver and daemon) on 127.0.0.1, and once the sensor has ticked launches one run of "
        "the example in which one item fails once: the UI shows the failed run and the resume "
        "run the sensor launched. Needs no PostgreSQL. Runs until Ctrl-C, which stops dagster dev "
        "and removes the home. Exit status 0 when stopped with Ctrl-C; 1 when dagster dev does not "
        "start or stops by itself.",
        _ui,
    )
    ui.add_argument("--port", type=_positive, help="port of the UI on 127.0.0.1 (default: a free one)")
    ui.add_argument("--keep", action="store_true", help="keep the throwaway DAGSTER_HOME and say where it is")
    ui.add_argument("--width", type=_positive, default=2, help="foreach items in the example (default 2)")
    ui.add_argument("--fail-index", type=int, default=1, help="item that fails once (default 1)")


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
