"""Digests when the engine loads: a file whose sha256 is not the one it must have is refused, and a
file is hashed again only when its size or mtime changed (hashes counted, not timed)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.models import digests
from engine.models.digests import RECORDS_FILENAME, DigestRecords, write_sidecar
from engine.models.factory import load_models
from spooky import cli
from spooky.config import ModelsConfig
from spooky.errors import CorruptWeightsError

try:
    from .test_model_files import _hf_layout
except ImportError:
    from test_model_files import _hf_layout

SG = "stylegan2-ffhq-config-f.pt"
VQ_YAML, VQ_CKPT = "vqgan_wikiart_16384/model.yaml", "vqgan_wikiart_16384/last.ckpt"
CLIP = "clip-vit-b-32-openai.pt"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own and no Hugging Face settings: only the files a test writes are found."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    return home


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every file sha256_file hashes, in order."""
    seen: list[Path] = []
    real = digests.sha256_file

    def counting(path: Path) -> str:
        seen.append(Path(path))
        return real(path)

    monkeypatch.setattr(digests, "sha256_file", counting)
    yield seen


def cache_with_sidecars(cache: Path) -> dict[str, Path]:
    """The full preset's four files in the cache, each with the sidecar a download leaves.

    Their bytes are no model: a load that gets past the digests fails reading the StyleGAN2 file.
    """
    files = {}
    for name in (SG, VQ_YAML, VQ_CKPT, CLIP):
        path = cache / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"not a model: {name}\n".encode() * 1000)
        write_sidecar(path, sha256(path.read_bytes()))
        files[name] = path
    return files


def full(cache: Path) -> ModelsConfig:
    return ModelsConfig(preset="full", device="cpu", cache_dir=cache)


def load_past_the_digests(cache: Path) -> None:
    """Load the full preset, which gets past the digest checks and fails on the first model's bytes."""
    with pytest.raises(CorruptWeightsError, match="could not be read as a torch checkpoint"):
        load_models(full(cache))


def test_a_wrong_sidecar_is_refused_with_both_digests_and_the_fix(home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    load_past_the_digests(cache)  # all four match their sidecars
    write_sidecar(files[VQ_CKPT], "0" * 64)
    with pytest.raises(CorruptWeightsError) as info:
        load_models(full(cache))
    message = str(info.value)
    actual = sha256(files[VQ_CKPT].read_bytes())
    assert f"VQGAN checkpoint (taming last.ckpt) at {files[VQ_CKPT]} fails its checksum" in message
    assert f"its sha256 is {actual}" in message
    assert f"its sidecar last.ckpt.sha256 (written when it was downloaded) says {'0' * 64}" in message
    assert "run `spooky weights fetch vqgan_wikiart_16384` to download it again" in message
    assert "if you replaced the file on purpose, delete last.ckpt.sha256" in message


def test_a_file_changed_after_download_is_refused(home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    load_past_the_digests(cache)
    files[SG].write_bytes(files[SG].read_bytes()[:-1] + b"?")  # same size, new mtime
    with pytest.raises(
        CorruptWeightsError, match=f"StyleGAN2 checkpoint .* at {files[SG]} fails its checksum"
    ):
        load_models(full(cache))


def test_a_hugging_face_blob_whose_name_is_not_its_digest_is_refused(home: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    files[CLIP].unlink()  # CLIP comes from the Hugging Face cache instead
    link = _hf_layout(home / ".cache" / "huggingface" / "hub", b"open_clip weights")
    blob = link.resolve()
    good = blob.name
    blob.write_bytes(b"open_clip weights, cut short")  # what a broken download leaves under the name
    with pytest.raises(CorruptWeightsError) as info:
        load_models(full(cache))
    message = str(info.value)
    assert f"CLIP ViT-B-32 weights at {link} fails its checksum" in message
    assert (
        f"its sha256 is {sha256(blob.read_bytes())}, the name of its Hugging Face blob says {good}" in message
    )
    assert f"delete {blob} so that huggingface_hub downloads it again" in message
    assert "`spooky weights fetch clip_vit_b_32`" in message
    blob.write_bytes(b"open_clip weights")
    load_past_the_digests(cache)


def test_an_unchanged_file_is_not_hashed_again_and_a_touched_one_is(
    home: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    load_past_the_digests(cache)
    assert sorted(hashes) == sorted(files.values())  # first load: no record yet, each hashed once
    hashes.clear()
    load_past_the_digests(cache)
    load_past_the_digests(cache)
    assert hashes == []  # sizes and mtimes as recorded: nothing hashed
    st = files[VQ_YAML].stat()
    os.utime(files[VQ_YAML], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched, same bytes
    load_past_the_digests(cache)
    assert hashes == [files[VQ_YAML]]
    hashes.clear()
    load_past_the_digests(cache)
    assert hashes == []  # the new mtime was recorded


def test_a_wrong_sidecar_on_an_unchanged_file_is_refused_without_hashing(
    home: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    load_past_the_digests(cache)
    hashes.clear()
    write_sidecar(files[SG], "f" * 64)
    with pytest.raises(CorruptWeightsError, match="fails its checksum"):
        load_models(full(cache))
    assert hashes == []  # the record says what the file hashes to; the sidecar disagrees


def test_verify_records_what_it_hashed_and_the_engine_uses_it(
    home: Path, tmp_path: Path, hashes: list[Path], capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    assert cli.main(["weights", "verify", "--cache-dir", str(cache)]) == 0
    assert sorted(hashes) == sorted(files.values())  # verify always hashes
    hashes.clear()
    load_past_the_digests(cache)
    assert hashes == []
    records = json.loads((cache / RECORDS_FILENAME).read_text(encoding="utf-8"))
    st = files[SG].stat()
    digest = sha256(files[SG].read_bytes())
    assert records[str(files[SG].resolve())] == {
        "sha256": digest,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    assert "loaded by the engine" in capsys.readouterr().out


def test_records_that_cannot_be_read_are_ignored(
    home: Path, tmp_path: Path, hashes: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    broken = json.dumps({str(files[SG].resolve()): {"sha256": 5}}) + " and then some"
    (cache / RECORDS_FILENAME).write_text(broken, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="engine.models.digests"):
        load_past_the_digests(cache)
    assert "cannot be read" in caplog.text
    assert len(hashes) == 4
    records = DigestRecords.in_cache(cache)
    hashes.clear()
    assert records.digest(files[SG]) == sha256(files[SG].read_bytes()) and hashes == []


def test_openais_torchscript_file_is_checked_once_per_change(
    home: Path, tmp_path: Path, hashes: list[Path]
) -> None:
    """The digest OpenAI publishes is checked against the record too, not re-hashed at every load."""
    from engine.models.clip import load_clip

    openai = home / ".cache" / "clip" / "ViT-B-32.pt"
    openai.parent.mkdir(parents=True)
    with zipfile.ZipFile(openai, "w") as zf:  # laid out like a TorchScript archive, and not OpenAI's
        zf.writestr("ViT-B-32/constants.pkl", b"")
        zf.writestr("ViT-B-32/data.pkl", b"")
    records = DigestRecords.in_cache(tmp_path / "cache")
    for _ in range(3):
        with pytest.raises(CorruptWeightsError):
            load_clip(openai, digests=records)
    assert hashes == [openai]


# --- verify checks the file the loader would use -------------------------------------------------


def test_verify_clip_passes_when_the_copy_it_would_load_is_in_the_hugging_face_cache(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    link = _hf_layout(home / ".cache" / "huggingface" / "hub", b"open_clip weights")
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(cache)]) == 0
    rows = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("clip_vit_b_32", "ok", str(link))]
    assert rows[0][3].startswith("Hugging Face cache, loaded by the engine; sha256 ")
    link.resolve().write_bytes(b"something else")
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(cache)]) == 1
    assert " mismatch " in capsys.readouterr().out
    link.resolve().unlink()
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(cache)]) == 1
    out = capsys.readouterr().out
    assert f"missing  {cache / CLIP}" in out  # no copy anywhere: missing, where fetch would put it


def test_verify_reports_the_copy_models_names_first(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    files = cache_with_sidecars(cache)
    mine = tmp_path / "mine" / "ffhq.pt"
    mine.parent.mkdir()
    mine.write_bytes(b"my own copy")
    config = tmp_path / "config.toml"
    config.write_text(f'[models]\ncache_dir = "{cache}"\nstylegan2 = "{mine}"\n', encoding="utf-8")
    assert cli.main(["weights", "verify", "stylegan2_ffhq", "--config", str(config)]) == 0
    rows = [line.split(None, 3) for line in capsys.readouterr().out.splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("models.stylegan2", "unverified", str(mine)),
        ("stylegan2_ffhq", "ok", str(files[SG])),
    ]
    assert rows[0][3].startswith("named in [models], loaded by the engine;")
    assert "loaded by the engine" not in rows[1][3]
