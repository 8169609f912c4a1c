"""/limits show|set: moderators tune the server's render limits (stored and enforced by the engine)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot import replies
from bot.errors import NotModerator
from bot.origin import is_moderator
from bot.text import duration, escape
from spooky.bounds import (
    MAX_COOLDOWN_S,
    MAX_FRAMES,
    MAX_JOBS_PER_USER,
    MAX_PROMPT_CHARS,
    MAX_QUEUE_PER_SERVER,
    MAX_STEPS,
)
from spooky.contract import GuildLimits
from spooky.engine_client import EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.app import SpookyBot

log = logging.getLogger(__name__)


def render_limits(limits: GuildLimits) -> str:
    channels = ", ".join(f"<#{c}>" for c in limits.allowed_channels) or "all channels"
    words = ", ".join(f"`{escape(w, limit=50)}`" for w in limits.banned_words) or "none"
    return "\n".join(
        [
            "**Render limits for this server**" + (" — ⏸️ **paused**" if limits.paused else ""),
            f"• Queue length: {limits.max_queue_per_server} jobs",
            f"• Jobs per member (waiting or running): {limits.max_jobs_per_user}",
            f"• Cooldown between renders: {duration(limits.cooldown_s)}",
            f"• Face steps: up to {limits.max_steps} · scare steps: up to {limits.max_scare_steps}",
            f"• Nightmare frames: up to {limits.max_frames}",
            f"• Members' own pictures as a start: {'allowed' if limits.allow_images else 'not allowed'}",
            f"• Spookify's starting prompt: “{escape(limits.default_prompt, limit=100)}”",
            f"• Channels: {channels}",
            f"• Banned words: {words}",
        ]
    )


def _shown(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "none"
    return str(value)


def _changed(before: GuildLimits, after: GuildLimits) -> str:
    diffs = []
    for name in GuildLimits.model_fields:
        old, new = getattr(before, name), getattr(after, name)
        if old != new:
            diffs.append(f"{name}: {_shown(old)} → {_shown(new)}")
    return "; ".join(diffs) or "nothing changed"


@app_commands.guild_only()
@app_commands.default_permissions(manage_guild=True)
class Limits(commands.GroupCog, group_name="limits", group_description="Render limits of this server"):
    """Hidden from members by default permissions, and checked here too: defaults can be overridden."""

    def __init__(self, bot: SpookyBot) -> None:
        self.bot = bot
        super().__init__()

    async def interaction_check(self, interaction: discord.Interaction, /) -> bool:
        if not is_moderator(interaction):
            log.info(
                "user %s without Manage Server tried /limits in guild %s",
                interaction.user.id,
                interaction.guild_id,
            )
            raise NotModerator()
        return True

    async def cog_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, NotModerator):
            await replies.tell(interaction, str(error))

    @app_commands.command(name="show", description="Show this server's render limits")
    async def show(self, interaction: discord.Interaction) -> None:
        await replies.ack(interaction, ephemeral=True)
        try:
            limits = await self.bot.engine.limits(str(interaction.guild_id))
        except EngineUnavailable:
            await replies.engine_down(interaction)
            return
        await replies.tell(interaction, render_limits(limits))

    @app_commands.command(name="set", description="Change this server's render limits")
    @app_commands.describe(
        queue_length="Most jobs waiting or running for this server",
        jobs_per_user="Most jobs one member may have waiting or running",
        cooldown="Seconds a member waits between two renders",
        max_steps="Most face optimisation steps a /spooky may ask for",
        max_scare_steps="Most scare-pass steps",
        max_frames="Most frames a /nightmare may ask for",
        allow_channel="Allow renders in this channel (once any is allowed, only those are)",
        disallow_channel="Remove a channel from the allowed list",
        paused="Pause (true) or resume (false) new renders on this server",
        allow_images="Let members start a render from their own picture (true) or not (false)",
        default_prompt="The prompt the Spookify form starts with",
        ban_word="Refuse prompts containing this word",
        unban_word="Remove a banned word",
    )
    async def set_(
        self,
        interaction: discord.Interaction,
        queue_length: app_commands.Range[int, 1, MAX_QUEUE_PER_SERVER] | None = None,
        jobs_per_user: app_commands.Range[int, 1, MAX_JOBS_PER_USER] | None = None,
        cooldown: app_commands.Range[float, 0, MAX_COOLDOWN_S] | None = None,
        max_steps: app_commands.Range[int, 1, MAX_STEPS] | None = None,
        max_scare_steps: app_commands.Range[int, 0, MAX_STEPS] | None = None,
        max_frames: app_commands.Range[int, 1, MAX_FRAMES] | None = None,
        allow_channel: discord.TextChannel | None = None,
        disallow_channel: discord.TextChannel | None = None,
        paused: bool | None = None,
        allow_images: bool | None = None,
        default_prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
        ban_word: app_commands.Range[str, 1, 50] | None = None,
        unban_word: app_commands.Range[str, 1, 50] | None = None,
    ) -> None:
        await replies.ack(interaction, ephemeral=True)
        guild_id = str(interaction.guild_id)
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("max_queue_per_server", queue_length),
                ("max_jobs_per_user", jobs_per_user),
                ("cooldown_s", cooldown),
                ("max_steps", max_steps),
                ("max_scare_steps", max_scare_steps),
                ("max_frames", max_frames),
                ("paused", paused),
                ("allow_images", allow_images),
                ("default_prompt", " ".join(default_prompt.split()) if default_prompt else None),
            )
            if value is not None
        }
        wants_lists = any(v is not None for v in (allow_channel, disallow_channel, ban_word, unban_word))
        if not changes and not wants_lists:
            await replies.tell(interaction, "Give at least one setting to change; `/limits show` lists them.")
            return
        try:
            before = await self.bot.engine.limits(guild_id)
            if allow_channel is not None or disallow_channel is not None:
                channels = [
                    c
                    for c in before.allowed_channels
                    if not disallow_channel or c != str(disallow_channel.id)
                ]
                if allow_channel is not None and str(allow_channel.id) not in channels:
                    channels.append(str(allow_channel.id))
                changes["allowed_channels"] = channels
            if ban_word is not None or unban_word is not None:
                words = {w for w in before.banned_words if not unban_word or w != unban_word.strip().lower()}
                if ban_word is not None:
                    words.add(ban_word.strip().lower())
                changes["banned_words"] = sorted(words)
            after = await self.bot.engine.update_limits(guild_id, str(interaction.user.id), changes)
        except EngineUnavailable:
            await replies.engine_down(interaction)
            return
        except EngineRequestError as e:
            await replies.tell(interaction, replies.describe_request_error(e))
            return
        summary = _changed(before, after)
        log.info("limits of guild %s changed by %s: %s", guild_id, interaction.user.id, summary)
        await replies.tell(interaction, f"Updated: {escape(summary, limit=1500)}\n\n{render_limits(after)}")


async def setup(bot: SpookyBot) -> None:
    await bot.add_cog(Limits(bot))
