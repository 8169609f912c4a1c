"""The article's four monsters: a face prompt for stage 1 and a scare prompt for stage 2 each.

The prompts are the captions of the SpookyGAN article's examples (seeds/, "Spooky results"), in
English as SPEC §1 gives them; the article used one prompt for both stages, and for its witch a
second wording in its overview ("old scary witch long pointy nose green skin"), which is the witch's
face prompt here. `/spooky style:` and the CLI's `--style` take these names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Style:
    name: str  # what a command takes: "witch"
    label: str  # what a member sees: "Witch"
    prompt: str  # stage 1: the face StyleGAN2+CLIP makes
    scare_prompt: str  # stage 2: what VQGAN+CLIP pushes that face toward


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            "witch",
            "Witch",
            "old scary witch long pointy nose green skin",
            "spooky witch long pointy nose green skin",
        ),
        Style(
            "vampire",
            "Vampire",
            "dracula muscular old male face pale skin fangs slicked back hair",
            "dracula muscular old male face pale skin fangs slicked back hair",
        ),
        Style(
            "frankenstein",
            "Frankenstein's monster",
            "spooky frankenstein monster big brow high forehead green skin",
            "spooky frankenstein monster big brow high forehead green skin",
        ),
        Style(
            "werewolf",
            "Werewolf",
            "spooky werewolf male bushy beard sideburns fangs glowing eyes",
            "spooky werewolf male bushy beard sideburns fangs glowing eyes",
        ),
    )
}
