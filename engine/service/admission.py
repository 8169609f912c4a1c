"""Whether a request may become a job: every rule about one, in one place (no torch import).

A submit passes two checks, on every node alike (a single engine, an API node that loads no
models, before and after the models load), so every node gives the same answer:

- `check_job`: the job itself, before any transaction: its prompts parse and fit CLIP's 77 tokens,
  its canvas suits the VQGAN (`JobRules`). The job's hard bounds (steps, frames, seed, canvas
  sides) are the contract's own field constraints, checked when the request was read;
- `check_limits`: the job against the server's state, inside the submit's transaction: paused,
  channels, members' pictures, banned words in any prompt text, the server's ranges for every
  field with a `Default` limit, the user's and the server's counts.

Both walk the fields the contract declares (`spooky.contract.Prompt`, `Default`): a new option
needs no change here. The renderer trusts a spec that passed them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from annotated_types import Ge

from engine.models.clip_tokens import check_prompt_tokens
from engine.models.families import canvas_factor
from engine.pipeline.canvas import check_canvas
from engine.pipeline.prompts import WeightedPrompt, parse_prompts
from spooky.config import ModelsConfig
from spooky.contract import (
    Default,
    GuildLimits,
    JobRequest,
    JobSpec,
    Refusal,
    RefusalCode,
    prompt_texts,
    role_of,
)
from spooky.errors import BadPromptError, InputError

#: Every preset's CLIP (ViT-B-32, and the tiny one) reads 77 tokens.
CLIP_CONTEXT_LENGTH = 77


@dataclass(frozen=True)
class JobRules:
    """What a job must suit that the contract's types cannot say: the loaded models' (known from
    the config, without loading them; a worker whose models differ refuses to start)."""

    canvas_factor: int  # canvas sides are multiples of this: the VQGAN's downsampling factor
    context_length: int = CLIP_CONTEXT_LENGTH  # CLIP's tokens per text

    @classmethod
    def for_models(cls, models: ModelsConfig) -> JobRules:
        """The rules of the models `[models]` selects (ConfigError for a VQGAN nobody knows)."""
        return cls(canvas_factor=canvas_factor(models))


# --- the job itself -------------------------------------------------------------------------


def parse_prompt_syntax(text: str) -> list[WeightedPrompt]:
    """`parse_prompts`, with a syntax error (a plain InputError) raised as BadPromptError, so it is
    told apart from the range errors that are InputErrors too."""
    try:
        return parse_prompts(text)
    except InputError as e:
        if e.code != InputError.code:
            raise
        raise BadPromptError(e.message, hint=e.hint) from e


def check_job(spec: JobSpec, rules: JobRules) -> None:
    """Raise the InputError that says what to fix: a prompt that does not parse (every one is
    parsed first, so syntax is told apart from length), a text over CLIP's tokens, a bad canvas."""
    texts = prompt_texts(spec)
    pieces = {
        name: [p.text for p in parse_prompt_syntax(text)] if marker.weighted else [text]
        for name, text, marker in texts
    }
    for name, _, _ in texts:
        for piece in pieces[name]:
            check_prompt_tokens(piece, rules.context_length)
    if spec.size is not None:
        check_canvas(spec.size, rules.canvas_factor)


# --- the job against the server's state -----------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """The counts a submit is judged against, read inside the same write transaction."""

    now: float
    limits: GuildLimits
    max_queue: int  # EngineConfig.max_queue: waiting or running jobs across all servers
    global_active: int
    guild_active: int  # waiting or running jobs of this server (no server install: of this user there)
    user_active: int  # waiting or running jobs of this user, on any server
    user_last_submit: float | None  # when this user's last accepted job was submitted, any server


def banned_word_in(text: str, banned: Sequence[str]) -> str | None:
    """The first banned word or phrase that occurs in `text` as a whole word, case-insensitively.

    Whole words, not substrings: banning "ass" must not refuse "glass"; a phrase such as "pale
    fangs" matches with any run of spaces between its words.
    """
    lowered = text.lower()
    for word in banned:
        parts = [re.escape(p) for p in word.lower().split()]
        if parts and re.search(r"(?<!\w)" + r"\s+".join(parts) + r"(?!\w)", lowered):
            return word
    return None


def _range_refusals(spec: JobSpec, limits: GuildLimits) -> Refusal | None:
    """The first spec field with a server limit (`Default.limit`) whose value is outside the range."""
    for name, info in type(spec).model_fields.items():
        default = role_of(info, Default)
        if default is None or default.limit is None:
            continue
        value = getattr(spec, name)
        low = next((m.ge for m in info.metadata if isinstance(m, Ge)), 0)
        high = getattr(limits, default.limit)
        if not low <= value <= high:
            what = info.description or name
            return Refusal(
                code=RefusalCode.OUT_OF_RANGE,
                message=f"{value} {what} is outside this server's range {low}–{high}; pick a value in it",
                limit=default.limit,
                value=high,
                allowed=f"{low}–{high}",
            )
    return None


def check_limits(
    req: JobRequest, spec: JobSpec, snap: Snapshot, *, picture: bool = False
) -> Refusal | None:
    """The first limit that refuses this request, or None when it may be queued. `picture`: the
    job starts from a member's own picture (an upload), which `allow_images` may refuse.

    Moderators skip the per-user limits (jobs per user, cooldown) but not the server's state
    (paused, channels, pictures, banned words, ranges) nor the queue capacity.
    """
    lim = snap.limits
    who = req.requester
    if lim.paused:
        return Refusal(
            code=RefusalCode.PAUSED,
            message=(
                "rendering is paused on this server; a moderator can resume it with /limits set paused:false"
            ),
            limit="paused",
            value="true",
        )
    if lim.allowed_channels and who.channel_id not in lim.allowed_channels:
        shown = ", ".join(f"<#{c}>" for c in lim.allowed_channels[:10])
        return Refusal(
            code=RefusalCode.CHANNEL_NOT_ALLOWED,
            message=f"this channel is not open for rendering; use {shown}",
            limit="allowed_channels",
            allowed=",".join(lim.allowed_channels),
        )
    if picture and not lim.allow_images:
        return Refusal(
            code=RefusalCode.IMAGES_OFF,
            message=(
                "this server does not take members' pictures as a start; run /spooky with a prompt "
                "alone (a moderator can allow pictures with /limits set allow_images:true)"
            ),
            limit="allow_images",
            value="false",
        )
    for _, text, _ in prompt_texts(spec):
        word = banned_word_in(text, lim.banned_words)
        if word is not None:
            return Refusal(
                code=RefusalCode.BANNED_WORD,
                message=f'the prompt contains "{word}", which this server does not allow; rephrase it',
                limit="banned_words",
                value=word,
            )
    refusal = _range_refusals(spec, lim)
    if refusal is not None:
        return refusal
    if not who.is_moderator:
        if snap.user_active >= lim.max_jobs_per_user:
            return Refusal(
                code=RefusalCode.USER_LIMIT,
                message=(
                    f"you already have {snap.user_active} job(s) waiting or running; this server allows "
                    f"{lim.max_jobs_per_user} at a time. Wait for one to finish or /cancel one"
                ),
                limit="max_jobs_per_user",
                value=lim.max_jobs_per_user,
                allowed=f"0–{lim.max_jobs_per_user}",
            )
        if snap.user_last_submit is not None and lim.cooldown_s > 0:
            left = snap.user_last_submit + lim.cooldown_s - snap.now
            if left > 0:
                return Refusal(
                    code=RefusalCode.COOLDOWN,
                    message=(
                        f"slow down: this server allows one job every {lim.cooldown_s:g} s; "
                        f"try again in {left:.0f} s"
                    ),
                    limit="cooldown_s",
                    value=lim.cooldown_s,
                    retry_after_s=round(left, 1),
                )
    if snap.guild_active >= lim.max_queue_per_server:
        return Refusal(
            code=RefusalCode.SERVER_QUEUE_FULL,
            message=(
                f"this server's queue is full ({snap.guild_active} of {lim.max_queue_per_server} jobs); "
                "try again when one has finished"
            ),
            limit="max_queue_per_server",
            value=lim.max_queue_per_server,
            allowed=f"0–{lim.max_queue_per_server}",
        )
    if snap.global_active >= snap.max_queue:
        return Refusal(
            code=RefusalCode.QUEUE_FULL,
            message=(
                f"the render queue is full ({snap.global_active} of {snap.max_queue} jobs "
                "across all servers); try again in a few minutes"
            ),
            limit="max_queue",
            value=snap.max_queue,
            allowed=f"0–{snap.max_queue}",
        )
    return None
