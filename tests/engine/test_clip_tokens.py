"""The torch-free CLIP token count agrees with open_clip's tokenizer, and imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from open_clip.tokenizer import SimpleTokenizer

from engine.models.clip_tokens import check_prompt_tokens, token_counter
from spooky.errors import EmptyPromptError, PromptTooLongError

REFERENCE = SimpleTokenizer()

TRICKY = [
    "dracula pale fangs",
    "DRACULA   Pale\tfangs\n",
    "it's the ghoul's night, they'll've gone",
    "café déjà vu naïve Ωmega",
    "ゴースト 幽霊 유령 призрак",
    "🎃👻💀 pumpkin🎃king",
    "&amp;lt;scream&amp;gt; &quot;boo&quot;",
    "mojibake: Ã©tÃ©",
    "<start_of_text> and <end_of_text> typed by someone",
    "2021 1024x1024 3.14159 ٣٤٥",
    "a:1|b:-0.5|zombie:2.0",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "x" * 300,
    "!!!??? ... --- ~~~ ```",
]


@pytest.mark.parametrize("text", TRICKY)
def test_counts_match_open_clips_tokenizer(text: str) -> None:
    assert token_counter().count(text) == len(REFERENCE.encode(text))


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=120))
def test_counts_match_open_clips_tokenizer_on_any_text(text: str) -> None:
    assert token_counter().count(text) == len(REFERENCE.encode(text))


def test_the_check_refuses_empty_and_long_prompts_as_clip_reads_them() -> None:
    with pytest.raises(EmptyPromptError):
        check_prompt_tokens(" \n\t ", 77)
    assert check_prompt_tokens("  boo  ", 77) == "boo"
    longest = " ".join(["ghost"] * 75)  # one token each: exactly the 75 places CLIP leaves
    assert check_prompt_tokens(longest, 77) == longest
    with pytest.raises(PromptTooLongError, match="76 CLIP tokens long; the limit is 75"):
        check_prompt_tokens(longest + " ghost", 77)


def test_submit_time_prompt_checks_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from engine.service.admission import JobRules, check_job\n"
        "from engine.service.spec import nightmare_spec, spooky_spec\n"
        "from spooky.config import ModelsConfig, PipelineConfig\n"
        "from spooky.errors import PromptTooLongError\n"
        "p = PipelineConfig()\n"
        "rules = JobRules.for_models(ModelsConfig())\n"
        "check_job(spooky_spec(p, prompt='dracula pale fangs', scare_prompt='a:1|b:-0.5'), rules)\n"
        "try:\n"
        "    check_job(nightmare_spec(p, prompt='boo ' * 80), rules)\n"
        "except PromptTooLongError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('a prompt of 80 tokens was accepted')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
