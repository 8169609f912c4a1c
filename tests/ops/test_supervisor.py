"""The supervisor with real child processes: clean stop, a dying child, a stubborn child, signals."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from spooky.ops import probe_health
from spooky.supervisor import ChildSpec, Supervisor

ROOT = Path(__file__).resolve().parents[2]
CHILDREN = str(Path(__file__).with_name("children.py"))


def spec(name: str, *args: str, stop_timeout_s: float = 10.0) -> ChildSpec:
    return ChildSpec(name, [sys.executable, CHILDREN, *args], stop_timeout_s=stop_timeout_s)


def wait_files(sup: Supervisor, *paths: Path) -> None:
    got = sup.wait_for(lambda: all(p.exists() for p in paths) or None, timeout_s=60, interval_s=0.05)
    assert got, f"children died before writing {paths}: {sup.failure}"


@pytest.fixture
def sup():
    s = Supervisor(poll_s=0.05)
    yield s
    for child in s.children:  # never leave a process behind, even when a test fails
        if child.proc.poll() is None:
            child.proc.kill()
            child.proc.wait()


def test_a_stop_signal_stops_every_child_cleanly(sup: Supervisor, tmp_path: Path):
    a_ready, b_ready, a_term, b_term = (tmp_path / n for n in ("a.ready", "b.ready", "a.term", "b.term"))
    with sup.handling_signals():
        sup.start(spec("engine", "graceful", str(a_ready), str(a_term)))
        sup.start(spec("bot", "graceful", str(b_ready), str(b_term)))
        wait_files(sup, a_ready, b_ready)
        os.kill(os.getpid(), signal.SIGTERM)  # what `docker stop` or systemd sends
        sup.run()
        assert sup.stop_requested
        assert sup.stop_all() == 0
    assert a_term.read_text() == "SIGTERM" and b_term.read_text() == "SIGTERM"
    assert [c.proc.returncode for c in sup.children] == [0, 0]


def test_a_dying_child_is_named_with_its_code_and_the_other_is_stopped(
    sup: Supervisor, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    ready, term = tmp_path / "ready", tmp_path / "term"
    sup.start(spec("engine", "graceful", str(ready), str(term)))
    wait_files(sup, ready)
    sup.start(spec("bot", "exit", "3", "0.2"))
    with caplog.at_level(logging.INFO, logger="spooky.supervisor"):
        sup.run()
        assert sup.failure is not None and (sup.failure.name, sup.failure.returncode) == ("bot", 3)
        assert sup.stop_all() == 3
    assert "bot exited unexpectedly (exit code 3)" in caplog.text
    assert term.read_text() == "SIGTERM"


def test_a_child_ending_with_zero_unexpectedly_is_still_a_failure(sup: Supervisor, tmp_path: Path):
    sup.start(spec("bot", "exit", "0", "0"))
    sup.run()
    assert sup.stop_all() == 1


def test_a_child_that_ignores_sigterm_is_killed_after_its_timeout(sup: Supervisor, tmp_path: Path):
    ready = tmp_path / "ready"
    sup.start(spec("engine", "stubborn", str(ready), stop_timeout_s=0.5))
    wait_files(sup, ready)
    sup.stop_requested = True
    assert sup.stop_all() == 1
    assert sup.children[0].killed and sup.children[0].proc.returncode == -signal.SIGKILL


def test_wait_for_gives_up_when_a_child_dies(sup: Supervisor):
    sup.start(spec("engine", "exit", "2", "0.1"))
    assert sup.wait_for(lambda: None, timeout_s=60, interval_s=0.05) is None
    assert sup.failure is not None and sup.failure.returncode == 2


def test_wait_for_times_out(sup: Supervisor, tmp_path: Path):
    ready = tmp_path / "ready"
    sup.start(spec("engine", "graceful", str(ready), str(tmp_path / "term")))
    with pytest.raises(TimeoutError):
        sup.wait_for(lambda: None, timeout_s=0.3, interval_s=0.05)
    sup.stop_requested = True
    assert sup.stop_all() == 0


def test_probe_health_reads_the_engine_answer(sup: Supervisor, tmp_path: Path):
    port_file = tmp_path / "port"
    sup.start(spec("engine", "health", str(port_file), str(tmp_path / "term")))
    wait_files(sup, port_file)
    port = int(port_file.read_text())
    body = sup.wait_for(lambda: probe_health(f"http://127.0.0.1:{port}/v1/health"), timeout_s=30)
    assert body == {"status": "loading", "preset": "tiny"}
    # A server that answers something else is not the engine.
    assert probe_health(f"http://127.0.0.1:{port}/elsewhere") is None
    sup.stop_requested = True
    assert sup.stop_all() == 0
    # Nothing listening: None, not an exception.
    assert probe_health(f"http://127.0.0.1:{port}/v1/health", timeout_s=0.5) is None


SUPERVISOR_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from spooky.supervisor import ChildSpec, Supervisor
    children, tmp = sys.argv[1], Path(sys.argv[2])
    sup = Supervisor(poll_s=0.05)
    with sup.handling_signals():
        for name in ("engine", "bot"):
            sup.start(ChildSpec(name, [sys.executable, children, "graceful",
                                       str(tmp / (name + ".ready")), str(tmp / (name + ".term"))]))
        (tmp / "pids").write_text(" ".join(str(c.proc.pid) for c in sup.children))
        sup.run()
        sys.exit(sup.stop_all())
    """
)


def _start_supervisor_process(tmp_path: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", SUPERVISOR_SCRIPT, CHILDREN, str(tmp_path)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"{n}.ready").exists() for n in ("engine", "bot")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "children did not start"
        time.sleep(0.05)
    return proc


def test_ctrl_c_reaches_the_supervisor_which_stops_both_children(tmp_path: Path):
    proc = _start_supervisor_process(tmp_path)
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "SIGINT: stopping" in err
    # The children got SIGTERM from the supervisor (their own group never saw the SIGINT).
    assert (tmp_path / "engine.term").read_text() == "SIGTERM"
    assert (tmp_path / "bot.term").read_text() == "SIGTERM"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_are_stopped_when_the_supervisor_is_killed(tmp_path: Path):
    proc = _start_supervisor_process(tmp_path)
    pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while not all((tmp_path / f"{n}.term").exists() for n in ("engine", "bot")):
        assert time.monotonic() < deadline, "orphaned children did not get SIGTERM"
        time.sleep(0.05)
    for pid in pids:  # reaped by init once they exit; make sure none is left running
        deadline = time.monotonic() + 30
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); its /proc state says Z.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
