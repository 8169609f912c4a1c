"""Parsing of weighted prompts `"a:1|b:-0.5"`."""

from __future__ import annotations

import pytest

from engine.pipeline.prompts import WeightedPrompt, format_prompts, parse_prompts
from spooky.errors import EmptyPromptError, InputError


def test_weights_default_to_one_and_parts_are_stripped() -> None:
    assert parse_prompts("  a scary clown  ") == [WeightedPrompt("a scary clown", 1.0)]
    assert parse_prompts("a:1| b : -0.5 |c") == [
        WeightedPrompt("a", 1.0),
        WeightedPrompt("b", -0.5),
        WeightedPrompt("c", 1.0),
    ]


@pytest.mark.parametrize(
    ("spec", "text", "weight"),
    [
        ("dracula: pale", "dracula: pale", 1.0),
        ("12:30 at night", "12:30 at night", 1.0),
        ("time 12:30", "time 12", 30.0),  # a trailing number is a weight, as in VQGAN+CLIP
        ("ratio 1:2:0.5", "ratio 1:2", 0.5),
        ("ghost:+2", "ghost", 2.0),
        ("ghost:.25", "ghost", 0.25),
        ("ghost:1e-1", "ghost", 0.1),
        ("ghost:", "ghost:", 1.0),
        ("ghost:-", "ghost:-", 1.0),
    ],
)
def test_only_a_trailing_number_is_a_weight(spec: str, text: str, weight: float) -> None:
    assert parse_prompts(spec) == [WeightedPrompt(text, weight)]


@pytest.mark.parametrize("spec", ["", "   ", "a|", "|a", "a||b", ":1", "  :0.5|b", "\n"])
def test_empty_parts_are_refused(spec: str) -> None:
    with pytest.raises(EmptyPromptError) as err:
        parse_prompts(spec)
    assert "empty" in str(err.value)


@pytest.mark.parametrize("spec", ["a:inf", "a:-Infinity", "a:nan", "a:1e999", "a|b:NaN"])
def test_non_finite_weights_are_refused(spec: str) -> None:
    with pytest.raises(InputError, match="not a finite number") as err:
        parse_prompts(spec)
    assert not isinstance(err.value, EmptyPromptError)


def test_all_zero_weights_are_refused_but_one_zero_is_fine() -> None:
    with pytest.raises(InputError, match="weight 0"):
        parse_prompts("a:0|b:0.0")
    assert parse_prompts("a:0|b") == [WeightedPrompt("a", 0.0), WeightedPrompt("b", 1.0)]


def test_format_round_trips() -> None:
    spec = "a ghost|a smile:-0.5|dracula: pale:2"
    prompts = parse_prompts(spec)
    assert format_prompts(prompts) == spec
    assert parse_prompts(format_prompts(prompts)) == prompts
