"""VQGAN adapter: real-format taming yaml + Lightning ckpt written here, loaded through taming's modules."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from engine.models.checkpoints import InertObject
from engine.models.vqgan import VQGAN, build_vqgan, load_vqgan
from spooky.errors import CheckpointMismatchError, CorruptWeightsError, InvalidSizeError, MissingWeightsError


def toy_yaml(*, ch_mult=(1, 2, 2), n_embed=32, target="taming.models.vqgan.VQModel") -> dict:
    """Same structure as taming's configs/model.yaml, at toy size."""
    params = {
        "embed_dim": 8,
        "n_embed": n_embed,
        "ddconfig": {
            "double_z": False,
            "z_channels": 8,
            "resolution": 32,
            "in_channels": 3,
            "out_ch": 3,
            "ch": 32,
            "ch_mult": list(ch_mult),
            "num_res_blocks": 1,
            "attn_resolutions": [8],
            "dropout": 0.0,
        },
        # Must be ignored: building it would need LPIPS, which downloads VGG weights.
        "lossconfig": {
            "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
            "params": {
                "disc_conditional": False,
                "disc_in_channels": 3,
                "disc_start": 0,
                "codebook_weight": 1.0,
            },
        },
    }
    if target.endswith("GumbelVQ"):
        params["temperature_scheduler_config"] = {"target": "taming.lr_scheduler.LambdaWarmUpCosineScheduler"}
        params["kl_weight"] = 1e-8
    return {"model": {"base_learning_rate": 4.5e-06, "target": target, "params": params}}


class HyperParams(dict):
    """Stands in for Lightning's AttributeDict: a class the safe loader does not know."""


def write_pair(tmp_path: Path, config: dict, model: VQGAN, name: str = "m") -> tuple[Path, Path]:
    cfg_path = tmp_path / f"{name}.yaml"
    cfg_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    state = dict(model.state_dict())
    state["loss.discriminator.main.0.weight"] = torch.randn(4, 3, 4, 4)
    state["loss.perceptual_loss.net.slice1.0.weight"] = torch.randn(4, 3, 3, 3)
    ckpt = {
        "epoch": 3,
        "global_step": 1234,
        "pytorch-lightning_version": "1.0.8",
        "state_dict": state,
        "optimizer_states": [],
        "hyper_parameters": HyperParams(embed_dim=8, n_embed=config["model"]["params"]["n_embed"]),
    }
    ckpt_path = tmp_path / f"{name}.ckpt"
    torch.save(ckpt, ckpt_path)
    return cfg_path, ckpt_path


@pytest.fixture
def vq_pair(tmp_path: Path) -> tuple[VQGAN, Path, Path]:
    torch.manual_seed(0)
    config = toy_yaml()
    model = build_vqgan(config).eval()
    cfg_path, ckpt_path = write_pair(tmp_path, config, model)
    return model, cfg_path, ckpt_path


def test_round_trip_decodes_identically(vq_pair) -> None:
    model, cfg_path, ckpt_path = vq_pair
    loaded = load_vqgan(cfg_path, ckpt_path)
    assert (loaded.factor, loaded.embed_dim, loaded.n_embed, loaded.kind) == (4, 8, 32, "vq")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(loaded.encode(x), z, rtol=0, atol=0)
        torch.testing.assert_close(
            loaded.decode(loaded.quantize(z)), model.decode(model.quantize(z)), rtol=0, atol=0
        )


def test_ckpt_hyper_parameters_load_inert(vq_pair) -> None:
    from engine.models.checkpoints import load_torch_file

    _, _, ckpt_path = vq_pair
    obj = load_torch_file(ckpt_path, what="t", fetch_hint="h")
    assert isinstance(obj["hyper_parameters"], InertObject)
    assert type(obj["hyper_parameters"]).__name__ == "HyperParams"


def test_shapes_for_non_square_images() -> None:
    torch.manual_seed(1)
    model = build_vqgan(toy_yaml()).eval()
    x = torch.rand(2, 3, 48, 64) * 2 - 1
    with torch.no_grad():
        z = model.encode(x)
        assert z.shape == (2, 8, 12, 16)
        assert model.decode(model.quantize(z)).shape == (2, 3, 48, 64)
    with pytest.raises(InvalidSizeError, match="multiple of the VQGAN factor 4"):
        model.encode(torch.zeros(1, 3, 30, 64))


def test_quantize_snaps_to_codebook_with_straight_through_gradient() -> None:
    torch.manual_seed(2)
    model = build_vqgan(toy_yaml()).requires_grad_(False)
    z = (torch.randn(1, 8, 4, 5) * 0.05).requires_grad_(True)
    zq = model.quantize(z)
    vectors = zq.detach().permute(0, 2, 3, 1).reshape(-1, 8)
    # every output vector is the codebook row nearest to the input vector
    nearest = torch.cdist(z.detach().permute(0, 2, 3, 1).reshape(-1, 8), model.codebook).argmin(1)
    torch.testing.assert_close(vectors, model.codebook[nearest])
    zq.pow(2).sum().backward()
    # straight-through: d/dz of sum(zq^2) is 2*zq
    torch.testing.assert_close(z.grad, 2 * zq.detach())


def test_clamp_keeps_z_inside_codebook_range() -> None:
    torch.manual_seed(3)
    model = build_vqgan(toy_yaml())
    cb = model.codebook.detach()
    assert torch.equal(model.z_min.flatten(), cb.min(0).values)
    assert torch.equal(model.z_max.flatten(), cb.max(0).values)
    z = torch.randn(1, 8, 3, 3) * 10
    c = model.clamp(z)
    assert (c >= model.z_min).all() and (c <= model.z_max).all()
    inside = (model.z_min + model.z_max) / 2 * torch.ones(1, 8, 3, 3)
    assert torch.equal(model.clamp(inside), inside)


def test_gumbel_config_builds_and_loads(tmp_path: Path) -> None:
    torch.manual_seed(4)
    config = toy_yaml(target="taming.models.vqgan.GumbelVQ")
    model = build_vqgan(config).eval()
    assert model.kind == "gumbel"
    assert "quantize.embed.weight" in model.state_dict() and "quantize.proj.weight" in model.state_dict()
    cfg_path, ckpt_path = write_pair(tmp_path, config, model)
    loaded = load_vqgan(cfg_path, ckpt_path)
    assert torch.equal(loaded.codebook, model.codebook)
    z = torch.randn(1, 8, 2, 2)
    assert torch.equal(loaded.quantize(z), model.quantize(z))


def test_f16_yaml_with_f8_ckpt_is_a_mismatch(tmp_path: Path) -> None:
    f8 = build_vqgan(toy_yaml(ch_mult=(1, 1, 2, 2)))
    _, ckpt_path = write_pair(tmp_path, toy_yaml(ch_mult=(1, 1, 2, 2)), f8, "f8")
    f16_cfg = tmp_path / "f16.yaml"
    f16_cfg.write_text(yaml.safe_dump(toy_yaml(ch_mult=(1, 1, 2, 2, 4))), encoding="utf-8")
    with pytest.raises(CheckpointMismatchError, match="do not match") as info:
        load_vqgan(f16_cfg, ckpt_path)
    assert "missing keys: decoder.up." in str(info.value) and "shape mismatch" in str(info.value)


def test_other_n_embed_names_the_shape_mismatch(tmp_path: Path) -> None:
    model = build_vqgan(toy_yaml(n_embed=32))
    _, ckpt_path = write_pair(tmp_path, toy_yaml(n_embed=32), model)
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(toy_yaml(n_embed=64)), encoding="utf-8")
    with pytest.raises(
        CheckpointMismatchError, match=r"quantize\.embedding\.weight is \(32, 8\) in the file"
    ):
        load_vqgan(other, ckpt_path)


def test_missing_files_name_the_fetch_command(tmp_path: Path, vq_pair) -> None:
    _, cfg_path, ckpt_path = vq_pair
    with pytest.raises(MissingWeightsError, match=r"model\.yaml") as info:
        load_vqgan(tmp_path / "nope.yaml", ckpt_path)
    assert "spooky weights fetch vqgan_wikiart_16384" in str(info.value)
    with pytest.raises(MissingWeightsError, match=r"nope\.ckpt") as info:
        load_vqgan(cfg_path, tmp_path / "nope.ckpt")
    assert "spooky weights fetch vqgan_wikiart_16384" in str(info.value)


@pytest.mark.parametrize(
    ("mutate", "found"),
    [
        (
            lambda c: c.update(model={"target": "ldm.models.autoencoder.AutoencoderKL", "params": {}}),
            "AutoencoderKL",
        ),
        (lambda c: c["model"]["params"]["ddconfig"].update(double_z=True), "double_z"),
        (lambda c: c["model"]["params"]["ddconfig"].pop("z_channels"), "z_channels"),
        (lambda c: c.pop("model"), "no `model` section"),
    ],
)
def test_yaml_that_is_not_a_vqgan_config(tmp_path: Path, vq_pair, mutate, found) -> None:
    _, _, ckpt_path = vq_pair
    config = copy.deepcopy(toy_yaml())
    mutate(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    with pytest.raises(CorruptWeightsError, match=found):
        load_vqgan(path, ckpt_path)


def test_invalid_yaml_and_non_checkpoint(tmp_path: Path, vq_pair) -> None:
    _, cfg_path, _ = vq_pair
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed", encoding="utf-8")
    with pytest.raises(CorruptWeightsError, match="not valid YAML"):
        load_vqgan(broken, tmp_path / "x.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CorruptWeightsError, match=r"junk\.ckpt"):
        load_vqgan(cfg_path, junk)
    listy = tmp_path / "list.ckpt"
    torch.save([torch.zeros(1)], listy)
    with pytest.raises(CorruptWeightsError, match="no state dict"):
        load_vqgan(cfg_path, listy)


def test_loading_imports_no_lightning_lpips_or_taming_models(vq_pair) -> None:
    _, cfg_path, ckpt_path = vq_pair
    code = (
        "import sys\n"
        "from engine.models.vqgan import load_vqgan\n"
        f"load_vqgan({str(cfg_path)!r}, {str(ckpt_path)!r})\n"
        "bad = [m for m in sys.modules if m.startswith(('taming.models', 'taming.main', 'pytorch_lightning',"
        " 'lightning', 'lpips', 'omegaconf'))]\n"
        "assert not bad, bad\n"
        "assert 'taming.modules.diffusionmodules.model' in sys.modules\n"
    )
    # A fresh interpreter: this test process may have imported anything already.
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Working with z of shape" not in result.stdout  # taming's print is silenced


@pytest.mark.real_weights
@pytest.mark.parametrize("name", ["vqgan_wikiart_16384", "vqgan_imagenet_16384"])
def test_published_vqgan_loads(name: str) -> None:
    from engine.models.registry import REGISTRY
    from spooky.config import ModelsConfig

    config_path, ckpt_path = REGISTRY[name].paths(ModelsConfig().cache_dir)
    if not ckpt_path.is_file():
        pytest.skip(f"{ckpt_path} not downloaded (spooky weights fetch {name})")
    model = load_vqgan(config_path, ckpt_path)
    assert (model.factor, model.n_embed, model.embed_dim, model.kind) == (16, 16384, 256, "vq")
    with torch.no_grad():
        z = model.encode(torch.zeros(1, 3, 32, 48))
        assert model.decode(model.quantize(z)).shape == (1, 3, 32, 48)
