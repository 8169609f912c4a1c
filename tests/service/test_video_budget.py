"""A nightmare over its byte budget is re-encoded under it by the worker (real ffmpeg), a budget
far below 64 KiB is accepted, and one that cannot be met fails with the real sizes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from service_helpers import make_settings, request, running_engine

from engine.pipeline.video_probe import probe
from spooky.contract import JobState, JobView
from spooky.engine_client import EngineClient


async def _done(client: EngineClient, job_id: str, timeout: float = 180) -> JobView:
    deadline = time.monotonic() + timeout
    while not (view := await client.job(job_id)).state.terminal:
        assert time.monotonic() < deadline, f"{job_id} still {view.state.value}"
        await asyncio.sleep(0.1)
    return view


async def test_a_nightmare_over_budget_is_fitted_and_an_impossible_budget_says_the_sizes(
    tmp_path: Path, tiny_models
):
    async with running_engine(make_settings(tmp_path / "data"), tiny_models) as (svc, client):
        first = (await client.submit(request(user="1", seed=11))).job.id  # a fixed face: fixed sizes
        assert (await _done(client, first)).state is JobState.SUCCEEDED
        nightmare = {"frames": 30, "seed": 7}
        free = await _done(
            client, (await client.submit(request("nightmare", "n", user="1", **nightmare))).job.id
        )
        assert free.state is JobState.SUCCEEDED, free.error
        natural = free.result["bytes"]

        budget = max(1024, natural * 6 // 10)  # the first encode is really over this budget
        fitted = await _done(
            client,
            (await client.submit(request("nightmare", "n", user="1", max_bytes=budget, **nightmare))).job.id,
        )
        assert fitted.state is JobState.SUCCEEDED, fitted.error
        assert fitted.result["bytes"] <= budget < natural
        row = svc.store.get_artifact(fitted.artifacts["video"])
        assert row.bytes == fitted.result["bytes"]
        info = probe(svc.files.path(row))
        assert info.frames == 30 and info.codec == "h264"

        tiny = await _done(
            client,
            (await client.submit(request("nightmare", "n", user="1", max_bytes=1024, **nightmare))).job.id,
        )
        assert tiny.state is JobState.FAILED and tiny.error_code == "video", tiny
        assert "into 1024 bytes" in tiny.error
        best = int(tiny.error.split(" was ")[1].split(" bytes")[0])
        assert 1024 < best < natural  # the real size of the smallest try, not a placeholder
