"""The guides stay true to the code: quoted messages exist, links resolve, README keeps its commands."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
#: README's two commands (CI runs the second); they must stay word for word.
README_COMMANDS = (
    "```bash\n"
    'scripts/setup.sh && .venv/bin/spooky render "dracula pale fangs" --preset tiny '
    "--out out/demo --nightmare\n"
    "```",
    "```bash\nscripts/setup.sh && scripts/setup-postgres.sh && .venv/bin/ruff check . "
    "&& .venv/bin/python -m pytest\n```",
)
_PRINTF = re.compile(r"%[-#0 +]*\d*(?:\.\d+)?[sdrfgxi]")


@cache
def code_strings() -> str:
    """Every literal text piece of the code (f-string parts split at their fields), NUL-separated."""
    pieces: list[str] = []
    for folder in ("spooky", "engine", "bot"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    pieces.extend(_PRINTF.split(node.value))
    return "\0".join(pieces)


def assembled_from_code(fragment: str, min_part: int = 6) -> bool:
    """True when `fragment` is made of code text: consecutive parts, each inside one literal piece."""
    haystack = code_strings()
    i = 0
    while i < len(fragment):
        n = 0
        while i + n < len(fragment) and fragment[i : i + n + 1] in haystack:
            n += 1
        if n == 0 or (n < min_part and i + n < len(fragment)):
            return False
        i += n
    return True


def quoted_messages(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    blocks = re.findall(r"^\s*```text\n(.*?)^\s*```", text, re.S | re.M)
    return [line.strip() for block in blocks for line in block.splitlines() if line.strip()]


TROUBLE = quoted_messages(ROOT / "docs" / "troubleshooting.md")


def test_troubleshooting_quotes_messages():
    assert len(TROUBLE) >= 15


@pytest.mark.parametrize("message", TROUBLE)
def test_each_quoted_message_exists_in_the_code(message: str):
    for fragment in (f.strip() for f in message.split("…")):
        if len(fragment) >= 4:
            assert assembled_from_code(fragment), f"{fragment!r} is not in the code (docs/troubleshooting.md)"


def test_the_checker_can_fail():
    assert assembled_from_code("The render engine is not reachable right now")
    assert not assembled_from_code("The render engine exploded in a shower of sparks")


def test_readme_keeps_its_two_commands_verbatim():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in README_COMMANDS:
        assert block in readme


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_local_links_and_images_resolve(doc: Path):
    text = doc.read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#")[0]).resolve()
        assert path.exists(), f"{doc.name} links to {target}, which does not exist"


def test_pictures_are_small():
    images = list((ROOT / "docs" / "images").glob("*.png"))
    assert images and sum(p.stat().st_size for p in images) < 1_000_000
