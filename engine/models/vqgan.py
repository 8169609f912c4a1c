"""VQGAN built from taming-transformers' modules and the checkpoint's own yaml.

Only `taming.modules.diffusionmodules.model` and `taming.modules.vqvae.quantize` are imported:
`taming.models` needs an old Lightning and builds an LPIPS loss that downloads VGG weights. The
module layout (encoder, decoder, quantize, quant_conv, post_quant_conv) mirrors taming's VQModel so
that a Lightning `last.ckpt` loads key for key once its `loss.*` entries are dropped.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from taming.modules.diffusionmodules.model import Decoder, Encoder
from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

from engine.models.checkpoints import load_torch_file
from engine.models.file_kinds import check_model_file
from engine.models.state_dicts import (
    check_state_dict,
    copy_state_dict,
    describe_contents,
    describe_mismatch,
    on_meta,
)
from spooky.errors import CheckpointMismatchError, CorruptWeightsError, InvalidSizeError

#: taming model classes whose checkpoints we can load, and the quantiser each one uses.
VQ_TARGETS: dict[str, str] = {
    "taming.models.vqgan.VQModel": "vq",
    "taming.models.vqgan.VQNoDiscModel": "vq",
    "taming.models.vqgan.GumbelVQ": "gumbel",
}
_DDCONFIG_KEYS = (
    "ch",
    "out_ch",
    "ch_mult",
    "num_res_blocks",
    "attn_resolutions",
    "in_channels",
    "resolution",
    "z_channels",
)
DEFAULT_FETCH_HINT = (
    "run `spooky weights fetch vqgan_wikiart_16384` (or set models.vqgan_config and models.vqgan_ckpt "
    "in config.toml to taming-transformers' model.yaml and last.ckpt)"
)


@dataclass(frozen=True)
class VQGANSpec:
    """What the yaml says about the architecture (lossconfig and training settings are ignored)."""

    kind: str  # "vq" | "gumbel"
    embed_dim: int
    n_embed: int
    ddconfig: dict[str, Any]

    @property
    def factor(self) -> int:
        return 2 ** (len(self.ddconfig["ch_mult"]) - 1)


def parse_config(config: Mapping[str, Any], source: str = "VQGAN config") -> VQGANSpec:
    """Validate a parsed taming yaml; CorruptWeightsError says what was found instead."""

    def bad(found: str) -> CorruptWeightsError:
        return CorruptWeightsError(
            f"{source} is not a taming-transformers VQGAN config: {found}",
            hint="use the model.yaml that comes with the checkpoint (configs/model.yaml)",
        )

    model = config.get("model") if isinstance(config, Mapping) else None
    if not isinstance(model, Mapping):
        keys = sorted(str(k) for k in config) if isinstance(config, Mapping) else type(config).__name__
        raise bad(f"no `model` section (top level has {keys})")
    target = model.get("target")
    if not isinstance(target, str) or target not in VQ_TARGETS:
        raise bad(f"model.target is {target!r:.80}; supported: {', '.join(VQ_TARGETS)}")
    params = model.get("params")
    if not isinstance(params, Mapping):
        raise bad("model.params is missing")
    dd = params.get("ddconfig")
    if not isinstance(dd, Mapping):
        raise bad("model.params.ddconfig is missing")
    missing = [k for k in _DDCONFIG_KEYS if k not in dd]
    if missing:
        raise bad(f"model.params.ddconfig lacks {', '.join(missing)}")
    if dd.get("double_z", True) is not False:
        # taming's Encoder doubles its output channels unless told not to; VQGAN configs always
        # say false, KL-autoencoder configs say true.
        raise bad("ddconfig.double_z is true or missing (a VQGAN config sets it to false)")
    if params.get("remap") is not None:
        raise bad(
            f"model.params.remap is set ({params['remap']!r:.80}); remapped codebooks are not supported"
        )
    for key, value in (("embed_dim", params.get("embed_dim")), ("n_embed", params.get("n_embed"))):
        if not _is_count(value, 1):
            raise bad(f"model.params.{key} is {value!r:.80}, expected a positive integer")
    for key in ("ch", "out_ch", "in_channels", "resolution", "z_channels"):
        if not _is_count(dd[key], 1):
            raise bad(f"ddconfig.{key} is {dd[key]!r:.80}, expected a positive integer")
    if not _is_count(dd["num_res_blocks"], 0):
        raise bad(f"ddconfig.num_res_blocks is {dd['num_res_blocks']!r:.80}, expected an integer >= 0")
    for key, least in (("ch_mult", 1), ("attn_resolutions", 0)):
        value = dd[key]
        if not isinstance(value, list | tuple) or not all(_is_count(v, least) for v in value):
            raise bad(f"ddconfig.{key} is {value!r:.80}, expected a list of integers such as [1, 1, 2, 2, 4]")
    if not dd["ch_mult"]:
        raise bad("ddconfig.ch_mult is empty, expected a list such as [1, 1, 2, 2, 4]")
    if not all(isinstance(k, str) for k in dd):
        raise bad(f"ddconfig has keys that are not names: {[k for k in dd if not isinstance(k, str)]!r:.80}")
    if "dropout" in dd and (isinstance(dd["dropout"], bool) or not isinstance(dd["dropout"], int | float)):
        raise bad(f"ddconfig.dropout is {dd['dropout']!r:.80}, expected a number")
    return VQGANSpec(VQ_TARGETS[target], int(params["embed_dim"]), int(params["n_embed"]), dict(dd))


def _is_count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


class VQGAN(torch.nn.Module):
    """Encoder, codebook and decoder of a taming VQGAN, with the operations VQGAN+CLIP needs."""

    z_min: torch.Tensor
    z_max: torch.Tensor

    def __init__(self, spec: VQGANSpec) -> None:
        super().__init__()
        dd = spec.ddconfig
        self.kind = spec.kind
        self.embed_dim = spec.embed_dim
        self.n_embed = spec.n_embed
        self.factor = spec.factor
        with contextlib.redirect_stdout(io.StringIO()):  # taming's Decoder prints the z shape
            self.encoder = Encoder(**dd)
            self.decoder = Decoder(**dd)
        z_channels = int(dd["z_channels"])
        if spec.kind == "gumbel":
            quantizer: torch.nn.Module = GumbelQuantize(z_channels, spec.embed_dim, n_embed=spec.n_embed)
        else:
            quantizer = VectorQuantizer2(spec.n_embed, spec.embed_dim, beta=0.25)
        # Registered as "quantize" for taming's key names; add_module refuses because the method
        # `quantize` exists, so it goes into _modules directly (see `quantizer`).
        self._modules["quantize"] = quantizer
        self.quant_conv = torch.nn.Conv2d(z_channels, spec.embed_dim, 1)
        self.post_quant_conv = torch.nn.Conv2d(spec.embed_dim, z_channels, 1)
        # Not persistent: derived from the codebook, so checkpoints need not (and do not) hold them.
        self.register_buffer("z_min", torch.zeros(1, spec.embed_dim, 1, 1), persistent=False)
        self.register_buffer("z_max", torch.zeros(1, spec.embed_dim, 1, 1), persistent=False)
        # Squared norms of the code vectors for `nearest_codes`, with the codebook storage and
        # version they were computed from (a move, a load or an in-place edit makes them stale).
        self._codebook_sq: tuple[tuple[int, int, torch.device, torch.dtype], torch.Tensor] | None = None
        self.refresh_codebook_range()

    @property
    def quantizer(self) -> torch.nn.Module:
        """taming's quantiser module.

        It is registered under the name `quantize` so that state-dict keys match taming's
        (`quantize.embedding.weight`), while the attribute `quantize` is the method below: the class
        attribute wins the lookup because nn.Module keeps sub-modules in `_modules`.
        """
        return self._modules["quantize"]

    @property
    def codebook(self) -> torch.Tensor:
        """[n_embed, embed_dim] code vectors."""
        q = self.quantizer
        return (q.embed if self.kind == "gumbel" else q.embedding).weight

    @torch.no_grad()
    def refresh_codebook_range(self) -> None:
        """Recompute z_min / z_max and the cached code norms from the codebook (after loading or
        changing it; an edit through `.data` bypasses the version counter the cache also checks)."""
        self._codebook_sq = None
        cb = self.codebook.detach()
        self.z_min.copy_(cb.min(dim=0).values.view(1, -1, 1, 1))
        self.z_max.copy_(cb.max(dim=0).values.view(1, -1, 1, 1))

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.refresh_codebook_range()
        return result

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Image in [-1, 1], [N,3,H,W] -> continuous z [N,embed_dim,H/f,W/f] (before quantisation)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise InvalidSizeError(f"VQGAN.encode expects [N,3,H,W] images, got shape {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % self.factor or w % self.factor:
            raise InvalidSizeError(
                f"image size {w}x{h} (w x h) is not a multiple of the VQGAN factor {self.factor}",
                hint=f"resize to multiples of {self.factor}",
            )
        return self.quant_conv(self.encoder(x))

    def nearest_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Index of the nearest codebook vector at each position: [N,H,W]."""
        n, c, h, w = z.shape
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, c)
        cb = self.codebook.detach()
        dist = flat.pow(2).sum(1, keepdim=True) - 2 * flat @ cb.T + self._codebook_norms(cb)
        return dist.argmin(dim=1).view(n, h, w)

    def _codebook_norms(self, cb: torch.Tensor) -> torch.Tensor:
        """`cb.pow(2).sum(1)`, computed once per codebook state rather than every step."""
        key = (cb.untyped_storage().data_ptr(), self.codebook._version, cb.device, cb.dtype)
        if self._codebook_sq is None or self._codebook_sq[0] != key:
            self._codebook_sq = (key, cb.pow(2).sum(1))
        return self._codebook_sq[1]

    @torch.no_grad()
    def encode_to_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Code indices [N,H/f,W/f] of an image in [-1, 1], chosen the way the model's quantiser does.

        A VQ model takes the nearest codebook vector of `encode(x)`. A Gumbel model scores every
        code with its `proj` convolution and samples from those logits; the noise-free choice is
        their argmax (the nearest code vector would be another picture).
        """
        z = self.encode(x)
        if self.kind == "gumbel":
            return self.quantizer.proj(z).argmax(dim=1)
        return self.nearest_codes(z)

    def encode_quantized(self, x: torch.Tensor) -> torch.Tensor:
        """The code vectors an image starts from: `quantize_codes(encode_to_codes(x))`."""
        return self.quantize_codes(self.encode_to_codes(x))

    def quantize_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """[N,H,W] code indices -> [N,embed_dim,H,W] code vectors."""
        return self.codebook[codes].permute(0, 3, 1, 2)

    def quantize(self, z: torch.Tensor) -> torch.Tensor:
        """Nearest codebook vector per position; the gradient passes straight through to z."""
        z_q = self.quantize_codes(self.nearest_codes(z))
        return z + (z_q - z).detach()

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised z -> image, roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(z_q))

    def clamp(self, z: torch.Tensor) -> torch.Tensor:
        """Clamp z per channel into the codebook's range."""
        return torch.maximum(torch.minimum(z, self.z_max), self.z_min)


def build_vqgan(config: Mapping[str, Any]) -> VQGAN:
    """A randomly initialised VQGAN from a parsed taming yaml."""
    return VQGAN(parse_config(config))


def read_config(config_path: str | Path, *, fetch_hint: str = DEFAULT_FETCH_HINT) -> dict[str, Any]:
    """Parse taming's model.yaml with yaml.safe_load (no omegaconf, no code)."""
    p = Path(config_path).expanduser()
    what = "VQGAN config (taming model.yaml)"
    check_model_file(p, what, fetch_hint, expected="taming-transformers' model.yaml")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, RecursionError) as e:
        # ValueError: a date that is none (2021-13-45); RecursionError: nesting deeper than the parser.
        raise CorruptWeightsError(
            f"VQGAN config {p} is not valid YAML ({type(e).__name__}: {e})", hint=fetch_hint
        ) from e
    if data is None:
        raise CorruptWeightsError(
            f"VQGAN config {p} is not a taming-transformers VQGAN config: the YAML file is empty "
            "(nothing but blank lines or comments)",
            hint=fetch_hint,
        )
    if not isinstance(data, dict):
        raise CorruptWeightsError(
            f"VQGAN config {p} is not a taming-transformers VQGAN config: it holds a {type(data).__name__}",
            hint=fetch_hint,
        )
    return data


def _state_dict_of(obj: Any, path: Path, fetch_hint: str) -> dict[str, torch.Tensor]:
    # Lightning checkpoints keep the weights under "state_dict"; accept a bare state dict too.
    sd = obj.get("state_dict", obj) if isinstance(obj, Mapping) else None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CorruptWeightsError(
            f"VQGAN checkpoint {path} holds no state dict of tensors (expected a Lightning last.ckpt "
            f"with a 'state_dict'); {describe_contents(obj)}",
            hint=fetch_hint,
        )
    sd = check_state_dict(sd, what="VQGAN checkpoint", path=path, hint=fetch_hint)
    # The training loss (LPIPS + discriminator) is never built, so its weights are dropped.
    return {k: v for k, v in sd.items() if not k.startswith("loss.")}


def _build(spec: VQGANSpec, config_path: Path, fetch_hint: str) -> VQGAN:
    try:
        return VQGAN(spec)
    except Exception as e:
        # taming's modules check their arguments with asserts and torch's (GroupNorm wants the
        # channels to be a multiple of 32): a yaml can describe sizes nothing can be built from.
        raise CorruptWeightsError(
            f"VQGAN config {config_path} describes no VQGAN taming can build ({type(e).__name__}: {e})",
            hint=fetch_hint,
        ) from e


def load_vqgan(
    config_path: str | Path,
    ckpt_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    fetch_hint: str = DEFAULT_FETCH_HINT,
) -> VQGAN:
    """Build the VQGAN that `config_path` describes and load `ckpt_path` into it (eval, frozen).

    The checkpoint is compared with a model built on the meta device first, so a yaml that describes
    a huge model allocates nothing unless the checkpoint really holds that many weights.
    """
    config_path, ckpt_path = Path(config_path).expanduser(), Path(ckpt_path).expanduser()
    spec = parse_config(read_config(config_path, fetch_hint=fetch_hint), source=f"VQGAN config {config_path}")
    with on_meta():
        probe = _build(spec, config_path, fetch_hint)
    obj = load_torch_file(
        ckpt_path, what="VQGAN checkpoint (taming-transformers last.ckpt)", fetch_hint=fetch_hint
    )
    state_dict = _state_dict_of(obj, ckpt_path, fetch_hint)
    if not any(k in state_dict for k in probe.state_dict()):
        raise CheckpointMismatchError(
            f"VQGAN checkpoint {ckpt_path} is not a taming VQGAN: none of its keys are a VQGAN's; "
            f"{describe_contents(obj)}",
            hint=fetch_hint,
        )
    problem = describe_mismatch(probe, state_dict)
    if problem:
        raise CheckpointMismatchError(
            f"VQGAN config {config_path} and checkpoint {ckpt_path} do not match "
            f"(the yaml describes f{spec.factor}, {spec.n_embed} codes of {spec.embed_dim} dims): {problem}",
            hint="use the model.yaml that was published with this last.ckpt",
        )
    model = _build(spec, config_path, fetch_hint)
    copy_state_dict(model, state_dict, what="VQGAN checkpoint", path=ckpt_path, hint=fetch_hint)
    return model.to(device).eval().requires_grad_(False)
