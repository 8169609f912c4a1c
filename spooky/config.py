"""Typed settings, loaded once from `config.toml` (no torch import).

Every section is a pydantic model with a comment per field; unknown keys are errors, so a typo in
the file fails at start with the key's name. Secrets come from the environment first.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from spooky.bounds import MAX_FRAMES, MAX_STEPS, MIN_VIDEO_BYTES
from spooky.contract import LimitValues
from spooky.errors import ConfigError

MiB = 1024 * 1024

#: Environment variables that win over the file for secrets.
ENV_ENGINE_SECRET = "SPOOKY_ENGINE_SECRET"
ENV_DISCORD_TOKEN = "DISCORD_TOKEN"
#: The shared queue's URL (it usually carries a password), like SPOOKY_ENGINE__DATABASE_URL.
ENV_DATABASE_URL = "SPOOKY_DATABASE_URL"
#: URL schemes `[engine] database_url` accepts (PostgreSQL's two spellings).
DATABASE_SCHEMES = ("postgresql", "postgres")
#: Any setting may also come from SPOOKY_<SECTION>__<KEY> (e.g. SPOOKY_ENGINE__DATA_DIR=/data); it
#: wins over the file. The Docker images use it so one config.toml serves host and containers.
ENV_SETTING_PREFIX = "SPOOKY_"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelsConfig(_Section):
    """Which weights the engine loads and where it finds them."""

    # "full": the published checkpoints; "tiny": toy-size random models for tests and smoke runs.
    preset: Literal["full", "tiny"] = "full"
    # "auto" picks CUDA when available, else CPU.
    device: str = "auto"
    # Where `spooky weights fetch` downloads to and where missing paths are looked up.
    cache_dir: Path = Path("~/.cache/spookygan").expanduser()
    # rosinality-format StyleGAN2 checkpoint; empty = <cache_dir>/stylegan2-ffhq-config-f.pt
    stylegan2: Path | None = None
    # Which VQGAN to use: a name from the weights registry ("vqgan_wikiart_16384", "vqgan_imagenet_16384").
    vqgan: str = "vqgan_wikiart_16384"
    # Explicit taming files (override the registry name): the yaml and the Lightning ckpt.
    vqgan_config: Path | None = None
    vqgan_ckpt: Path | None = None
    # CLIP ViT-B-32 (openai): open_clip's .bin / .safetensors or OpenAI's ViT-B-32.pt; empty = the
    # first found in <cache_dir>, the Hugging Face cache (HF_HUB_CACHE / HF_HOME) or ~/.cache/clip
    clip: Path | None = None
    # Seed of the tiny preset's random weights (the same seed gives the same toy models).
    tiny_seed: int = 0


class PipelineConfig(_Section):
    """Defaults of the three stages (SPEC §2); requests may override within the limits."""

    stylegan_steps: int = Field(40, ge=1, le=MAX_STEPS)
    stylegan_lr: float = Field(0.1, gt=0)
    # Weight of the L2 pull toward the start latent.
    l2_lambda: float = Field(0.008, ge=0)
    # Emit a progress still every this many steps (0 = only the final image).
    still_every: int = Field(5, ge=0)
    scare_steps: int = Field(10, ge=0, le=MAX_STEPS)
    scare_lr: float = Field(0.1, gt=0)
    # Recompute the VQGAN decoder's activations in the backward pass (stages 2 and 3): the same
    # images, about a fifth more arithmetic per step, a third of the memory. "auto" turns it on only
    # where the plain backward would not fit (free GPU memory at load, or system RAM on a CPU).
    decoder_checkpointing: bool | Literal["auto"] = "auto"
    # Arithmetic of the networks: "auto" = bf16 on GPUs with bf16 tensor cores, else fp32;
    # "tf32" = TF32 matmuls/convolutions on CUDA. The latent and the loss are always fp32.
    precision: Literal["auto", "fp32", "tf32", "bf16"] = "auto"
    # VQGAN weights and activations in channels_last (NHWC) memory: "auto" = on (cuDNN's tensor
    # cores work in NHWC, and it is faster on the CPU too; see docs/operators.md). The same images.
    channels_last: bool | Literal["auto"] = "auto"
    # torch.compile the VQGAN decoder and CLIP's image tower (stages 2 and 3): the first step of a
    # canvas size pays the compilation (tens of seconds); needs a C compiler for the CPU backend.
    compile: bool = False
    # Replay each nightmare frame's step as one captured CUDA graph (static shapes, one launch per
    # frame); needs a CUDA device. Off until benchmarks/gpu_check.sh has run it on a GPU.
    cuda_graphs: bool = False
    # Number of CLIP cutouts per step in stages 2 and 3.
    cutouts: int = Field(32, ge=1, le=256)
    # Stage-2/3 canvas, width x height; both multiples of the VQGAN's downsampling factor.
    size: tuple[int, int] = (608, 752)
    nightmare_prompt: str = "nightmare"
    nightmare_frames: int = Field(300, ge=1, le=MAX_FRAMES)
    nightmare_lr: float = Field(0.01, gt=0)
    fps: int = Field(30, ge=1, le=120)
    # Byte budget of the MP4 (Discord's default upload limit for bots is 10 MiB).
    video_max_bytes: int = Field(10 * MiB, ge=MIN_VIDEO_BYTES)


class EngineConfig(_Section):
    """The GPU process and its local API."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=1, le=65535)
    # Shared secret for the API; SPOOKY_ENGINE_SECRET wins over the file.
    secret: SecretStr | None = None
    # Folder for the SQLite queue and the artifacts (PNG, MP4).
    data_dir: Path = Path("./data")
    # postgresql://user:password@host:port/db: a queue several engines share; "" = SQLite in data_dir.
    database_url: str = ""
    # all: API and worker in one process; api: the HTTP API only (no torch, no models; several may
    # share one address); worker: renders on [models] device, serves only /v1/health and /metrics.
    # api and worker share their queue through database_url (PostgreSQL).
    role: Literal["all", "api", "worker"] = "all"
    # A worker renews the lease of the job it runs this often / 3; a job whose lease lapses (worker
    # killed, host gone) goes back to the queue for another worker.
    lease_s: float = Field(30, ge=1)
    # Where artifacts (PNG, MP4) are written; "" = data_dir/artifacts. Every API node and worker
    # must see the same folder (a shared volume or NFS mount) when they run on several hosts.
    artifacts_dir: Path | None = None
    # Most jobs waiting or running across all servers.
    max_queue: int = Field(100, ge=1)
    # A job running longer than this fails with a time-out.
    job_timeout_s: float = Field(900, gt=0)
    # Artifacts older than this are deleted; the last image per user and channel is kept.
    artifact_retention_hours: float = Field(72, gt=0)
    # On SIGTERM, wait this long for the running job before stopping it.
    drain_timeout_s: float = Field(30, ge=0)
    # Largest request body the API accepts (uploads included).
    max_body_bytes: int = Field(12 * MiB, ge=1024)

    @field_validator("database_url")
    @classmethod
    def _database_scheme(cls, v: str) -> str:
        v = v.strip()
        if v and urlsplit(v).scheme not in DATABASE_SCHEMES:
            # Never echo the value: it may carry a password.
            raise ValueError(
                "must be a postgresql://user:password@host:port/database URL, or empty for the "
                "SQLite file in data_dir"
            )
        return v


def mask_url(url: str) -> str:
    """The URL with its password replaced by ***, for logs and `config check`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


class BotConfig(_Section):
    """The Discord face."""

    # Bot token; DISCORD_TOKEN wins over the file. Never logged.
    token: SecretStr | None = None
    # Where the bot reaches the engine's API.
    engine_url: str = "http://127.0.0.1:8765"
    # Discord REST base and gateway (change only for Discord-compatible servers and tests).
    api_base: str = "https://discord.com/api/v10"
    gateway_url: str | None = None
    # Minimum seconds between two edits of one progress message.
    progress_interval_s: float = Field(1.5, ge=0.2)
    # Upload limit used when the server's own is unknown.
    upload_limit_bytes: int = Field(10 * MiB, ge=1024)
    # Folder for the bot's own state (the engine event cursor).
    data_dir: Path = Path("./data/bot")
    # Stop using an interaction's webhook after this many seconds (Discord tokens live 900 s);
    # later messages go through the bot's own channel messages.
    interaction_ttl_s: float = Field(840, gt=0)
    # Publish the slash commands (PUT /applications/{id}/commands) at start.
    sync_commands: bool = True
    # Prometheus `GET /metrics` of the bot (commands, ack latency, Discord errors); port 0 = off.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(0, ge=0, le=65535)
    # Shards (Discord splits the servers of a bot in more than 2,500 of them): how many in all, and
    # which this process runs. Unset: Discord's recommended count, all in this one process.
    shard_count: int | None = Field(None, ge=1)
    shard_ids: list[int] | None = None

    @field_validator("shard_ids")
    @classmethod
    def _shards(cls, ids: list[int] | None, info: ValidationInfo) -> list[int] | None:
        if ids is None:
            return ids
        count = info.data.get("shard_count")
        if count is None:
            raise ValueError("shard_ids needs shard_count (the total number of shards of the bot)")
        if not ids or len(set(ids)) != len(ids) or any(not 0 <= i < count for i in ids):
            raise ValueError(f"shard_ids must be distinct shards from 0 to {count - 1}, got {ids}")
        return ids


class LimitsConfig(LimitValues):
    """Per-server defaults until a moderator changes them with /limits set.

    The fields, defaults and ranges are `spooky.contract.LimitValues`, the very model /limits set
    is checked against, so a default the engine would refuse is refused here, at config time.
    """

    model_config = _Section.model_config


class Settings(_Section):
    models: ModelsConfig = ModelsConfig()
    pipeline: PipelineConfig = PipelineConfig()
    engine: EngineConfig = EngineConfig()
    bot: BotConfig = BotConfig()
    limits: LimitsConfig = LimitsConfig()

    @field_validator("models")
    @classmethod
    def _expand(cls, v: ModelsConfig) -> ModelsConfig:
        v.cache_dir = v.cache_dir.expanduser()
        return v


def load_settings(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> Settings:
    """Read `path` (TOML), apply environment secrets, validate; raise ConfigError naming the key."""
    env = os.environ if env is None else env
    data: dict = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise ConfigError(f"config file not found: {p}", hint="copy config.example.toml") from e
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{p} is not valid TOML: {e}") from e
    for (section, key), name in env_overrides(env).items():
        if not isinstance(data.get(section, {}), dict):
            raise ConfigError(f"{section} must be a [{section}] table, not a value")
        data.setdefault(section, {})[key] = _env_value(env[name])
    if env.get(ENV_ENGINE_SECRET):
        data.setdefault("engine", {})["secret"] = env[ENV_ENGINE_SECRET]
    if env.get(ENV_DISCORD_TOKEN):
        data.setdefault("bot", {})["token"] = env[ENV_DISCORD_TOKEN]
    if env.get(ENV_DATABASE_URL):
        data.setdefault("engine", {})["database_url"] = env[ENV_DATABASE_URL]
    try:
        settings = Settings.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_describe(e, path)) from e
    _check_combinations(settings, path)
    return settings


def _check_combinations(settings: Settings, path: str | Path | None) -> None:
    """Settings valid one by one that cannot work together (the renderer checks them again once
    the device is resolved: "auto" may or may not be CUDA)."""
    device = settings.models.device
    if settings.pipeline.cuda_graphs and device != "auto" and not device.startswith("cuda"):
        where = f" in {path}" if path else ""
        raise ConfigError(
            f"invalid settings{where}:\n  pipeline.cuda_graphs: CUDA graphs need a CUDA device, but "
            f"models.device is {device!r} (got True)",
            hint='set [pipeline] cuda_graphs = false, or [models] device = "cuda" on a machine with a GPU',
        )


def env_overrides(env: Mapping[str, str]) -> dict[tuple[str, str], str]:
    """Map (section, key) to the SPOOKY_<SECTION>__<KEY> variable that sets it; unknown names fail."""
    found: dict[tuple[str, str], str] = {}
    for name in env:
        if not name.startswith(ENV_SETTING_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_SETTING_PREFIX) :].lower().partition("__")
        model = Settings.model_fields.get(section)
        if model is None:
            raise ConfigError(
                f"environment variable {name} names no settings section {section!r}",
                hint=f"sections: {', '.join(Settings.model_fields)}",
            )
        fields = model.annotation.model_fields  # type: ignore[union-attr]
        if key not in fields:
            raise ConfigError(
                f"environment variable {name} names no setting {section}.{key}",
                hint=f"[{section}] has: {', '.join(fields)}",
            )
        found[(section, key)] = name
    return found


def _env_value(raw: str) -> object:
    # Lists and tables (e.g. size = [608, 752]) are written as JSON; anything else stays a string
    # and pydantic converts it to the field's type.
    if raw.lstrip().startswith(("[", "{")):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    return raw


_SECRET_KEYS = {("engine", "secret"), ("bot", "token"), ("engine", "database_url")}


def _allowed(loc: tuple) -> str | None:
    """The allowed values of the setting at `loc`, from its type and bounds, for error messages."""
    if len(loc) == 1:
        return f"known sections: {', '.join(Settings.model_fields)}"
    section = Settings.model_fields.get(str(loc[0]))
    if section is None:
        return None
    fields = section.annotation.model_fields  # type: ignore[union-attr]
    field = fields.get(str(loc[1]))
    if field is None:
        return f"[{loc[0]}] has: {', '.join(fields)}"
    if get_origin(field.annotation) is Literal:
        return "allowed: " + ", ".join(repr(a) for a in get_args(field.annotation))
    bounds = []
    for m in field.metadata:
        for attr, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(m, attr, None) is not None:
                bounds.append(f"{sign} {getattr(m, attr)}")
    return ("allowed: " + " and ".join(bounds)) if bounds else None


def _describe(e: ValidationError, path: str | Path | None) -> str:
    where = f" in {path}" if path else ""
    lines = [f"invalid settings{where}:"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        # Echo what was given (never for secrets) and what is allowed, so the fix is obvious.
        given = "" if tuple(err["loc"][:2]) in _SECRET_KEYS else f" (got {err.get('input')!r:.60})"
        allowed = _allowed(tuple(err["loc"]))
        hint = f"; {allowed}" if allowed and err["type"] != "literal_error" else ""
        msg, given = ("unknown key", "") if err["type"] == "extra_forbidden" else (err["msg"], given)
        lines.append(f"  {key}: {msg}{given}{hint}")
    return "\n".join(lines)
