"""`spooky` command line: one entry, sub-commands registered by the package that owns them.

Each module listed in COMMANDS defines `register(subparsers)` and must not import torch at import
time, so `spooky bot` works where only the `bot` extra is installed.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from spooky.errors import SpookyError
from spooky.logs import configure_logging, wants_json

COMMANDS: tuple[str, ...] = (
    "engine.cli.render",  # spooky render
    "engine.cli.weights",  # spooky weights fetch|list|verify
    "engine.cli.serve",  # spooky engine
    "bot.cli",  # spooky bot
    "spooky.ops",  # spooky up, spooky config check
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spooky", description="SpookyGAN: Halloween faces and nightmares")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-json", action="store_true", help="one JSON object per log line (or SPOOKY_LOG_FORMAT=json)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # A command whose package (or extra) is not installed is simply not offered.
            logging.getLogger(__name__).debug("command module %s unavailable: %s", name, e)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose, json_lines=wants_json(args.log_json))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpookyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
