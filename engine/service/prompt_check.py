"""The submit-time prompt checks that need only CLIP's tokenizer: before the models load, and on
an API node (`[engine] role = "api"`), which never loads them and imports no torch.

Once the models are loaded the renderer's own validator (engine.service.worker.validator_for) runs
the same checks with the loaded CLIP; these give the same answers without any weights, and without
importing torch (engine.models.clip_tokens), so a submit never waits for the model load's imports.
"""

from __future__ import annotations

from typing import Any

from engine.models.clip_tokens import check_prompt_tokens
from engine.pipeline.prompts import parse_prompts
from spooky.contract import JobKind
from spooky.errors import BadPromptError, InputError

#: Every preset's CLIP (ViT-B-32, and the tiny one) reads 77 tokens.
CLIP_CONTEXT_LENGTH = 77


def check_prompts(kind: JobKind, spec: dict[str, Any]) -> None:
    """Raise the InputError the loaded renderer would raise for the prompts of `spec`."""

    def pieces(text: str) -> list[str]:
        try:
            return [p.text for p in parse_prompts(text)]
        except InputError as e:
            if e.code != InputError.code:
                raise
            raise BadPromptError(e.message, hint=e.hint) from e

    # Syntax first, as the loaded validator does, so its errors are told apart from the lengths'.
    parts = {text: pieces(text) for text in (spec["prompt"], spec.get("scare_prompt")) if text}
    if JobKind(kind) is JobKind.SPOOKY:
        # Stage 1 reads the prompt whole; stage 2 its weighted parts (the scare prompt's, if any).
        check_prompt_tokens(spec["prompt"], CLIP_CONTEXT_LENGTH)
        texts = parts[spec.get("scare_prompt") or spec["prompt"]]
    else:
        texts = parts[spec["prompt"]]
    for text in texts:
        check_prompt_tokens(text, CLIP_CONTEXT_LENGTH)
