"""Fixtures of the service tests."""

from __future__ import annotations

from typing import Any

import pytest

from spooky.config import ModelsConfig


@pytest.fixture(scope="session")
def tiny_models() -> Any:
    """The tiny preset, built once: every in-process engine of the session shares it."""
    from engine.models.factory import load_models

    return load_models(ModelsConfig(preset="tiny"))
