"""Run a few long-lived child processes together: start them in order, forward stop signals, and
report the one that dies (name and exit code). Used by `spooky up`; knows nothing of the engine.

Children get their own process group, so a terminal's Ctrl-C reaches only the supervisor, which
sends each child one SIGTERM and waits for it (the engine drains its running job). A second
Ctrl-C kills them at once. On Linux each child also gets SIGTERM if the supervisor itself dies.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Signals that ask the supervisor (and so every child) to stop.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class ChildSpec:
    """How to start one child and how long it may take to stop."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    # Seconds between SIGTERM and SIGKILL.
    stop_timeout_s: float = 15.0


@dataclass
class Child:
    spec: ChildSpec
    proc: subprocess.Popen
    started_at: float = field(default_factory=time.monotonic)
    killed: bool = False  # it ignored SIGTERM for stop_timeout_s

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass
class ChildExit:
    """A child that ended without being asked to."""

    name: str
    returncode: int

    def describe(self) -> str:
        return f"{self.name} exited unexpectedly ({describe_returncode(self.returncode)})"


def describe_returncode(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit code {rc}"


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the child when the supervisor dies, so a
    # SIGKILLed `spooky up` leaves no orphaned engine holding the GPU.
    if sys.platform.startswith("linux"):
        import ctypes

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


class Supervisor:
    """Owns the children; `wait_for` and `run` return early when one dies or a stop is asked."""

    def __init__(self, *, poll_s: float = 0.2) -> None:
        self.children: list[Child] = []
        self.poll_s = poll_s
        self.stop_requested = False
        self.failure: ChildExit | None = None
        self._signals_seen = 0

    # --- starting ---------------------------------------------------------------------------

    def start(self, spec: ChildSpec) -> Child:
        log.info("starting %s: %s", spec.name, " ".join(spec.argv[1:]) or spec.argv[0])
        proc = subprocess.Popen(
            spec.argv,
            env=spec.env,
            start_new_session=True,
            # preexec_fn is safe here: the supervisor runs no threads.
            preexec_fn=_die_with_parent,
        )
        child = Child(spec, proc)
        self.children.append(child)
        return child

    # --- signals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def handling_signals(self) -> Iterator[None]:
        """Turn SIGINT/SIGTERM into a stop request while inside; restore the old handlers after."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals_seen += 1
        if self._signals_seen == 1:
            self.stop_requested = True
            # Written straight to stderr: logging from a signal handler can deadlock on its lock.
            os.write(2, f"\n{signal.Signals(signum).name}: stopping (again to force)\n".encode())
        else:
            for child in self.children:
                if child.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        child.proc.kill()
                    child.killed = True

    # --- watching ---------------------------------------------------------------------------

    def _check_children(self) -> bool:
        """True while every child runs; records the first one found dead."""
        if self.failure is not None:
            return False
        for child in self.children:
            rc = child.proc.poll()
            if rc is not None:
                self.failure = ChildExit(child.name, rc)
                return False
        return True

    def wait_for(
        self, probe: Callable[[], T | None], *, timeout_s: float, interval_s: float = 0.5
    ) -> T | None:
        """Call `probe` until it returns a value; None when a stop was asked or a child died.

        Raises TimeoutError after `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if self.stop_requested or not self._check_children():
                return None
            value = probe()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no answer within {timeout_s:g} s")
            self._sleep_watching(interval_s)

    def _sleep_watching(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop_requested and self._check_children():
            time.sleep(min(self.poll_s, max(0.0, end - time.monotonic())))

    def run(self) -> None:
        """Block until a stop is asked or a child dies."""
        while not self.stop_requested and self._check_children():
            time.sleep(self.poll_s)

    # --- stopping ---------------------------------------------------------------------------

    def stop_all(self) -> int:
        """SIGTERM every running child, wait for each (SIGKILL after its timeout); the exit status.

        0 when stopped on request and every child ended cleanly; the dead child's code (or 1) when
        one died unexpectedly; 1 when a child had to be killed or ended with an error.
        """
        if self.failure is not None:
            log.error("%s; stopping the others", self.failure.describe())
        running = [c for c in self.children if c.proc.poll() is None]
        for child in running:
            log.info("stopping %s (SIGTERM; waiting up to %g s)", child.name, child.spec.stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                child.proc.send_signal(signal.SIGTERM)
        for child in running:
            self._wait_stopped(child)

        status = 0
        for child in self.children:
            rc = child.proc.returncode
            if self.failure is not None and child.name == self.failure.name:
                continue
            if child.killed:
                log.error("%s did not stop in time and was killed", child.name)
                status = 1
            elif child in running and not _clean_stop(rc):
                log.error("%s stopped with an error (%s)", child.name, describe_returncode(rc))
                status = 1
            elif child in running:
                log.info("%s stopped", child.name)
        if self.failure is not None:
            return self.failure.returncode if self.failure.returncode > 0 else 1
        return status

    def _wait_stopped(self, child: Child) -> None:
        deadline = time.monotonic() + child.spec.stop_timeout_s
        # Polled rather than proc.wait(timeout): a second Ctrl-C must be able to kill at once.
        while child.proc.poll() is None:
            if time.monotonic() >= deadline and not child.killed:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.killed = True
            time.sleep(self.poll_s)


def _clean_stop(rc: int | None) -> bool:
    # 0, or ended by the SIGTERM/SIGINT we sent (a child without its own handler), or the shell
    # convention 128+signal for the same.
    return rc in (0, -signal.SIGTERM, -signal.SIGINT, 128 + signal.SIGTERM, 128 + signal.SIGINT)
