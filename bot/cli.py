"""`spooky bot --config config.toml`: run the Discord bot (no torch import)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from spooky.config import ENV_DISCORD_TOKEN, ENV_ENGINE_SECRET, Settings, load_settings
from spooky.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bot",
        help="run the Discord bot (talks to the engine over its API)",
        description="Connect to Discord, publish the slash commands and relay jobs to the engine "
        f"at [bot] engine_url. The token comes from {ENV_DISCORD_TOKEN} or [bot] token.",
    )
    p.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    p.set_defaults(func=run)


def check_secrets(settings: Settings) -> tuple[str, str]:
    """The Discord token and the engine secret, or a ConfigError saying how to provide them."""
    if settings.bot.token is None or not settings.bot.token.get_secret_value().strip():
        raise ConfigError(
            "no Discord bot token",
            hint=f"set {ENV_DISCORD_TOKEN} in the environment or [bot] token in the config",
        )
    if settings.engine.secret is None:
        raise ConfigError(
            "no engine secret: the bot must authenticate to the engine's API",
            hint=f"set {ENV_ENGINE_SECRET} to the engine's secret (or [engine] secret)",
        )
    return settings.bot.token.get_secret_value().strip(), settings.engine.secret.get_secret_value()


async def serve(settings: Settings) -> None:
    """Run until SIGINT/SIGTERM, then close the gateway, the tracker and the engine client."""
    import discord

    from bot.app import SpookyBot
    from spooky.engine_client import EngineClient

    token, secret = check_secrets(settings)
    engine = EngineClient(settings.bot.engine_url, secret)
    bot = SpookyBot(settings, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        async with bot:
            runner = asyncio.create_task(bot.start(token))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                runner.result()  # a login or gateway failure: raise it
            log.info("stopping the bot")
            await bot.close()
            stopper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    except discord.LoginFailure as e:
        raise ConfigError("Discord refused the bot token", hint="check DISCORD_TOKEN") from e
    finally:
        await engine.close()


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    check_secrets(settings)
    asyncio.run(serve(settings))
    return 0
