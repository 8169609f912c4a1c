"""Rebuild the README's pictures: a contact sheet of every stage of a tiny-preset render.

    python docs/images/make_stage_sheet.py            # renders with the tiny preset first
    python docs/images/make_stage_sheet.py --from out/demo

The tiny preset's models have random weights: these pictures are noise, shown only to illustrate
what each stage emits and in what order. Needs the engine extra (Pillow, imageio-ffmpeg).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
CELL = 96  # pixels per still on the sheet (nearest-neighbour upscale of the toy-size images)
LABEL_H = 14


def render(out: Path) -> None:
    cmd = [sys.executable, "-m", "spooky.cli", "render", "dracula pale fangs", "--preset", "tiny",
           "--seed", "7", "--out", str(out), "--nightmare", "--no-progress"]
    subprocess.run(cmd, check=True, cwd=HERE.parents[1])


def video_frames(mp4: Path, picks: list[int]) -> list[tuple[int, Image.Image]]:
    reader = imageio_ffmpeg.read_frames(str(mp4))
    meta = next(reader)
    w, h = meta["size"]
    out = []
    for i, raw in enumerate(reader, 1):
        if i in picks:
            out.append((i, Image.frombytes("RGB", (w, h), raw)))
    reader.close()
    return out


def cell(image: Image.Image, label: str) -> Image.Image:
    tile = Image.new("RGB", (CELL, CELL + LABEL_H), "black")
    tile.paste(image.convert("RGB").resize((CELL, CELL), Image.NEAREST), (0, LABEL_H))
    ImageDraw.Draw(tile).text((2, 1), label, fill="white")
    return tile


def sheet(rows: list[tuple[str, list[Image.Image]]]) -> Image.Image:
    width = max(len(tiles) for _, tiles in rows) * (CELL + 4) + 4
    title_h = 16
    height = len(rows) * (CELL + LABEL_H + title_h + 4) + 4
    out = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(out)
    y = 4
    for title, tiles in rows:
        draw.text((4, y), title, fill=(255, 170, 60))
        y += title_h
        for i, tile in enumerate(tiles):
            out.paste(tile, (4 + i * (CELL + 4), y))
        y += CELL + LABEL_H + 4
    return out


def build(src: Path) -> None:
    stylegan = sorted(src.glob("stylegan_*.png"))
    scare = sorted(src.glob("scare_*.png"))
    frames = video_frames(src / "nightmare.mp4", [1, 50, 100, 150, 200, 250, 300])
    rows = [
        ("stage 1: StyleGAN2 + CLIP (every 5 steps)",
         [cell(Image.open(p), p.stem.split("_")[1].lstrip("0")) for p in stylegan]),
        ("stage 2: VQGAN + CLIP scare pass",
         [cell(Image.open(src / "stylegan.png"), "input")]
         + [cell(Image.open(p), p.stem.split("_")[1].lstrip("0")) for p in scare]
         + [cell(Image.open(src / "spooky.png"), "final")]),
        ("stage 3: nightmare video (frame numbers)", [cell(im, str(i)) for i, im in frames]),
    ]
    sheet(rows).save(HERE / "tiny-stages.png", optimize=True)
    print(f"wrote {HERE / 'tiny-stages.png'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--from", dest="src", type=Path, help="an existing tiny render folder")
    args = ap.parse_args()
    if args.src:
        build(args.src)
        return
    with tempfile.TemporaryDirectory() as tmp:
        render(Path(tmp))
        build(Path(tmp))


if __name__ == "__main__":
    main()
