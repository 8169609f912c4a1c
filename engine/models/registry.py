"""The published model files: where each one is downloaded from, its digest and its size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spooky.errors import WeightsError


@dataclass(frozen=True)
class WeightFile:
    """One file of an entry, stored at `<cache_dir>/<filename>`."""

    filename: str
    # Mirrors, tried in order until one works (https first).
    urls: tuple[str, ...]
    # Published sha256, or None (then the digest of the first download is kept in a sidecar).
    sha256: str | None = None
    # Approximate size in bytes (listing, the disk check, and refusing a download that is far
    # smaller: a web page instead of the file).
    approx_size: int | None = None
    # Where the URLs come from and whether they were confirmed.
    source: str = ""


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    kind: str  # "stylegan2" | "vqgan" | "clip"
    description: str
    files: tuple[WeightFile, ...]
    #: A VQGAN's downsampling factor, as its model.yaml declares it (ch_mult): canvas sides are
    #: multiples of it. Known here so that nodes without the files check sizes the same way.
    canvas_factor: int | None = None

    def paths(self, cache_dir: Path) -> list[Path]:
        return [Path(cache_dir).expanduser() / f.filename for f in self.files]

    @property
    def settings(self) -> tuple[str, ...]:
        """The `[models]` keys that point at a copy of this entry's files downloaded by hand."""
        keys = {"stylegan2": ("stylegan2",), "vqgan": ("vqgan_config", "vqgan_ckpt")}
        return keys.get(self.kind, ("clip",))


_STYLECLIP_DRIVE_ID = "1EM87UquaoQmk17Q8d5kYIAHqu0dkYqdT"
_HEIBOX_IMAGENET_16384 = "https://heibox.uni-heidelberg.de/d/a7530b09fed84f80a887/files/"
_CLIP_HF_REVISION = "ab5b8ef490e86faa07d3523926b842c765de1de5"
#: OpenAI publishes the sha256 of each CLIP file as a path component of its download URL
#: (openai/CLIP clip/clip.py `_MODELS`); `clip.load` checks it after downloading.
OPENAI_VIT_B_32_SHA256 = "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af"

REGISTRY: dict[str, WeightsEntry] = {
    e.name: e
    for e in (
        WeightsEntry(
            name="stylegan2_ffhq",
            kind="stylegan2",
            description="StyleGAN2 FFHQ config-f, 1024px, rosinality format (the file StyleCLIP uses)",
            files=(
                WeightFile(
                    "stylegan2-ffhq-config-f.pt",
                    # The Drive file id is the one in StyleCLIP's README (confirmed). The
                    # drive.usercontent form with confirm=t skips Drive's virus-scan page for large
                    # files; that URL form is not confirmed here. Drive may also refuse with a quota
                    # page, which the downloader reports as a web page instead of the file.
                    # No digest and no size are published for this file.
                    urls=(
                        f"https://drive.usercontent.google.com/download?id={_STYLECLIP_DRIVE_ID}"
                        "&export=download&confirm=t",
                    ),
                    source="orpatashnik/StyleCLIP README (Drive id confirmed; direct URL form unconfirmed)",
                ),
            ),
        ),
        WeightsEntry(
            name="vqgan_wikiart_16384",
            kind="vqgan",
            description="VQGAN f16, 16384 codes, trained on WikiArt (the original article's model)",
            canvas_factor=16,
            files=(
                WeightFile(
                    "vqgan_wikiart_16384/model.yaml",
                    # Community mirrors (no official host exists for this model, and no digest is
                    # published); seen in tnwei/vqgan-clip-app, nerdyrodent/VQGAN-CLIP and
                    # technillogue/imogen scripts; reported dead or behind a login page. The
                    # https forms of the two plain-http hosts come first; the http ones last.
                    urls=(
                        "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/wikiart_16384.yaml",
                        "https://mirror.io.community/blob/vqgan/wikiart_16384.yaml",
                        "https://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
                        "http://mirror.io.community/blob/vqgan/wikiart_16384.yaml",
                        "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.yaml",
                    ),
                    source="community mirrors from VQGAN+CLIP download scripts (unconfirmed)",
                ),
                WeightFile(
                    "vqgan_wikiart_16384/last.ckpt",
                    urls=(
                        "https://github.com/Eleiber/VQGAN-Mirrors/releases/download/0.0.1/wikiart_16384.ckpt",
                        "https://mirror.io.community/blob/vqgan/wikiart_16384.ckpt",
                        "https://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
                        "http://mirror.io.community/blob/vqgan/wikiart_16384.ckpt",
                        "http://eaidata.bmk.sh/data/Wikiart_16384/wikiart_f16_16384_8145600.ckpt",
                    ),
                    approx_size=1_000_000_000,  # "1 GB" per nerdyrodent/VQGAN-CLIP download_models.sh
                    source="community mirrors from VQGAN+CLIP download scripts (unconfirmed)",
                ),
            ),
        ),
        WeightsEntry(
            name="vqgan_imagenet_16384",
            kind="vqgan",
            description="VQGAN f16, 16384 codes, trained on ImageNet (taming-transformers' release)",
            canvas_factor=16,
            files=(
                WeightFile(
                    "vqgan_imagenet_16384/model.yaml",
                    # heibox: the link in taming-transformers' README and the VQGAN+CLIP notebooks
                    # (no digest published).
                    urls=(
                        f"{_HEIBOX_IMAGENET_16384}?p=%2Fconfigs%2Fmodel.yaml&dl=1",
                        "https://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.yaml",
                        "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.yaml",
                    ),
                    source="taming-transformers / EleutherAI vqgan-clip README (heibox; widely used)",
                ),
                WeightFile(
                    "vqgan_imagenet_16384/last.ckpt",
                    urls=(
                        f"{_HEIBOX_IMAGENET_16384}?p=%2Fckpts%2Flast.ckpt&dl=1",
                        "https://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.ckpt",
                        "http://mirror.io.community/blob/vqgan/vqgan_imagenet_f16_16384.ckpt",
                    ),
                    approx_size=980_000_000,  # "980 MB" per nerdyrodent/VQGAN-CLIP download_models.sh
                    source="taming-transformers / EleutherAI vqgan-clip README (heibox; widely used)",
                ),
            ),
        ),
        WeightsEntry(
            name="clip_vit_b_32",
            kind="clip",
            description="CLIP ViT-B/32, OpenAI weights as an open_clip state dict (fp32)",
            files=(
                WeightFile(
                    "clip-vit-b-32-openai.pt",
                    # open_clip's `openai` tag for ViT-B-32 resolves to this Hugging Face repo;
                    # pinned to the revision that added open_clip_pytorch_model.bin (confirmed in
                    # the repo's file listing: 605 MB, pickle of plain tensors only). Its LFS
                    # sha256 could not be looked up from here, so none is pinned; a copy in the
                    # Hugging Face cache is checked against the digest its blob is named by.
                    urls=(
                        "https://huggingface.co/timm/vit_base_patch32_clip_224.openai/resolve/"
                        f"{_CLIP_HF_REVISION}/open_clip_pytorch_model.bin",
                    ),
                    approx_size=605_000_000,
                    source="open_clip pretrained.py hf_hub tag + Hugging Face file listing (confirmed)",
                ),
            ),
        ),
        WeightsEntry(
            name="clip_vit_b_32_openai",
            kind="clip",
            description="CLIP ViT-B/32, OpenAI's own file (TorchScript, fp16; read without running it)",
            files=(
                WeightFile(
                    "ViT-B-32.pt",
                    # The URL in openai/CLIP clip/clip.py; the blob origin behind that CDN second.
                    urls=(
                        f"https://openaipublic.azureedge.net/clip/models/{OPENAI_VIT_B_32_SHA256}/ViT-B-32.pt",
                        f"https://openaipublic.blob.core.windows.net/clip/models/{OPENAI_VIT_B_32_SHA256}/"
                        "ViT-B-32.pt",
                    ),
                    sha256=OPENAI_VIT_B_32_SHA256,
                    approx_size=354_000_000,  # "338 MiB" as clip.load's progress bar shows it
                    source="openai/CLIP clip/clip.py _MODELS (URL and sha256 confirmed; "
                    "blob origin unconfirmed)",
                ),
            ),
        ),
    )
}


def get_entry(name: str) -> WeightsEntry:
    try:
        return REGISTRY[name]
    except KeyError:
        raise WeightsError(
            f"unknown weights name {name!r}", hint=f"known names: {', '.join(REGISTRY)}"
        ) from None


def file_for(entry: WeightsEntry, path: Path) -> WeightFile:
    """The file of `entry` that `path` is a copy of (by name, else by extension)."""
    if len(entry.files) == 1:
        return entry.files[0]
    for wf in entry.files:
        if Path(wf.filename).name == path.name or Path(wf.filename).suffix == path.suffix:
            return wf
    names = ", ".join(Path(wf.filename).name for wf in entry.files)
    raise WeightsError(f"{path.name} is none of {entry.name}'s files ({names})", hint="name one file")
