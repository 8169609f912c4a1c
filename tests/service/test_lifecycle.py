"""Engine lifecycle edges: a stop that arrives while the models are still loading."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from service_helpers import make_settings

from engine.service.app import EngineService


async def test_stop_during_the_model_load_waits_for_it(tmp_path: Path, tiny_models) -> None:
    """Exiting while torch builds models on another thread aborts the process (std::terminate),
    so stop() lets a load under way finish, and the engine never turns ready after a stop."""
    service = EngineService(make_settings(tmp_path / "data"), models=tiny_models, port=0)
    release, entered = threading.Event(), threading.Event()
    build = service._build_renderer

    def slow_build():
        entered.set()
        release.wait(30)
        return build()

    service._build_renderer = slow_build
    await service.start()
    while not entered.is_set():
        await asyncio.sleep(0.01)
    assert service.loading and service.core.status == "loading"

    stopping = asyncio.create_task(service.stop())
    # stop() marks the engine stopped, waits for the load, and only then closes it: while the load
    # thread is held, a stop that does not wait would already have closed it (no await in between).
    async with asyncio.timeout(30):
        while service.core.status != "stopped":
            await asyncio.sleep(0.01)
    assert not service.core.closing.is_set(), "stop() went on while the load thread was still inside torch"
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 60)
    assert not service.loading
    assert service.core.status == "stopped" and service.worker is None
