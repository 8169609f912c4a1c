"""`[engine] database_url` / SPOOKY_DATABASE_URL: checked, selected, and never printed with its password."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spooky.config import load_settings, mask_url
from spooky.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "s3cret-Pa55word"


def _check(cfg: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_") and k != "DISCORD_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "spooky.cli", "config", "check", "--config", str(cfg)],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_default_is_the_sqlite_file():
    assert load_settings(None, env={}).engine.database_url == ""


def test_the_environment_sets_the_url_over_the_file(tmp_path: Path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('[engine]\ndatabase_url = "postgresql://a@file-host/db"\n')
    url = f"postgresql://spooky:{PASSWORD}@db.internal:5432/spooky"
    assert load_settings(cfg, env={"SPOOKY_DATABASE_URL": url}).engine.database_url == url
    assert load_settings(cfg, env={}).engine.database_url == "postgresql://a@file-host/db"


@pytest.mark.parametrize(
    "url", [f"mysql://root:{PASSWORD}@db/spooky", f"sqlite:///{PASSWORD}.db", f"root:{PASSWORD}@db/spooky"]
)
def test_another_scheme_is_refused_without_echoing_the_value(url: str):
    with pytest.raises(ConfigError) as raised:
        load_settings(None, env={"SPOOKY_DATABASE_URL": url})
    text = str(raised.value)
    assert "engine.database_url" in text and "postgresql://" in text
    assert PASSWORD not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"postgresql://spooky:{PASSWORD}@db:5432/spooky", "postgresql://spooky:***@db:5432/spooky"),
        (f"postgres://u:{PASSWORD}@[::1]/q?sslmode=require", "postgres://u:***@[::1]/q?sslmode=require"),
        ("postgresql://spooky@db/spooky", "postgresql://spooky@db/spooky"),
    ],
)
def test_mask_url_hides_only_the_password(url: str, shown: str):
    assert mask_url(url) == shown


def test_config_check_shows_the_url_masked_and_its_source(tmp_path: Path):
    cfg = tmp_path / "config.toml"
    cfg.write_text("")
    url = f"postgresql://spooky:{PASSWORD}@db.internal:5432/spooky"
    r = _check(cfg, {"SPOOKY_DATABASE_URL": url})
    assert r.returncode == 0, r.stderr
    assert PASSWORD not in r.stdout + r.stderr
    assert (
        'database_url = "postgresql://spooky:***@db.internal:5432/spooky"  # from SPOOKY_DATABASE_URL'
        in r.stdout
    )
    bad = _check(cfg, {"SPOOKY_DATABASE_URL": f"mysql://root:{PASSWORD}@db/x"})
    assert bad.returncode == 1 and "engine.database_url" in bad.stderr
    assert PASSWORD not in bad.stdout + bad.stderr
