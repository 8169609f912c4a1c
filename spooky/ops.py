"""Operator commands: `spooky up` (engine + bot on one machine) and `spooky config check`.

No torch import: `up` only starts `python -m spooky.cli engine|bot` as child processes.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import os
import secrets
import socket
import stat
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from spooky.config import (
    ENV_DATABASE_URL,
    ENV_DISCORD_TOKEN,
    ENV_ENGINE_SECRET,
    Settings,
    env_overrides,
    load_settings,
    mask_url,
)
from spooky.contract import API_PREFIX
from spooky.errors import ConfigError
from spooky.logs import ENV_LOG_FORMAT
from spooky.supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

#: File in engine.data_dir holding the secret `spooky up` generated (mode 0600).
SECRET_FILE = "engine.secret"
#: Extra seconds the engine gets after its drain timeout before it is killed: the engine itself
#: allows the stopped job 30 s more (engine.service.app.DRAIN_GRACE_S) to write its outcome.
STOP_GRACE_S = 45.0
BOT_STOP_TIMEOUT_S = 15.0
#: Modules that must import for each child's sub-command to exist.
ENGINE_COMMAND_MODULE = "engine.cli.serve"
BOT_COMMAND_MODULE = "bot.cli"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def register(subparsers: argparse._SubParsersAction) -> None:
    up = subparsers.add_parser(
        "up",
        help="start the engine and the bot together (Ctrl-C stops both)",
        description="Start `spooky engine` and, once its health answers, `spooky bot`, as two child "
        "processes. Ctrl-C or SIGTERM stops both cleanly (the engine drains its running job).",
    )
    up.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    up.add_argument(
        "--no-bot",
        "--engine-only",
        dest="no_bot",
        action="store_true",
        help="start only the engine (a machine without a Discord token)",
    )
    up.add_argument(
        "--health-timeout",
        type=float,
        default=180.0,
        metavar="SECONDS",
        help="how long to wait for the engine's /v1/health to answer before giving up (default 180)",
    )
    up.set_defaults(func=run_up)

    config = subparsers.add_parser("config", help="inspect settings")
    config_sub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate the settings and print the effective values (secrets hidden)",
        description="Load config.toml with the environment applied, print every effective setting "
        "(secrets as ***set*** or (not set)) and warnings; exit 1 when the settings are invalid.",
    )
    check.add_argument("--config", type=Path, default=None, help="config.toml (default: built-in defaults)")
    check.set_defaults(func=run_config_check)


# --- spooky config check -------------------------------------------------------------------------


def run_config_check(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    try:
        settings = load_settings(args.config, env=env)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(render_settings(settings, args.config, env))
    warnings = settings_warnings(settings, env)
    for w in warnings:
        print(f"warning: {w}")
    print(f"settings OK{f' ({len(warnings)} warning(s))' if warnings else ''}")
    return 0


def render_settings(settings: Settings, path: Path | None, env: Mapping[str, str]) -> str:
    """The effective settings as TOML-like text; secrets only as ***set*** / (not set)."""
    sources = {key: f"from {name}" for key, name in env_overrides(env).items()}
    if env.get(ENV_ENGINE_SECRET):
        sources[("engine", "secret")] = f"from {ENV_ENGINE_SECRET}"
    if env.get(ENV_DISCORD_TOKEN):
        sources[("bot", "token")] = f"from {ENV_DISCORD_TOKEN}"
    if env.get(ENV_DATABASE_URL):
        sources[("engine", "database_url")] = f"from {ENV_DATABASE_URL}"
    lines = [f"# settings from {path}" if path else "# no config file: built-in defaults", ""]
    for section in Settings.model_fields:
        lines.append(f"[{section}]")
        values = getattr(settings, section)
        for key in type(values).model_fields:
            value = getattr(values, key)
            if (section, key) == ("engine", "database_url"):
                value = mask_url(value)  # the password never reaches the terminal
            text = _show(value)
            note = sources.get((section, key))
            if (section, key) == ("engine", "secret") and getattr(values, key) is None:
                note = f"spooky up uses {settings.engine.data_dir / SECRET_FILE}"
            lines.append(f"{key} = {text}" + (f"  # {note}" if note else ""))
        lines.append("")
    return "\n".join(lines).rstrip()


def _show(value: Any) -> str:
    if isinstance(value, SecretStr):
        return "***set***" if value.get_secret_value() else "(not set)"
    if value is None:
        return "(not set)"
    if isinstance(value, Path):
        return json.dumps(str(value))
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def settings_warnings(settings: Settings, env: Mapping[str, str]) -> list[str]:
    """Valid but probably unintended combinations, in words an operator can act on."""
    out = []
    e, b = settings.engine, settings.bot
    if settings.models.preset == "tiny":
        out.append("models.preset is 'tiny': toy models with random weights, the pictures are noise")
    if b.token is None:
        out.append(
            f"no Discord token: set {ENV_DISCORD_TOKEN} (or [bot] token) to run the bot; "
            "`spooky up --no-bot` starts the engine alone"
        )
    if e.secret is None:
        where = e.data_dir / SECRET_FILE
        if e.host not in _LOOPBACK:
            out.append(
                f"engine.host is {e.host!r} (reachable from other machines) but no engine secret is "
                f"configured: set {ENV_ENGINE_SECRET}; `spooky up` would generate {where}"
            )
        else:
            out.append(f"no engine secret: `spooky up` generates one in {where} (mode 0600)")
    url = urlsplit(b.engine_url)
    if url.hostname in _LOOPBACK and url.port not in (None, e.port):
        out.append(
            f"bot.engine_url ({b.engine_url}) uses port {url.port} but engine.port is {e.port}; "
            "on one machine they should match"
        )
    return out


# --- spooky up -----------------------------------------------------------------------------------


def run_up(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    settings = load_settings(args.config, env=env)
    with_bot = not args.no_bot
    _require_command(ENGINE_COMMAND_MODULE, "engine", "engine")
    if with_bot:
        _require_command(BOT_COMMAND_MODULE, "bot", "bot")
        if settings.bot.token is None or not settings.bot.token.get_secret_value().strip():
            raise ConfigError(
                f"no Discord bot token: set {ENV_DISCORD_TOKEN} in the environment or [bot] token in "
                "config.toml",
                hint="or run `spooky up --no-bot` to start the engine alone",
            )
    engine_url = local_engine_url(settings)
    # Something already answering there would pass our health check for an engine that is not ours.
    if _listening(settings):
        raise ConfigError(
            f"something already listens on {engine_url} (another engine?), so this engine could not "
            "bind its port",
            hint="stop that process, or set another [engine] port (and bot.engine_url)",
        )

    secret, source = ensure_engine_secret(settings, env)
    log.info("engine secret: %s", source)  # where it came from, never the value
    child_env = {**env, ENV_ENGINE_SECRET: secret}
    if getattr(args, "log_json", False):
        child_env[ENV_LOG_FORMAT] = "json"
    if with_bot and not _same_endpoint(settings.bot.engine_url, engine_url):
        log.warning(
            "bot.engine_url is %s but this engine listens on %s: the bot started here uses the latter",
            settings.bot.engine_url,
            engine_url,
        )
        child_env["SPOOKY_BOT__ENGINE_URL"] = engine_url

    base = [sys.executable, "-m", "spooky.cli"] + (["-v"] if getattr(args, "verbose", False) else [])
    config_args = ["--config", str(args.config.resolve())] if args.config else []
    engine = ChildSpec(
        "engine",
        [*base, "engine", *config_args],
        env=child_env,
        stop_timeout_s=settings.engine.drain_timeout_s + STOP_GRACE_S,
    )
    bot = ChildSpec("bot", [*base, "bot", *config_args], env=child_env, stop_timeout_s=BOT_STOP_TIMEOUT_S)

    sup = Supervisor()
    with sup.handling_signals():
        sup.start(engine)
        health_url = engine_url + API_PREFIX + "/health"
        try:
            health = sup.wait_for(lambda: probe_health(health_url), timeout_s=args.health_timeout)
        except TimeoutError:
            log.error("no answer from %s within %g s; stopping the engine", health_url, args.health_timeout)
            sup.stop_all()
            return 1
        if health is not None:
            _log_health(health)
            if with_bot:
                sup.start(bot)
            else:
                log.info("bot not started (--no-bot); the engine API is at %s", engine_url)
            sup.run()
        return sup.stop_all()


def _require_command(module: str, command: str, extra: str) -> None:
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as e:
        raise ConfigError(
            f"`spooky {command}` is not available here ({e})",
            hint=f"install it with scripts/setup.sh {extra}",
        ) from e


def _log_health(health: dict[str, Any]) -> None:
    status = health.get("status")
    details = ", ".join(f"{k} {health[k]}" for k in ("preset", "device") if health.get(k))
    if status == "error":
        log.error("the engine reports an error: %s", health.get("detail") or "(no detail)")
    else:
        log.info("engine is %s%s", status, f" ({details})" if details else "")


def local_engine_url(settings: Settings) -> str:
    """Where a process on this machine reaches the engine (a wildcard bind address becomes loopback)."""
    host = settings.engine.host
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.engine.port}"


def _same_endpoint(a: str, b: str) -> bool:
    """Two URLs that reach the same local port (localhost and 127.0.0.1 count as one)."""
    ua, ub = urlsplit(a), urlsplit(b)

    def host(u: Any) -> str:
        return "loopback" if u.hostname in _LOOPBACK else (u.hostname or "")

    return (ua.scheme, host(ua), ua.port or 80) == (ub.scheme, host(ub), ub.port or 80)


def _listening(settings: Settings) -> bool:
    host = urlsplit(local_engine_url(settings)).hostname or "127.0.0.1"
    try:
        with socket.create_connection((host, settings.engine.port), timeout=1.0):
            return True
    except OSError:
        return False


def probe_health(url: str, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """The engine's health body, or None while nothing answers (not started yet)."""
    # No proxies: an HTTP_PROXY meant for downloads must not intercept a loopback health check.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as resp:
            return _health_body(resp.read())
    except urllib.error.HTTPError as e:
        # A 503 while loading or draining still carries the health body: the engine answers.
        with contextlib.closing(e):
            return _health_body(e.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return None


def _health_body(raw: bytes) -> dict[str, Any] | None:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) and "status" in body else None


def ensure_engine_secret(settings: Settings, env: Mapping[str, str]) -> tuple[str, str]:
    """The engine secret and where it came from; generate <data_dir>/engine.secret if none is set.

    The file is reused on the next start so a bot started separately can read the same value.
    """
    if env.get(ENV_ENGINE_SECRET):
        return env[ENV_ENGINE_SECRET], f"from {ENV_ENGINE_SECRET}"
    if settings.engine.secret is not None and settings.engine.secret.get_secret_value():
        return settings.engine.secret.get_secret_value(), "from the settings ([engine] secret)"
    path = settings.engine.data_dir.expanduser() / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _read_secret_file(path), f"from {path}"
    value = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(value + "\n")
    return value, f"generated and stored in {path} (mode 0600)"


def _read_secret_file(path: Path) -> str:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s was readable by others (mode %o); setting it to 0600", path, mode)
        path.chmod(0o600)
    value = path.read_text(encoding="ascii").strip()
    if not value:
        raise ConfigError(
            f"{path} is empty",
            hint=f"delete it to let `spooky up` generate a new secret, or set {ENV_ENGINE_SECRET}",
        )
    return value
