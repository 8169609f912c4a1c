"""`spooky render` end to end on the tiny preset, and its answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from engine.pipeline.image_files import png_metadata
from engine.pipeline.video_probe import probe
from spooky.cli import main


def fast_config(tmp_path: Path) -> Path:
    """Fewer cutouts than the default 32: the same code path, less CPU time."""
    config = tmp_path / "fast.toml"
    config.write_text("[pipeline]\ncutouts = 4\n")
    return config


def test_render_writes_stills_metadata_and_video(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    argv = ["render", "a pale vampire", "--preset", "tiny", "--out", str(out), "--nightmare"]
    argv += ["--config", str(fast_config(tmp_path))]
    argv += ["--frames", "8", "--steps", "3", "--scare-steps", "2", "--seed", "77", "--no-progress"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "TINY PRESET" in captured.err
    for name in ("stylegan.png", "spooky.png", "stylegan_0003.png", "scare_0002.png", "nightmare.mp4"):
        assert (out / name).is_file(), name
        assert str(out / name) in captured.out
    meta = png_metadata(out / "spooky.png")
    assert (meta["prompt"], meta["seed"], meta["preset"]) == ("a pale vampire", "77", "tiny")
    settings = json.loads(meta["settings"])
    assert [settings[k] for k in ("seed", "steps", "scare_steps", "cutouts")] == [77, 3, 2, 4]
    assert png_metadata(out / "stylegan.png")["prompt"] == "a pale vampire"
    with Image.open(out / "spooky.png") as img:
        assert img.size == (64, 64)
    info = probe(out / "nightmare.mp4")
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 8, 64, 64)


def test_render_animates_a_given_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "face.png"
    Image.new("RGB", (96, 48), (120, 30, 30)).save(src)
    out = tmp_path / "anim"
    argv = ["render", "a ghost", "--preset", "tiny", "--out", str(out), "--image", str(src), "--frames", "3"]
    assert main([*argv, "--no-progress", "--config", str(fast_config(tmp_path))]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["nightmare.mp4"]
    info = probe(out / "nightmare.mp4")
    assert info.frames == 3 and info.width == 2 * info.height  # the upload's aspect is kept


def run_bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 1
    return capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["   "], "error: the prompt is empty"),
        (["ghost", "--size", "66x64"], "multiples of 4"),
        (["ghost", "--size", "big"], "--size 'big' is not WIDTHxHEIGHT"),
        (["ghost", "--preset", "huge"], "unknown model preset 'huge'; allowed: full, tiny"),
        (["ghost", "--frames", "3"], "--frames applies to the nightmare video"),
        (["ghost", "--steps", "0"], "--steps is 0; it should be greater than or equal to 1"),
        ([], "a prompt is required"),
    ],
)
def test_bad_input_exits_1_with_the_reason(
    extra: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    preset = [] if "--preset" in extra else ["--preset", "tiny"]
    err = run_bad(["render", *extra, *preset, "--out", str(tmp_path / "o"), "--no-progress"], capsys)
    assert message in err


def test_not_an_image_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bogus = tmp_path / "notes.png"
    bogus.write_text("not a picture")
    err = run_bad(["render", "--image", str(bogus), "--preset", "tiny", "--out", str(tmp_path)], capsys)
    assert "is not an image" in err


def test_full_preset_without_weights_names_the_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\npreset = "full"\ndevice = "cpu"\ncache_dir = "{tmp_path / "empty"}"\n')
    err = run_bad(["render", "ghost", "--config", str(config), "--out", str(tmp_path / "o")], capsys)
    assert "stylegan2-ffhq-config-f.pt" in err
    assert "spooky weights fetch" in err
    assert "TINY" not in err  # never silently replaced by the tiny preset


def test_a_style_gives_the_articles_prompts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spooky.styles import STYLES

    out = tmp_path / "witch"
    argv = ["render", "--style", "witch", "--preset", "tiny", "--out", str(out), "--no-progress"]
    argv += ["--config", str(fast_config(tmp_path)), "--steps", "1", "--scare-steps", "1"]
    assert main(argv) == 0
    settings = json.loads(png_metadata(out / "spooky.png")["settings"])
    witch = STYLES["witch"]
    assert (settings["prompt"], settings["scare_prompt"]) == (witch.prompt, witch.scare_prompt)
