"""`spooky` reports a missing optional extra with the install command, and lets every other
ModuleNotFoundError (a typo in an import) surface instead of hiding the command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spooky import cli

ROOT = Path(__file__).resolve().parents[2]


def _command_module(tmp_path: Path, name: str, imports: str) -> None:
    (tmp_path / f"{name}.py").write_text(
        f"{imports}\n\n\ndef register(sub):\n    sub.add_parser('typo').set_defaults(func=lambda a: 0)\n",
        encoding="utf-8",
    )


def test_a_typo_in_a_command_import_surfaces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    _command_module(tmp_path, "typo_command", "import spooky.no_such_module  # the typo")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", (("typo_command", ("typo",), "engine"),))
    with pytest.raises(ModuleNotFoundError) as e:
        cli.build_parser()
    assert e.value.name == "spooky.no_such_module"


def test_a_missing_extra_names_the_extra_and_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
):
    _command_module(tmp_path, "discord_command", "import discord")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "discord", None)  # what an install without the extra sees
    monkeypatch.setattr(cli, "COMMANDS", (("discord_command", ("bot",), "bot"),))
    assert cli.main(["bot", "--config", "x.toml"]) == 1
    err = capsys.readouterr().err
    assert "`bot` extra" in err and "'discord'" in err and "pip install -c constraints.txt '.[bot]'" in err


def _spooky(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_command_that_needs_torch_says_so_when_torch_is_missing(tmp_path: Path):
    # The render command imports torch only when it runs; without torch it explains, no traceback.
    r = _spooky(
        "import sys; sys.modules['torch'] = None\n"
        "from spooky.cli import main\n"
        f"sys.exit(main(['render', 'a ghost', '--preset', 'tiny', '--out', {str(tmp_path)!r}]))"
    )
    assert r.returncode == 1, r.stderr
    assert "`engine` extra" in r.stderr and "'torch'" in r.stderr and "Traceback" not in r.stderr


def test_a_missing_module_that_is_no_extra_surfaces_at_run_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (tmp_path / "lazy_typo.py").write_text(
        "def run(args):\n    import spooky.no_such_module  # the typo, in a command's lazy import\n\n\n"
        "def register(sub):\n    sub.add_parser('render').set_defaults(func=run)\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMANDS", (("lazy_typo", ("render",), "engine"),))
    with pytest.raises(ModuleNotFoundError) as e:
        cli.main(["render"])
    assert e.value.name == "spooky.no_such_module"
