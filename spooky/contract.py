"""The contract between the bot and the engine: requests, jobs, events, limits (no torch import),
and the engine's resolved job settings (`JobSpec`), which every engine layer reads as one type.

Both sides import this module; the engine validates every request body with these models and the
bot builds them. Unknown fields are refused (`extra="forbid"`), so a typo fails loudly, and the
engine validates bodies strictly (`"yes"` is no boolean, `"5"` no number). Bounds live in
`spooky.bounds`.

HTTP API (JSON bodies; every route but /v1/health needs `Authorization: Bearer <secret>`):

    GET    /v1/health                              -> Health                      (no auth)
    POST   /v1/jobs                 JobRequest     -> 202 SubmitResponse
                                                   |  429/409 RefusalBody (a limit refused it)
                                                   |  400/422 ErrorBody (malformed or invalid)
    GET    /v1/jobs/{id}                           -> JobView
    GET    /v1/jobs?guild_id=&user_id=&state=&undelivered=1&limit=  -> JobList
    POST   /v1/jobs/{id}/cancel     CancelRequest  -> JobView | 403 ErrorBody | 409 (finished)
    PATCH  /v1/jobs/{id}/client     ClientState    -> JobView    (the bot's own bookkeeping)
    POST   /v1/jobs/{id}/delivered                 -> JobView    (the bot posted the result)
    GET    /v1/queue?guild_id=&user_id=            -> QueueView
    GET    /v1/events?job_id=|guild_id=&after=N    -> text/event-stream of Event
                                                      (`id:` = Event.id; `Last-Event-ID` or
                                                      `after` resumes; a comment line every
                                                      SSE_KEEPALIVE_S keeps idle streams open; the
                                                      engine ends a stream it can no longer feed)
    POST   /v1/uploads?user_id=&channel_id=  (raw image bytes)      -> Artifact
    GET    /v1/artifacts/{id}                      -> the bytes (image/png, video/mp4)
    POST   /v1/artifacts/{id}/fit?max_bytes=N      -> Artifact  (a re-encoded MP4 under N bytes,
                                                      for a server whose upload limit is smaller)
    GET    /v1/last-image?user_id=&channel_id=     -> LastImage | 404
    GET    /v1/prompts?user_id=&guild_id=&q=&limit= -> PromptList (the user's recent prompts there)
    GET    /v1/limits                              -> GuildLimits (without a server install: the defaults)
    GET    /v1/guilds/{guild_id}/limits            -> GuildLimits
    PATCH  /v1/guilds/{guild_id}/limits LimitsUpdate -> GuildLimits
    GET    /v1/guilds/{guild_id}/limits/log        -> list[LimitsChange]
    GET    /metrics                                -> Prometheus text

Errors always have the body `ErrorBody` (`{"error": {"code", "message", "details"}}`) or, for a
limit, `RefusalBody` (`{"refusal": Refusal}`), so the bot can show the reason as it is.
"""

from __future__ import annotations

import secrets
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic.fields import FieldInfo

from spooky.bounds import (
    CLIENT_KEY_CHARS,
    CLIENT_MAX_ENTRIES,
    CLIENT_VALUE_CHARS,
    ID_PATTERN,
    MAX_CANVAS_SIDE,
    MAX_COOLDOWN_S,
    MAX_FRAMES,
    MAX_JOBS_PER_USER,
    MAX_PROMPT_CHARS,
    MAX_QUEUE_PER_SERVER,
    MAX_SEED,
    MAX_STEPS,
    MIN_VIDEO_BYTES,
    SNOWFLAKE_PATTERN,
)

R = TypeVar("R")

API_PREFIX = "/v1"
AUTH_HEADER = "Authorization"
#: An event stream carries at least a comment line this often, so a client tells a stream that is
#: merely quiet from a dead one within seconds.
SSE_KEEPALIVE_S = 5.0

#: Discord snowflakes travel as strings (they overflow JavaScript numbers).
Snowflake = Annotated[str, StringConstraints(pattern=SNOWFLAKE_PATTERN)]
ArtifactId = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
#: The bot's bookkeeping on a job; every key and value is bounded, on submit and on PATCH alike.
ClientMap = Annotated[
    dict[
        Annotated[str, StringConstraints(max_length=CLIENT_KEY_CHARS)],
        Annotated[str, StringConstraints(max_length=CLIENT_VALUE_CHARS)],
    ],
    Field(max_length=CLIENT_MAX_ENTRIES),
]


def is_blank(text: str) -> bool:
    """True when nothing in `text` is visible: only spaces, control, format (zero-width) characters."""
    return all(unicodedata.category(c)[0] in "CZ" for c in text)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False, str_strip_whitespace=False)


class JobKind(StrEnum):
    SPOOKY = "spooky"  # StyleGAN2+CLIP face, then the VQGAN+CLIP scare pass: two stills
    NIGHTMARE = "nightmare"  # VQGAN+CLIP drift of an image, one frame per step: an MP4


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


class EventType(StrEnum):
    QUEUED = "queued"  # data: position, eta_s
    STARTED = "started"  # data: attempt
    PROGRESS = "progress"  # data: stage, step, total, still (artifact id or null)
    FINISHED = "finished"  # data: artifacts {name: id}, result {seed, settings}
    FAILED = "failed"  # data: reason, code
    CANCELLED = "cancelled"  # data: by
    INTERRUPTED = "interrupted"  # data: reason, retried (bool) — the engine stopped mid-job


class JobErrorCode(StrEnum):
    """Why a job ended without its result (`JobView.error_code`, the FAILED event's `code`)."""

    CANCELLED = "cancelled"  # its owner or a moderator asked
    TIMEOUT = "timeout"  # [engine] job_timeout_s ran out
    INTERRUPTED = "interrupted"  # every attempt ended without an outcome (its engine or worker died)
    OOM = "oom"  # out of GPU memory
    DISK_FULL = "disk_full"
    VIDEO = "video"  # ffmpeg missing or failed, or the video cannot fit its byte budget
    BAD_SPEC = "bad_spec"  # its stored settings cannot be read by this release
    ERROR = "error"  # anything else; the engine logged it with a traceback
    # What the input was (spooky.errors.InputError and its kinds), found when the job ran.
    BAD_INPUT = "bad_input"
    EMPTY_PROMPT = "empty_prompt"
    PROMPT_TOO_LONG = "prompt_too_long"
    BAD_PROMPT = "bad_prompt"
    INVALID_SIZE = "invalid_size"
    INVALID_IMAGE = "invalid_image"
    # The engine's own setup (spooky.errors.ConfigError, WeightsError and their kinds).
    CONFIG = "config"
    UNKNOWN_PRESET = "unknown_preset"
    WEIGHTS = "weights"
    MISSING_WEIGHTS = "missing_weights"
    CORRUPT_WEIGHTS = "corrupt_weights"
    CHECKPOINT_MISMATCH = "checkpoint_mismatch"
    DOWNLOAD = "download"

    @classmethod
    def parse(cls, code: object) -> JobErrorCode:
        """`code` as a member; anything this release does not know (another release's) as ERROR."""
        return cls(code) if isinstance(code, str) and code in cls._value2member_map_ else cls.ERROR

    @classmethod
    def of(cls, error: BaseException) -> JobErrorCode:
        """The code of an exception that ended a job: its own (`SpookyError.code`) when it is one
        of these, else ERROR."""
        return cls.parse(getattr(error, "code", None))


class HealthStatus(StrEnum):
    LOADING = "loading"  # the API is up and submits are queued; the models are still loading
    READY = "ready"
    DEGRADED = "degraded"  # up, but a write cannot be stored (full disk); `detail` says what and where
    DRAINING = "draining"  # shutting down: new submits are refused, the running job may finish
    ERROR = "error"  # the models failed to load; `detail` says why
    STOPPED = "stopped"  # the engine's own state once stopped; health reports it as draining


class RefusalCode(StrEnum):
    QUEUE_FULL = "queue_full"  # the engine's global queue
    SERVER_QUEUE_FULL = "server_queue_full"
    USER_LIMIT = "user_limit"  # too many jobs of this user waiting or running
    COOLDOWN = "cooldown"
    PAUSED = "paused"  # a moderator paused this server
    CHANNEL_NOT_ALLOWED = "channel_not_allowed"
    BANNED_WORD = "banned_word"
    OUT_OF_RANGE = "out_of_range"  # steps, frames, size beyond the server's range
    NO_PREVIOUS_IMAGE = "no_previous_image"  # /nightmare with nothing to animate
    BAD_PROMPT = "bad_prompt"  # empty, or over CLIP's 77 tokens
    BAD_IMAGE = "bad_image"
    IMAGES_OFF = "images_off"  # a moderator switched picture input off (/limits set allow_images)
    NOT_READY = "not_ready"  # models still loading, or draining for shutdown


# --- a job's fields -----------------------------------------------------------------------------
#
# Each field a job carries is declared once, on its spec (`SpookySpec`, `NightmareSpec`), with its
# bounds (the field's own constraints, so the API schema shows them) and its role:
#
# - `Prompt`: a prompt text; banned words and CLIP's token limit apply to it (engine.service.admission);
# - `Default`: where its value comes from when a request leaves it unset (`resolve_spec`), and the
#   server limit that caps it (checked at submit);
#
# The request (`JobRequest`) offers the same fields, optional, with the same types. A new option is a
# field here (request and spec), the command that offers it, and the stage that uses it.


@dataclass(frozen=True)
class Prompt:
    """Marks a prompt text of a job: banned words and CLIP's 77-token limit apply to it."""

    weighted: bool  # "a:1|b:-0.5" parts, each read by CLIP on its own; False: read whole


@dataclass(frozen=True)
class Default:
    """Where a spec field's value comes from when the request leaves it unset; exactly one of
    `setting`, `same_as`, `drawn`."""

    setting: str | None = None  # this `[pipeline]` setting (spooky.config.PipelineConfig)
    #: The server limit (`LimitValues`) that caps the default and that a request's value is checked
    #: against; the field's lower bound is the range's lower end.
    limit: str | None = None
    same_as: str | None = None  # the value of this earlier field of the spec
    drawn: bool = False  # a fresh random seed, drawn once when the job is accepted


PromptText = Annotated[str, Field(max_length=MAX_PROMPT_CHARS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Steps = Annotated[int, Field(ge=1, le=MAX_STEPS, description="steps")]
ScareSteps = Annotated[int, Field(ge=0, le=MAX_STEPS, description="scare steps")]
Frames = Annotated[int, Field(ge=1, le=MAX_FRAMES, description="frames")]
VideoBytes = Annotated[int, Field(ge=MIN_VIDEO_BYTES)]
StillEvery = Annotated[int, Field(ge=0, le=MAX_STEPS)]
#: A stage-2/3 canvas (width, height); the sides must also be multiples of the VQGAN's
#: downsampling factor, which only the engine's models know (engine.service.admission).
Canvas = tuple[
    Annotated[int, Field(ge=1, le=MAX_CANVAS_SIDE)], Annotated[int, Field(ge=1, le=MAX_CANVAS_SIDE)]
]


class SpookySpec(_Model):
    """What a spooky job runs with: its request resolved against the config and the server's
    limits once, when the job is accepted (`resolve_spec`). Stored with the job and read back as
    is by the scheduler, the worker and the renderer, which add no defaults of their own.
    """

    kind: Literal[JobKind.SPOOKY] = JobKind.SPOOKY
    prompt: Annotated[PromptText, Prompt(weighted=False)]  # stage 1 (StyleGAN2+CLIP), read whole
    # Stage 2 (VQGAN+CLIP), "a:1|b:-0.5" weights allowed; the request's, or the prompt.
    scare_prompt: Annotated[PromptText, Prompt(weighted=True), Default(same_as="prompt")]
    # Drawn at accept when the request has none, so a retry renders the same picture.
    seed: Annotated[Seed, Default(drawn=True)]
    steps: Annotated[Steps, Default(setting="stylegan_steps", limit="max_steps")]  # stage 1
    scare_steps: Annotated[ScareSteps, Default(setting="scare_steps", limit="max_scare_steps")]
    size: Canvas | None = None  # stage-2 canvas (w, h); None: the loaded models' own canvas
    # A progress still every this many steps (0: only the final image).
    still_every: Annotated[StillEvery, Default(setting="still_every")]
    # A member's picture the scare pass starts from instead of stage 1's face (then not run); the
    # job's source artifact.
    init_artifact: ArtifactId | None = None

    @property
    def from_image(self) -> bool:
        return self.init_artifact is not None

    @model_validator(mode="before")
    @classmethod
    def _stored_before_scare_prompt(cls, data: Any) -> Any:
        # Specs stored by the release before typed specs keep None for "the stage-1 prompt".
        if isinstance(data, dict) and data.get("scare_prompt", "") is None:
            return {**data, "scare_prompt": data.get("prompt")}
        return data


class NightmareSpec(_Model):
    """What a nightmare job runs with (see `SpookySpec`); its source image is the job's artifact."""

    kind: Literal[JobKind.NIGHTMARE] = JobKind.NIGHTMARE
    prompt: Annotated[PromptText, Prompt(weighted=True)]  # what the animation drifts toward
    seed: Annotated[Seed, Default(drawn=True)]
    # One VQGAN+CLIP step per frame, at the pipeline's fps.
    frames: Annotated[Frames, Default(setting="nightmare_frames", limit="max_frames")]
    # Video canvas (w, h); None: the source image's own size when it is a valid canvas, else the
    # loaded models' canvas area at the image's aspect ratio.
    size: Canvas | None = None
    # The MP4 is fitted under this: the destination's upload limit.
    max_bytes: Annotated[VideoBytes, Default(setting="video_max_bytes")]
    still_every: Annotated[StillEvery, Default(setting="still_every")]  # a still every N frames


#: A job's resolved settings, either kind (`kind` tells which).
JobSpec = Annotated[SpookySpec | NightmareSpec, Field(discriminator="kind")]
SPEC_OF: dict[JobKind, type[SpookySpec] | type[NightmareSpec]] = {
    JobKind.SPOOKY: SpookySpec,
    JobKind.NIGHTMARE: NightmareSpec,
}


def role_of(info: FieldInfo, role: type[R]) -> R | None:
    """The `Prompt` or `Default` marker a spec field carries, if any."""
    return next((m for m in info.metadata if isinstance(m, role)), None)


def prompt_texts(spec: SpookySpec | NightmareSpec) -> list[tuple[str, str, Prompt]]:
    """(field name, text, marker) of every prompt text `spec` has (an optional one left unset is
    none), in field order."""
    out = []
    for name, info in type(spec).model_fields.items():
        marker = role_of(info, Prompt)
        if marker is not None and getattr(spec, name) is not None:
            out.append((name, getattr(spec, name), marker))
    return out


def resolve_spec(
    kind: JobKind, given: Mapping[str, Any], defaults: Mapping[str, Any], limits: LimitValues | None
) -> SpookySpec | NightmareSpec:
    """The settings a job of `kind` runs with: each spec field the `given` values set (a request's),
    else its `Default`: a `[pipeline]` setting from `defaults` (capped by the server's `limits`;
    None, as the CLI passes, leaves it uncapped), an earlier field, or a drawn seed. ValidationError
    when a value is out of its bounds."""
    cls = SPEC_OF[JobKind(kind)]
    values: dict[str, Any] = {"kind": cls.model_fields["kind"].default}
    for name, info in cls.model_fields.items():
        if name == "kind":
            continue
        if given.get(name) is not None:
            values[name] = given[name]
            continue
        default = role_of(info, Default)
        if default is None:
            continue  # the field's own default
        if default.drawn:
            values[name] = secrets.randbelow(MAX_SEED + 1)
        elif default.same_as is not None:
            values[name] = values[default.same_as]
        else:
            value = defaults[default.setting]  # type: ignore[index]
            if default.limit is not None and limits is not None:
                value = min(value, getattr(limits, default.limit))
            values[name] = value
    return cls.model_validate(values)


# --- requests ------------------------------------------------------------------------------


class Requester(_Model):
    """Who asked, and where the result goes."""

    user_id: Snowflake
    channel_id: Snowflake
    # None: no server install behind the request (a DM, a group DM, or a server that did not invite
    # the bot, where the member installed the app for themselves): the default limits apply, and
    # the "server" queue of such a context is the user's own.
    guild_id: Snowflake | None = None
    user_name: str | None = Field(None, max_length=100)  # for logs only
    is_moderator: bool = False  # the bot checked Manage Server; moderators skip the user limits


class JobRequest(_Model):
    """What a client asks for. The job's own fields are those of its kind's spec, optional (unset:
    the spec's `Default`); the rest say who asked and how the client finds the job again."""

    kind: JobKind
    prompt: PromptText
    scare_prompt: PromptText | None = None  # spooky: the scare pass's prompt (default: `prompt`)
    seed: Seed | None = None
    steps: Steps | None = None  # spooky: stage-1 steps
    scare_steps: ScareSteps | None = None  # spooky: stage-2 steps
    frames: Frames | None = None  # nightmare: frames (= steps) at 30 fps
    # Nightmare: the destination's upload limit (a Discord server's); the MP4 is fitted under it.
    max_bytes: VideoBytes | None = None
    size: Canvas | None = None  # (width, height) of the stage-2/3 canvas
    # The picture to start from, an uploaded or earlier artifact. Spooky: the scare pass starts
    # from it (stage 1 is skipped); nightmare: it is animated (None: the user's last image in the
    # channel).
    init_artifact: ArtifactId | None = None
    requester: Requester
    # Idempotent submit: the same key returns the same job (the bot uses the interaction id).
    idempotency_key: str | None = Field(None, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$")
    # Opaque bookkeeping of the bot (interaction token, message ids), returned with the job.
    client: ClientMap = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, v: str) -> str:
        if is_blank(v):
            raise ValueError("the prompt is empty: describe a face, e.g. 'dracula pale fangs'")
        return v.strip()

    @field_validator("scare_prompt")
    @classmethod
    def _scare_not_blank(cls, v: str | None) -> str | None:
        if v is not None and is_blank(v):
            return None
        return v.strip() if v else v

    @model_validator(mode="after")
    def _kind_fields(self) -> JobRequest:
        # A job field another kind's spec has, set on a request of this kind, is a mistake.
        mine = SPEC_OF[self.kind].model_fields
        for name in _JOB_FIELDS:
            if name not in mine and name not in _EVERY_KIND and getattr(self, name) is not None:
                owner = next(k for k, c in SPEC_OF.items() if name in c.model_fields)
                raise ValueError(f"{name} belongs to {owner.value} jobs, not {self.kind.value} jobs")
        return self

    def given(self) -> dict[str, Any]:
        """The job fields this request sets: what `resolve_spec` takes before any default."""
        return {name: getattr(self, name) for name in _JOB_FIELDS if getattr(self, name) is not None}

    def reroll(self, **origin: Any) -> JobRequest:
        """The same job with a new seed (the engine draws one), asked by `origin` (the fields that
        say who asked and through which interaction: requester, idempotency_key, client)."""
        unknown = set(origin) - set(ORIGIN_FIELDS)
        if unknown:
            raise ValueError(f"a reroll replaces only {', '.join(ORIGIN_FIELDS)}, not {sorted(unknown)}")
        return JobRequest.model_validate({**dict(self), "seed": None, **origin})

    @staticmethod
    def fields_for(kind: JobKind) -> set[str]:
        """The request fields a job of `kind` may set, besides `kind` and the origin's."""
        return {name for name in _JOB_FIELDS if name in SPEC_OF[kind].model_fields} | {"init_artifact"}


#: The request fields that say who asked and how the client finds the job again (not the job's).
ORIGIN_FIELDS = ("requester", "idempotency_key", "client")
#: The request fields that are fields of a spec (the rest say who asked and where the result goes).
_JOB_FIELDS = tuple(
    name
    for name in JobRequest.model_fields
    if name != "kind" and any(name in cls.model_fields for cls in SPEC_OF.values())
)
#: Request fields every kind takes though not every spec has them: a nightmare's source image is
#: resolved at submit (the job's source artifact), not kept in its spec.
_EVERY_KIND = frozenset({"init_artifact"})


class CancelRequest(_Model):
    actor_id: Snowflake
    is_moderator: bool = False  # moderators may cancel anyone's job


class ClientState(_Model):
    client: ClientMap


# --- answers -------------------------------------------------------------------------------


class Progress(_Model):
    stage: str
    step: int
    total: int


class JobView(_Model):
    id: str
    kind: JobKind
    state: JobState
    request: JobRequest
    position: int | None = None  # 1-based place in the queue while QUEUED (1 = next)
    eta_s: float | None = None  # estimated seconds until it finishes
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    progress: Progress | None = None
    # Finished artifacts by role: "stylegan", "spooky" (PNG), "video" (MP4), "still" (latest PNG).
    artifacts: dict[str, str] = Field(default_factory=dict)
    # seed and settings actually used (to reproduce or reroll).
    result: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    error_code: JobErrorCode | None = None
    delivered: bool = False


class SubmitResponse(_Model):
    job: JobView
    duplicate: bool = False  # the idempotency key matched an existing job


class Refusal(_Model):
    code: RefusalCode
    message: str  # a sentence for the user, with the values
    limit: str | None = None  # the setting that refused, e.g. "max_jobs_per_user"
    value: float | int | str | None = None  # its value
    allowed: str | None = None  # the allowed range, e.g. "1–60"
    retry_after_s: float | None = None  # cooldowns


class RefusalBody(_Model):
    refusal: Refusal


class ErrorDetail(_Model):
    code: str
    message: str
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorBody(_Model):
    error: ErrorDetail


class JobList(_Model):
    jobs: list[JobView]


class QueueView(_Model):
    length: int  # jobs waiting (not counting the running one)
    running: JobView | None = None
    jobs: list[JobView] = Field(default_factory=list)  # the caller's filter (guild/user), queue order
    eta_s: float | None = None  # until the whole queue is done


class Event(_Model):
    id: int  # strictly increasing across the engine; resume with after=id
    job_id: str
    type: EventType
    at: float = Field(default_factory=time.time)
    guild_id: str | None = None
    channel_id: str | None = None
    user_id: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class Artifact(_Model):
    id: str
    media_type: str  # image/png, video/mp4
    bytes: int
    job_id: str | None = None
    width: int | None = None
    height: int | None = None


class LastImage(_Model):
    artifact_id: str
    job_id: str | None = None


class PromptList(_Model):
    """A member's own recent prompts (distinct, newest first), for the bot's autocomplete."""

    prompts: list[str]


class Health(_Model):
    status: HealthStatus
    preset: str | None = None
    device: str | None = None
    queue_length: int = 0
    running_job: str | None = None
    detail: str | None = None
    version: str = "1"


# --- per-server limits ---------------------------------------------------------------------


class LimitValues(_Model):
    """The per-server limits that have defaults, and their allowed ranges, defined once: the
    `[limits]` config section (`spooky.config.LimitsConfig`) and what /limits set accepts are both
    this."""

    max_queue_per_server: int = Field(10, ge=1, le=MAX_QUEUE_PER_SERVER)
    max_jobs_per_user: int = Field(2, ge=1, le=MAX_JOBS_PER_USER)
    cooldown_s: float = Field(30, ge=0, le=MAX_COOLDOWN_S)
    max_steps: int = Field(60, ge=1, le=MAX_STEPS)
    max_scare_steps: int = Field(20, ge=0, le=MAX_STEPS)
    max_frames: int = Field(300, ge=1, le=MAX_FRAMES)
    # Members' own pictures as a start (/spooky image:, Spookify, /nightmare image:, the Nightmare
    # menu); off refuses them. A render's own still (the Nightmare button) is no member's picture.
    allow_images: bool = True
    # The prompt the Spookify menu's form starts with.
    default_prompt: str = Field("spooky halloween monster", min_length=1, max_length=MAX_PROMPT_CHARS)


class GuildLimits(LimitValues):
    """What moderators tune with /limits; stored by the engine, enforced at submit."""

    allowed_channels: list[Snowflake] = Field(default_factory=list, max_length=100)  # empty = all
    paused: bool = False
    banned_words: list[Annotated[str, StringConstraints(min_length=1, max_length=50)]] = Field(
        default_factory=list, max_length=200
    )

    @field_validator("banned_words")
    @classmethod
    def _lower(cls, v: list[str]) -> list[str]:
        return sorted({w.strip().lower() for w in v if w.strip()})


class LimitsUpdate(_Model):
    """A partial change: only the fields given are changed."""

    actor_id: Snowflake
    changes: dict[str, Any]

    @field_validator("changes")
    @classmethod
    def _known_fields(cls, v: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(v) - set(GuildLimits.model_fields))
        if unknown:
            shown = ", ".join(repr(k[:40]) for k in unknown[:5]) + (" …" if len(unknown) > 5 else "")
            raise ValueError(
                f"{len(unknown)} unknown limit(s): {shown}; known: {', '.join(GuildLimits.model_fields)}"
            )
        if not v:
            raise ValueError("no change given")
        return v


class LimitsChange(_Model):
    guild_id: str
    actor_id: str
    at: float
    changes: dict[str, Any]
