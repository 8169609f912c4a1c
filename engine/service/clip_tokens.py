"""CLIP's token count of a prompt without torch: the API role's submit-time length check.

open_clip's `SimpleTokenizer` imports torch at module level (its `__call__` returns a tensor),
and an API node must not import torch. The count needs only the byte-pair merges, which ship as
a data file inside the open_clip package: this module reads that same file (found without
importing open_clip) and applies the same cleaning, split pattern and merges, so it counts what
`SimpleTokenizer.encode` returns (tests/service/test_roles.py compares the two).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import itertools
from pathlib import Path

import ftfy
import regex

from spooky.errors import EmptyPromptError, PromptTooLongError

_SPECIAL = ("<start_of_text>", "<end_of_text>")
#: The merges open_clip reads: lines 1 .. 49152 - 256 - 2 of the file (the first is a header).
_MERGES = 49152 - 256 - 2


def _bpe_file() -> Path:
    spec = importlib.util.find_spec("open_clip")  # locates the package; does not import it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("open_clip is not installed", name="open_clip")
    return Path(next(iter(spec.submodule_search_locations))) / "bpe_simple_vocab_16e6.txt.gz"


@functools.lru_cache(maxsize=1)
def _byte_map() -> dict[int, str]:
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


@functools.lru_cache(maxsize=1)
def _ranks() -> dict[tuple[str, str], int]:
    lines = gzip.decompress(_bpe_file().read_bytes()).decode("utf-8").split("\n")[1 : _MERGES + 1]
    return {tuple(line.split()): i for i, line in enumerate(lines)}  # type: ignore[misc]


_PATTERN = regex.compile(
    "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


@functools.lru_cache(maxsize=4096)
def _pieces(token: str) -> int:
    """How many BPE symbols one pre-token becomes."""
    if token in _SPECIAL:
        return 1
    ranks = _ranks()
    word = (*token[:-1], token[-1] + "</w>")
    while len(word) > 1:
        pairs = set(itertools.pairwise(word))
        best = min(pairs, key=lambda p: ranks.get(p, len(ranks) + 1))
        if best not in ranks:
            break
        merged: list[str] = []
        i = 0
        while i < len(word):
            if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                merged.append(word[i] + word[i + 1])
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = tuple(merged)
    return len(word)


def count_tokens(text: str) -> int:
    """The length of `SimpleTokenizer().encode(text)` (without the start and end tokens)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    text = " ".join(text.split()).lower()
    byte_map = _byte_map()
    return sum(_pieces("".join(byte_map[b] for b in t.encode("utf-8"))) for t in _PATTERN.findall(text))


def check_prompt_tokens(text: str, context_length: int) -> str:
    """`engine.models.clip.check_prompt_tokens` without torch: the same errors, the same limit."""
    stripped = text.strip()
    if not stripped:
        raise EmptyPromptError("the prompt is empty", hint="describe the face, e.g. 'dracula pale fangs'")
    n = count_tokens(stripped)
    limit = context_length - 2  # start and end tokens take two places
    if n > limit:
        raise PromptTooLongError(
            f"the prompt is {n} CLIP tokens long; the limit is {limit}", hint="shorten the prompt"
        )
    return stripped
