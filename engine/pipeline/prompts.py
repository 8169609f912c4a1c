"""Weighted prompts for the VQGAN+CLIP stages: `"a scary clown:1|a smiling face:-0.5"`."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from spooky.errors import EmptyPromptError, InputError

#: `|` always separates prompts; there is no escape for it.
SEPARATOR = "|"

# Only a trailing `:<number>` is a weight, so "dracula: pale" or "12:30 at night" keep their
# colon as text. The number may be signed, decimal, in exponent form, or inf/nan (those are
# recognised so that they can be refused with a clear message instead of becoming text).
_WEIGHT = re.compile(
    r"^(?P<text>.*):\s*(?P<weight>[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?|nan))\s*$",
    re.IGNORECASE | re.DOTALL,
)


@dataclass(frozen=True)
class WeightedPrompt:
    """One text prompt; a negative weight pushes the image away from it."""

    text: str
    weight: float = 1.0

    def __str__(self) -> str:
        return self.text if self.weight == 1.0 else f"{self.text}:{self.weight:g}"


def parse_prompts(prompt: str) -> list[WeightedPrompt]:
    """Split `"a:1|b:-0.5"` into weighted prompts (a missing weight is 1).

    Raises EmptyPromptError for an empty part and InputError for a weight that is not finite or
    when every weight is zero (nothing would steer the image).
    """
    parts = prompt.split(SEPARATOR)
    prompts: list[WeightedPrompt] = []
    for index, part in enumerate(parts, start=1):
        text, weight = _split_weight(part)
        if not text:
            where = "the prompt" if len(parts) == 1 else f"part {index} of {len(parts)} in {prompt!r}"
            raise EmptyPromptError(
                f"{where} is empty",
                hint="write some text; separate several prompts with '|', e.g. 'a ghost:1|a smile:-0.5'",
            )
        if not math.isfinite(weight):
            raise InputError(
                f"the weight of prompt {text!r} is {weight}, which is not a finite number",
                hint="use a plain number after the last ':', e.g. 'a ghost:0.5'",
            )
        prompts.append(WeightedPrompt(text, weight))
    if all(p.weight == 0 for p in prompts):
        raise InputError(
            f"every prompt in {prompt!r} has weight 0, so nothing would steer the image",
            hint="give at least one prompt a non-zero weight (no weight means 1)",
        )
    return prompts


def format_prompts(prompts: list[WeightedPrompt]) -> str:
    """The inverse of parse_prompts, for logs and captions."""
    return SEPARATOR.join(str(p) for p in prompts)


def _split_weight(part: str) -> tuple[str, float]:
    match = _WEIGHT.match(part)
    if match is None:
        return part.strip(), 1.0
    return match["text"].strip(), float(match["weight"])
