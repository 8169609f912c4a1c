"""Buttons that survive restarts: stable custom ids `spooky:<action>:<job_id>`, state from the engine.

Each button is a `discord.ui.DynamicItem` registered once in `setup_hook`, so discord.py routes a
press to it by matching the custom id, whether or not this process sent the message. A press runs
a job action (`bot.jobs`); `JobButtons` is the view factory the tracker is handed.
"""

from __future__ import annotations

import logging
from typing import Any

import discord

from bot import jobs
from bot.host import host_of
from bot.replies import ack, report_unexpected, tell
from spooky.contract import JobKind, JobView

log = logging.getLogger(__name__)

_JOB = r"(?P<job_id>[A-Za-z0-9_-]{1,80})"


class _JobButton:
    """Common part of the buttons (mixed in before DynamicItem, which needs a template per class):
    the job id lives in the custom id; errors are logged with context."""

    action = ""
    label = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(self, job_id: str) -> None:
        super().__init__(  # type: ignore[call-arg]  # DynamicItem.__init__ via the MRO
            discord.ui.Button(
                label=self.label,
                emoji=self.emoji or None,
                style=self.style,
                custom_id=f"spooky:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button[Any], match: Any, /
    ) -> _JobButton:
        return cls(match["job_id"])

    async def callback(self, interaction: discord.Interaction) -> None:
        commands = host_of(interaction).metrics.commands
        try:
            await self.press(interaction)
        except Exception as exc:
            commands.labels(f"button:{self.action}", "error").inc()
            await report_unexpected(interaction, exc, where=f"button {self.action} on job {self.job_id}")
        else:
            commands.labels(f"button:{self.action}", "ok").inc()

    async def press(self, interaction: discord.Interaction) -> None:
        raise NotImplementedError


class RerollButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"spooky:reroll:" + _JOB
):
    """The same request with a new seed (no seed sent: the engine draws one)."""

    action, label, emoji, style = "reroll", "Reroll", "🎲", discord.ButtonStyle.secondary

    async def press(self, interaction: discord.Interaction) -> None:
        await ack(interaction)
        source = await jobs.fetch(interaction, self.job_id)
        if source is None:
            return
        await jobs.resubmit(interaction, source.request)


class NightmareButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"spooky:nightmare:" + _JOB
):
    """Animate this result's spooky still."""

    action, label, emoji, style = "nightmare", "Nightmare", "🕯️", discord.ButtonStyle.danger

    async def press(self, interaction: discord.Interaction) -> None:
        await ack(interaction)
        source = await jobs.fetch(interaction, self.job_id)
        if source is None:
            return
        still = source.artifacts.get("spooky") or source.artifacts.get("stylegan")
        if still is None:
            await tell(interaction, "This render has no finished image to animate; run /spooky again.")
            return
        await jobs.submit(
            interaction,
            kind=JobKind.NIGHTMARE,
            prompt=host_of(interaction).settings.pipeline.nightmare_prompt,
            init_artifact=still,
        )


class CancelButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"spooky:cancel:" + _JOB
):
    """Stop a waiting or running job (its owner or a moderator)."""

    action, label, emoji, style = "cancel", "Cancel", "✖️", discord.ButtonStyle.secondary

    async def press(self, interaction: discord.Interaction) -> None:
        await ack(interaction, ephemeral=True)
        await jobs.cancel(interaction, self.job_id)


class DeliverButton(
    _JobButton, discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"spooky:deliver:" + _JOB
):
    """Post a result that waited for its member (shown by /queue) here, in this interaction."""

    action, label, emoji, style = "deliver", "Post it here", "📬", discord.ButtonStyle.primary

    async def press(self, interaction: discord.Interaction) -> None:
        await ack(interaction)  # public: this message becomes the result
        await jobs.deliver_here(interaction, self.job_id)


DYNAMIC_ITEMS = (RerollButton, NightmareButton, CancelButton, DeliverButton)

#: Held results /queue offers at once (a row of buttons).
MAX_WAITING_BUTTONS = 5


class JobButtons:
    """The buttons of a job's message at each moment (the tracker's view factory)."""

    def progress(self, job_id: str) -> discord.ui.View:
        """While the job waits or runs: Cancel."""
        view = discord.ui.View(timeout=None)
        view.add_item(CancelButton(job_id))
        return view

    def result(self, job: JobView) -> discord.ui.View | None:
        """A finished job's: Nightmare and Reroll on a face, none on a video."""
        if job.kind is not JobKind.SPOOKY:
            return None
        view = discord.ui.View(timeout=None)
        view.add_item(NightmareButton(job.id))
        view.add_item(RerollButton(job.id))
        return view


def waiting_view(job_ids: list[str]) -> discord.ui.View | None:
    """/queue's buttons for results that wait for their member: one "Post it here" each."""
    if not job_ids:
        return None
    view = discord.ui.View(timeout=None)
    for job_id in job_ids[:MAX_WAITING_BUTTONS]:
        view.add_item(DeliverButton(job_id))
    return view
