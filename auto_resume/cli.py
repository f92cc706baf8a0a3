"""``auto-resume``: the operators' command line."""

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from auto_resume.demo import run_demo

    ok = run_demo(print, width=args.width, fail_index=args.fail_index)
    return 0 if ok else 1


def _validate(args: argparse.Namespace) -> int:
    from auto_resume.code_location import build_definitions
    from auto_resume.policy import PolicyError, default_policy_path

    path = Path(args.policy) if args.policy else default_policy_path()
    try:
        defs = build_definitions(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    jobs = sorted(job.name for job in defs.resolve_all_job_defs())
    print(f"{path}: valid; resume jobs: {', '.join(jobs) or 'none'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, exposed for tests and documentation."""
    parser = argparse.ArgumentParser(
        prog="auto-resume",
        description="Automatic, policy-driven resume of failed Metaflow runs on Dagster.",
        epilog="Exit status: 0 success, 1 failure (invalid policy, failed demo), 2 usage error.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run an example flow that fails, let the sensor resume it, show what was cloned",
        description="Runs on a throwaway SQLite Dagster instance and local Metaflow datastore.",
    )
    demo.add_argument("--width", type=int, default=6, help="foreach items in the example (default 6)")
    demo.add_argument("--fail-index", type=int, default=3, help="item that fails once (default 3)")
    demo.set_defaults(handler=_demo)
    validate = commands.add_parser(
        "validate",
        help="check a policy file and every definitions file and flow it names",
        description="Exit status 0 when valid, 1 with one line per problem otherwise.",
    )
    validate.add_argument(
        "policy", nargs="?", help="policy file (default: $AUTO_RESUME_POLICY or ./policy.yaml)"
    )
    validate.set_defaults(handler=_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``auto-resume`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
