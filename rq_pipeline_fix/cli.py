"""``rq-pipeline-fix`` / ``python -m rq_pipeline_fix``: see what the package does, and show it working.

status [--json] [--strict]  versions, each defect: present, patched, why. Exit 0 when RQ is
                  correct or fully patched, 1 when a defect is left unpatched or undecided (or
                  nothing could be probed). --strict: the verdict of `pytest
                  --rq-pipeline-fix-strict`, which is the same, as exit status 3 (2 is argparse's
                  usage error), with one line per defect on stderr. The --json schema is
                  documented in rq_pipeline_fix/report.py.
demo              the scenario of RQ issue #2211 against $REDIS_URL, else a redis-server
                  started for the demo: fails without the guard, lands with it. Exit 0: it did.
selftest [--url URL]  the scenario families against your server (URL, else $REDIS_URL), first
                  with RQ as installed, then with the guard. Exit 0: every family passes with
                  the guard. Writes only keys of its own and removes them; refuses a cluster,
                  a replica, a user without write permission (exit statuses in selftest.py).
run -- CMD ...    run CMD with the guard armed in every Python it starts (= rq-pipeline-fix-run).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

EXIT_OK = 0
EXIT_UNPATCHED = 1
EXIT_STRICT = 3  # status --strict: not OK (2 is argparse's usage error)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rq-pipeline-fix",
        description="Lets any mix of RQ enqueues share one atomic redis-py pipeline.",
        epilog=(
            "Exit status of `status`: 0 RQ correct or fully patched, 1 a defect is left unpatched or "
            "undecided (3 with --strict)."
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    status = commands.add_parser("status", help="versions and each defect: present, patched, why")
    status.add_argument(
        "--json", action="store_true", help="print one JSON object (schema: rq_pipeline_fix/report.py)"
    )
    status.add_argument(
        "--strict",
        action="store_true",
        help="for CI, the verdict of pytest --rq-pipeline-fix-strict: exit 3 when a defect present in "
        "the installed RQ is unpatched or undecided (each named on stderr), 0 when none is",
    )
    commands.add_parser("demo", help="the seed scenario for real: fails without the guard, lands with it")
    selftest = commands.add_parser(
        "selftest",
        help="the scenario families against your server: RQ as installed, then with the guard",
        description=(
            "Runs the scenario families that concern a server (shared pipeline across queues, the "
            "caller's buffered commands, dependents in MULTI and via enqueue_many, WATCH + WatchError, "
            "enqueue_many/enqueue_at mixed, an aborted batch) against the server you name, first with "
            "RQ as installed, then with the guard, and prints a table. Safe on a production server: it "
            "writes only keys and queue names of its own (unique per run), never flushes, and removes "
            "what it wrote, also when interrupted."
        ),
        epilog=(
            "Exit status: 0 every family passes with the guard; 1 a family fails with it (or the "
            "server refuses the commands every family needs); 2 no server named, or a URL it cannot "
            "use; 3 the server cannot be reached (or the clean-up could not finish); 4 refused: a "
            "cluster; 5 refused: a replica; 6 refused: the user may not run a command it needs; "
            "128+N stopped by signal N: SIGINT, SIGTERM, SIGHUP (after the clean-up)."
        ),
    )
    selftest.add_argument(
        "--url",
        help="the server to test, e.g. redis://:PASSWORD@HOST:6379/0 or rediss://...; default: $REDIS_URL "
        "(the first line printed names the server and where its URL came from); one of the two is required",
    )
    run = commands.add_parser("run", help="run CMD with the guard armed in every Python it starts")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = build_parser().parse_args(argv)
    if arguments.command == "status":
        return status_command(as_json=arguments.json, strict=arguments.strict)
    if arguments.command == "demo":
        from . import demo  # imports rq: only for this command

        return demo.run()
    if arguments.command == "selftest":
        from . import selftest  # imports rq: only for this command

        return selftest.run(arguments.url)
    from .runner import exec_with_bootstrap

    return exec_with_bootstrap(arguments.cmd)


def status_command(as_json: bool, strict: bool = False) -> int:
    from . import report

    status = report.observed_status()
    if as_json:
        print(json.dumps(report.to_json(status), indent=2))
    else:
        print(report.table(status))
    problems = report.verdict(status)
    if not problems:
        return EXIT_OK
    if not strict:
        return EXIT_UNPATCHED
    print(report.strict_message(problems), file=sys.stderr)
    return EXIT_STRICT


if __name__ == "__main__":
    sys.exit(main())
