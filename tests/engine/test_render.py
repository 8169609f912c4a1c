"""The render orchestrator on the tiny preset: both stages, seeds, progress, cancel, the video."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.models.factory import Models, load_models
from engine.pipeline.ffmpeg import ENV_FFMPEG
from engine.pipeline.progress import StepReport
from engine.pipeline.render import Renderer
from engine.pipeline.video_probe import probe
from engine.service.spec import nightmare_spec, spooky_spec
from spooky.config import ModelsConfig, PipelineConfig
from spooky.contract import NightmareSpec, SpookySpec
from spooky.errors import (
    ConfigError,
    JobCancelled,
    VideoError,
)

try:
    from .ffmpeg_fakes import fake_ffmpeg, gated_ffmpeg, writer_threads
except ImportError:
    from ffmpeg_fakes import fake_ffmpeg, gated_ffmpeg, writer_threads


@pytest.fixture(scope="module")
def models() -> Models:
    return load_models(ModelsConfig(preset="tiny", device="cpu"))


@pytest.fixture
def renderer(models: Models) -> Renderer:
    return Renderer(models, PipelineConfig(cutouts=8))


def face_job(prompt: str, **kw: object) -> SpookySpec:
    """A spooky spec resolved as the engine resolves one; what `kw` leaves out is the default."""
    return spooky_spec(PipelineConfig(), None, prompt=prompt, **kw)  # type: ignore[arg-type]


def night_job(**kw: object) -> NightmareSpec:
    return nightmare_spec(PipelineConfig(), None, prompt="nightmare", **kw)  # type: ignore[arg-type]


def small(prompt: str = "a pale vampire", **kw: object) -> SpookySpec:
    return face_job(prompt, **{"steps": 3, "scare_steps": 2, **kw})


def test_spooky_gives_both_images_seed_and_settings(renderer: Renderer) -> None:
    events: list[StepReport] = []
    result = renderer.spooky(small(), events.append)
    assert result.stylegan_image.size == (32, 32)  # the tiny generator's resolution
    assert result.spooky_image.size == (64, 64)  # the tiny preset's canvas
    assert 0 <= result.seed < 2**32
    s = result.settings
    assert (s["prompt"], s["scare_prompt"], s["seed"]) == ("a pale vampire", "a pale vampire", result.seed)
    assert s["preset"] == "tiny"
    assert (s["steps"], s["scare_steps"], s["cutouts"], s["size"], s["lr"]) == (3, 2, 8, [64, 64], 0.1)
    # Stage 1 progress first, then stage 2, each step once, each stage ending with a still.
    assert [(e.stage, e.step, e.total) for e in events] == [
        ("stylegan", 1, 3), ("stylegan", 2, 3), ("stylegan", 3, 3), ("scare", 1, 2), ("scare", 2, 2),
    ]  # fmt: skip
    assert events[2].image is not None and events[4].image is not None
    assert tuple(events[4].image.shape) == (3, 64, 64)


def test_same_seed_is_bit_identical_and_another_seed_differs(renderer: Renderer) -> None:
    a = renderer.spooky(small(seed=1234))
    b = renderer.spooky(small(seed=1234))
    c = renderer.spooky(small(seed=99))
    assert a.seed == b.seed == 1234
    assert a.stylegan_image.tobytes() == b.stylegan_image.tobytes()
    assert a.spooky_image.tobytes() == b.spooky_image.tobytes()
    assert a.stylegan_image.tobytes() != c.stylegan_image.tobytes()


def test_decoder_checkpointing_setting_reaches_the_stages(models: Models) -> None:
    """On: the decoder runs again in each backward pass (less memory); off: once per step. Same image."""
    calls = []
    # A pre-hook: the recomputation stops as soon as it has what the backward needs (early stop).
    hook = models.vqgan.decoder.conv_out.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        counts, images = [], []
        for on in (True, False):
            calls.clear()
            renderer = Renderer(models, PipelineConfig(cutouts=2, decoder_checkpointing=on))
            result = renderer.spooky(small(seed=5))
            counts.append(len(calls))
            images.append(np.asarray(result.spooky_image, dtype=np.int16))
    finally:
        hook.remove()
    assert counts[0] > counts[1] >= 2
    # Two code paths (recomputed vs kept activations): the same image within one grey level.
    assert np.abs(images[0] - images[1]).max() <= 1


def test_job_size_and_config_size_set_the_canvas(models: Models) -> None:
    job = small(size=(48, 32), scare_steps=1)
    assert Renderer(models, PipelineConfig(cutouts=4)).spooky(job).spooky_image.size == (48, 32)
    # A size written in the config applies to the tiny preset too.
    configured = Renderer(models, PipelineConfig(cutouts=4, size=(32, 40)))
    assert configured.spooky(small(scare_steps=1)).spooky_image.size == (32, 40)


def test_cancel_from_the_callback_stops_the_job(renderer: Renderer) -> None:
    seen: list[StepReport] = []

    def cancel_at_step_two(p: StepReport) -> None:
        seen.append(p)
        if p.step == 2:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        renderer.spooky(small(steps=5), cancel_at_step_two)
    assert [(p.stage, p.step) for p in seen] == [("stylegan", 1), ("stylegan", 2)]


def test_a_config_canvas_the_vqgan_cannot_take_is_refused_at_start(models: Models) -> None:
    with pytest.raises(ConfigError, match=r"\[pipeline\] size: canvas size 66x64"):
        Renderer(models, PipelineConfig(size=(66, 64)))


def test_nightmare_writes_exactly_the_frames(renderer: Renderer, tmp_path: Path) -> None:
    face = renderer.spooky(small(seed=5)).spooky_image
    events: list[StepReport] = []
    out = tmp_path / "night.mp4"
    job = night_job(frames=12, seed=5, max_bytes=64 * 1024)
    result = renderer.nightmare(job, face, out, events.append)
    info = probe(out)
    assert (info.codec, info.pix_fmt, info.fps, info.frames) == ("h264", "yuv420p", 30, 12)
    assert (info.width, info.height) == (64, 64)
    assert result.frames == 12 and result.video_path == out
    # The ~4 KB toy video never reaches the budget: fitting an over-budget video is its own test.
    assert result.bytes == out.stat().st_size and result.settings["max_bytes"] == 64 * 1024
    assert result.last_frame.size == (64, 64)
    assert result.settings["seed"] == 5 and result.settings["frames"] == 12
    assert [e.step for e in events] == list(range(1, 13)) and {e.stage for e in events} == {"nightmare"}


def test_nightmare_keeps_an_uploads_aspect_ratio(renderer: Renderer, tmp_path: Path) -> None:
    upload = Image.new("RGB", (300, 150), (90, 20, 20))
    size = renderer.nightmare_size(upload)
    # About the default canvas's area at the upload's 2:1 aspect, snapped to multiples of 4.
    assert size[0] % 4 == 0 and size[1] % 4 == 0
    assert size[0] / size[1] == pytest.approx(2, rel=0.1)
    assert size[0] * size[1] == pytest.approx(64 * 64, rel=0.1)
    result = renderer.nightmare(night_job(frames=2, seed=1), upload, tmp_path / "u.mp4")
    assert result.last_frame.size == size


def test_cancelled_nightmare_leaves_no_file(renderer: Renderer, tmp_path: Path) -> None:
    def cancel_at_three(p: StepReport) -> None:
        if p.step == 3:
            raise JobCancelled()

    out = tmp_path / "gone.mp4"
    with pytest.raises(JobCancelled):
        renderer.nightmare(night_job(frames=10), Image.new("RGB", (64, 64)), out, cancel_at_three)
    assert list(tmp_path.iterdir()) == []


def test_nightmare_computes_while_the_encoder_is_stuck(
    renderer: Renderer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ffmpeg reads nothing until step 3: a 256x256 frame (192 KiB) overfills its 64 KiB pipe, so a
    render that wrote frames on its own thread would never reach step 3 (and hang here)."""
    gate = tmp_path / "gate"
    monkeypatch.setenv(ENV_FFMPEG, gated_ffmpeg(tmp_path, gate))
    steps: list[int] = []

    def open_at_three(p: StepReport) -> None:
        steps.append(p.step)
        if p.step == 3:
            gate.touch()

    job = night_job(frames=4, seed=2, size=(256, 256))
    image = Image.new("RGB", (256, 256), (120, 40, 40))
    result = renderer.nightmare(job, image, tmp_path / "n.mp4", open_at_three)
    assert steps == [1, 2, 3, 4] and probe(result.video_path).frames == 4


def test_nightmare_raises_the_encoders_failure(
    renderer: Renderer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exe = fake_ffmpeg(tmp_path, 'head -c 1000 >/dev/null; echo "simulated encoder crash" >&2; exit 3')
    monkeypatch.setenv(ENV_FFMPEG, exe)
    out = tmp_path / "out" / "n.mp4"
    with pytest.raises(VideoError, match="simulated encoder crash"):
        renderer.nightmare(night_job(frames=12, seed=1), Image.new("RGB", (64, 64)), out)
    assert list(out.parent.iterdir()) == [] and writer_threads() == []


def test_cancelled_nightmare_stops_the_writer_thread(renderer: Renderer, tmp_path: Path) -> None:
    def cancel_at_three(p: StepReport) -> None:
        if p.step == 3:
            raise JobCancelled()

    with pytest.raises(JobCancelled):
        renderer.nightmare(
            night_job(frames=10), Image.new("RGB", (64, 64)), tmp_path / "c.mp4", cancel_at_three
        )
    assert writer_threads() == [] and list(tmp_path.iterdir()) == []
