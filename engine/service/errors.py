"""Every error of the engine service, in one place (the API layer maps them onto HTTP answers).

The input errors a renderer check raises (`spooky.errors.InputError` and its subclasses, shared
with the CLI) each carry the refusal code a submit refused for them answers with (`refusal`).
The store's own errors live with the store and are re-exported here; the test step gate's
time-out stays with the test step gate (tests/testgate.py).
"""

from __future__ import annotations

from typing import Any

from engine.service.store import DatabaseUnavailableError, DiskFullError, SchemaTooNewError
from spooky.contract import Refusal
from spooky.errors import InputError, SpookyError

__all__ = [
    "ApiError",
    "BadSpecError",
    "DatabaseUnavailableError",
    "DiskFullError",
    "Refused",
    "SchemaTooNewError",
]


class ApiError(SpookyError):
    """A request the engine answers with a 4xx `ErrorBody`."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or []


class Refused(SpookyError):
    """A limit or a check refused a request; answered with a `RefusalBody`."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal

    @classmethod
    def for_input(cls, e: InputError) -> Refused:
        """The refusal of a submit that a renderer check refused."""
        return cls(Refusal(code=e.refusal, message=str(e)))


class BadSpecError(SpookyError):
    """A job's stored settings cannot be read by this release (written by another version, or
    edited by hand): that job fails with the reason, the engine goes on."""

    code = "bad_spec"
