"""`spooky up` for real: the engine (tiny preset) and the bot as child processes of the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support import free_port

from spooky.ops import SECRET_FILE, probe_health

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240  # torch import + tiny models on 2 busy cores



def write_config(tmp_path: Path, port: int, bot: str = "") -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[models]\npreset = "tiny"\ndevice = "cpu"\n'
        f'[engine]\nport = {port}\ndata_dir = "{tmp_path / "data"}"\ndrain_timeout_s = 5\n'
        f'[bot]\nengine_url = "http://127.0.0.1:{port}"\n{bot}',
        encoding="utf-8",
    )
    return cfg


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_") and k != "DISCORD_TOKEN"}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **extra}


def start_up(cfg: Path, log: Path, *args: str, log_json: bool = False, **env: str) -> subprocess.Popen:
    flags = ["--log-json"] if log_json else []
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "spooky.cli", *flags, "up", "--config", str(cfg), *args],
            cwd=ROOT,
            env=clean_env(**env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_health(proc: subprocess.Popen, port: int, log: Path, want: str = "ready") -> dict:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"spooky up exited early:\n{log.read_text()}"
        health = probe_health(f"http://127.0.0.1:{port}/v1/health", timeout_s=1)
        if health and health["status"] == want:
            return health
        time.sleep(0.5)
    pytest.fail(f"the engine never became {want}:\n{log.read_text()}")


def get(url: str, secret: str | None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {secret}"} if secret else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def spooky(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spooky.cli", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_engine_only_generates_the_secret_serves_and_stops_cleanly(tmp_path: Path):
    port, log = free_port(), tmp_path / "up.log"
    proc = start_up(write_config(tmp_path, port), log, "--no-bot", log_json=True)
    try:
        health = wait_health(proc, port, log)
        assert health["preset"] == "tiny"
        secret_file = tmp_path / "data" / SECRET_FILE
        assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
        secret = secret_file.read_text().strip()
        # The engine got the generated secret through the environment: it accepts it, nothing else.
        assert get(f"http://127.0.0.1:{port}/v1/queue", secret) == 200
        assert get(f"http://127.0.0.1:{port}/v1/queue", None) == 401
        assert get(f"http://127.0.0.1:{port}/v1/queue", "wrong") == 401
    finally:
        rc = stop(proc)
    text = log.read_text()
    assert rc == 0, text
    assert "engine stopped" in text and "bot not started (--no-bot)" in text
    assert secret not in text  # never printed
    assert probe_health(f"http://127.0.0.1:{port}/v1/health", timeout_s=1) is None  # the port is free
    # --log-json reached the engine child too: both processes wrote JSON lines.
    records = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    loggers = {r["logger"] for r in records}
    assert "spooky.ops" in loggers and any(name.startswith("engine.") for name in loggers)


@pytest.mark.slow
def test_a_bot_that_dies_is_named_and_the_engine_is_stopped(tmp_path: Path):
    # A token Discord would refuse, against a Discord API that is not there: the bot exits at once.
    port, dead = free_port(), free_port()
    cfg = write_config(tmp_path, port, bot=f'api_base = "http://127.0.0.1:{dead}/api/v10"\n')
    log = tmp_path / "up.log"
    proc = start_up(cfg, log, DISCORD_TOKEN="not-a-real-token", SPOOKY_ENGINE_SECRET="shared-secret")
    try:
        rc = proc.wait(timeout=START_TIMEOUT_S)
    finally:
        stop(proc, signal.SIGKILL)
    text = log.read_text()
    assert rc != 0, text
    assert "bot exited unexpectedly (exit code 1)" in text
    # The bot was started only after the engine's health answered, and the engine was stopped after.
    assert text.index("engine is ") < text.index("starting bot") < text.index("stopping engine")
    assert "engine secret: from SPOOKY_ENGINE_SECRET" in text
    assert "shared-secret" not in text and "not-a-real-token" not in text
    assert not (tmp_path / "data" / SECRET_FILE).exists()  # the environment's secret was used


def test_without_a_discord_token_up_refuses_and_suggests_no_bot(tmp_path: Path):
    r = spooky("up", "--config", str(write_config(tmp_path, free_port())))
    assert r.returncode == 1
    assert "no Discord bot token" in r.stderr and "--no-bot" in r.stderr
    assert not (tmp_path / "data").exists()  # refused before touching anything


def test_a_taken_port_is_refused_before_starting(tmp_path: Path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = spooky("up", "--no-bot", "--config", str(write_config(tmp_path, port)))
    assert r.returncode == 1, r.stderr
    assert f"something already listens on http://127.0.0.1:{port}" in r.stderr
    assert not (tmp_path / "data").exists()  # refused before generating a secret


def test_config_check_output_is_what_up_reads(tmp_path: Path):
    # `up` and `config check` load the same settings: the port shown is the one up would use.
    port = free_port()
    r = spooky("config", "check", "--config", str(write_config(tmp_path, port)))
    assert r.returncode == 0, r.stderr
    assert f"port = {port}" in r.stdout
    assert json.dumps(str(tmp_path / "data")) in r.stdout
