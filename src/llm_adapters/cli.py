"""`llm-adapters <command>`: thin. Each command parses and validates its flags, then calls one module function.

Heavy imports (torch, transformers) wait until inside the command, so `--help` is instant.
"""
from __future__ import annotations

import argparse
import sys


class UserError(Exception):
    """A mistake in the user's input: printed as one line, no traceback."""


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="benchmark and training data: download, list, build, check overlap")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    # DATA SUBCOMMANDS (each adds its parser here and sets `func`)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llm-adapters",
        description="Adapter-based PEFT for causal LMs: attach, count, fine-tune, evaluate.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # COMMANDS (each adds its parser here and sets `func`)
    _add_data_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (UserError, ValueError, FileNotFoundError, FileExistsError) as error:
        # Users' mistakes surface as ValueError/FileNotFoundError with a message that names the bad value.
        print(f"llm-adapters {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
