"""Logging configured at the CLI entry: text by default, JSON lines with the per-job fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spooky.logs import wants_json

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import logging, sys
from spooky.logs import configure_logging, wants_json
configure_logging(json_lines=wants_json(False))
try:
    raise ValueError("boom")
except ValueError:
    logging.getLogger("engine.service.worker").info(
        "job finished %s", "job_id=j1",
        extra={"job_id": "j1", "outcome": "succeeded", "stages": {"stylegan": 1.5}},
        exc_info=True,
    )
"""


def run(env: dict[str, str]) -> str:
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_json_lines_carry_the_extra_fields():
    (line,) = [x for x in run({"SPOOKY_LOG_FORMAT": "json"}).splitlines() if x.startswith("{")]
    record = json.loads(line)
    assert record["logger"] == "engine.service.worker" and record["level"] == "INFO"
    assert record["msg"] == "job finished job_id=j1"
    assert (record["job_id"], record["outcome"], record["stages"]) == ("j1", "succeeded", {"stylegan": 1.5})
    assert "ValueError: boom" in record["exc"] and record["ts"].endswith("Z")


def test_text_is_the_default():
    out = run({"SPOOKY_LOG_FORMAT": ""})
    assert "INFO engine.service.worker: job finished job_id=j1" in out
    assert not out.lstrip().startswith("{")


@pytest.mark.parametrize(
    ("flag", "env", "want"),
    [(False, {}, False), (True, {}, True), (False, {"SPOOKY_LOG_FORMAT": "JSON"}, True),
     (False, {"SPOOKY_LOG_FORMAT": "text"}, False)],
)  # fmt: skip
def test_wants_json(flag: bool, env: dict[str, str], want: bool):
    assert wants_json(flag, env) is want
