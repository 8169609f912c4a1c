"""Load time and peak memory of each model from a full-size replica of its published file (CPU).

    python benchmarks/measure_model_loads.py /tmp/spooky-replicas

Writes (once) random-weight files in the published layouts and sizes: rosinality's converted
StyleGAN2 FFHQ 1024, taming's Lightning 1.0 WikiArt `last.ckpt` (with the loss weights, pickled
callbacks and both optimizers' Adam moments), open_clip's `open_clip_pytorch_model.bin` and
OpenAI's TorchScript fp16 `ViT-B-32.pt`; then loads each in a fresh interpreter and prints the
seconds and the peak resident memory (VmHWM) the load added on top of `import torch`.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings
from pathlib import Path

from pipeline_helpers import VQGAN_F16_16384

#: WikiArt's model.yaml as published: the f16 16384 architecture, with its training entries.
WIKIART_YAML = copy.deepcopy(VQGAN_F16_16384)
WIKIART_YAML["model"]["base_learning_rate"] = 4.5e-06
WIKIART_YAML["model"]["params"]["lossconfig"] = {
    "target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator"
}


class ModelCheckpoint:
    """Stands in for Lightning's callback class, pickled as a dict key in `callbacks`."""


class AttributeDict(dict):
    """Stands in for Lightning's hyper-parameter container."""


def write_replicas(root: Path) -> dict[str, tuple[Path, ...]]:
    import torch
    import yaml

    from engine.models.clip import build_clip_model
    from engine.models.stylegan2 import StyleGAN2Generator
    from engine.models.vqgan import build_vqgan

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    sg = root / "stylegan2-ffhq-config-f.pt"
    if not sg.is_file():
        g = StyleGAN2Generator(size=1024, style_dim=512, n_mlp=8, channel_multiplier=2)
        torch.save({"g_ema": g.state_dict(), "latent_avg": g.latent_avg}, sg)
    out["StyleGAN2 FFHQ 1024 (rosinality converted .pt)"] = (sg,)

    cfg, ckpt = root / "wikiart_16384.yaml", root / "wikiart_16384.ckpt"
    if not ckpt.is_file():
        cfg.write_text(yaml.safe_dump(WIKIART_YAML), encoding="utf-8")
        vq = build_vqgan(WIKIART_YAML)
        gen = torch.Generator().manual_seed(0)
        # loss.*: LPIPS's VGG16 features and lin layers plus the PatchGAN discriminator, by size.
        loss = {
            f"loss.perceptual_loss.net.slice{i}.weight": torch.randn(s, generator=gen)
            for i, s in enumerate(
                (
                    1_792,
                    36_928,
                    73_856,
                    147_584,
                    295_168,
                    590_080,
                    590_080,
                    1_180_160,
                    2_359_808,
                    2_359_808,
                    2_359_808,
                    2_359_808,
                    2_359_808,
                    1_472,
                )
            )
        }
        disc = {
            f"loss.discriminator.main.{i}.weight": torch.randn(s, generator=gen)
            for i, s in enumerate((6_144, 524_288, 2_097_152, 8_192))
        }
        state = dict(vq.state_dict()) | loss | disc

        def adam(tensors: list[torch.Tensor]) -> dict:
            st = {
                i: {"step": 8145600, "exp_avg": torch.randn_like(t), "exp_avg_sq": torch.rand_like(t)}
                for i, t in enumerate(tensors)
            }
            return {"state": st, "param_groups": [{"lr": 4.5e-6, "params": list(st)}]}

        torch.save(
            {
                "epoch": 30,
                "global_step": 8145600,
                "pytorch-lightning_version": "1.0.8",
                "callbacks": {ModelCheckpoint: {"best_model_score": None, "best_model_path": "last.ckpt"}},
                "optimizer_states": [adam(list(vq.parameters())), adam(list(disc.values()))],
                "lr_schedulers": [],
                "state_dict": state,
                "hparams_name": "kwargs",
                "hyper_parameters": AttributeDict(embed_dim=256, n_embed=16384),
            },
            ckpt,
        )
    out["VQGAN WikiArt f16 16384 (Lightning 1.0 last.ckpt)"] = (cfg, ckpt)

    clip = build_clip_model("ViT-B-32").eval()
    hf = root / "open_clip_pytorch_model.bin"
    if not hf.is_file():
        torch.save(clip.state_dict(), hf)
    out["CLIP ViT-B/32 (open_clip .bin, fp32)"] = (hf,)
    ts = root / "ViT-B-32.pt"
    if not ts.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace_module(
                copy.deepcopy(clip),
                {
                    "encode_image": torch.rand(1, 3, 224, 224),
                    "encode_text": torch.zeros(1, 77, dtype=torch.long),
                },
                check_trace=False,
            ).half()
            torch.jit.save(traced, str(ts))
    out["CLIP ViT-B/32 (OpenAI TorchScript ViT-B-32.pt, fp16)"] = (ts,)
    return out


_PROBE = """
import pathlib, sys, time
import torch
from engine.models.clip import load_clip
from engine.models.stylegan2 import load_stylegan2
from engine.models.vqgan import load_vqgan
from engine.models.digests import sha256_file
kind, paths = sys.argv[1], sys.argv[2:]
# The replica is not OpenAI's file: its own digest stands in for the published one.
digest = sha256_file(pathlib.Path(paths[0])) if kind == 'clip' else None
def hwm():
    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))
base = hwm()
t = time.perf_counter()
if kind == 'sg':
    m = load_stylegan2(paths[0])
elif kind == 'vq':
    m = load_vqgan(paths[0], paths[1])
else:
    m = load_clip(pathlib.Path(paths[0]), openai_sha256=digest)
took = time.perf_counter() - t
print(f"load {took:.1f} s, peak +{(hwm() - base) / 1024:.0f} MiB over the imports ({base / 1024:.0f} MiB)")
"""


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/spooky-replicas")
    replicas = write_replicas(root)
    kinds = ("sg", "vq", "clip", "clip")
    for (name, paths), kind in zip(replicas.items(), kinds, strict=True):
        size = sum(p.stat().st_size for p in paths) / 2**20
        res = subprocess.run(
            [sys.executable, "-c", _PROBE, kind, *map(str, paths)],
            capture_output=True,
            text=True,
            check=False,
        )
        print(f"{name}: {size:.0f} MiB file: {res.stdout.strip() or res.stderr.strip()[-500:]}")


if __name__ == "__main__":
    main()
