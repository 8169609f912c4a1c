"""Dockerfile, compose.yaml and .dockerignore checked against the project (no Docker needed).

What this cannot prove: that the images build, that torch finds the GPU inside the container, or
that compose starts the services; those need a Docker engine and a GPU host (docs/operators.md).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from spooky.cli import build_parser
from spooky.config import EngineConfig, Settings, env_overrides, load_settings

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text(encoding="utf-8"))
SERVICES: dict = COMPOSE["services"]


# --- a small Dockerfile reader ------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def read_dockerfile(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    pending, start = "", 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may sit inside a continued instruction, as Docker allows
        if not pending:
            start = n
        pending += " " + line[:-1] if line.endswith("\\") else " " + line
        if line.endswith("\\"):
            continue
        keyword, _, args = pending.strip().partition(" ")
        pending = ""
        inst = Instruction(keyword.upper(), args.strip(), start)
        if inst.keyword == "FROM":
            m = re.match(r"^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", inst.args, re.I)
            assert m, f"Dockerfile:{start}: cannot read FROM {inst.args!r}"
            stages.append(Stage(name=(m.group(2) or str(len(stages))).lower(), base=m.group(1)))
        elif stages:
            stages[-1].instructions.append(inst)
    assert not pending, "Dockerfile ends inside a continued line"
    return stages


STAGES = {s.name: s for s in read_dockerfile(ROOT / "Dockerfile")}
TARGETS = {name: svc["build"]["target"] for name, svc in SERVICES.items() if "build" in svc}


def chain(stage: Stage) -> list[Stage]:
    """The stage and the stages it is built FROM, root first."""
    out = [stage]
    while out[0].base.lower() in STAGES:
        out.insert(0, STAGES[out[0].base.lower()])
    return out


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for s in chain(stage):
        for inst in s.all("ENV"):
            for word in shlex.split(inst.args):
                key, sep, value = word.partition("=")
                assert sep, f"Dockerfile:{inst.line}: use ENV KEY=VALUE"
                env[key] = value
    return env


def exec_form(args: str) -> list[str]:
    """A JSON-array CMD/ENTRYPOINT (shell form hides signals from the process; we refuse it)."""
    words = json.loads(args)
    assert isinstance(words, list) and all(isinstance(w, str) for w in words), args
    return words


def volumes_of(stage: Stage) -> set[str]:
    out: set[str] = set()
    for inst in stage.all("VOLUME"):
        out.update(json.loads(inst.args) if inst.args.startswith("[") else inst.args.split())
    return out


def parse_spooky(words: list[str]) -> argparse.Namespace:
    """Parse a `spooky …` command line with the real CLI parser; fail the test if it is refused."""
    try:
        ns = build_parser().parse_args(words)
    except SystemExit as e:
        pytest.fail(f"`spooky {' '.join(words)}` is not a valid command (argparse exit {e.code})")
    assert getattr(ns, "func", None), f"`spooky {' '.join(words)}` names no runnable command"
    return ns


def command_of(service: str) -> list[str]:
    """What the service's container runs after the `spooky` entry point."""
    stage = STAGES[TARGETS[service]]
    cmd = SERVICES[service].get("command")
    if cmd is not None:
        return shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return exec_form(stage.all("CMD")[-1].args)


# --- .dockerignore ----------------------------------------------------------------------------------


def ignored(rel: str) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a folder covers its files."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in lines if p.strip() and not p.startswith("#")]
    parts = rel.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            result = not negate
    return result


# --- the checks ---------------------------------------------------------------------------------


def test_compose_targets_are_stages_of_the_dockerfile():
    assert set(TARGETS) == {"engine", "bot", "worker"}
    for service, target in TARGETS.items():
        assert target in STAGES, f"compose service {service} builds target {target!r}, not in the Dockerfile"
        assert SERVICES[service]["build"].get("context", ".") == "."


def test_copy_sources_exist_and_are_in_the_build_context():
    copies = [i for s in STAGES.values() for i in s.all("COPY")]
    assert copies
    for inst in copies:
        words = shlex.split(inst.args)
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if from_stage is not None:
            assert from_stage in STAGES, f"Dockerfile:{inst.line}: COPY --from={from_stage} names no stage"
            continue
        for src in paths[:-1]:
            assert (ROOT / src).exists(), f"Dockerfile:{inst.line}: COPY source {src} is not in the repo"
            assert not ignored(src), f"Dockerfile:{inst.line}: COPY source {src} is excluded by .dockerignore"
            if (ROOT / src).is_dir():
                for f in (ROOT / src).rglob("*.py"):
                    rel = f.relative_to(ROOT).as_posix()
                    assert not ignored(rel), f"{rel} would be left out of the build context"


def test_the_build_context_leaves_out_local_state():
    local_state = (".venv/bin/python", "data/spooky.db", "weights/x.pt", ".env", ".git/config", "out/a.png")
    test_data = ("tests/golden/stylegan2/golden_B.npz",)  # 10 MB of reference data no image needs
    for rel in local_state + test_data:
        assert ignored(rel), f"{rel} would be sent to the Docker build context"


def _installs(stage: Stage) -> list[list[str]]:
    """The extras of every `scripts/setup.sh EXTRAS` run in this stage or the stages it copies from."""
    found = []
    for s in chain(stage):
        for inst in s.all("RUN"):
            m = re.search(r"scripts/setup\.sh(?:\s+([\w,]+))?", inst.args)
            if m:
                assert m.group(1), f"Dockerfile:{inst.line}: name the extras (the default installs dev too)"
                found.append(m.group(1).split(","))
        for inst in s.all("COPY"):
            m = re.search(r"--from=(\S+)", inst.args)
            if m and m.group(1) in STAGES:
                found += _installs(STAGES[m.group(1)])
    return found


@pytest.mark.parametrize("service", ["engine", "bot"])
def test_each_image_installs_through_setup_sh_with_existing_extras(service: str):
    stage = STAGES[TARGETS[service]]
    installs = _installs(stage)
    assert installs, f"the {service} image does not install through scripts/setup.sh"
    extras = PYPROJECT["project"]["optional-dependencies"]
    for names in installs:
        for name in names:
            assert name in extras, f"extra {name!r} is not in pyproject.toml ({sorted(extras)})"
    assert installs == [[service]], f"the {service} image should install exactly the {service} extra"
    # One install path, into the image's Python, not editable (the source is not kept).
    build_env = {}
    for s in STAGES.values():
        if any("scripts/setup.sh" in i.args for i in s.all("RUN")):
            build_env = env_of(s)
    assert build_env.get("SPOOKY_NO_VENV") == "1" and build_env.get("SPOOKY_EDITABLE") == "0"


def test_the_bot_image_has_no_torch():
    deps = PYPROJECT["project"]["dependencies"] + PYPROJECT["project"]["optional-dependencies"]["bot"]
    assert not [d for d in deps if re.match(r"^(torch|torchvision|open[-_]clip)", d)]


@pytest.mark.parametrize("service", ["engine", "bot"])
def test_entry_point_and_commands_exist(service: str):
    stage = STAGES[TARGETS[service]]
    entry = exec_form(stage.all("ENTRYPOINT")[-1].args)
    assert entry == ["spooky"] and "spooky" in PYPROJECT["project"]["scripts"]
    ns = parse_spooky(command_of(service))
    assert ns.command == service
    # The --config the container is started with is the file compose mounts.
    mounts = [v for v in SERVICES[service]["volumes"] if isinstance(v, dict) and v.get("type") == "bind"]
    assert Path(ns.config).as_posix() in {m["target"] for m in mounts}
    for m in mounts:
        assert (ROOT / m["source"]).name == "config.toml" and m.get("read_only") is True
        assert m.get("bind", {}).get("create_host_path") is False  # a missing file fails loudly


def test_the_engine_healthcheck_calls_an_existing_command():
    stage = STAGES[TARGETS["engine"]]
    (hc,) = stage.all("HEALTHCHECK")
    m = re.match(r"^(?:--\S+\s+)*CMD\s+(\[.*\])$", hc.args)
    assert m, f"Dockerfile:{hc.line}: HEALTHCHECK should be CMD [...] (exec form)"
    words = exec_form(m.group(1))
    assert words[0] == "spooky"
    ns = parse_spooky(words[1:])
    assert ns.command == "engine" and ns.check is True
    assert Path(ns.config) == Path(parse_spooky(command_of("engine")).config)


def test_ports_match_the_engine_defaults():
    port = EngineConfig().port
    stage = STAGES[TARGETS["engine"]]
    assert [int(i.args.split("/")[0]) for i in stage.all("EXPOSE")] == [port]
    published = [str(p) for p in SERVICES["engine"].get("ports", [])]
    for p in published:
        assert p.rsplit(":", 1)[1] == str(port), f"compose publishes {p}, the engine listens on {port}"
        assert p.startswith("127.0.0.1:"), "publish the engine API on the host's loopback only"
    url = urlsplit(SERVICES["bot"]["environment"]["SPOOKY_BOT__ENGINE_URL"])
    assert (url.hostname, url.port) == ("engine", port)


#: What .env supplies, where a setting checks its form.
_PLACEHOLDERS = {
    "SPOOKY_DATABASE_URL": "postgresql://spooky:placeholder@postgres:5432/spooky",
    "SPOOKY_ENGINE__ROLE": "all",
}


def _container_settings(service: str, tmp_path: Path) -> Settings:
    """The settings a container sees: the example config plus the image's and compose's env."""
    env = {k: v for k, v in env_of(STAGES[TARGETS[service]]).items() if k.startswith("SPOOKY_")}
    for key, value in SERVICES[service].get("environment", {}).items():
        env[key] = _PLACEHOLDERS.get(key, "placeholder-secret") if str(value).startswith("${") else str(value)
    env_overrides(env)  # every SPOOKY_<SECTION>__<KEY> names a real setting
    return load_settings(ROOT / "config.example.toml", env=env)


def test_volume_paths_match_the_settings(tmp_path: Path):
    example = (ROOT / "config.example.toml").read_text(encoding="utf-8")
    engine = _container_settings("engine", tmp_path)
    bot = _container_settings("bot", tmp_path)
    engine_volumes = volumes_of(STAGES[TARGETS["engine"]])
    bot_volumes = volumes_of(STAGES[TARGETS["bot"]])
    settings_paths = {str(engine.models.cache_dir), str(engine.engine.data_dir)}
    assert engine_volumes == settings_paths == {"/weights", "/data"}
    assert bot_volumes == {str(bot.bot.data_dir)}
    assert engine.engine.host == "0.0.0.0" and bot.bot.engine_url == "http://engine:8765"
    # The example config tells the reader where each folder is in Docker.
    for path in engine_volumes | bot_volumes:
        assert f"Docker: {path}" in example, f"config.example.toml does not mention the Docker path {path}"
    for service, volumes in (("engine", engine_volumes), ("bot", bot_volumes)):
        targets = {v.split(":")[1] for v in SERVICES[service]["volumes"] if isinstance(v, str) and ":" in v}
        assert targets == volumes, f"compose mounts {targets} on {service}; the image declares {volumes}"
        named = {v.split(":")[0] for v in SERVICES[service]["volumes"] if isinstance(v, str)}
        assert named <= set(COMPOSE.get("volumes", {})), f"{service} uses undeclared volumes"


@pytest.mark.parametrize("service", ["engine", "bot"])
def test_each_final_stage_runs_as_a_non_root_user(service: str):
    stage = STAGES[TARGETS[service]]
    users = stage.all("USER")
    assert users, f"stage {stage.name} sets no USER (it would run as root)"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0")
    created = [i for s in chain(stage) for i in s.all("RUN") if re.search(rf"useradd\b.*\b{user}\b", i.args)]
    assert created, f"user {user} is never created in the stages {stage.name} is built from"
    # Nothing after USER switches back to root.
    last_user = max(i.line for i in users)
    assert not [i for i in stage.instructions if i.keyword == "RUN" and i.line > last_user]


def test_the_engine_reserves_a_gpu_and_the_bot_waits_for_its_health():
    devices = SERVICES["engine"]["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d.get("capabilities", []) for d in devices)
    assert "deploy" not in SERVICES["bot"]  # the bot needs no GPU
    assert SERVICES["bot"]["depends_on"]["engine"]["condition"] == "service_healthy"
    assert STAGES[TARGETS["engine"]].all("HEALTHCHECK")


def test_secrets_come_from_the_env_file_and_only_where_needed():
    for service in ("engine", "bot"):
        env = SERVICES[service]["environment"]
        assert re.fullmatch(r"\$\{SPOOKY_ENGINE_SECRET:\?.+\}", env["SPOOKY_ENGINE_SECRET"])
    assert re.fullmatch(r"\$\{DISCORD_TOKEN:\?.+\}", SERVICES["bot"]["environment"]["DISCORD_TOKEN"])
    assert "DISCORD_TOKEN" not in SERVICES["engine"]["environment"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_docker_stop_waits_for_the_engine_to_drain():
    from engine.service.app import DRAIN_GRACE_S

    grace = SERVICES["engine"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > EngineConfig().drain_timeout_s + DRAIN_GRACE_S


def test_the_postgres_service_is_optional_durable_and_checked_for_health(tmp_path: Path):
    pg = SERVICES["postgres"]
    assert pg["profiles"] == ["postgres"]  # `docker compose up` alone keeps the SQLite default
    assert "pgdata:/var/lib/postgresql/data" in pg["volumes"] and "pgdata" in COMPOSE["volumes"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"]) and "ports" not in pg
    dep = SERVICES["engine"]["depends_on"]["postgres"]
    assert dep == {"condition": "service_healthy", "required": False}
    assert SERVICES["engine"]["environment"]["SPOOKY_DATABASE_URL"] == "${SPOOKY_DATABASE_URL:-}"
    assert "SPOOKY_DATABASE_URL" not in SERVICES["bot"]["environment"]  # its password stays with engines
    # The URL compose.yaml's header tells operators to write reaches the postgres service.
    engine = _container_settings("engine", tmp_path)
    url = urlsplit(engine.engine.database_url)
    env = pg["environment"]
    assert (url.hostname, url.port, url.username, url.path) == (
        "postgres",
        5432,
        env["POSTGRES_USER"],
        "/spooky",
    )
    assert env["POSTGRES_DB"] == "spooky"
    header = (ROOT / "compose.yaml").read_text(encoding="utf-8")
    assert "SPOOKY_DATABASE_URL=postgresql://spooky:<the same password>@postgres:5432/spooky" in header
