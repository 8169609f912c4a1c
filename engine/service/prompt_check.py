"""The submit-time prompt checks that need only CLIP's tokenizer: before the models load, and on
an API node (`[engine] role = "api"`), which never loads them and imports no torch.

Once the models are loaded the renderer's own check (engine.service.worker.validator_for) runs
the same checks with the loaded CLIP; these give the same answers without any weights, and without
importing torch (engine.models.clip_tokens), so a submit never waits for the model load's imports.
"""

from __future__ import annotations

from engine.models.clip_tokens import check_prompt_tokens
from engine.pipeline.prompts import WeightedPrompt, parse_prompts
from spooky.contract import JobSpec, SpookySpec
from spooky.errors import BadPromptError, InputError

#: Every preset's CLIP (ViT-B-32, and the tiny one) reads 77 tokens.
CLIP_CONTEXT_LENGTH = 77


def parse_prompt_syntax(text: str) -> list[WeightedPrompt]:
    """`parse_prompts`, with a syntax error (a plain InputError) raised as BadPromptError, so it is
    told apart from the range errors that are InputErrors too."""
    try:
        return parse_prompts(text)
    except InputError as e:
        if e.code != InputError.code:
            raise
        raise BadPromptError(e.message, hint=e.hint) from e


def check_prompts(spec: JobSpec) -> None:
    """Raise the InputError the loaded renderer would raise for the prompts of `spec`."""

    def pieces(text: str) -> list[str]:
        return [p.text for p in parse_prompt_syntax(text)]

    # Syntax first, as the loaded validator does, so its errors are told apart from the lengths'.
    if isinstance(spec, SpookySpec):
        parts = {text: pieces(text) for text in (spec.prompt, spec.scare_prompt) if text}
        # Stage 1 reads the prompt whole; stage 2 its weighted parts (the scare prompt's).
        check_prompt_tokens(spec.prompt, CLIP_CONTEXT_LENGTH)
        texts = parts[spec.scare_prompt]
    else:
        texts = pieces(spec.prompt)
    for text in texts:
        check_prompt_tokens(text, CLIP_CONTEXT_LENGTH)
