"""/queue and /cancel: what is waiting, and stopping one's own (or, for moderators, any) job.

/queue also lists the member's results that had nowhere to go (the interaction expired and their
DMs were closed), each with a button that posts it in that fresh interaction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot import jobs, replies
from bot.delivery_state import DeliveryState
from bot.origin import server_of
from bot.progress import STAGE_LABELS
from bot.text import duration, escape, plural
from bot.views import MAX_WAITING_BUTTONS, waiting_view
from spooky.contract import JobState, JobView, QueueView
from spooky.engine_client import EngineRequestError, EngineUnavailable

if TYPE_CHECKING:
    from bot.app import SpookyBot

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


def _describe(job: JobView) -> str:
    prompt = escape(job.request.prompt, limit=60)
    if job.state is JobState.RUNNING and job.progress is not None:
        stage = STAGE_LABELS.get(job.progress.stage, job.progress.stage)
        return f"“{prompt}” — running: {stage} {job.progress.step}/{job.progress.total}"
    if job.state is JobState.RUNNING:
        return f"“{prompt}” — running"
    where = f"position {job.position}" if job.position else "waiting"
    return f"“{prompt}” — {where}, done in about {duration(job.eta_s)}"


def render_held(held: list[JobView]) -> str:
    """Results that had nowhere to go, for their member."""
    lines = ["**Waiting for you** (they finished after their interaction expired, and your DMs were closed):"]
    shown = held[:MAX_WAITING_BUTTONS]
    lines.extend(f"• `{j.id}` “{escape(j.request.prompt, limit=60)}” — {j.state}" for j in shown)
    if len(held) > len(shown):
        lines.append(f"…and {len(held) - len(shown)} more, offered once these are posted.")
    lines.append("Press “Post it here” to have one posted in this channel.")
    return "\n".join(lines)


def render_queue(view: QueueView, user_id: str) -> str:
    lines = [f"**Render queue**: {plural(view.length, 'job')} waiting"]
    if view.running is not None:
        owner = view.running.request.requester.user_id
        lines.append(f"Now rendering for <@{owner}>: {_describe(view.running)}")
    else:
        lines.append("Nothing is rendering right now.")
    if view.eta_s is not None and view.length:
        lines.append(f"The whole queue should be done in about {duration(view.eta_s)}.")
    mine = [j for j in view.jobs if j.request.requester.user_id == user_id and j.state in ACTIVE]
    if mine:
        lines.append("**Your renders:**")
        lines.extend(f"• `{j.id}` {_describe(j)}" for j in mine)
    else:
        lines.append("You have no render waiting.")
    return "\n".join(lines)


class Queue(commands.Cog):
    def __init__(self, bot: SpookyBot) -> None:
        self.bot = bot

    @app_commands.command(name="queue", description="Show the render queue and your place in it")
    async def queue(self, interaction: discord.Interaction) -> None:
        await replies.ack(interaction, ephemeral=True)
        user_id, server = str(interaction.user.id), server_of(interaction)
        try:
            # A server's queue; elsewhere (no server install) the member's own jobs anywhere.
            view = await self.bot.engine.queue(guild_id=server, user_id=None if server else user_id)
            held = await self._held(user_id)
        except EngineUnavailable:
            await replies.engine_down(interaction)
            return
        text = render_queue(view, user_id)
        if held:
            text += "\n" + render_held(held)
        await replies.tell(interaction, text, view=waiting_view([j.id for j in held]))

    async def _held(self, user_id: str) -> list[JobView]:
        """The member's results that wait for them (newest first): their DMs were closed."""
        found = await self.bot.engine.jobs(user_id=user_id, undelivered=True, limit=50)
        app_id = str(self.bot.application_id)
        return sorted(
            (
                j
                for j in found
                if (state := DeliveryState.from_client(j.request.client)).held and state.app_id == app_id
            ),
            key=lambda j: j.created_at,
            reverse=True,
        )

    @app_commands.command(name="cancel", description="Cancel your render (moderators: any render)")
    @app_commands.describe(job="Which render (default: your latest one that is still waiting or running)")
    async def cancel(self, interaction: discord.Interaction, job: str | None = None) -> None:
        await replies.ack(interaction, ephemeral=True)
        job_id = job or await self._latest_active(interaction)
        if job_id is None:
            return
        await jobs.cancel(interaction, job_id.strip())

    @cancel.autocomplete("job")
    async def cancel_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        try:
            mine = await self._active_jobs(interaction)
        except (EngineUnavailable, EngineRequestError):
            return []
        return [
            app_commands.Choice(name=f"{j.request.prompt[:70]} ({j.state})", value=j.id)
            for j in mine
            if current.lower() in (j.request.prompt + j.id).lower()
        ][:25]

    async def _active_jobs(self, interaction: discord.Interaction) -> list[JobView]:
        found = await self.bot.engine.jobs(
            guild_id=server_of(interaction), user_id=str(interaction.user.id), limit=50
        )
        return sorted((j for j in found if j.state in ACTIVE), key=lambda j: j.created_at, reverse=True)

    async def _latest_active(self, interaction: discord.Interaction) -> str | None:
        try:
            mine = await self._active_jobs(interaction)
        except EngineUnavailable:
            await replies.engine_down(interaction)
            return None
        if not mine:
            await replies.tell(interaction, "You have no render waiting or running; nothing to cancel.")
            return None
        return mine[0].id


async def setup(bot: SpookyBot) -> None:
    await bot.add_cog(Queue(bot))
