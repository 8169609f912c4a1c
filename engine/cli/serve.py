"""`spooky engine [--config config.toml] [--check]`: run the render engine, or ask one if it is ready.

Imports nothing heavy at import time: torch and the models load inside the running engine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from spooky.config import Settings, load_settings
from spooky.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "engine", help="run the render engine: models, queue and API (see /v1/health, /metrics)"
    )
    parser.add_argument("--config", type=Path, help="config.toml (default: built-in settings + environment)")
    parser.add_argument(
        "--check",
        action="store_true",
        help="ask the engine at engine.host:engine.port for /v1/health; exit 0 only when it is ready",
    )
    parser.add_argument(
        "--role",
        choices=("all", "api", "worker"),
        help="all (default): API and worker; api: the API without torch or models; worker: renders, "
        "serves only /v1/health and /metrics. api and worker need [engine] database_url (PostgreSQL)",
    )
    parser.add_argument(
        "--step-hook",
        metavar="MODULE:FACTORY",
        help="for tests and diagnostics: FACTORY(settings) from MODULE (on PYTHONPATH) returns a "
        "callable the worker calls after every render step, or None",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if getattr(args, "role", None):
        settings = settings.model_copy(
            update={"engine": settings.engine.model_copy(update={"role": args.role})}
        )
    if args.check:
        return check(settings)
    hook = load_step_hook(args.step_hook, settings) if getattr(args, "step_hook", None) else None
    return asyncio.run(serve(settings, step_hook=hook))


def load_step_hook(spec: str, settings: Settings) -> Any:
    """`MODULE:FACTORY` -> FACTORY(settings): the worker's step hook (None: the factory declined)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--step-hook {spec!r} is not MODULE:FACTORY")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--step-hook {spec!r} cannot be loaded: {e}") from e
    return factory(settings)


def check(settings: Settings, timeout: float = 5.0) -> int:
    """Print the engine's health; 0 when ready, 1 when up but not ready, 2 when unreachable."""
    host = settings.engine.host
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{host}:{settings.engine.port}/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as e:  # 503 while draining or broken: still a Health body
        body = e.read()
    except (urllib.error.URLError, OSError) as e:
        print(f"engine not reachable at {url}: {getattr(e, 'reason', e)}", file=sys.stderr)
        return 2
    try:
        health = json.loads(body)
        status = health["status"]
    except (ValueError, KeyError, TypeError):
        print(f"unexpected answer from {url}: {body[:200]!r}", file=sys.stderr)
        return 2
    print(json.dumps(health))
    return 0 if status == "ready" else 1


async def serve(settings: Settings, *, step_hook: Any = None) -> int:
    """Run until SIGTERM/SIGINT, then drain (bounded by engine.drain_timeout_s) and exit 0."""
    from engine.service.app import EngineService

    service = EngineService(settings, step_hook=step_hook)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
        log.info("signal received: draining (up to %.0f s)", settings.engine.drain_timeout_s)
    finally:
        await service.stop()
    if service.loading:
        # The load outlived LOAD_WAIT_S: everything durable is closed, and a normal interpreter exit
        # would abort inside torch, so leave at once.
        log.warning("exiting while the models are still loading")
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0
