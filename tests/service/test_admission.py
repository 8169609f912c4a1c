"""Whether a request may become a job (engine.service.admission) and how it becomes one (the
contract's `resolve_spec`): every rule walks the fields the contract declares, so each test here
also runs over every field that carries the rule."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from service_helpers import request

from engine.service.admission import JobRules, Snapshot, banned_word_in, check_job, check_limits
from engine.service.spec import nightmare_spec, spooky_spec
from spooky.config import ModelsConfig, PipelineConfig
from spooky.contract import (
    SPEC_OF,
    Default,
    GuildLimits,
    JobKind,
    JobRequest,
    LimitValues,
    Prompt,
    RefusalCode,
    Requester,
    prompt_texts,
    role_of,
)
from spooky.errors import BadPromptError, ConfigError, EmptyPromptError, InvalidSizeError, PromptTooLongError

TINY = JobRules.for_models(ModelsConfig(preset="tiny"))
FULL = JobRules.for_models(ModelsConfig(preset="full"))


def test_every_declared_default_names_a_real_setting_and_limit():
    """A typo in a field's `Default` would only show when a request leaves that field unset."""
    for cls in SPEC_OF.values():
        for name, info in cls.model_fields.items():
            default = role_of(info, Default)
            if default is None:
                continue
            assert sum([default.setting is not None, default.same_as is not None, default.drawn]) == 1, name
            if default.setting is not None:
                assert default.setting in PipelineConfig.model_fields, (cls.__name__, name)
            if default.same_as is not None:
                assert list(cls.model_fields).index(default.same_as) < list(cls.model_fields).index(name)
            if default.limit is not None:
                assert default.limit in LimitValues.model_fields, (cls.__name__, name)


def test_a_request_becomes_a_spec_from_its_own_fields_then_the_defaults():
    pipeline = PipelineConfig(stylegan_steps=40, scare_steps=10, still_every=5)
    limits = GuildLimits(max_steps=30)
    spec = spooky_spec(pipeline, limits, prompt="ghost")
    # The server's lower range caps the default; the scare prompt follows the prompt; a seed is drawn.
    assert (spec.steps, spec.scare_steps, spec.still_every) == (30, 10, 5)
    assert spec.scare_prompt == "ghost" and 0 <= spec.seed < 2**32
    # What a request asks is kept as asked (the server's range is judged at submit, not capped).
    asked = spooky_spec(pipeline, limits, prompt="ghost", steps=50, scare_prompt="fangs", seed=7)
    assert (asked.steps, asked.scare_prompt, asked.seed) == (50, "fangs", 7)
    night = nightmare_spec(pipeline, None, prompt="nightmare")
    assert (night.frames, night.max_bytes) == (pipeline.nightmare_frames, pipeline.video_max_bytes)
    # Every field a request sets reaches the spec, whatever the field.
    req = request("spooky", "ghost", steps=3, scare_steps=2, scare_prompt="fangs", seed=9, size=(64, 48))
    from engine.service.spec import resolve

    resolved = resolve(req, pipeline, GuildLimits())
    for name, value in req.given().items():
        assert getattr(resolved, name) == value, name


@pytest.mark.parametrize(
    ("kind", "field", "value"),
    [
        ("spooky", "steps", 0),
        ("spooky", "steps", 1001),
        ("spooky", "scare_steps", -1),
        ("spooky", "seed", -1),
        ("spooky", "seed", 2**32),
        ("spooky", "size", (2048, 64)),
        ("spooky", "size", (0, 64)),
        ("nightmare", "frames", 0),
        ("nightmare", "frames", 3001),
        ("nightmare", "max_bytes", 1000),
    ],
)
def test_the_hard_bounds_are_the_contracts_on_the_request_and_the_spec(kind: str, field: str, value: object):
    requester = Requester(user_id="1", channel_id="2")
    with pytest.raises(ValidationError, match=field):
        JobRequest(kind=JobKind(kind), prompt="ghost", requester=requester, **{field: value})
    build = spooky_spec if kind == "spooky" else nightmare_spec
    with pytest.raises(ValidationError, match=field):
        build(PipelineConfig(), prompt="ghost", **{field: value})
    # The API schema shows the bound (what clients read to build a request).
    schema = JobRequest.model_json_schema()
    assert schema["properties"][field]


def test_a_field_of_the_other_kind_is_refused_by_name():
    requester = Requester(user_id="1", channel_id="2")
    every = {n for n in JobRequest.model_fields if any(n in c.model_fields for c in SPEC_OF.values())}
    every -= {"kind"}
    for kind in SPEC_OF:
        others = every - JobRequest.fields_for(kind)
        assert others, kind
        for name in others:
            value = {"frames": 5, "steps": 5, "scare_steps": 1, "scare_prompt": "x", "max_bytes": 5000}[name]
            with pytest.raises(ValidationError, match=f"{name} belongs to"):
                JobRequest(kind=kind, prompt="ghost", requester=requester, **{name: value})


def test_check_job_reads_every_prompt_text_the_spec_declares():
    face = spooky_spec(PipelineConfig(), prompt="dracula pale fangs", scare_prompt="a:1|b:-0.5")
    check_job(face, TINY)
    declared = [(name, marker) for name, _, marker in prompt_texts(face)]
    assert declared == [("prompt", Prompt(weighted=False)), ("scare_prompt", Prompt(weighted=True))]
    with pytest.raises(PromptTooLongError):
        check_job(spooky_spec(PipelineConfig(), prompt="boo " * 100), TINY)
    with pytest.raises(PromptTooLongError):  # the scare prompt's own part, not the face's
        check_job(spooky_spec(PipelineConfig(), prompt="ghost", scare_prompt="boo " * 100 + ":1"), TINY)
    with pytest.raises(EmptyPromptError):
        check_job(spooky_spec(PipelineConfig(), prompt="ghost", scare_prompt="ghost:1|"), TINY)
    # Syntax is told apart from length: a weight that is not finite is a bad prompt.
    with pytest.raises(BadPromptError):
        check_job(nightmare_spec(PipelineConfig(), prompt="nightmare:inf"), TINY)
    # Stage 1 reads its prompt whole: a colon in it is text, not a weight.
    check_job(spooky_spec(PipelineConfig(), prompt="ghost: pale", scare_prompt="x"), TINY)


def test_check_job_holds_the_canvas_to_the_vqgans_factor():
    assert (TINY.canvas_factor, FULL.canvas_factor) == (4, 16)
    check_job(spooky_spec(PipelineConfig(), prompt="ghost", size=(68, 64)), TINY)
    with pytest.raises(InvalidSizeError, match="multiples of 16"):
        check_job(spooky_spec(PipelineConfig(), prompt="ghost", size=(68, 64)), FULL)
    with pytest.raises(InvalidSizeError, match="nearest valid sizes are 16x16"):
        check_job(nightmare_spec(PipelineConfig(), prompt="x", size=(17, 16)), FULL)
    with pytest.raises(ConfigError, match="not a VQGAN of the weights registry"):
        JobRules.for_models(ModelsConfig(vqgan="my_vqgan"))


def test_banned_words_match_whole_words_case_insensitively():
    banned = ["clown", "pale fangs"]
    assert banned_word_in("An EVIL Clown", banned) == "clown"
    assert banned_word_in("clown's nose", banned) == "clown"
    assert banned_word_in("pale\t fangs", banned) == "pale fangs"
    assert banned_word_in("clowning around", banned) is None
    assert banned_word_in("pale fangsy", banned) is None
    assert banned_word_in("anything", []) is None


def _snap(limits: GuildLimits, **counts) -> Snapshot:
    base = {"global_active": 0, "guild_active": 0, "user_active": 0, "user_last_submit": None}
    return Snapshot(now=1000.0, limits=limits, max_queue=100, **{**base, **counts})


SPEC = spooky_spec(PipelineConfig(), None, prompt="x", steps=10, scare_steps=5)
NIGHT = nightmare_spec(PipelineConfig(), None, prompt="x", frames=10)


def test_moderators_skip_user_limits_but_not_the_server_state():
    limits = GuildLimits(max_jobs_per_user=1, cooldown_s=60)
    busy = _snap(limits, user_active=1, user_last_submit=990.0)
    assert check_limits(request(), SPEC, busy).code is RefusalCode.USER_LIMIT
    assert check_limits(request(), SPEC, _snap(limits, user_last_submit=990.0)).code is RefusalCode.COOLDOWN
    assert check_limits(request(moderator=True), SPEC, busy) is None
    paused = _snap(GuildLimits(paused=True))
    assert check_limits(request(moderator=True), SPEC, paused).code is RefusalCode.PAUSED
    full = _snap(GuildLimits(max_queue_per_server=3), guild_active=3)
    assert check_limits(request(moderator=True), SPEC, full).code is RefusalCode.SERVER_QUEUE_FULL


def test_refusals_say_the_values():
    r = check_limits(request(), SPEC, _snap(GuildLimits(cooldown_s=30), user_last_submit=990.0))
    assert r.retry_after_s == 20.0 and "20 s" in r.message and r.limit == "cooldown_s"
    long_night = NIGHT.model_copy(update={"frames": 500})
    r = check_limits(request("nightmare", "x"), long_night, _snap(GuildLimits(max_frames=300)))
    assert (r.code, r.allowed, r.limit) == (RefusalCode.OUT_OF_RANGE, "1–300", "max_frames")
    r = check_limits(request(), SPEC, Snapshot(1000.0, GuildLimits(), 5, 5, 0, 0, None))
    assert r.code is RefusalCode.QUEUE_FULL and "5 of 5" in r.message




def test_every_limited_field_is_held_to_the_servers_range():
    """Each spec field whose `Default` names a server limit is refused above it, and only above it."""
    for kind, cls in SPEC_OF.items():
        build = spooky_spec if kind is JobKind.SPOOKY else nightmare_spec
        for name, info in cls.model_fields.items():
            default = role_of(info, Default)
            if default is None or default.limit is None:
                continue
            limits = GuildLimits(**{default.limit: 5})
            at = build(PipelineConfig(), prompt="x", **{name: 5})
            over = build(PipelineConfig(), prompt="x", **{name: 6})
            req = request(kind.value, "x")
            assert check_limits(req, at, _snap(limits)) is None, name
            r = check_limits(req, over, _snap(limits))
            assert (r.code, r.limit, r.value) == (RefusalCode.OUT_OF_RANGE, default.limit, 5), name
            assert "6" in r.message and r.allowed.endswith("–5")


def test_banned_words_are_looked_for_in_every_prompt_text():
    limits = GuildLimits(banned_words=["clown"])
    face = spooky_spec(PipelineConfig(), prompt="a ghost", scare_prompt="an evil clown:1")
    r = check_limits(request(), face, _snap(limits))
    assert r.code is RefusalCode.BANNED_WORD and r.value == "clown"
    night = nightmare_spec(PipelineConfig(), prompt="clown")
    assert check_limits(request("nightmare", "clown"), night, _snap(limits)).code is RefusalCode.BANNED_WORD
