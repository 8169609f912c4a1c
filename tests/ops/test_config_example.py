"""config.example.toml stays complete and truthful; secrets from the environment win; `config check`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from spooky.config import Settings, load_settings
from spooky.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"


def _sections(text: str) -> dict[str, list[str]]:
    """Lines of the example grouped by [section]."""
    out: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"^\[(\w+)\]\s*$", line)
        if m:
            current = m.group(1)
            out[current] = []
        elif current:
            out[current].append(line)
    return out


def _fields() -> list[tuple[str, str]]:
    return [
        (section, key)
        for section, info in Settings.model_fields.items()
        for key in info.annotation.model_fields  # type: ignore[union-attr]
    ]


def test_example_loads_and_equals_the_defaults():
    settings = load_settings(EXAMPLE, env={})
    # Every active value is the built-in default, as the file's header promises.
    assert settings.model_dump() == Settings().model_dump()


@pytest.mark.parametrize(("section", "key"), _fields())
def test_every_setting_is_in_the_example_with_a_comment(section: str, key: str):
    lines = _sections(EXAMPLE.read_text(encoding="utf-8")).get(section)
    assert lines is not None, f"config.example.toml has no [{section}] section"
    pattern = re.compile(rf"^#?\s*{key}\s*=")
    hits = [i for i, line in enumerate(lines) if pattern.match(line)]
    assert hits, f"[{section}] {key} is missing from config.example.toml (active or commented out)"
    i = hits[0]
    # Documented: the line above is a comment that is not itself a commented-out key.
    above = lines[i - 1] if i else ""
    assert above.startswith("#") and not re.match(r"^#\s*\w+\s*=\s", above), (
        f"[{section}] {key} has no comment above it in config.example.toml"
    )
    if lines[i].startswith("#"):
        # Commented out only when there is no default to show.
        default = getattr(getattr(Settings(), section), key)
        assert default is None, f"[{section}] {key} has a default ({default!r}); show it, not commented out"


def test_example_has_no_secret_values():
    for section, key in (("engine", "secret"), ("bot", "token")):
        assert getattr(getattr(load_settings(EXAMPLE, env={}), section), key) is None


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_secrets_from_the_environment_win_over_the_file(tmp_path: Path):
    cfg = _write(tmp_path, '[engine]\nsecret = "from-file"\n[bot]\ntoken = "file-token"\n')
    from_file = load_settings(cfg, env={})
    assert from_file.engine.secret == SecretStr("from-file")
    assert from_file.bot.token == SecretStr("file-token")
    env = {"SPOOKY_ENGINE_SECRET": "from-env", "DISCORD_TOKEN": "env-token"}
    s = load_settings(cfg, env=env)
    assert s.engine.secret.get_secret_value() == "from-env"
    assert s.bot.token.get_secret_value() == "env-token"


def test_any_setting_from_the_environment(tmp_path: Path):
    cfg = _write(tmp_path, "[engine]\nport = 9000\n")
    env = {
        "SPOOKY_ENGINE__PORT": "9100",
        "SPOOKY_ENGINE__DATA_DIR": str(tmp_path / "d"),
        "SPOOKY_PIPELINE__SIZE": "[32, 48]",
        "SPOOKY_MODELS__PRESET": "tiny",
    }
    s = load_settings(cfg, env=env)
    assert (s.engine.port, s.engine.data_dir, s.pipeline.size, s.models.preset) == (
        9100,
        tmp_path / "d",
        (32, 48),
        "tiny",
    )


def test_an_environment_typo_names_the_setting_and_what_exists():
    with pytest.raises(ConfigError) as e:
        load_settings(None, env={"SPOOKY_ENGINE__PROT": "1"})
    assert "SPOOKY_ENGINE__PROT" in str(e.value) and "port" in str(e.value)


def test_errors_name_the_key_the_value_and_the_allowed_values(tmp_path: Path):
    cfg = _write(tmp_path, '[engine]\nport = 99999\nprot = 1\n[models]\npreset = "huge"\n')
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    msg = str(e.value)
    assert "engine.port" in msg and "99999" in msg and "<= 65535" in msg
    assert "engine.prot: unknown key" in msg and "port" in msg
    assert "models.preset" in msg and "'full'" in msg and "'tiny'" in msg


def test_an_invalid_secret_is_never_echoed(tmp_path: Path):
    cfg = _write(tmp_path, "[bot]\ntoken = 123456789\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg, env={})
    assert "bot.token" in str(e.value) and "123456789" not in str(e.value)


def _check(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_") and k != "DISCORD_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "spooky.cli", "config", "check", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_config_check_hides_secrets_and_shows_their_source(tmp_path: Path):
    cfg = _write(tmp_path, '[engine]\nsecret = "file-secret-value"\n[limits]\ncooldown_s = 5\n')
    r = _check("--config", str(cfg), env={"DISCORD_TOKEN": "env-token-value"})
    assert r.returncode == 0, r.stderr
    assert "file-secret-value" not in r.stdout + r.stderr
    assert "env-token-value" not in r.stdout + r.stderr
    assert re.search(r"^secret = \*\*\*set\*\*\*$", r.stdout, re.M)
    assert re.search(r"^token = \*\*\*set\*\*\*  # from DISCORD_TOKEN$", r.stdout, re.M)
    assert re.search(r"^cooldown_s = 5", r.stdout, re.M)
    assert "settings OK" in r.stdout


def test_config_check_without_secrets_says_not_set_and_warns():
    r = _check(env={})
    assert r.returncode == 0, r.stderr
    assert re.search(r"^token = \(not set\)$", r.stdout, re.M)
    assert "warning: no Discord token" in r.stdout


def test_config_check_fails_with_the_key_on_error(tmp_path: Path):
    cfg = _write(tmp_path, "[pipeline]\ncutouts = 0\n")
    r = _check("--config", str(cfg), env={})
    assert r.returncode == 1
    assert "pipeline.cutouts" in r.stderr and ">= 1" in r.stderr


def test_config_check_on_a_missing_file_fails(tmp_path: Path):
    r = _check("--config", str(tmp_path / "nope.toml"), env={})
    assert r.returncode == 1 and "config file not found" in r.stderr


def test_warnings_name_what_to_change(tmp_path: Path):
    from spooky.ops import settings_warnings

    cfg = _write(
        tmp_path,
        '[models]\npreset = "tiny"\n[engine]\nhost = "0.0.0.0"\nport = 9000\n'
        '[bot]\nengine_url = "http://127.0.0.1:8765"\n',
    )
    warnings = "\n".join(settings_warnings(load_settings(cfg, env={}), {}))
    assert "'tiny'" in warnings and "noise" in warnings
    assert "engine.host is '0.0.0.0'" in warnings and "SPOOKY_ENGINE_SECRET" in warnings
    assert "uses port 8765 but engine.port is 9000" in warnings
    assert "DISCORD_TOKEN" in warnings
    quiet = _write(tmp_path, '[engine]\nsecret = "s"\n[bot]\ntoken = "t"\n')
    assert settings_warnings(load_settings(quiet, env={}), {}) == []


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SPOOKY_") and k != "DISCORD_TOKEN"}
    return subprocess.run(
        [sys.executable, "-m", "spooky.cli", *args],
        cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [("max_steps", "5000", "<= 1000"), ("max_jobs_per_user", "101", "<= 100"), ("cooldown_s", "-1", ">= 0")],
)
def test_a_limits_default_the_api_would_refuse_fails_config_check(key: str, value: str, allowed: str):
    env = {f"SPOOKY_LIMITS__{key.upper()}": value}
    r = _check(env=env)
    assert r.returncode == 1 and "settings OK" not in r.stdout
    assert f"limits.{key}" in r.stderr and value in r.stderr and allowed in r.stderr, r.stderr
    # The engine refuses it the same way at start, with no pydantic traceback.
    r = _cli("engine", env={**env, "SPOOKY_ENGINE_SECRET": "s", "SPOOKY_ENGINE__PORT": "9"})
    assert r.returncode == 1 and f"limits.{key}" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_the_limits_section_and_the_per_server_limits_have_the_same_bounds():
    from spooky.config import LimitsConfig
    from spooky.contract import GuildLimits

    for name, field in LimitsConfig.model_fields.items():
        other = GuildLimits.model_fields[name]
        assert (field.default, field.metadata) == (other.default, other.metadata), name
