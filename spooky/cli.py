"""`spooky` command line: one entry, sub-commands registered by the package that owns them.

Each module listed in COMMANDS defines `register(subparsers)` and must not import torch at import
time, so `spooky bot` works where only the `bot` extra is installed.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from spooky.errors import SpookyError
from spooky.logs import configure_logging, wants_json

#: (module, the commands it registers, the optional extra it needs or None).
COMMANDS: tuple[tuple[str, tuple[str, ...], str | None], ...] = (
    ("engine.cli.render", ("render",), "engine"),
    ("engine.cli.weights", ("weights",), "engine"),  # fetch|list|verify
    ("engine.cli.serve", ("engine",), "engine"),
    ("bot.cli", ("bot",), "bot"),
    ("spooky.ops", ("up", "config"), None),  # spooky up, spooky config check
)
#: Top-level packages that only an extra installs (see pyproject.toml); a missing one of these is
#: an installation to complete, any other missing module is a bug and surfaces as one.
EXTRA_PACKAGES: dict[str, frozenset[str]] = {
    "engine": frozenset(
        {"torch", "torchvision", "open_clip", "numpy", "PIL", "einops", "yaml", "imageio_ffmpeg", "taming"}
        | {"prometheus_client"}
    ),
    "bot": frozenset({"discord", "prometheus_client"}),
}


def missing_extra(e: ModuleNotFoundError, extra: str | None) -> bool:
    """True when `e` is about a package that only `extra` installs (not a typo, not a bug)."""
    return extra is not None and (e.name or "").partition(".")[0] in EXTRA_PACKAGES[extra]


def install_hint(extra: str, e: ModuleNotFoundError) -> str:
    return (
        f"this command needs the `{extra}` extra (missing module {e.name!r}): "
        f"install it with `scripts/setup.sh {extra}` or `pip install -c constraints.txt '.[{extra}]'`"
    )


def _unavailable(sub: argparse._SubParsersAction, names: tuple[str, ...], hint: str) -> None:
    def run(args: argparse.Namespace) -> int:
        print(f"error: {hint}", file=sys.stderr)
        return 1

    for name in names:
        # No option prefix: whatever follows the command (--config …) is taken as is, then explained.
        parser = sub.add_parser(name, help=f"(not installed) {hint}", add_help=False, prefix_chars="\0")
        parser.add_argument("args", nargs="*")
        parser.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spooky", description="SpookyGAN: Halloween faces and nightmares")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--log-json", action="store_true", help="one JSON object per log line (or SPOOKY_LOG_FORMAT=json)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands, extra in COMMANDS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            # Only a missing extra turns a command into an install hint; a typo in an import fails here.
            if not missing_extra(e, extra):
                raise
            _unavailable(sub, commands, install_hint(extra, e))
            continue
        module.register(sub)
    return parser


def _extra_of(command: str | None) -> str | None:
    return next((extra for _, names, extra in COMMANDS if command in names), None)


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
    except ModuleNotFoundError as e:
        # Commands import their extra's packages when they run (torch only when it is needed).
        extra = _extra_of(args.command)
        if extra is None or not missing_extra(e, extra):
            raise
        print(f"error: {install_hint(extra, e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
