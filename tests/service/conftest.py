"""Fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from spooky.config import ModelsConfig


@pytest.fixture(scope="session")
def tiny_models() -> Any:
    """The tiny preset, built once: every in-process engine of the session shares it."""
    from engine.models.factory import load_models

    return load_models(ModelsConfig(preset="tiny"))


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Any]:
    """One real PostgreSQL server for the session. Missing binaries FAIL the tests that need it:
    CI installs them (scripts/setup-postgres.sh), so a skip would hide a broken setup."""
    from pgserver import PgServer, PostgresMissingError

    missing = None
    try:
        server = PgServer()
    except PostgresMissingError as e:
        missing = str(e)
    if missing is not None:
        pytest.fail(missing, pytrace=False)
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(pg_server: Any) -> str:
    """A fresh, empty database on the session's server."""
    return pg_server.database()
