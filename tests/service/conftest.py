"""Fixtures of the service tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
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


#: Opens a store of the test's backend on its database: `opener(cls=None, **kwargs)`.
Opener = Callable[..., Any]


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a store keeps its data: a SQLite path, or a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return str(tmp_path / "engine.sqlite3")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def open_at(backend: str) -> Iterator[Opener]:
    """Open a store (a connection of its own) on the test's database; all are closed at the end."""
    opened: list[Any] = []

    def opener(cls: type | None = None, **kwargs: Any) -> Any:
        from engine.service.store import SQLiteStore
        from engine.service.store.postgres import PostgresStore

        if cls is None:
            cls = PostgresStore if backend.startswith("postgresql://") else SQLiteStore
        store = cls(
            Path(backend) if cls is SQLiteStore or issubclass(cls, SQLiteStore) else backend, **kwargs
        )
        opened.append(store)
        return store

    yield opener
    for store in opened:
        store.close()


@pytest.fixture
def store(open_at: Opener) -> Any:
    return open_at()
