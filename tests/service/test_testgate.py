"""The test step gate: holds a real render step by step, stops with the job, and is off in production."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from service_helpers import make_settings, request, running_engine
from testgate import GATE_ENV, EngineGate, StepGate, StepGateTimeout, step_gate

from spooky.contract import EventType, JobState

pytestmark = pytest.mark.slow


def test_the_gate_is_off_unless_a_test_made_it_and_the_models_are_tiny(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    assert step_gate("tiny", {}) is None
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "allow").write_text("0")  # a folder that looks like a gate but has no marker
    with caplog.at_level(logging.WARNING, logger="testgate"):
        assert step_gate("tiny", {GATE_ENV: str(plain)}) is None
        gate = StepGate.create(tmp_path / "gate")
        assert step_gate("full", gate.env()) is None
    assert "no test step gate" in caplog.text and "'full' preset" in caplog.text
    assert isinstance(step_gate("tiny", gate.env()), EngineGate)


def test_a_held_step_times_out_instead_of_hanging(tmp_path: Path):
    gate = StepGate.create(tmp_path / "gate", timeout_s=0.05)
    engine_side = step_gate("tiny", gate.env())
    assert engine_side is not None
    with pytest.raises(StepGateTimeout, match=r"job j1 held after stylegan step 1"):
        engine_side.wait("j1", "stylegan", 1, threading.Event())
    assert gate.state.passed == 0


async def test_a_held_job_moves_only_as_the_test_allows(tmp_path: Path, tiny_models, monkeypatch):
    gate = StepGate.create(tmp_path / "gate")
    hook = gate.engine_side()
    async with running_engine(make_settings(tmp_path / "engine"), tiny_models, step_hook=hook) as (_, client):
        job = (await client.submit(request(steps=3, scare_steps=1))).job
        held = await gate.held(passed=0)
        assert (held.job_id, held.stage, held.step) == (job.id, "stylegan", 1)
        view = await client.job(job.id)
        assert view.state is JobState.RUNNING and view.progress.step == 1

        gate.allow(1)
        held = await gate.held(passed=1)
        assert (held.stage, held.step) == ("stylegan", 2)
        assert (await client.job(job.id)).progress.step == 2

        gate.release()
        events = [e async for e in client.events(job_id=job.id)]  # the job's stream ends with it
        assert events[-1].type is EventType.FINISHED, events[-1]
        assert gate.state.passed == 4  # 3 stylegan steps + 1 scare step: one pass each


async def test_a_cancel_ends_the_wait_of_a_held_job(tmp_path: Path, tiny_models, monkeypatch):
    gate = StepGate.create(tmp_path / "gate")
    hook = gate.engine_side()
    async with running_engine(make_settings(tmp_path / "engine"), tiny_models, step_hook=hook) as (_, client):
        job = (await client.submit(request(steps=3, scare_steps=0))).job
        await gate.held(passed=0)
        stopped = await client.cancel(job.id, actor_id="1")  # returns once the job has ended
        assert stopped.state is JobState.CANCELLED and stopped.progress.step == 1
        state = gate.state
        assert (state.passed, state.waiting) == (0, False)  # the stop is no pass, and nothing waits now
