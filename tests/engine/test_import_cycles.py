"""No import cycle in the engine or the shared core (engine/pipeline, engine/service, engine/models
and spooky/), counting imports under TYPE_CHECKING; and the checker (tests/import_graph.py) finds
the cycles it is there to find."""

from __future__ import annotations

from pathlib import Path

import pytest
from import_graph import format_cycles, import_cycles, module_graph


@pytest.mark.parametrize("package", ["engine", "spooky"])
def test_no_import_cycle(package: str) -> None:
    cycles = import_cycles(package)
    assert not cycles, format_cycles(cycles)


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_cycles_through_type_checking_relative_and_lazy_imports_are_found(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            # a <-> b only under TYPE_CHECKING, as engine/pipeline's graphs <-> vqgan_clip was.
            "pkg/a.py": "from pkg.b import B\n",
            "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
            # c -> sub.d by a relative import, sub.d -> c lazily inside a function.
            "pkg/c.py": "from .sub import d\n",
            "pkg/sub/__init__.py": "",
            "pkg/sub/d.py": "def f():\n    from ..c import thing\n",
            # e -> a: into a cycle, not part of one.
            "pkg/e.py": "import pkg.a\nimport os\n",
        },
    )
    cycles = import_cycles("pkg", tmp_path)
    assert sorted(c.path for c in cycles) == [("pkg.a", "pkg.b", "pkg.a"), ("pkg.c", "pkg.sub.d", "pkg.c")]
    assert "pkg.a -> pkg.b -> pkg.a" in format_cycles(cycles)


def test_a_package_importing_its_own_modules_is_no_cycle(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "from pkg import a\n",
            "pkg/a.py": "from pkg.sub import b\n",
            "pkg/sub/__init__.py": "from . import b\n",
            "pkg/sub/b.py": "import json\n",
        },
    )
    assert module_graph("pkg", tmp_path) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.sub", "pkg.sub.b"},
        "pkg.sub": {"pkg.sub.b"},
        "pkg.sub.b": set(),
    }
    assert import_cycles("pkg", tmp_path) == []


def test_the_whole_circle_is_named(tmp_path: Path) -> None:
    _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b, c\n",
            "pkg/b.py": "from pkg import a\n",
            "pkg/c.py": "from pkg import a\n",
        },
    )
    (cycle,) = import_cycles("pkg", tmp_path)
    assert cycle.modules == {"pkg.a", "pkg.b", "pkg.c"}
    assert str(cycle) == "pkg.a -> pkg.b -> pkg.a (with pkg.c in the same circle)"
