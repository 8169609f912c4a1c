"""Apps > Spookify and Apps > Nightmare on a message: the picture on it as a render's start.

Spookify opens a form asking what the picture should become (prefilled with the server's
`default_prompt`; the engine's default where no server installed the app), then scares the picture
as /spooky image: does; Nightmare animates it as /nightmare image: does. Both submit through the
same job actions as the slash commands, so the same limits, queue, progress, Cancel and result
buttons apply. A message without a picture gets an answer for its member only.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import pictures, replies
from bot.errors import UserFacingError
from bot.origin import server_of
from spooky.bounds import MAX_PROMPT_CHARS
from spooky.contract import GuildLimits, JobKind
from spooky.engine_client import EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.app import SpookyBot

log = logging.getLogger(__name__)

#: The form must open within Discord's 3 s: the server's default prompt is waited for this long.
FORM_PROMPT_BUDGET_S = 1.5
#: How long an open form waits for its member (a restarted bot no longer knows it).
FORM_TIMEOUT_S = 15 * 60
PICTURES_OFF = (
    "This server does not take members' pictures as a start; use /spooky with a prompt alone "
    "(a moderator can allow pictures with /limits set allow_images:true)."
)


class SpookifyForm(discord.ui.Modal, title="Spookify this picture"):
    """What the picture should become; submitting it starts the render."""

    def __init__(self, picture: pictures.Picture, prompt: str) -> None:
        super().__init__(timeout=FORM_TIMEOUT_S)
        self.picture = picture
        self.prompt = discord.ui.TextInput(
            default=prompt[:MAX_PROMPT_CHARS], min_length=1, max_length=MAX_PROMPT_CHARS
        )
        self.add_item(
            discord.ui.Label(
                text="What should it become?",
                description="A prompt for the scare pass, e.g. “dracula pale fangs”",
                component=self.prompt,
            )
        )

    async def on_submit(self, interaction: discord.Interaction, /) -> None:
        prompt = " ".join(self.prompt.value.split())
        if not prompt:
            await replies.tell(interaction, "The prompt is empty: say what the picture should become.")
            return
        await replies.ack(interaction)  # public: this becomes the render's message
        await pictures.submit_from(interaction, self.picture, kind=JobKind.SPOOKY, prompt=prompt)

    async def on_error(self, interaction: discord.Interaction, error: Exception, /) -> None:
        if isinstance(error, UserFacingError):
            await replies.tell(interaction, error.message)
            return
        await replies.report_unexpected(interaction, error, where="the Spookify form")


class Menus(commands.Cog):
    """The two message menus; a cog cannot declare context menus, so it adds them to the tree."""

    def __init__(self, bot: SpookyBot) -> None:
        self.bot = bot
        self.menus = (
            app_commands.ContextMenu(name="Spookify", callback=self.spookify),
            app_commands.ContextMenu(name="Nightmare", callback=self.nightmare),
        )
        for menu in self.menus:
            bot.tree.add_command(menu)

    async def cog_unload(self) -> None:
        for menu in self.menus:
            self.bot.tree.remove_command(menu.name, type=menu.type)

    async def spookify(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = pictures.on_message(message)
        if picture is None:
            await replies.tell(interaction, pictures.NO_PICTURE)
            return
        limits = await self._limits(interaction)
        if not limits.allow_images:
            # The engine would refuse the render; say so before the member fills in the form.
            await replies.tell(interaction, PICTURES_OFF)
            return
        await interaction.response.send_modal(SpookifyForm(picture, limits.default_prompt))

    async def nightmare(self, interaction: discord.Interaction, message: discord.Message) -> None:
        picture = pictures.on_message(message)
        if picture is None:
            await replies.tell(interaction, pictures.NO_PICTURE)
            return
        await replies.ack(interaction)
        prompt = self.bot.settings.pipeline.nightmare_prompt
        await pictures.submit_from(interaction, picture, kind=JobKind.NIGHTMARE, prompt=prompt)

    async def _limits(self, interaction: discord.Interaction) -> GuildLimits:
        """The server's limits (its `default_prompt`, `allow_images`); the operator's defaults
        without a server install; the contract's when the engine does not answer in time (the
        engine decides at submit)."""
        server = server_of(interaction)
        try:
            return await asyncio.wait_for(self.bot.engine.limits(server), FORM_PROMPT_BUDGET_S)
        except (EngineUnavailable, EngineRequestError, TimeoutError) as e:
            log.info("Spookify form for guild %s opens with the default prompt: %r", server, e)
            return GuildLimits()


async def setup(bot: SpookyBot) -> None:
    await bot.add_cog(Menus(bot))
