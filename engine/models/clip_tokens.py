"""CLIP's prompt length check without torch: the byte-pair encoding of CLIP's tokenizer.

The engine refuses a prompt over CLIP's 77 tokens when it is submitted, in every state: while the
models still load, and on an API host that has no torch at all. open_clip's `SimpleTokenizer`
would do it, but importing open_clip imports torch (seconds on a busy host: long enough for a
client's first request to time out). This module reads the same vocabulary file open_clip ships
(`bpe_simple_vocab_16e6.txt.gz`, found without importing the package) and counts tokens the way
`SimpleTokenizer.encode` does; tests/engine/test_clip_tokens.py holds the two to the same counts.
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

from spooky.errors import ConfigError, EmptyPromptError, PromptTooLongError

#: The vocabulary file's name inside the open_clip package.
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: How many merges CLIP's vocabulary uses (49152 tokens less the 256 bytes, their 256 word ends
#: and the two special tokens), as OpenAI's tokenizer reads the file.
_MERGES = 49152 - 256 - 2
_SPECIAL = ("<start_of_text>", "<end_of_text>")


def vocab_path() -> Path:
    """open_clip's copy of CLIP's BPE vocabulary, located without running open_clip's import."""
    spec = importlib.util.find_spec("open_clip")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise ConfigError(
        f"CLIP's tokenizer vocabulary ({VOCAB_FILE}) was not found: the open_clip package is not installed",
        hint="install the engine extra: scripts/setup.sh engine (or pip install open-clip-torch)",
    )


def _byte_alphabet() -> dict[int, str]:
    """CLIP's reversible map of the 256 bytes onto printable characters (no whitespace, no controls)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


class TokenCounter:
    """Counts the BPE tokens CLIP's tokenizer makes of a text (without the start and end tokens)."""

    def __init__(self, path: Path | None = None) -> None:
        with gzip.open(path or vocab_path()) as f:
            lines = f.read().decode("utf-8").split("\n")[1 : _MERGES + 1]
        self._ranks = {tuple(line.split()): i for i, line in enumerate(lines)}
        self._bytes = _byte_alphabet()
        self._pattern = regex.compile(
            "|".join(_SPECIAL) + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self._cache: dict[str, int] = dict.fromkeys(_SPECIAL, 1)

    def count(self, text: str) -> int:
        cleaned = " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).strip().split()).lower()
        return sum(self._pieces(word) for word in self._pattern.findall(cleaned))

    def _pieces(self, word: str) -> int:
        """How many vocabulary entries the byte-pair merges leave of one pre-tokenised word."""
        if word in self._cache:
            return self._cache[word]
        symbols = [self._bytes[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        while len(symbols) > 1:
            pairs = set(itertools.pairwise(symbols))
            best = min(pairs, key=lambda p: self._ranks.get(p, _MERGES))
            if best not in self._ranks:
                break
            merged: list[str] = []
            i = 0
            while i < len(symbols):
                if i < len(symbols) - 1 and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = len(symbols)
        return len(symbols)


@functools.lru_cache(maxsize=1)
def token_counter() -> TokenCounter:
    # Reading the merges takes a fraction of a second; every check shares one counter.
    return TokenCounter()


def check_prompt_tokens(text: str, context_length: int) -> str:
    """The prompt stripped, or EmptyPromptError / PromptTooLongError as CLIP would read it."""
    stripped = text.strip()
    if not stripped:
        raise EmptyPromptError("the prompt is empty", hint="describe the face, e.g. 'dracula pale fangs'")
    n = token_counter().count(stripped)
    limit = context_length - 2  # start and end tokens take two places
    if n > limit:
        raise PromptTooLongError(
            f"the prompt is {n} CLIP tokens long; the limit is {limit}", hint="shorten the prompt"
        )
    return stripped
