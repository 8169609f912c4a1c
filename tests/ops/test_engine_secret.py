"""`spooky up`'s engine secret: generated once into <data_dir>/engine.secret (0600), env/config win."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from spooky.config import load_settings
from spooky.errors import ConfigError
from spooky.ops import SECRET_FILE, _same_endpoint, ensure_engine_secret, local_engine_url


def settings_for(tmp_path: Path, env: dict[str, str] | None = None, extra: str = ""):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[engine]\ndata_dir = "{tmp_path / "data"}"\n{extra}', encoding="utf-8")
    return load_settings(cfg, env=env or {})


def test_generated_once_with_mode_0600_and_reused(tmp_path: Path):
    settings = settings_for(tmp_path)
    secret, source = ensure_engine_secret(settings, {})
    path = tmp_path / "data" / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == secret and len(secret) >= 40
    assert "generated" in source and secret not in source
    again, source2 = ensure_engine_secret(settings, {})
    assert again == secret and str(path) in source2


def test_the_environment_wins_and_writes_nothing(tmp_path: Path):
    env = {"SPOOKY_ENGINE_SECRET": "from-env"}
    secret, source = ensure_engine_secret(settings_for(tmp_path, env), env)
    assert (secret, source) == ("from-env", "from SPOOKY_ENGINE_SECRET")
    assert not (tmp_path / "data" / SECRET_FILE).exists()


def test_a_secret_in_the_file_is_used(tmp_path: Path):
    settings = settings_for(tmp_path, extra='secret = "in-config"\n')
    assert ensure_engine_secret(settings, {})[0] == "in-config"
    assert not (tmp_path / "data" / SECRET_FILE).exists()


def test_a_readable_secret_file_is_tightened(tmp_path: Path):
    path = tmp_path / "data" / SECRET_FILE
    path.parent.mkdir()
    path.write_text("older-secret\n")
    path.chmod(0o644)
    assert ensure_engine_secret(settings_for(tmp_path), {})[0] == "older-secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_empty_secret_file_is_an_error_that_says_what_to_do(tmp_path: Path):
    path = tmp_path / "data" / SECRET_FILE
    path.parent.mkdir()
    path.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        ensure_engine_secret(settings_for(tmp_path), {})


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8765"),
        ("0.0.0.0", "http://127.0.0.1:8765"),
        ("::", "http://[::1]:8765"),
        ("engine.local", "http://engine.local:8765"),
    ],
)
def test_local_engine_url(tmp_path: Path, host: str, url: str):
    assert local_engine_url(settings_for(tmp_path, extra=f'host = "{host}"\n')) == url


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("http://localhost:8765", "http://127.0.0.1:8765", True),
        ("http://127.0.0.1:8765/", "http://127.0.0.1:8765", True),
        ("http://127.0.0.1:8766", "http://127.0.0.1:8765", False),
        ("http://gpu-box:8765", "http://127.0.0.1:8765", False),
    ],
)
def test_same_endpoint(a: str, b: str, same: bool):
    assert _same_endpoint(a, b) is same
