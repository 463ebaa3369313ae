"""Command line: ``orchestrator <command>`` (contract section 1). The parser and the
mapping of errors to one line and an exit status live here; each command group is a
module of its own. Nothing imports this package."""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

from orchestrator import __version__
from orchestrator.cli import broker, campaign, device, service, simulate
from orchestrator.cli.common import UsageError
from orchestrator.config import ConfigError, load_settings
from orchestrator.domain.accounts import AccountsInputError
from orchestrator.domain.campaign import CampaignError, CampaignInputError
from orchestrator.logs import configure
from orchestrator.ports import DatabaseUnavailable, DataRejected

__all__ = ["UsageError", "build_parser", "main"]


class Parser(argparse.ArgumentParser):
    """argparse, with a suggestion for a mistyped flag (Python 3.11's has none). Every
    option any parser of the CLI defines is recorded as it is added."""

    known: ClassVar[set[str]] = set()
    by_prog: ClassVar[dict[str, Parser]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        Parser.by_prog[self.prog] = self

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        Parser.known.update(a for a in args if isinstance(a, str) and a.startswith("-"))
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        match = re.search(r"unrecognized arguments: (-\S+)", message)
        if match:
            close = difflib.get_close_matches(match[1].split("=")[0], sorted(Parser.known),
                                              n=1)
            if close:
                message += f" (did you mean {close[0]}?)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="orchestrator", description="Fleet firmware upgrades over OneNET OTA.")
    parser.add_argument("--version", action="version", version=f"orchestrator {__version__}")
    parser.add_argument("--config", help="TOML file with the same keys as the ORCH_* variables")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (service, device, campaign, broker, simulate):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """The command line; ``environ`` instead of the process's environment (tests run the
    CLI in-process with settings of their own)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:   # a mistyped flag: the subcommand's own usage, with a suggestion
            words = [parser.prog, args.command, *(getattr(args, k) for k in sorted(vars(args))
                                                 if k.endswith("_command"))]
            owner = Parser.by_prog.get(" ".join(w for w in words if w), parser)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:          # --help, --version, a usage error: argparse's exit
        return exc.code if isinstance(exc.code, int) else 0
    args.environ = os.environ if environ is None else environ
    try:
        settings = load_settings(environ, config_file=args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_format, settings.log_level)
    try:
        return int(args.handler(args, settings))
    except (ConfigError, UsageError, CampaignInputError, AccountsInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except CampaignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"error: ORCH_DATABASE_URL: the database is unavailable ({exc})",
              file=sys.stderr)
        return 1
    except DataRejected as exc:
        print(f"error: the database refused it ({exc})", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # the reader went away (`... | head`): not an error; keep Python quiet at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
