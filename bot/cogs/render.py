"""/spooky and /nightmare: turn a prompt, a style or a member's photo into a render job."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import pictures, replies
from bot.errors import BadPrompt, UserFacingError
from bot.host import host_of
from bot.origin import server_of
from spooky.bounds import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS
from spooky.contract import JobKind
from spooky.engine_client import EngineRequestError, EngineUnavailable
from spooky.styles import STYLES

if TYPE_CHECKING:
    from bot.app import SpookyBot

log = logging.getLogger(__name__)

#: How long autocomplete waits for the engine's recent prompts: Discord drops an answer after 3 s.
SUGGEST_BUDGET_S = 1.5
#: Discord's limits on one autocomplete answer.
MAX_CHOICES, MAX_CHOICE_CHARS = 25, 100

STYLE_CHOICES = [app_commands.Choice(name=s.label, value=s.name) for s in STYLES.values()]


class PromptText(app_commands.Transformer):
    """A prompt with something in it (Discord itself enforces the length)."""

    @property
    def type(self) -> discord.AppCommandOptionType:
        return discord.AppCommandOptionType.string

    @property
    def min_value(self) -> int:
        return 1

    @property
    def max_value(self) -> int:
        return MAX_PROMPT_CHARS

    async def transform(self, interaction: discord.Interaction, value: str, /) -> str:
        text = " ".join(value.split())
        if not text:
            raise BadPrompt("The prompt is empty: describe a face, e.g. “dracula pale fangs”.")
        return text


def _choice_name(text: str) -> str:
    return text if len(text) <= MAX_CHOICE_CHARS else text[: MAX_CHOICE_CHARS - 1] + "…"


async def prompt_suggestions(interaction: discord.Interaction, typed: str) -> list[app_commands.Choice[str]]:
    """/spooky's prompt suggestions: the styles' face prompts, then the member's own recent prompts
    there (from the engine), those containing what is typed. Never raises and never waits past
    SUGGEST_BUDGET_S: without the engine, the styles alone."""
    wanted = " ".join(typed.split()).casefold()
    styles = [
        app_commands.Choice(name=_choice_name(f"{s.label}: {s.prompt}"), value=s.prompt)
        for s in STYLES.values()
        if wanted in s.prompt.casefold() or wanted in s.label.casefold()
    ]
    recent: list[str] = []
    try:
        recent = await asyncio.wait_for(
            host_of(interaction).engine.recent_prompts(
                str(interaction.user.id),
                server_of(interaction),
                query=wanted[:MAX_CHOICE_CHARS],
                limit=MAX_CHOICES,
            ),
            SUGGEST_BUDGET_S,
        )
    except (EngineUnavailable, EngineRequestError, TimeoutError) as e:
        log.info("prompt suggestions without recent prompts for user %s: %r", interaction.user.id, e)
    except Exception:
        log.exception("prompt suggestions failed for user %s; offering the styles only", interaction.user.id)
    offered = {c.value for c in styles}
    # A choice's value is what the prompt becomes: one Discord cannot carry whole is not offered.
    mine = [
        app_commands.Choice(name=_choice_name(p), value=p)
        for p in recent
        if p and len(p) <= MAX_CHOICE_CHARS and p not in offered and wanted in p.casefold()
    ]
    return (styles + mine)[:MAX_CHOICES]


async def reply_user_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Per-command handler body: show user mistakes as they are."""
    if isinstance(error, UserFacingError):
        await replies.tell(interaction, error.message)
    elif isinstance(error, app_commands.TransformerError):
        await replies.tell(interaction, f"“{error.value}” is not a valid value for that option.")


class Render(commands.Cog):
    def __init__(self, bot: SpookyBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="spooky", description="Render a Halloween face from a prompt, or scare your photo"
    )
    @app_commands.describe(
        prompt="What the face looks like (or what your photo becomes), e.g. “dracula pale fangs”",
        style="One of the article's monsters: its scare prompt drives the scare pass",
        image="A photo to scare instead of a generated face (the StyleGAN stage is skipped)",
        seed="Start point; the same seed and prompt give the same face",
        scare_prompt="What the scare pass pushes toward (default: the style's, else the prompt); a:1|b:-0.5",
        steps="Face optimisation steps (the server's range applies)",
    )
    @app_commands.choices(style=STYLE_CHOICES)
    async def spooky(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Transform[str, PromptText],
        style: app_commands.Choice[str] | None = None,
        image: discord.Attachment | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        scare_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
    ) -> None:
        picture = pictures.from_attachment(image) if image is not None else None  # refused before any ack
        await replies.ack(interaction)
        if scare_prompt is None and style is not None:
            scare_prompt = STYLES[style.value].scare_prompt
        await pictures.submit_from(
            interaction,
            picture,
            kind=JobKind.SPOOKY,
            prompt=prompt,
            seed=seed,
            scare_prompt=scare_prompt,
            steps=steps,
        )

    @spooky.autocomplete("prompt")
    async def spooky_prompt_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return await prompt_suggestions(interaction, current)

    @spooky.error
    async def spooky_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_user_error(interaction, error)

    @app_commands.command(
        name="nightmare", description="Animate your last image (or an attached one) into a video"
    )
    @app_commands.describe(
        prompt="What the animation drifts toward (default: “nightmare”)",
        frames="Number of frames at 30 fps (the server's range applies)",
        image="An image to animate instead of your last render in this channel",
    )
    async def nightmare(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Transform[str, PromptText] | None = None,
        frames: app_commands.Range[int, 1, MAX_FRAMES] | None = None,
        image: discord.Attachment | None = None,
    ) -> None:
        picture = pictures.from_attachment(image) if image is not None else None  # refused before any ack
        await replies.ack(interaction)
        await pictures.submit_from(
            interaction,
            picture,
            kind=JobKind.NIGHTMARE,
            prompt=prompt or self.bot.settings.pipeline.nightmare_prompt,
            frames=frames,
        )

    @nightmare.error
    async def nightmare_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_user_error(interaction, error)


async def setup(bot: SpookyBot) -> None:
    await bot.add_cog(Render(bot))
