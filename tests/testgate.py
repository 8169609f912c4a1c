"""A step gate for tests: the render waits after each step until the test lets it take the next.

Tests that need a job to outlive an event (a cancel, a SIGTERM, a kill -9, a bot edit) hold the
job at the gate instead of hoping that a number of steps is slow enough on the machine at hand.

Usage (the test side; an engine in process or as a child process, one engine per gate folder)::

    from testgate import StepGate

    gate = StepGate.create(tmp_path / "gate")   # closed: no step is allowed yet
    # A child engine: its command line and environment name the gate (`spooky engine --step-hook`).
    cmd += gate.args(); env |= gate.env()
    # In process: EngineService(settings, models=…, step_hook=gate.engine_side())
    ...start the engine (tiny preset), submit a job...
    held = gate.wait_held()                     # the job reported its step 1 and now waits
    held = await gate.held()                    # the same in an async test (loop stays free)
    ...do what must happen while the job runs (cancel, SIGTERM, kill -9)...
    gate.allow(3)                               # three more steps (across all jobs)
    gate.release()                              # open: every step from now on runs freely
    gate.hold()                                 # closed again after the steps already allowed

Semantics: after every reported step (every `on_step` of the worker, so every stage's steps and
every nightmare frame) the render passes the gate once; a job of N steps needs N passes. Passes
are counted for the whole engine (all jobs, across restarts on the same folder), so a test that
shares an engine holds it while it is idle. A stop of the job (cancel, time-out, drain) ends the
wait at once, so a held job still stops within one step. A gate that allows nothing for
`timeout_s` fails the job with `StepGateTimeout`: nothing hangs forever.

Never on in production: the engine knows nothing of it. The worker takes an optional step hook from
its composition root (`spooky engine --step-hook MODULE:FACTORY`, or `EngineService(step_hook=…)`),
and this module, which lives with the tests and is not installed, is such a factory: it turns the
gate on only when the environment variable `SPOOKY_TEST_STEP_GATE` names a folder that has the
marker file only `StepGate.create` writes, and the models are the `tiny` preset (toy random models
that no real deployment loads); otherwise it logs why and gives no hook. Without a hook the
worker's per-step cost is one `is None` test.

Files in the folder (each has a single writer, replaced atomically): `gate.json` (marker and
timeout, the test), `allow` (`open` or the total number of passes allowed, the test), `state.json`
(passes so far and the step that waits, the engine).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

GATE_ENV = "SPOOKY_TEST_STEP_GATE"
#: What `spooky engine --step-hook` loads: `from_settings` below (this folder is on PYTHONPATH).
HOOK = "testgate:from_settings"
TESTS = Path(__file__).resolve().parent
MARKER = "gate.json"
MARKER_KIND = "spooky-test-step-gate"
OPEN = "open"
#: How often a held render looks at the `allow` file (test-only path: latency, not cost, matters).
POLL_S = 0.01
DEFAULT_TIMEOUT_S = 120.0


class StepGateTimeout(RuntimeError):
    """The test allowed no step for the gate's timeout: the job fails instead of hanging."""


@dataclass(frozen=True)
class GateState:
    """What the engine last wrote: passes so far and, while held, the step that waits."""

    passed: int
    waiting: bool
    job_id: str | None
    stage: str | None
    step: int | None


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _read_state(folder: Path) -> GateState:
    try:
        raw: dict[str, Any] = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raw = {}
    return GateState(
        passed=int(raw.get("passed", 0)),
        waiting=bool(raw.get("waiting", False)),
        job_id=raw.get("job_id"),
        stage=raw.get("stage"),
        step=raw.get("step"),
    )


def _read_allowed(folder: Path) -> int | None:
    """The total passes allowed; None when the gate is open."""
    text = (folder / "allow").read_text(encoding="utf-8").strip()
    return None if text == OPEN else int(text)


# --- the test's side ----------------------------------------------------------------------------


class StepGate:
    """The test's handle on a gate folder (see the module docstring for the usage)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S, open: bool = False) -> StepGate:
        """Make the folder a gate, closed (or open), that fails a job held for `timeout_s`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _write(path / "allow", OPEN if open else str(_read_state(path).passed))
        _write(path / MARKER, json.dumps({"kind": MARKER_KIND, "timeout_s": timeout_s}))
        return cls(path)

    def env(self) -> dict[str, str]:
        """The environment of a child engine that points it at this gate (with `args`)."""
        path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
        return {GATE_ENV: str(self.path), "PYTHONPATH": path}

    @staticmethod
    def args() -> list[str]:
        """The `spooky engine` arguments that load the gate as the worker's step hook."""
        return ["--step-hook", HOOK]

    def engine_side(self) -> Callable[[str, str, int, threading.Event], None]:
        """The step hook of an in-process engine on this gate."""
        gate = step_gate("tiny", {GATE_ENV: str(self.path)})
        assert gate is not None
        return gate.wait

    @property
    def state(self) -> GateState:
        return _read_state(self.path)

    def allow(self, steps: int = 1) -> None:
        """Let `steps` more steps through (counted from now, or from the last allowance if higher)."""
        allowed = _read_allowed(self.path)
        base = self.state.passed if allowed is None else max(allowed, self.state.passed)
        _write(self.path / "allow", str(base + steps))

    def release(self) -> None:
        """Open the gate: every step runs freely until the next `hold`."""
        _write(self.path / "allow", OPEN)

    def hold(self) -> None:
        """Close the gate: a render stops at its next pass (one step in flight may still pass)."""
        _write(self.path / "allow", str(self.state.passed))

    def wait_held(self, timeout: float = 120.0, *, passed: int | None = None) -> GateState:
        """Block until a render waits at the gate (after exactly `passed` passes, when given)."""
        return self._wait(_held(passed), timeout)

    def wait_passed(self, passed: int, timeout: float = 120.0) -> GateState:
        """Block until the engine has counted at least `passed` passes."""
        return self._wait(lambda s: s.passed >= passed, timeout)

    async def held(self, timeout: float = 120.0, *, passed: int | None = None) -> GateState:
        """`wait_held` for async tests (an in-process engine needs its event loop free)."""
        return await self._await(_held(passed), timeout)

    async def reached(self, passed: int, timeout: float = 120.0) -> GateState:
        """`wait_passed` for async tests."""
        return await self._await(lambda s: s.passed >= passed, timeout)

    def _wait(self, done: Callable[[GateState], bool], timeout: float) -> GateState:
        deadline = time.monotonic() + timeout
        while not done(state := self.state):
            self._check_deadline(state, deadline, timeout)
            time.sleep(POLL_S)
        return state

    async def _await(self, done: Callable[[GateState], bool], timeout: float) -> GateState:
        deadline = time.monotonic() + timeout
        while not done(state := self.state):
            self._check_deadline(state, deadline, timeout)
            await asyncio.sleep(POLL_S)
        return state

    def _check_deadline(self, state: GateState, deadline: float, timeout: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"step gate {self.path}: still {state} after {timeout:g} s")


def _held(passed: int | None) -> Callable[[GateState], bool]:
    return lambda s: s.waiting and (passed is None or s.passed == passed)


# --- the engine's side --------------------------------------------------------------------------


class EngineGate:
    """Called by the worker after each step (on the render thread) while the gate is on."""

    def __init__(self, folder: Path, timeout_s: float) -> None:
        self.folder = folder
        self.timeout_s = timeout_s
        self.passed = _read_state(folder).passed  # a restarted engine continues the count
        self._publish(False, None, None, None)  # a killed engine may have left "waiting" behind

    def _publish(self, waiting: bool, job_id: str | None, stage: str | None, step: int | None) -> None:
        state = {"passed": self.passed, "waiting": waiting, "job_id": job_id, "stage": stage, "step": step}
        _write(self.folder / "state.json", json.dumps(state))

    def wait(self, job_id: str, stage: str, step: int, stop: threading.Event) -> None:
        """Return when the test allows one more step or the job is told to stop."""
        deadline = time.monotonic() + self.timeout_s
        published = False
        while True:
            allowed = _read_allowed(self.folder)
            if allowed is None or allowed > self.passed:
                break
            if not published:
                self._publish(True, job_id, stage, step)
                published = True
            if stop.wait(POLL_S):
                self._publish(False, job_id, stage, step)
                return  # the worker's check() raises JobCancelled next; this pass is not counted
            if time.monotonic() > deadline:
                raise StepGateTimeout(
                    f"test step gate {self.folder}: no step allowed for {self.timeout_s:g} s "
                    f"(job {job_id} held after {stage} step {step})"
                )
        self.passed += 1
        self._publish(False, job_id, stage, step)


def from_settings(settings: Any) -> Callable[[str, str, int, threading.Event], None] | None:
    """The step-hook factory `spooky engine --step-hook testgate:from_settings` calls: the gate
    this process's environment names, for the tiny preset only."""
    gate = step_gate(settings.models.preset)
    return gate.wait if gate is not None else None


def step_gate(preset: str, env: Mapping[str, str] = os.environ) -> EngineGate | None:
    """The engine's gate when a test turned it on (see "Never on in production"), else None."""
    folder = env.get(GATE_ENV)
    if not folder:
        return None
    marker = Path(folder) / MARKER
    try:
        spec = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        spec = {}
    if spec.get("kind") != MARKER_KIND:
        log.warning("%s is set but %s is no test step gate (StepGate.create): ignored", GATE_ENV, marker)
        return None
    if preset != "tiny":
        log.warning("%s is set but the models are the %r preset (tests: tiny): ignored", GATE_ENV, preset)
        return None
    log.warning("test step gate on (%s): every render step waits for the test", folder)
    return EngineGate(Path(folder), float(spec.get("timeout_s", DEFAULT_TIMEOUT_S)))
