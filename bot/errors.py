"""Mistakes a user can fix, raised at the edge as discord.py AppCommandError subclasses."""

from __future__ import annotations

from discord import app_commands

ENGINE_DOWN = "The render engine is not reachable right now; try again in a minute."
UNEXPECTED = "Something went wrong on our side; it has been logged. Please try again."


class UserFacingError(app_commands.AppCommandError):
    """An error whose message is shown to the user as it is (ephemeral)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadPrompt(UserFacingError):
    """The prompt is empty or unusable."""


class BadAttachment(UserFacingError):
    """The attachment is not an image we accept, or too large."""


class NotModerator(app_commands.CheckFailure):
    """The member lacks Manage Server (checked by the bot, not only by Discord's defaults)."""

    def __init__(self) -> None:
        super().__init__("Only moderators (Manage Server permission) can change the render limits.")
