"""Model files in the layouts users have them: each test writes a replica of the published layout."""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import open_clip
import pytest
import torch

from engine.models.clip import build_clip_model, find_cached_clip, load_clip
from engine.models.clip_files import OPEN_CLIP_HF_REPO_DIR, find_clip_files
from engine.models.registry import OPENAI_VIT_B_32_SHA256, REGISTRY
from engine.models.stylegan2 import StyleGAN2Generator, load_stylegan2
from engine.models.vqgan import build_vqgan, load_vqgan
from spooky import cli
from spooky.errors import CheckpointMismatchError, CorruptWeightsError

try:
    from .test_clip import TOY
    from .test_vqgan import toy_yaml, write_pair
except ImportError:
    from test_clip import TOY
    from test_vqgan import toy_yaml, write_pair

SG = {"size": 8, "style_dim": 16, "n_mlp": 1, "channel_multiplier": 1, "channel_max": 16}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def toy_clip() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_clip_model(model_cfg=TOY).eval()


@pytest.fixture(scope="module")
def vit_b_32() -> torch.nn.Module:
    """The model the factory builds for the `openai` ViT-B-32 weights (random, full size)."""
    return build_clip_model("ViT-B-32")


def write_openai_torchscript(model: torch.nn.Module, path: Path) -> None:
    """A TorchScript fp16 archive of `model`, as `clip.load` leaves ViT-B-32.pt in ~/.cache/clip."""
    img, txt = torch.rand(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the model's Python control flow
        # A copy: the traced module shares its parameters, and .half() would change the model's.
        traced = torch.jit.trace_module(
            copy.deepcopy(model), {"encode_image": img, "encode_text": txt}, check_trace=False
        ).half()
        torch.jit.save(traced, str(path))


# --- 1. OpenAI's TorchScript ViT-B-32.pt ------------------------------------------------------


def test_openai_torchscript_file_loads_without_running_its_code(
    toy_clip, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ViT-B-32.pt"
    write_openai_torchscript(toy_clip, path)
    # Break the archive's code: loading must not need it (it is never compiled or run).
    broken = tmp_path / "broken" / "ViT-B-32.pt"
    broken.parent.mkdir()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(broken, "w", zipfile.ZIP_STORED) as dst:
        code = [n for n in src.namelist() if "/code/" in n and n.endswith(".py")]
        assert code
        for info in src.infolist():
            data = b"raise SystemExit('TorchScript code ran')\n" if info.filename in code else src.read(info)
            dst.writestr(info, data)

    def no_jit(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.jit.load was called")

    monkeypatch.setattr(torch.jit, "load", no_jit)
    clip = load_clip(broken, model_cfg=TOY, openai_sha256=sha256(broken))
    expected = {k: v.half().float() for k, v in toy_clip.state_dict().items()}
    got = clip.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)  # every weight, bit for bit
    tokens = clip.tokenizer(["a pale vampire"])
    with torch.no_grad():
        assert clip.encode_text(["a pale vampire"]).shape == toy_clip.encode_text(tokens).shape


def test_openai_torchscript_file_is_checked_against_openais_digest(toy_clip, tmp_path: Path) -> None:
    path = tmp_path / "ViT-B-32.pt"
    write_openai_torchscript(toy_clip, path)
    with pytest.raises(CorruptWeightsError, match=r"not OpenAI's ViT-B-32\.pt") as info:
        load_clip(path, model_cfg=TOY)  # the default reference: the sha256 in OpenAI's URL
    assert OPENAI_VIT_B_32_SHA256 in str(info.value) and sha256(path) in str(info.value)


def test_openai_digest_is_the_one_in_its_url() -> None:
    wf = REGISTRY["clip_vit_b_32_openai"].files[0]
    assert wf.sha256 == OPENAI_VIT_B_32_SHA256
    assert all(f"/{wf.sha256}/ViT-B-32.pt" in url and url.startswith("https://") for url in wf.urls)


# --- 2. CLIP in other tools' caches ----------------------------------------------------------


def _hf_layout(hub: Path, payload: bytes, name: str = "open_clip_pytorch_model.bin") -> Path:
    """huggingface_hub's cache: blobs/<sha256>, snapshots/<rev>/<name> -> blob, refs/main."""
    repo = hub / OPEN_CLIP_HF_REPO_DIR
    digest = hashlib.sha256(payload).hexdigest()
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / digest).write_bytes(payload)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("ab5b8ef490e86faa07d3523926b842c765de1de5", encoding="utf-8")
    snap = repo / "snapshots" / "ab5b8ef490e86faa07d3523926b842c765de1de5"
    snap.mkdir(parents=True)
    (snap / name).symlink_to(Path("..") / ".." / "blobs" / digest)
    return snap / name


@pytest.fixture
def toy_clip_bytes(toy_clip, tmp_path: Path) -> bytes:
    path = tmp_path / "sd.bin"
    torch.save(toy_clip.state_dict(), path)
    return path.read_bytes()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)
    return home


def test_clip_found_in_the_hugging_face_cache(
    home: Path, toy_clip_bytes: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "spooky"
    default = _hf_layout(home / ".cache" / "huggingface" / "hub", toy_clip_bytes)
    assert find_cached_clip(cache) == default
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert find_cached_clip(cache) is None  # HF_HOME moves the whole cache
    in_home = _hf_layout(tmp_path / "hf" / "hub", toy_clip_bytes)
    assert find_cached_clip(cache) == in_home
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub2"))
    own = _hf_layout(tmp_path / "hub2", toy_clip_bytes, "open_clip_model.safetensors")
    assert find_cached_clip(cache) == own
    found = find_clip_files(cache)
    assert found[0].where == "Hugging Face cache"
    assert found[0].sha256 == hashlib.sha256(toy_clip_bytes).hexdigest()  # the blob's name


def test_openai_cache_and_weights_list_show_where(
    home: Path, toy_clip, toy_clip_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    openai = home / ".cache" / "clip" / "ViT-B-32.pt"
    openai.parent.mkdir(parents=True)
    write_openai_torchscript(toy_clip, openai)
    hf = _hf_layout(home / ".cache" / "huggingface" / "hub", toy_clip_bytes)
    cache = tmp_path / "spooky"
    assert [f.path for f in find_clip_files(cache)] == [hf, openai]
    assert cli.main(["weights", "list", "--cache-dir", str(cache)]) == 0
    out = capsys.readouterr().out.split("CLIP ViT-B/32 files found")[1]
    rows = out.splitlines()[2:4]
    assert rows[0].startswith("Hugging Face cache") and rows[0].endswith(str(hf))
    assert rows[1].startswith("OpenAI clip cache") and rows[1].endswith(str(openai))
    # verify: the HF copy against its blob digest; OpenAI's against the digest in its URL
    assert cli.main(["weights", "verify", "clip_vit_b_32", "--cache-dir", str(cache)]) == 1
    rows = {line.split()[2]: line.split(None, 3) for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[str(hf)][1] == "ok" and "Hugging Face cache" in rows[str(hf)][3]
    assert rows[str(openai)][1] == "mismatch"  # a replica, not OpenAI's file
    assert f"expected {OPENAI_VIT_B_32_SHA256}, got {sha256(openai)}" in rows[str(openai)][3]


def test_nothing_found_says_where_it_looked(home: Path, tmp_path: Path, capsys) -> None:
    assert cli.main(["weights", "list", "--cache-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert f"none (looked in {tmp_path / 'c'}, {home / '.cache' / 'huggingface' / 'hub'}" in out


# --- 3. pre-1.6 (non-zip) rosinality training checkpoint --------------------------------------


def test_legacy_training_checkpoint_with_namespace_loads(tmp_path: Path) -> None:
    torch.manual_seed(5)
    g = StyleGAN2Generator(**SG).eval()
    opt = torch.optim.Adam(g.parameters())
    g.style[1].weight.sum().backward()
    opt.step()
    path = tmp_path / "550000.pt"
    ckpt = {
        "g": g.state_dict(),
        "d": {"convs.0.0.weight": torch.randn(8, 3, 1, 1)},
        "g_ema": g.state_dict(),
        "g_optim": opt.state_dict(),
        "d_optim": opt.state_dict(),
        "args": argparse.Namespace(size=8, latent=16, n_mlp=1, channel_multiplier=1, lr=0.002),
    }
    torch.save(ckpt, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    loaded = load_stylegan2(path)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), g.state_dict().values(), strict=True)
    )


# --- 4. errors a person can act on ------------------------------------------------------------

LOGIN_PAGE = b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>log in</body></html>\n"


def test_web_page_saved_as_checkpoint_or_yaml(tmp_path: Path) -> None:
    cfg, ckpt = write_pair(tmp_path, toy_yaml(), build_vqgan(toy_yaml()))
    page = tmp_path / "last.ckpt"
    page.write_bytes(LOGIN_PAGE)
    with pytest.raises(CorruptWeightsError, match="is a web page") as info:
        load_vqgan(cfg, page)
    assert "not the model file" in str(info.value) and "download the file again" in str(info.value)
    yaml_page = tmp_path / "model.yaml"
    yaml_page.write_bytes(b"\n  <html><body>404</body></html>")
    with pytest.raises(CorruptWeightsError, match="is a web page"):
        load_vqgan(yaml_page, ckpt)
    for loader in (load_stylegan2, lambda p: load_clip(p, model_cfg=TOY)):
        with pytest.raises(CorruptWeightsError, match="is a web page"):
            loader(page)


def test_wrong_model_file_names_the_keys_that_matter(toy_clip, vit_b_32, tmp_path: Path) -> None:
    real_size = vit_b_32.state_dict()  # the published file's keys
    clip_file = tmp_path / "clip.pt"
    torch.save({k: torch.zeros(1) for k in real_size}, clip_file)
    with pytest.raises(CheckpointMismatchError) as info:
        load_stylegan2(clip_file)
    message = str(info.value)
    assert len(message) < 500, message
    assert "no 'g_ema'" in message and "looks like a CLIP state dict" in message
    assert "visual.* (" in message and f"{len(real_size)} entries" in message

    g = StyleGAN2Generator(**SG)
    sg_file = tmp_path / "sg.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg}, sg_file)
    with pytest.raises(CorruptWeightsError, match="rosinality StyleGAN2 checkpoint") as info:
        load_clip(sg_file, model_cfg=TOY)
    assert len(str(info.value)) < 500
    cfg, _ = write_pair(tmp_path, toy_yaml(), build_vqgan(toy_yaml()))
    with pytest.raises(CheckpointMismatchError, match=r"not a taming VQGAN.*CLIP state dict") as info:
        load_vqgan(cfg, clip_file)
    assert len(str(info.value)) < 600
    openai = tmp_path / "ViT-B-32.pt"
    write_openai_torchscript(toy_clip, openai)
    with pytest.raises(CorruptWeightsError, match="is a TorchScript archive") as info:
        load_stylegan2(openai)  # never reaches torch.load, which would hand it to torch.jit.load
    with pytest.raises(CorruptWeightsError, match="is a TorchScript archive"):
        load_vqgan(cfg, openai)
    bare = tmp_path / "bare.pt"
    torch.save(g.state_dict(), bare)
    with pytest.raises(CheckpointMismatchError, match="bare StyleGAN2 generator state dict"):
        load_stylegan2(bare)


# --- 5. Gumbel start codes --------------------------------------------------------------------


def test_gumbel_start_codes_come_from_the_proj_logits(tmp_path: Path, monkeypatch) -> None:
    torch.manual_seed(6)
    config = toy_yaml(target="taming.models.vqgan.GumbelVQ")
    cfg, ckpt = write_pair(tmp_path, config, build_vqgan(config))
    vq = load_vqgan(cfg, ckpt)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    codes = vq.encode_to_codes(x)
    # taming's own quantiser, with its Gumbel noise set to zero (exponential samples of 1: -log 1 = 0)
    monkeypatch.setattr(torch.Tensor, "exponential_", lambda self, *a, **k: self.fill_(1.0))
    with torch.no_grad():
        _, _, (_, _, ind) = vq.quantizer(vq.encode(x))
    assert torch.equal(codes, ind)
    assert not torch.equal(codes, vq.nearest_codes(vq.encode(x)))  # the nearest vectors: another picture
    assert torch.equal(vq.encode_quantized(x), vq.quantize_codes(ind))
    plain = build_vqgan(toy_yaml())
    assert torch.equal(plain.encode_to_codes(x), plain.nearest_codes(plain.encode(x)))


# --- 6. memory at load ------------------------------------------------------------------------


class ModelCheckpoint:
    """Stands in for the Lightning callback pickled into `callbacks` (a class, used as a key)."""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_training_state_is_not_read_into_memory(tmp_path: Path) -> None:
    config = toy_yaml()
    cfg, _ = write_pair(tmp_path, config, build_vqgan(config))
    state = build_vqgan(config).state_dict()
    moments = {
        i: {"exp_avg": torch.randn(200_000_000 // 8 // 4), "exp_avg_sq": torch.randn(200_000_000 // 8 // 4)}
        for i in range(4)
    }  # 200 MB of Adam moments, far more than the weights
    ckpt = tmp_path / "last.ckpt"
    torch.save(
        {
            "epoch": 30,
            "global_step": 8145600,
            "pytorch-lightning_version": "1.0.8",
            "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}},
            "optimizer_states": [
                {"state": moments, "param_groups": [{"lr": 4.5e-6, "params": [0, 1, 2, 3]}]}
            ],
            "lr_schedulers": [],
            "state_dict": state,
        },
        ckpt,
    )
    del moments
    # VmHWM: the peak resident set, which the kernel tracks (getrusage's ru_maxrss is not kept
    # up to date in every container).
    code = (
        "from engine.models.vqgan import load_vqgan\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "before = hwm()\n"
        f"vq = load_vqgan({str(cfg)!r}, {str(ckpt)!r})\n"
        "print((hwm() - before) // 1024)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    grew_mib = int(out.stdout.split()[-1])
    assert grew_mib < 100, f"loading grew the peak RSS by {grew_mib} MiB for a 200 MB optimizer state"


# --- 8. QuickGELU ---------------------------------------------------------------------------


def test_the_openai_clip_model_uses_quick_gelu(vit_b_32) -> None:
    model = vit_b_32
    blocks = list(model.visual.transformer.resblocks) + list(model.transformer.resblocks)
    assert len(blocks) == 24
    assert all(isinstance(b.mlp.gelu, open_clip.transformer.QuickGELU) for b in blocks)
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(blocks[0].mlp.gelu(x), x * torch.sigmoid(1.702 * x))


def test_fetch_downloads_nothing_the_operator_already_has(
    home: Path, toy_clip_bytes: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf = _hf_layout(home / ".cache" / "huggingface" / "hub", toy_clip_bytes)
    have = tmp_path / "mine"
    have.mkdir()
    config = tmp_path / "config.toml"
    config.write_text(
        f'[models]\ncache_dir = "{tmp_path / "cache"}"\nstylegan2 = "{have / "ffhq.pt"}"\n'
        f'vqgan_config = "{have / "wikiart.yaml"}"\nvqgan_ckpt = "{have / "wikiart.ckpt"}"\n',
        encoding="utf-8",
    )
    assert cli.main(["weights", "fetch", "--config", str(config), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"stylegan2_ffhq: not fetched, the config names {have / 'ffhq.pt'}" in out
    assert f"vqgan_wikiart_16384: not fetched, the config names {have / 'wikiart.ckpt'}" in out
    assert f"clip_vit_b_32: not fetched, found {hf} (Hugging Face cache)" in out
    assert not (tmp_path / "cache").exists()  # nothing downloaded, not even tried
