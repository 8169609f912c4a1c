"""Work that must never keep the engine from exiting runs on daemon threads (no torch import)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def run_in_daemon_thread(fn: Callable[[], R], name: str = "spooky-work") -> asyncio.Future[R]:
    """Run `fn` on a new daemon thread; await the result on the calling loop.

    A model load or a render step that hangs can then never keep the process from exiting after a
    drain, which an executor's (joined at exit) worker threads would.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[R] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def target() -> None:
        try:
            value = fn()
        except BaseException as e:
            with contextlib.suppress(RuntimeError):  # loop closed: nobody is waiting any more
                loop.call_soon_threadsafe(settle, False, e)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, True, value)

    threading.Thread(target=target, name=name, daemon=True).start()
    return future
