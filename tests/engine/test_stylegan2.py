"""StyleGAN2 generator: rosinality compatibility (golden data), checkpoint loading, gradients."""

from __future__ import annotations

import argparse
import hashlib
import logging
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.models.stylegan2 import StyleGAN2Generator, infer_architecture, load_stylegan2
from spooky.errors import CheckpointMismatchError, CorruptWeightsError, MissingWeightsError

try:  # tests/engine may become a package later
    from . import stylegan2_synth as synth
except ImportError:
    import stylegan2_synth as synth

GOLDEN_DIR = synth.GOLDEN_DIR
TOL = {"rtol": 1e-4, "atol": 1e-4}  # README section 5: >10x the largest float32 reordering error

# Toy config for the loading tests (channels all capped at 32).
TINY = {"size": 32, "style_dim": 64, "n_mlp": 2, "channel_max": 32}


def layout_of(**config: int) -> dict[str, torch.Tensor]:
    """Key -> (meta) tensor of a generator's state dict, without allocating weights."""
    with torch.device("meta"):
        return StyleGAN2Generator(**config).state_dict()


def synthetic_generator(**config: int) -> StyleGAN2Generator:
    """A generator of `config` filled by the golden weight rule (deterministic, well scaled)."""
    sd = synth.synthetic_state_dict(layout_of(**config))
    latent_avg = synth.make_tensor("latent_avg", [config.get("style_dim", 512)])
    return StyleGAN2Generator.from_state_dict(sd, latent_avg).eval()


@pytest.fixture(scope="module")
def tiny() -> StyleGAN2Generator:
    return synthetic_generator(**TINY)


@pytest.fixture
def tiny_sd(tiny: StyleGAN2Generator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny.state_dict().items()}


# --- golden data: config A (256 px), full images ------------------------------------------------

# The reference files live in the repository; a missing or changed one fails here by name (never a skip).
GOLDEN_SHA256 = {
    "README.md": "2711609ebc1074b1b1e0c6ad2943cb7bfc21e71d94f23a68bdc6bdb68a16f5c1",
    "golden_A.npz": "bc8c2b0c77d7e33425d06877789cac365984b885236e923ec26ccd58bf9b4a16",
    "golden_B.npz": "15cbd7a8b55ca1f8f1a17701ab6bcdbb4792ee6f0bfd22cde3519a1e515903b1",
    "keys_shapes_A.json": "d0477af03fc54a4c50c45b4d9f2984cafcf61d33f5cbaff02c8c7dcccc7d3ce8",
    "keys_shapes_B.json": "06d48cccc7e322cfa72993d6f006aa2e06f11f1e0c89a6a1dd28c6fc0c843e3e",
}


@pytest.mark.parametrize("name", sorted(GOLDEN_SHA256))
def test_golden_file_is_in_the_repository(name: str) -> None:
    path = GOLDEN_DIR / name
    assert path.is_file(), f"{path} is missing: the golden data is part of the repository (tests/golden)"
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == GOLDEN_SHA256[name], f"{path} differs from the reference data"


@pytest.fixture(scope="module")
def golden_a() -> tuple[dict, dict, dict[str, np.ndarray]]:
    spec = synth.load_spec("A")
    return spec, synth.make_checkpoint(spec), dict(np.load(GOLDEN_DIR / "golden_A.npz"))


@pytest.fixture(scope="module")
def gen_a(golden_a) -> StyleGAN2Generator:
    _, ckpt, _ = golden_a
    return StyleGAN2Generator.from_state_dict(ckpt["g_ema"], ckpt["latent_avg"]).eval()


@pytest.mark.parametrize("name", ["A", "B"])
def test_state_dict_layout_is_rosinality_g_ema(name: str) -> None:
    spec = synth.load_spec(name)
    cfg = spec["config"]
    layout = layout_of(
        size=cfg["size"],
        style_dim=cfg["style_dim"],
        n_mlp=cfg["n_mlp"],
        channel_multiplier=cfg["channel_multiplier"],
    )
    assert [(k, list(v.shape)) for k, v in layout.items()] == [(e["key"], e["shape"]) for e in spec["g_ema"]]
    with torch.device("meta"):
        gen = StyleGAN2Generator(cfg["size"])
    assert gen.num_ws == cfg["n_latent"]
    assert "latent_avg" not in gen.state_dict()


def test_synthetic_weights_regenerate_bit_exactly(golden_a) -> None:
    spec, ckpt, _ = golden_a
    mismatched = [e["key"] for e in spec["g_ema"] if synth.sha256_of(ckpt["g_ema"][e["key"]]) != e["sha256"]]
    assert mismatched == []
    assert synth.sha256_of(ckpt["latent_avg"]) == spec["latent_avg"]["sha256"]


def test_inferred_architecture_matches_config_a(golden_a) -> None:
    spec, ckpt, _ = golden_a
    arch = infer_architecture(ckpt["g_ema"])
    cfg = spec["config"]
    assert (arch.size, arch.style_dim, arch.n_mlp, arch.channel_multiplier) == (
        cfg["size"],
        cfg["style_dim"],
        cfg["n_mlp"],
        cfg["channel_multiplier"],
    )


def test_golden_a_mapping_and_truncation(gen_a, golden_a) -> None:
    _, _, data = golden_a
    with torch.no_grad():
        w = gen_a.mapping(torch.from_numpy(data["z"]))
        w_trunc = gen_a.truncate(w, float(data["truncation"]))
    np.testing.assert_allclose(w.numpy(), data["w"], **TOL)
    np.testing.assert_allclose(w_trunc.numpy(), data["w_trunc"], **TOL)
    np.testing.assert_allclose(gen_a.latent_avg.numpy(), data["latent_avg"], rtol=0, atol=0)


def test_golden_a_images(gen_a, golden_a) -> None:
    _, _, data = golden_a
    with torch.no_grad():
        img_z = gen_a(torch.from_numpy(data["z"]), truncation=float(data["truncation"]), noise="const")
        img_wplus = gen_a.synthesis(torch.from_numpy(data["wplus"]), noise="const")
    np.testing.assert_allclose(img_z.numpy(), data["img_z"], **TOL)
    np.testing.assert_allclose(img_wplus.numpy(), data["img_wplus"], **TOL)


# --- golden data: config B (1024 px, FFHQ config-f layout): pooled images, crops, stats ----------


@pytest.fixture(scope="module")
def golden_b() -> tuple[StyleGAN2Generator, dict[str, np.ndarray]]:
    spec = synth.load_spec("B")
    ckpt = synth.make_checkpoint(spec)
    fingerprints = {e["key"]: e["sha256"] for e in spec["g_ema"]}
    for key in ("style.8.weight", "convs.15.conv.weight", "to_rgbs.7.conv.weight", "noises.noise_16"):
        assert synth.sha256_of(ckpt["g_ema"][key]) == fingerprints[key], key
    gen = StyleGAN2Generator.from_state_dict(ckpt["g_ema"], ckpt["latent_avg"]).eval()
    return gen, dict(np.load(GOLDEN_DIR / "golden_B.npz"))


def summarise_1024(x: torch.Tensor) -> dict[str, np.ndarray]:
    """The README's reductions of a [N, 3, 1024, 1024] output (stats in float64)."""
    x64 = x.double()
    return {
        "pool4": F.avg_pool2d(x, kernel_size=4).numpy(),
        "mean": x64.mean(dim=(1, 2, 3)).numpy(),
        "std": x64.std(dim=(1, 2, 3), correction=0).numpy(),
        "chan_mean": x64.mean(dim=(2, 3)).numpy(),
        "chan_std": x64.std(dim=(2, 3), correction=0).numpy(),
        "crop_tl": x[:, :, 0:64, 0:64].numpy(),
        "crop_center": x[:, :, 480:544, 480:544].numpy(),
        "crop_br": x[:, :, 960:1024, 960:1024].numpy(),
    }


def assert_matches_b(parts: list[dict[str, np.ndarray]], data: dict[str, np.ndarray], name: str) -> None:
    for field in parts[0]:
        actual = np.concatenate([p[field] for p in parts])
        np.testing.assert_allclose(actual, data[f"{name}_{field}"], err_msg=f"{name}_{field}", **TOL)


@pytest.mark.slow
def test_golden_b_mapping(golden_b) -> None:
    gen, data = golden_b
    with torch.no_grad():
        w = gen.mapping(torch.from_numpy(data["z"]))
    np.testing.assert_allclose(w.numpy(), data["w"], **TOL)
    np.testing.assert_allclose(gen.truncate(w, float(data["truncation"])).numpy(), data["w_trunc"], **TOL)


@pytest.mark.slow
def test_golden_b_img_z(golden_b) -> None:
    gen, data = golden_b
    z = torch.from_numpy(data["z"])
    with torch.no_grad():  # two samples per call keeps the peak memory of a 1024 px batch modest
        parts = [summarise_1024(gen(chunk, truncation=float(data["truncation"]))) for chunk in z.split(2)]
    assert_matches_b(parts, data, "img_z")


@pytest.mark.slow
def test_golden_b_img_wplus(golden_b) -> None:
    gen, data = golden_b
    with torch.no_grad():
        parts = [summarise_1024(gen.synthesis(torch.from_numpy(data["wplus"])))]
    assert_matches_b(parts, data, "img_wplus")


# --- architecture inference ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        TINY,
        {"size": 256, "style_dim": 16, "n_mlp": 3, "channel_multiplier": 1, "channel_max": 128},
        {"size": 128, "style_dim": 8, "n_mlp": 1, "channel_multiplier": 2, "channel_max": 64},
        {"size": 8, "style_dim": 8, "n_mlp": 4, "channel_max": 16},
    ],
)
def test_from_state_dict_reads_architecture(config: dict[str, int]) -> None:
    src = synthetic_generator(**config)
    gen = StyleGAN2Generator.from_state_dict(src.state_dict(), src.latent_avg)
    assert (gen.size, gen.style_dim, gen.n_mlp) == (config["size"], config["style_dim"], config["n_mlp"])
    assert gen.channels == src.channels
    assert gen.num_ws == 2 * int(np.log2(config["size"])) - 2
    for key, value in src.state_dict().items():
        assert torch.equal(gen.state_dict()[key], value), key
    z = synth.draw("z", [1, config["style_dim"]]).float()
    with torch.no_grad():
        assert torch.equal(gen(z, truncation=0.7), src(z, truncation=0.7))


def test_channel_multiplier_read_from_shapes() -> None:
    arch = infer_architecture(
        layout_of(size=256, style_dim=16, n_mlp=1, channel_multiplier=1, channel_max=128)
    )
    assert (arch.channel_multiplier, arch.channel_max) == (1, 128)


# --- checkpoint files --------------------------------------------------------------------------


def test_round_trip_converted_format(tiny: StyleGAN2Generator, tmp_path: Path) -> None:
    path = tmp_path / "g.pt"
    torch.save({"g_ema": tiny.state_dict(), "latent_avg": tiny.latent_avg}, path)
    assert set(torch.load(path, weights_only=True)) == {"g_ema", "latent_avg"}  # loads the strict way

    loaded = load_stylegan2(path)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.latent_avg, tiny.latent_avg)
    z = synth.draw("z", [3, TINY["style_dim"]]).float()
    ws = synth.draw("ws", [2, tiny.num_ws, TINY["style_dim"]]).float()
    with torch.no_grad():
        assert torch.equal(loaded(z, truncation=0.7), tiny(z, truncation=0.7))
        assert torch.equal(loaded.synthesis(ws), tiny.synthesis(ws))


def test_round_trip_train_py_format_computes_mean_latent(
    tiny: StyleGAN2Generator, tiny_sd: dict, tmp_path: Path
) -> None:
    disc = {"convs.0.0.weight": torch.randn(8, 3, 1, 1), "final_linear.1.bias": torch.zeros(1)}
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    path = tmp_path / "train_000100.pt"
    torch.save(
        {
            "g": tiny_sd,
            "d": disc,
            "g_ema": tiny_sd,
            "g_optim": opt.state_dict(),
            "d_optim": opt.state_dict(),
            "args": argparse.Namespace(size=32, latent=64, n_mlp=2, channel_multiplier=2, lr=0.002),
            "ada_aug_p": 0.0,
        },
        path,
    )
    with pytest.raises(pickle.UnpicklingError):  # the Namespace needs the loader's fallback
        torch.load(path, weights_only=True)

    loaded = load_stylegan2(path)
    expected_avg = tiny.mean_latent(4096)
    assert torch.equal(loaded.latent_avg, expected_avg)
    reference = synthetic_generator(**TINY)
    reference.set_latent_avg(expected_avg)
    z = synth.draw("z", [2, TINY["style_dim"]]).float()
    with torch.no_grad():
        assert torch.equal(loaded(z, truncation=0.5), reference(z, truncation=0.5))


def test_missing_noises_are_filled_deterministically(tiny_sd: dict, caplog: pytest.LogCaptureFixture) -> None:
    sd = {k: v for k, v in tiny_sd.items() if not k.startswith("noises.")}
    with caplog.at_level(logging.WARNING, logger="engine.models.stylegan2"):
        first = StyleGAN2Generator.from_state_dict(sd)
    assert "noises" in caplog.text
    second = StyleGAN2Generator.from_state_dict(sd)
    for key, value in first.state_dict().items():
        if key.startswith("noises."):
            assert value.shape == tiny_sd[key].shape
            assert torch.equal(value, second.state_dict()[key])
            assert not torch.equal(value, tiny_sd[key])  # filled, not leaked from somewhere
    with torch.no_grad():
        img = first(synth.draw("z", [1, TINY["style_dim"]]).float())
    assert img.shape == (1, 3, 32, 32) and torch.isfinite(img).all()


def test_fir_kernel_values_in_the_file_are_ignored(tiny: StyleGAN2Generator, tiny_sd: dict) -> None:
    sd = {k: (torch.full_like(v, 7.0) if k.endswith(".kernel") else v) for k, v in tiny_sd.items()}
    gen = StyleGAN2Generator.from_state_dict(sd, tiny.latent_avg)
    z = synth.draw("z", [1, TINY["style_dim"]]).float()
    with torch.no_grad():
        assert torch.equal(gen(z), tiny(z))


def test_corrupt_file_is_corrupt_weights_error(tiny_sd: dict, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    with pytest.raises(CorruptWeightsError):
        load_stylegan2(garbage)
    good = tmp_path / "good.pt"
    torch.save({"g_ema": tiny_sd}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptWeightsError, match=r"truncated\.pt"):
        load_stylegan2(truncated)


def test_missing_file_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(MissingWeightsError, match="spooky weights fetch stylegan2_ffhq"):
        load_stylegan2(tmp_path / "nope.pt")


def test_file_without_g_ema_lists_its_keys(tiny_sd: dict, tmp_path: Path) -> None:
    path = tmp_path / "only_g.pt"
    torch.save({"g": tiny_sd, "d": {}}, path)
    with pytest.raises(CheckpointMismatchError, match=r"no 'g_ema'.*2 entries, g, d"):
        load_stylegan2(path)


@pytest.mark.parametrize(
    ("key", "change"),
    [
        ("convs.1.conv.weight", "shape"),  # a conv that the architecture inference does not read
        ("to_rgbs.2.conv.modulation.bias", "shape"),
        ("convs.2.conv.weight", "channels"),  # breaks rosinality's channel table
        ("convs.3.noise.weight", "drop"),
        ("convs.9.conv.weight", "extra"),
    ],
)
def test_inconsistent_state_dict_names_the_key(tiny_sd: dict, key: str, change: str, tmp_path: Path) -> None:
    sd = dict(tiny_sd)
    if change == "shape":
        sd[key] = torch.zeros(*sd[key].shape[:-1], sd[key].shape[-1] + 1)
    elif change == "channels":
        w = sd[key]
        sd[key] = torch.zeros(w.shape[0], w.shape[1] // 2, *w.shape[2:])
    elif change == "drop":
        del sd[key]
    else:
        sd[key] = torch.zeros(1, 32, 32, 3, 3)
    with pytest.raises(CheckpointMismatchError, match=re.escape(key)):
        StyleGAN2Generator.from_state_dict(sd)
    path = tmp_path / "bad.pt"
    torch.save({"g_ema": sd, "latent_avg": torch.zeros(TINY["style_dim"])}, path)
    with pytest.raises(CheckpointMismatchError, match=rf"bad\.pt.*{re.escape(key)}"):
        load_stylegan2(path)


def test_not_a_generator_state_dict() -> None:
    disc = {"convs.0.0.weight": torch.zeros(8, 3, 1, 1)}
    with pytest.raises(CheckpointMismatchError, match=r"style\.1\.weight"):
        StyleGAN2Generator.from_state_dict(disc)


def test_wrong_latent_avg_size(tiny_sd: dict) -> None:
    with pytest.raises(CheckpointMismatchError, match="latent_avg"):
        StyleGAN2Generator.from_state_dict(tiny_sd, torch.zeros(512))


# --- behaviour ---------------------------------------------------------------------------------


def test_gradient_reaches_ws_of_a_frozen_generator(tiny: StyleGAN2Generator) -> None:
    gen = StyleGAN2Generator.from_state_dict(tiny.state_dict(), tiny.latent_avg).eval().requires_grad_(False)
    ws = tiny.latent_avg.expand(1, gen.num_ws, -1).clone().requires_grad_(True)
    gen.synthesis(ws).square().mean().backward()
    assert ws.grad is not None and torch.isfinite(ws.grad).all()
    assert (ws.grad.abs().sum(dim=2) > 0).all()  # every W+ row styles some layer


def test_gradient_matches_finite_differences() -> None:
    gen = synthetic_generator(size=8, style_dim=4, n_mlp=1, channel_max=4).double().requires_grad_(False)
    ws = synth.draw("ws", [1, gen.num_ws, 4]).requires_grad_(True)
    # fast_mode checks a random projection of the Jacobian: same power to catch a wrong backward.
    assert torch.autograd.gradcheck(lambda w: gen.synthesis(w), (ws,), eps=1e-6, atol=1e-5, fast_mode=True)


def test_noise_modes(tiny: StyleGAN2Generator) -> None:
    ws = synth.draw("ws", [2, tiny.num_ws, TINY["style_dim"]]).float()
    with torch.no_grad():
        assert torch.equal(tiny.synthesis(ws), tiny.synthesis(ws, noise="const"))
        a, b = tiny.synthesis(ws, noise="random"), tiny.synthesis(ws, noise="random")
        with pytest.raises(ValueError, match="noise"):
            tiny.synthesis(ws, noise="fresh")  # type: ignore[arg-type]
    assert not torch.equal(a, b) and torch.isfinite(a).all()


def test_forward_is_mapping_truncation_broadcast_synthesis(tiny: StyleGAN2Generator) -> None:
    z = synth.draw("z", [2, TINY["style_dim"]]).float()
    with torch.no_grad():
        w = tiny.mapping(z)
        w_t = tiny.latent_avg + 0.6 * (w - tiny.latent_avg)
        expected = tiny.synthesis(w_t.unsqueeze(1).repeat(1, tiny.num_ws, 1))
        torch.testing.assert_close(tiny(z, truncation=0.6), expected, rtol=1e-6, atol=1e-6)
        untruncated = tiny.synthesis(w.unsqueeze(1).repeat(1, tiny.num_ws, 1))  # another code path
        torch.testing.assert_close(tiny(z), untruncated, rtol=1e-6, atol=1e-6)


def test_mean_latent_is_mean_of_mapped_normals(tiny: StyleGAN2Generator) -> None:
    m = tiny.mean_latent(256, seed=3)
    assert m.shape == (TINY["style_dim"],) and not m.requires_grad
    z = torch.randn(256, TINY["style_dim"], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(m, tiny.mapping(z).mean(0))
    assert torch.equal(m, tiny.mean_latent(256, seed=3))


def test_bad_shapes_are_refused(tiny: StyleGAN2Generator) -> None:
    with pytest.raises(ValueError, match=r"\[N, 8, 64\]"):
        tiny.synthesis(torch.zeros(1, 9, 64))
    with pytest.raises(ValueError, match=r"\[N, 64\]"):
        tiny.mapping(torch.zeros(1, 63))
    with pytest.raises(ValueError, match="power of two"):
        StyleGAN2Generator(48)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(tiny: StyleGAN2Generator, dtype: torch.dtype) -> None:
    z = synth.draw("z", [2, TINY["style_dim"]]).float()
    with torch.no_grad():
        reference = tiny(z, truncation=0.7)
        with torch.autocast("cpu", dtype=dtype):
            out = tiny(z, truncation=0.7)
    assert out.dtype == dtype
    assert (out.float() - reference).abs().mean() < 0.02
