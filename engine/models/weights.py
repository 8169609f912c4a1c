"""Registry of the published model files and a resumable, checksummed downloader (no torch import).

Digests: where the publisher gives no sha256 we do not invent one. The first download records the
digest in a `<file>.sha256` sidecar and later checks (`spooky weights verify`, re-fetch) compare
against it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from spooky.errors import DownloadError, WeightsError

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


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


def human_size(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


# --- checksums -------------------------------------------------------------------------------


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def reference_digest(wf: WeightFile, path: Path) -> str | None:
    """The digest `path` must have: the registry's, else the one recorded at first download."""
    if wf.sha256:
        return wf.sha256.lower()
    side = sidecar_path(path)
    if side.is_file():
        text = side.read_text(encoding="utf-8").split()
        return text[0].lower() if text else None
    return None


def write_sidecar(path: Path, digest: str) -> None:
    sidecar_path(path).write_text(f"{digest}  {path.name}\n", encoding="utf-8")


# --- refusing what is not the file -----------------------------------------------------------

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<!--")


def looks_like_html_bytes(head: bytes) -> bool:
    """True when `head` (a file's first bytes) starts like a web page."""
    return head[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower().startswith(_HTML_STARTS)


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive (`torch.jit.save`): a zip with compiled code next to `data.pkl`."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def _check_size(url: str, name: str, total: int, expected: int | None) -> None:
    # Sizes are approximate (publishers give "1 GB"), so only a file under half of it is refused:
    # an error page, or a mirror that serves something else under the same name.
    if expected is not None and expected >= 1_000_000 and total < expected // 2:
        raise DownloadError(
            f"{url} sends {human_size(total)} for {name}, which is about {human_size(expected)}: "
            "not the model file",
        )


# --- download --------------------------------------------------------------------------------


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": "spookygan-weights/1"})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return urllib.request.urlopen(req, timeout=timeout)


def download(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    expected_size: int | None = None,
    timeout: float = 60.0,
) -> str:
    """Stream `url` to `dest` through `dest.part`, resuming a previous part; return the sha256.

    The part file is resumed with an HTTP Range request (a server that ignores Range makes us start
    over), checked against `sha256` when given, and renamed into place only when complete. A web
    page (by Content-Type or by its first bytes) and a file far smaller than `expected_size` are
    refused: that is what dead mirrors and login walls send.
    """
    from tqdm import tqdm

    dest = Path(dest).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    source = dest.with_name(dest.name + ".part.url")
    if part.is_file() and (not source.is_file() or source.read_text(encoding="utf-8") != url):
        # A part from another mirror may hold other bytes; never splice two sources together.
        part.unlink()
    offset = part.stat().st_size if part.is_file() else 0
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as e:
        e.close()  # the error holds the open response
        if e.code == 416 and offset:
            # Our part is not a prefix the server can continue (larger or complete): start over.
            log.info("server refused to resume %s (HTTP 416); starting over", url)
            part.unlink()
            return download(url, dest, sha256, progress, expected_size=expected_size, timeout=timeout)
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"could not reach {url}: {reason}", hint="check the network and retry") from e

    with resp:
        resumed = offset > 0 and resp.status == 206
        if offset and not resumed:
            log.info("server ignored the Range request for %s; starting over", url)
            offset = 0
        if "text/html" in (resp.headers.get("Content-Type") or ""):
            raise DownloadError(
                f"{url} returned a web page instead of {dest.name} (a quota, login or confirmation page)",
                hint=f"download the file in a browser and save it as {dest}",
            )
        length = resp.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        need = (
            remaining
            if remaining is not None
            else (max(expected_size - offset, 0) if expected_size else None)
        )
        free = shutil.disk_usage(dest.parent).free
        if need is not None and free < need:
            raise DownloadError(
                f"not enough disk space for {dest.name}: it needs {human_size(need)}, "
                f"{human_size(free)} is free in {dest.parent}",
                hint="free some space or choose another --cache-dir",
            )
        try:
            first = resp.read(_CHUNK)
        except OSError as e:
            raise DownloadError(f"download of {url} failed at its first bytes ({e})") from e
        if not offset and looks_like_html_bytes(first):
            # Checked before the part file is opened: a page never replaces a good part.
            raise DownloadError(
                f"{url} returned a web page instead of {dest.name} "
                "(sent as a file, but it starts like HTML: an error or login page)",
                hint=f"download the file in a browser and save it as {dest}",
            )
        if remaining is not None:
            _check_size(url, dest.name, offset + remaining, expected_size)
        hasher = hashlib.sha256()
        if resumed:
            with open(part, "rb") as f:
                while chunk := f.read(_CHUNK):
                    hasher.update(chunk)
        if not resumed:
            source.write_text(url, encoding="utf-8")
        written = 0
        total = offset + remaining if remaining is not None else None
        bar = tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=dest.name,
            disable=not progress,
            leave=False,
        )
        try:
            with open(part, "ab" if resumed else "wb") as out, bar:
                chunk = first
                while chunk:
                    out.write(chunk)
                    hasher.update(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
                    chunk = resp.read(_CHUNK)
        except OSError as e:
            raise DownloadError(
                f"download of {url} was interrupted after {human_size(offset + written)} ({e})",
                hint="run the same command again to resume",
            ) from e
    if remaining is not None and written != remaining:
        raise DownloadError(
            f"download of {url} ended early: got {written} of {remaining} bytes",
            hint="run the same command again to resume",
        )
    if remaining is None:
        try:
            _check_size(url, dest.name, offset + written, expected_size)
        except DownloadError:
            part.unlink(missing_ok=True)
            source.unlink(missing_ok=True)
            raise
    digest = hasher.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        source.unlink(missing_ok=True)
        raise DownloadError(
            f"checksum mismatch for {dest.name} from {url}: expected sha256 {sha256.lower()}, got {digest}",
            hint="the download was deleted; retry, or report the mirror if it keeps happening",
        )
    os.replace(part, dest)
    source.unlink(missing_ok=True)
    return digest


# --- fetch and verify entries ----------------------------------------------------------------


@dataclass(frozen=True)
class FileStatus:
    entry: str
    path: Path
    present: bool
    size: int | None
    # "ok" | "mismatch" | "unverified" (no reference digest) | "missing" | "" (not checked)
    check: str = ""
    detail: str = ""


def manual_hint(entry: WeightsEntry, wf: WeightFile, path: Path) -> str:
    """How to use a copy of `entry`'s file that the operator downloaded by hand."""
    keys = " and ".join(f"`{k}`" for k in entry.settings)
    check = "checks it against the published digest" if wf.sha256 else "shows its sha256 (none is published)"
    return (
        f"download it by hand (a browser gets past login and confirmation pages) and save it as {path}, "
        f"or point {keys} in the [models] section of config.toml at your copy; "
        f"`spooky weights verify {entry.name} --file PATH` {check}"
    )


def fetch_file(
    wf: WeightFile, cache_dir: Path, *, progress: bool = True, entry: WeightsEntry | None = None
) -> Path:
    """Make sure `wf` is in `cache_dir` (download it if absent or failing its checksum).

    Every mirror is tried in order; when none works the error names each one and why.
    """
    path = Path(cache_dir).expanduser() / wf.filename
    reference = reference_digest(wf, path)
    if path.is_file():
        if reference is None or sha256_file(path) == reference:
            log.info("%s already present", path)
            return path
        log.warning("%s fails its checksum; downloading it again", path)
    errors = []
    for url in wf.urls:
        if url.startswith("http://") and reference is None:
            log.warning("%s is plain http and %s has no published digest", url, wf.filename)
        try:
            digest = download(url, path, reference, progress, expected_size=wf.approx_size)
        except DownloadError as e:
            errors.append(e.message)
            log.warning("%s", e)
            continue
        if reference is None:
            write_sidecar(path, digest)
        return path
    tried = "".join(f"\n  {i}. {err}" for i, err in enumerate(errors, 1))
    todo = manual_hint(entry, wf, path) if entry else f"download it by hand and save it as {path}"
    # What to do goes on its own line after the list, not in parentheses after the last mirror.
    failed = f"could not download {path.name}: all {len(wf.urls)} mirror(s) failed:{tried}"
    raise DownloadError(f"{failed}\n{todo}")


def fetch(name: str, cache_dir: Path, *, progress: bool = True) -> list[Path]:
    entry = get_entry(name)
    return [fetch_file(wf, cache_dir, progress=progress, entry=entry) for wf in entry.files]


def file_statuses(names: list[str], cache_dir: Path, *, check: bool = False) -> list[FileStatus]:
    """Presence and size of each file of `names`; with `check`, compare digests too."""
    out = []
    for name in names:
        for wf in get_entry(name).files:
            path = Path(cache_dir).expanduser() / wf.filename
            if not path.is_file():
                out.append(FileStatus(name, path, False, None, "missing" if check else ""))
                continue
            size = path.stat().st_size
            if not check:
                out.append(FileStatus(name, path, True, size))
                continue
            reference = reference_digest(wf, path)
            digest = sha256_file(path)
            if reference is None:
                out.append(FileStatus(name, path, True, size, "unverified", f"sha256 {digest}, no reference"))
            elif digest == reference:
                out.append(FileStatus(name, path, True, size, "ok", f"sha256 {digest}"))
            else:
                out.append(
                    FileStatus(name, path, True, size, "mismatch", f"expected {reference}, got {digest}")
                )
    return out


# --- CLIP files that other tools already downloaded ------------------------------------------

#: open_clip's `openai` ViT-B-32 weights inside a Hugging Face hub cache, newest format first.
OPEN_CLIP_HF_REPO_DIR = "models--timm--vit_base_patch32_clip_224.openai"
OPEN_CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class FoundFile:
    """A CLIP file found on disk, where it was found, and the digest it must have if one is known."""

    path: Path
    where: str
    sha256: str | None


def hf_hub_cache(env: Mapping[str, str] | None = None) -> Path:
    """The Hugging Face hub cache as huggingface_hub resolves it (HF_HUB_CACHE, then HF_HOME)."""
    env = os.environ if env is None else env
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(key):
            return Path(env[key]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return xdg / "huggingface" / "hub"


def _hf_snapshot_files(hub: Path) -> list[Path]:
    repo = hub / OPEN_CLIP_HF_REPO_DIR
    ref = repo / "refs" / "main"
    snapshots = []
    if ref.is_file():
        snapshots.append(repo / "snapshots" / ref.read_text(encoding="utf-8").strip())
    snapshots += sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [snap / name for snap in dict.fromkeys(snapshots) for name in OPEN_CLIP_HF_FILES]


def _hf_blob_digest(path: Path) -> str | None:
    # Hugging Face stores an LFS file as blobs/<its sha256> and links the snapshot name to it.
    name = path.resolve().name
    return name if len(name) == 64 and all(c in "0123456789abcdef" for c in name) else None


def find_clip_files(cache_dir: Path, env: Mapping[str, str] | None = None) -> list[FoundFile]:
    """Every CLIP ViT-B/32 file on disk, in the order the loader prefers them.

    SpookyGAN's cache (its two registry files, and open_clip's layout inside it), the Hugging Face
    hub cache that open_clip downloads to, then `~/.cache/clip` where OpenAI's `clip.load` (and
    open_clip before it used the hub) leaves `ViT-B-32.pt`.
    """
    cache_dir = Path(cache_dir).expanduser()
    ours = REGISTRY["clip_vit_b_32"].files[0]
    openai = REGISTRY["clip_vit_b_32_openai"].files[0]
    candidates: list[tuple[Path, str, str | None]] = [
        (cache_dir / ours.filename, "SpookyGAN cache", None),
        (cache_dir / openai.filename, "SpookyGAN cache (OpenAI's file)", openai.sha256),
    ]
    hubs = (("open_clip layout in the SpookyGAN cache", cache_dir), ("Hugging Face cache", hf_hub_cache(env)))
    for where, hub in hubs:
        candidates += [(p, where, None) for p in _hf_snapshot_files(hub)]
    candidates.append((Path.home() / ".cache" / "clip" / openai.filename, "OpenAI clip cache", openai.sha256))
    found, seen = [], set()
    for path, where, digest in candidates:
        if path.is_file() and path.resolve() not in seen:
            seen.add(path.resolve())
            found.append(FoundFile(path, where, digest or _hf_blob_digest(path)))
    return found


# --- checking a file against the published digest --------------------------------------------


def check_file(entry: str, path: Path, reference: str | None, *, what: str = "") -> FileStatus:
    """Compare `path` with `reference` (None: no digest is published for it)."""
    if not path.is_file():
        return FileStatus(entry, path, False, None, "missing", what)
    digest = sha256_file(path)
    size = path.stat().st_size
    label = f"{what}; " if what else ""
    if reference is None:
        return FileStatus(entry, path, True, size, "unverified", f"{label}sha256 {digest}, none published")
    if digest == reference.lower():
        return FileStatus(entry, path, True, size, "ok", f"{label}sha256 {digest}")
    detail = f"{label}expected {reference.lower()}, got {digest}"
    return FileStatus(entry, path, True, size, "mismatch", detail)


def file_for(entry: WeightsEntry, path: Path) -> WeightFile:
    """The file of `entry` that `path` is a copy of (by name, else by extension)."""
    if len(entry.files) == 1:
        return entry.files[0]
    for wf in entry.files:
        if Path(wf.filename).name == path.name or Path(wf.filename).suffix == path.suffix:
            return wf
    names = ", ".join(Path(wf.filename).name for wf in entry.files)
    raise WeightsError(f"{path.name} is none of {entry.name}'s files ({names})", hint="name one file")
