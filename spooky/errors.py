"""Typed errors shared by the engine, the bot and the CLI (no torch import).

Every error carries a message a user can act on; `hint` says how to fix it when we know.
"""

from __future__ import annotations

from spooky.contract import RefusalCode


class SpookyError(Exception):
    """Base class: something the user or operator can fix."""

    code = "error"

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(SpookyError):
    """A setting is missing or has a value outside what is allowed."""

    code = "config"


# --- bad input -------------------------------------------------------------------------------


class InputError(SpookyError):
    """A request parameter is wrong; the message says which and what is allowed.

    `refusal` is the code a submit refused for it carries (a plain InputError is a range).
    """

    code = "bad_input"
    refusal = RefusalCode.OUT_OF_RANGE


class EmptyPromptError(InputError):
    code = "empty_prompt"
    refusal = RefusalCode.BAD_PROMPT


class PromptTooLongError(InputError):
    code = "prompt_too_long"
    refusal = RefusalCode.BAD_PROMPT


class BadPromptError(InputError):
    """A weighted prompt that cannot be parsed (a weight that is not finite, all weights zero)."""

    code = "bad_prompt"
    refusal = RefusalCode.BAD_PROMPT


class InvalidSizeError(InputError):
    code = "invalid_size"


class InvalidImageError(InputError):
    code = "invalid_image"
    refusal = RefusalCode.BAD_IMAGE


class UnknownPresetError(InputError):
    code = "unknown_preset"


# --- weights ---------------------------------------------------------------------------------


class WeightsError(SpookyError):
    """A model file is missing, corrupt, or not the format we expect."""

    code = "weights"


class MissingWeightsError(WeightsError):
    code = "missing_weights"


class CorruptWeightsError(WeightsError):
    code = "corrupt_weights"


class CheckpointMismatchError(WeightsError):
    """The checkpoint does not fit the architecture its config describes."""

    code = "checkpoint_mismatch"


class DownloadError(WeightsError):
    code = "download"


# --- running jobs ----------------------------------------------------------------------------


class JobCancelled(SpookyError):
    """Raised from a progress callback to stop a stage at the next step."""

    code = "cancelled"

    def __init__(self, message: str = "the job was cancelled") -> None:
        super().__init__(message)


class VideoError(SpookyError):
    """ffmpeg is missing, failed, or the video cannot fit the byte budget."""

    code = "video"
