"""/spooky and /nightmare: turn a prompt (or an image) into a render job."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import jobs, replies
from bot.errors import BadAttachment, BadPrompt, UserFacingError
from spooky.bounds import MAX_FRAMES, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS
from spooky.contract import JobKind
from spooky.engine_client import EngineRefused, EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.app import SpookyBot

log = logging.getLogger(__name__)

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
MAX_IMAGE_BYTES = 8 * 1024 * 1024


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


def check_image(attachment: discord.Attachment) -> None:
    """Refuse what is plainly not an acceptable image before downloading it."""
    media = (attachment.content_type or "").split(";")[0].strip().lower()
    if media not in IMAGE_TYPES:
        shown = media or "an unknown type"
        raise BadAttachment(
            f"“{attachment.filename}” is {shown}; attach a PNG, JPEG, WebP or GIF image instead."
        )
    if attachment.size > MAX_IMAGE_BYTES:
        raise BadAttachment(
            f"“{attachment.filename}” is {attachment.size / 2**20:.1f} MB; images up to "
            f"{MAX_IMAGE_BYTES // 2**20} MB are accepted."
        )


async def reply_user_error(interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
    """Per-command handler body: show user mistakes as they are."""
    if isinstance(error, UserFacingError):
        await replies.tell(interaction, error.message)
    elif isinstance(error, app_commands.TransformerError):
        await replies.tell(interaction, f"“{error.value}” is not a valid value for that option.")


class Render(commands.Cog):
    def __init__(self, bot: SpookyBot) -> None:
        self.bot = bot

    @app_commands.command(name="spooky", description="Render a Halloween face from a text prompt")
    @app_commands.describe(
        prompt="What the face looks like, e.g. “dracula pale fangs”",
        seed="Start point; the same seed and prompt give the same face",
        scare_prompt="What the scare pass pushes toward (default: the prompt); weights like “a:1|b:-0.5”",
        steps="Face optimisation steps (the server's range applies)",
    )
    async def spooky(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Transform[str, PromptText],
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        scare_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
    ) -> None:
        await replies.ack(interaction)
        await jobs.submit(
            interaction, kind=JobKind.SPOOKY, prompt=prompt, seed=seed, scare_prompt=scare_prompt, steps=steps
        )

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
        await replies.ack(interaction)
        init_artifact = None
        if image is not None:
            init_artifact = await self._upload(interaction, image)
            if init_artifact is None:
                return
        await jobs.submit(
            interaction,
            kind=JobKind.NIGHTMARE,
            prompt=prompt or self.bot.settings.pipeline.nightmare_prompt,
            frames=frames,
            init_artifact=init_artifact,
        )

    @nightmare.error
    async def nightmare_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        await reply_user_error(interaction, error)

    async def _upload(self, interaction: discord.Interaction, image: discord.Attachment) -> str | None:
        """Check, download and hand the attachment to the engine (which re-validates it)."""
        check_image(image)
        try:
            data = await image.read()
        except discord.HTTPException as e:
            log.warning("could not download attachment %s: %s", image.id, e)
            await replies.tell(
                interaction, "Discord did not let me download that image; please attach it again."
            )
            return None
        try:
            artifact = await self.bot.engine.upload(
                data, user_id=str(interaction.user.id), channel_id=str(interaction.channel_id)
            )
        except EngineUnavailable:
            await replies.engine_down(interaction)
            return None
        except EngineRefused as e:
            log.info("upload from user %s refused: %s", interaction.user.id, e.refusal.code)
            await replies.tell(interaction, e.refusal.message)
            return None
        except EngineRequestError as e:
            await replies.tell(interaction, replies.describe_request_error(e))
            return None
        return artifact.id


async def setup(bot: SpookyBot) -> None:
    await bot.add_cog(Render(bot))
