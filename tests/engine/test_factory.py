"""Model factory: the tiny preset end to end, and the full preset's errors (never a silent fallback)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import yaml

from engine.models.factory import Models, check_preset, load_models, resolve_device
from engine.models.families import TINY_VQGAN_CONFIG
from engine.models.stylegan2 import StyleGAN2Generator
from engine.models.vqgan import build_vqgan
from spooky.config import ModelsConfig
from spooky.errors import CheckpointMismatchError, ConfigError, MissingWeightsError, UnknownPresetError


@pytest.fixture(autouse=True)
def _no_user_caches(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The full preset also looks for CLIP in the Hugging Face cache and ~/.cache/clip: keep the
    # files of whoever runs the tests out of these tests (real_weights ones excepted).
    if request.node.get_closest_marker("real_weights"):
        return
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    for key in ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture(scope="module")
def tiny() -> Models:
    start = time.perf_counter()
    models = load_models(ModelsConfig(preset="tiny", device="cpu"))
    print(f"tiny preset built in {time.perf_counter() - start:.2f} s")
    return models


def test_tiny_preset_builds_the_three_architectures(tiny: Models) -> None:
    assert tiny.preset == "tiny" and tiny.device == torch.device("cpu")
    assert tiny.default_size == (64, 64)
    assert "tiny preset" in tiny.description and "noise" in tiny.description
    assert isinstance(tiny.stylegan, StyleGAN2Generator) and tiny.stylegan.size == 32
    assert tiny.vqgan.factor == 4 and tiny.vqgan.n_embed == 64
    assert tiny.clip.image_size == 32 and tiny.clip.context_length == 77
    for module in (tiny.stylegan, tiny.vqgan, tiny.clip.model):
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(
        torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_tiny_weights_follow_the_seed_and_leave_the_global_rng_alone(tiny: Models) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = load_models(ModelsConfig(preset="tiny", device="cpu"))
    assert torch.equal(torch.rand(3), expected)
    assert _same_weights(again.stylegan, tiny.stylegan)
    assert _same_weights(again.vqgan, tiny.vqgan)
    assert _same_weights(again.clip.model, tiny.clip.model)
    other = load_models(ModelsConfig(preset="tiny", device="cpu", tiny_seed=1))
    assert not _same_weights(other.vqgan, tiny.vqgan)
    assert not _same_weights(other.stylegan, tiny.stylegan)


def test_tiny_images_have_texture_and_move_under_optimisation(tiny: Models) -> None:
    g, vq, clip = tiny.stylegan, tiny.vqgan, tiny.clip
    text = clip.encode_text(["a spooky face"])

    def clip_loss(img: torch.Tensor) -> torch.Tensor:
        x01 = ((img.clamp(-1, 1) + 1) / 2).float()
        x = torch.nn.functional.interpolate(x01, size=clip.image_size, mode="bilinear", align_corners=False)
        return -torch.cosine_similarity(clip.encode_image(clip.normalize(x)), text).mean()

    ws = g.latent_avg.view(1, 1, -1).repeat(1, g.num_ws, 1).requires_grad_(True)
    start = g.synthesis(ws).detach()
    assert start.std(dim=(2, 3)).min() > 0.05  # not a flat colour
    opt = torch.optim.Adam([ws], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        clip_loss(g.synthesis(ws)).backward()
        opt.step()
    assert (g.synthesis(ws).detach() - start).abs().mean() > 1e-3

    w, h = tiny.default_size
    image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z0 = vq.encode(image)
        decoded = vq.decode(vq.quantize(z0))
    assert decoded.shape == (1, 3, h, w) and decoded.std(dim=(2, 3)).min() > 0.05
    assert vq.nearest_codes(z0).unique().numel() > 8  # the codebook covers the encoder's range
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        clip_loss(vq.decode(vq.quantize(z))).backward()
        opt.step()
        with torch.no_grad():
            z.copy_(vq.clamp(z))
    with torch.no_grad():
        assert (vq.decode(vq.quantize(z)) - decoded).abs().mean() > 1e-3


def test_unknown_preset_lists_the_allowed_ones() -> None:
    with pytest.raises(UnknownPresetError, match="'huge'; allowed: full, tiny"):
        load_models(ModelsConfig(), preset="huge")
    with pytest.raises(UnknownPresetError, match="allowed: full, tiny"):
        load_models(ModelsConfig.model_construct(preset="medium", device="cpu"))
    assert check_preset("tiny") == "tiny"


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_full_preset_with_nothing_downloaded_is_an_error_not_tiny(tmp_path: Path) -> None:
    cfg = ModelsConfig(preset="full", device="cpu", cache_dir=tmp_path)
    with pytest.raises(MissingWeightsError) as info:
        load_models(cfg)
    message = str(info.value)
    for name in ("stylegan2-ffhq-config-f.pt", "model.yaml", "last.ckpt", "clip-vit-b-32-openai.pt"):
        assert str(tmp_path) in message and name in message
    assert "spooky weights fetch stylegan2_ffhq vqgan_wikiart_16384 clip_vit_b_32" in message
    # the tiny preset given as an override is still available on purpose
    assert load_models(cfg, preset="tiny").preset == "tiny"


def test_full_preset_names_only_what_is_missing(tmp_path: Path) -> None:
    g = StyleGAN2Generator(size=8, style_dim=16, n_mlp=1, channel_multiplier=1, channel_max=16)
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg}, tmp_path / "stylegan2-ffhq-config-f.pt")
    cfg = ModelsConfig(preset="full", device="cpu", cache_dir=tmp_path, vqgan="vqgan_imagenet_16384")
    with pytest.raises(MissingWeightsError) as info:
        load_models(cfg)
    message = str(info.value)
    assert "StyleGAN2 checkpoint" not in message and "stylegan2_ffhq" not in message
    assert "vqgan_imagenet_16384/last.ckpt" in message and "clip-vit-b-32-openai.pt" in message
    assert "spooky weights fetch vqgan_imagenet_16384 clip_vit_b_32" in message


def test_full_preset_with_mismatched_vqgan_files_raises(tmp_path: Path) -> None:
    g = StyleGAN2Generator(size=8, style_dim=16, n_mlp=1, channel_multiplier=1, channel_max=16)
    sg = tmp_path / "g.pt"
    torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg}, sg)
    vq_cfg = tmp_path / "model.yaml"
    vq_cfg.write_text(yaml.safe_dump(TINY_VQGAN_CONFIG), encoding="utf-8")
    other = {"model": {**TINY_VQGAN_CONFIG["model"], "params": {**TINY_VQGAN_CONFIG["model"]["params"]}}}
    other["model"]["params"]["n_embed"] = 32
    torch.save({"state_dict": build_vqgan(other).state_dict()}, tmp_path / "last.ckpt")
    clip = tmp_path / "clip.pt"
    clip.write_bytes(b"never read: the VQGAN fails first")
    cfg = ModelsConfig(
        preset="full",
        device="cpu",
        cache_dir=tmp_path / "empty",
        stylegan2=sg,
        vqgan_config=vq_cfg,
        vqgan_ckpt=tmp_path / "last.ckpt",
        clip=clip,
    )
    with pytest.raises(CheckpointMismatchError, match="do not match"):
        load_models(cfg)


def test_vqgan_settings_must_be_consistent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must be set together"):
        load_models(ModelsConfig(device="cpu", cache_dir=tmp_path, vqgan_config=tmp_path / "m.yaml"))
    with pytest.raises(ConfigError, match="'biggan' is not a known VQGAN; known: vqgan_wikiart_16384"):
        load_models(ModelsConfig(device="cpu", cache_dir=tmp_path, vqgan="biggan"))


@pytest.mark.real_weights
def test_full_preset_with_the_published_weights() -> None:
    cfg = ModelsConfig(preset="full", device="auto")
    try:
        models = load_models(cfg)
    except MissingWeightsError as e:
        pytest.skip(f"published weights not downloaded: {e}")
    assert models.preset == "full" and models.default_size == (608, 752)
    assert models.stylegan.size == 1024 and models.vqgan.factor == 16 and models.vqgan.n_embed == 16384
    assert models.clip.image_size == 224 and models.clip.embed_dim == 512
