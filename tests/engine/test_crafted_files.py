"""Malformed and crafted model files in every published layout: each load is a typed error naming the file.

Every case writes a file that a broken download, a wrong tool or a hostile mirror could leave, and
loads it through the loader the engine uses; the only acceptable outcomes are CorruptWeightsError
(the file cannot be read as what it claims to be), CheckpointMismatchError (readable weights that
do not fit the architecture) or, for a directory, MissingWeightsError, each naming the file.
Loads run with warnings shown rather than raised, as in the engine.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import os
import random
import subprocess
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from crafted_files import Build, Call, Global, New, PersistentId, Raw, module, rewrite_zip, save, scripted
from safetensors.torch import save_file

from engine.models.clip import build_clip_model, load_clip
from engine.models.factory import load_models
from engine.models.fetch import fetch_file
from engine.models.registry import WeightFile
from engine.models.stylegan2 import StyleGAN2Generator, load_stylegan2
from engine.models.vqgan import build_vqgan, load_vqgan
from spooky.config import ModelsConfig
from spooky.errors import CheckpointMismatchError, CorruptWeightsError, DownloadError, MissingWeightsError

try:
    from .test_clip import TOY
    from .test_model_files import SG, write_openai_torchscript
    from .test_vqgan import toy_yaml, write_pair
except ImportError:
    from test_clip import TOY
    from test_model_files import SG, write_openai_torchscript
    from test_vqgan import toy_yaml, write_pair

Corrupt, Mismatch, Missing = CorruptWeightsError, CheckpointMismatchError, MissingWeightsError


@dataclass(frozen=True)
class Goods:
    """Valid files of each layout and the state they were written from."""

    root: Path
    g_ema: dict[str, torch.Tensor]
    stylegan2: Path
    vq_state: dict[str, torch.Tensor]
    vq_yaml: Path
    vq_ckpt: Path
    clip_state: dict[str, torch.Tensor]
    clip_bin: Path
    clip_safetensors: Path
    torchscript: Path


@pytest.fixture(scope="module")
def goods(tmp_path_factory: pytest.TempPathFactory) -> Goods:
    root = tmp_path_factory.mktemp("goods")
    torch.manual_seed(0)
    g = StyleGAN2Generator(**SG)
    g_ema = dict(g.state_dict())
    sg = root / "stylegan2.pt"
    torch.save({"g_ema": g_ema, "latent_avg": torch.zeros(SG["style_dim"])}, sg)
    config = toy_yaml()
    vq = build_vqgan(config)
    vq_yaml, vq_ckpt = write_pair(root, config, vq)
    clip = build_clip_model(model_cfg=TOY).eval()
    clip_state = dict(clip.state_dict())
    clip_bin = root / "open_clip_pytorch_model.bin"
    torch.save(clip_state, clip_bin)
    clip_st = root / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip_state.items()}, str(clip_st))
    ts = root / "ViT-B-32.pt"
    write_openai_torchscript(clip, ts)
    return Goods(root, g_ema, sg, dict(vq.state_dict()), vq_yaml, vq_ckpt, clip_state, clip_bin, clip_st, ts)


# --- what a file can hold -----------------------------------------------------------------------


def _quiet(make: Callable[[], torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized and nested tensors are deprecated / prototype
        return make()


ODD_TENSORS: dict[str, Callable[[], torch.Tensor]] = {
    "sparse": lambda: torch.eye(16).to_sparse(),
    "meta": lambda: torch.empty(16, 16, device="meta"),
    "quantized": lambda: _quiet(lambda: torch.quantize_per_tensor(torch.rand(16, 16), 0.1, 0, torch.quint8)),
    "nested": lambda: _quiet(lambda: torch.nested.nested_tensor([torch.zeros(16), torch.zeros(3)])),
    "stride-0 view of one number": lambda: torch.zeros(1).expand(100_000, 100_000),
}
WRONG_DTYPES = (torch.complex64, torch.int64, torch.bool)

TAMPER_DEFAULTS = Build(Global("torch._utils", "_rebuild_tensor_v2"), (None, {"__defaults__": (1,)}))
TAMPER_CLASS = Build(Global("torch", "Tensor"), (None, {"__repr__": None}))
BAD_PICKLES: dict[str, object] = {
    "BUILD on a torch function": TAMPER_DEFAULTS,
    "BUILD on a torch class": TAMPER_CLASS,
    "BUILD on an OrderedDict with a list": Build(Call(Global("collections", "OrderedDict")), [1, 2]),
    "rebuild call with wrong arguments": Call(Global("torch._utils", "_rebuild_tensor_v2"), "x", 1),
    "OrderedDict called with a number": Call(Global("collections", "OrderedDict"), 5),
    "storage type that is no storage": PersistentId(
        ("storage", Global("evil", "NotAStorage"), "0", "cpu", 4)
    ),
    "storage record that is not there": PersistentId(
        ("storage", Global("torch", "FloatStorage"), "99", "cpu", 4)
    ),
    "a tensor larger than its storage": Call(
        Global("torch._utils", "_rebuild_tensor_v2"),
        PersistentId(("storage", Global("torch", "FloatStorage"), "0", "cpu", 10**12)),
        0,
        (10**12,),
        (1,),
        False,
        Call(Global("collections", "OrderedDict")),
    ),
    "persistent id of a string": PersistentId("storage"),
    "persistent id of another kind": PersistentId(("module", "x")),
    "sparse rebuild of nonsense": Call(Global("torch._utils", "_rebuild_sparse_tensor"), 1, 2),
    "tensor subclass of an unknown class": Call(
        Global("torch._tensor", "_rebuild_from_type_v2"),
        Global("torch._utils", "_rebuild_tensor_v2"),
        Global("evil", "Tensor"),
        (),
        {},
    ),
    "protocol-5 opcodes": Raw(b"\x95\x00\x00\x00\x00\x00\x00\x00\x00"),
}


# --- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    layout: str  # which loader reads it
    name: str
    make: Callable[[Goods, Path], Path]  # writes the file under the given directory
    expected: type[Exception]


def _bytes_of(data: bytes | Callable[[bytes], bytes], source: str) -> Callable[[Goods, Path], Path]:
    def make(goods: Goods, d: Path) -> Path:
        src = getattr(goods, source)
        out = d / src.name
        out.write_bytes(data(src.read_bytes()) if callable(data) else data)
        return out

    return make


def _obj(make_obj: Callable[[Goods], object], name: str, *, legacy: bool = False) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        return save(make_obj(goods), d / name, legacy=legacy)

    return make


def _scripted(make_obj: Callable[[Goods], object]) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        return scripted(make_obj(goods), d / "ViT-B-32.pt")

    return make


def _zip(source: str, **kwargs: object) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        src = getattr(goods, source)
        return rewrite_zip(src, d / src.name, **kwargs)  # type: ignore[arg-type]

    return make


def _yaml(text: str | bytes) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        out = d / "model.yaml"
        out.write_bytes(text.encode() if isinstance(text, str) else text)
        return out

    return make


def _ddconfig(changes: dict[object, object] | None = None, **named: object) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        config = toy_yaml()
        config["model"]["params"]["ddconfig"].update({**(changes or {}), **named})
        out = d / "model.yaml"
        out.write_text(yaml.safe_dump(config), encoding="utf-8")
        return out

    return make


def _params(**changes: object) -> Callable:
    def make(goods: Goods, d: Path) -> Path:
        config = toy_yaml()
        config["model"]["params"].update(changes)
        out = d / "model.yaml"
        out.write_text(yaml.safe_dump(config), encoding="utf-8")
        return out

    return make


def _with(state: dict[str, torch.Tensor], key: str, value: object) -> dict[str, object]:
    out: dict[str, object] = dict(state)
    out[key] = value
    return out


def _lightning(state: object, **extra: object) -> dict[str, object]:
    return {"epoch": 3, "global_step": 1234, "state_dict": state, "optimizer_states": [], **extra}


def _tree(state: dict[str, object]) -> Build:
    """A module tree pickled the way TorchScript pickles one, with `state`'s tensors at its leaves."""
    nested: dict = {}
    for key, value in state.items():
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def build(name: str, node: dict) -> Build:
        attrs = {k: build(k, v) if isinstance(v, dict) else v for k, v in node.items()}
        return module(name.capitalize() or "Module", {"training": False, **attrs})

    return build("CLIP", nested)


def _chain(depth: int, leaf: object) -> object:
    node = leaf
    for i in range(depth):
        node = module(f"Level{i}", {"inner": node})
    return node


def _diamond(depth: int, leaf: object) -> object:
    node = leaf
    for i in range(depth):
        node = module(f"Level{i}", {"a": node, "b": node})  # 2**depth paths, depth + 1 modules
    return node


def _cycle() -> object:
    scripted_module = New(Global("__torch__.model", "CLIP"))
    return Build(scripted_module, {"self": scripted_module, "weight": torch.zeros(3)})


def _legacy_train(g: Goods, extra: object = None) -> dict[str, object]:
    args = Build(New(Global("argparse", "Namespace")), {"size": 8})
    return {"g_ema": g.g_ema, "args": args, "extra": extra}


def _cut(path: Path, fraction: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _shrunk(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v[..., :1] if v.ndim else v for k, v in state.items()}


Maker = Callable[[Goods], object]


def _entry_cases(key: str, put: Callable[[Goods, str, object], object]) -> list[tuple[str, Maker, type]]:
    """One entry of a state dict replaced by each kind of value that is no weight a model can take."""
    cases: list[tuple[str, Maker, type]] = []
    for dtype in WRONG_DTYPES:
        cases.append((f"a {dtype} weight", lambda g, d=dtype: put(g, key, _tensor(g, key).to(d)), Mismatch))
    for kind, make in ODD_TENSORS.items():
        cases.append((f"a {kind} tensor", lambda g, m=make: put(g, key, m()), Corrupt))
    return cases


def _tensor(g: Goods, key: str) -> torch.Tensor:
    return {**g.g_ema, **g.vq_state, **g.clip_state}[key]


def _cases() -> list[Case]:
    cases: list[Case] = []
    files = {
        "stylegan2": ("stylegan2", True),
        "vqgan": ("vq_ckpt", True),
        "clip": ("clip_bin", True),
        "safetensors": ("clip_safetensors", False),
        "torchscript": ("torchscript", True),
    }
    # fmt: off
    # Bytes that are no file of any kind, for every layout.
    for layout, (source, is_zip) in files.items():
        cases += [
            Case(layout, "empty file", _bytes_of(b"", source), Corrupt),
            Case(layout, "one byte", _bytes_of(lambda b: b[:1], source), Corrupt),
            Case(layout, "first 100 bytes", _bytes_of(lambda b: b[:100], source), Corrupt),
            Case(layout, "first half", _bytes_of(lambda b: b[: len(b) // 2], source), Corrupt),
            Case(layout, "all but the last byte", _bytes_of(lambda b: b[:-1], source), Corrupt),
            Case(layout, "all but the last 30 bytes", _bytes_of(lambda b: b[:-30], source), Corrupt),
            Case(layout, "random bytes", _bytes_of(random.Random(7).randbytes(4096), source), Corrupt),
            Case(layout, "zeros", _bytes_of(bytes(4096), source), Corrupt),
            Case(layout, "a gzip of the file", _bytes_of(gzip.compress, source), Corrupt),
            Case(layout, "login page", _bytes_of(b"\n<!DOCTYPE html><html>sign in</html>", source), Corrupt),
        ]
        if is_zip:
            cases += [
                Case(layout, "zip without data.pkl", _zip(source, drop=PKL), Corrupt),
                Case(layout, "zip without its first storage", _zip(source, drop="/data/0"), Corrupt),
                Case(layout, "data.pkl empty", _zip(source, replace={PKL: b""}), Corrupt),
                Case(layout, "data.pkl garbage", _zip(source, replace={PKL: b"\x80\x02junk"}), Corrupt),
                Case(layout, "data.pkl cut short", _zip(source, replace={PKL: b"\x80\x02}q\x00(X"}), Corrupt),
            ]

    # rosinality StyleGAN2 .pt
    def sg(g: Goods, key: str, value: object) -> object:
        return {"g_ema": _with(g.g_ema, key, value)}

    sg_cases: list[tuple[str, Maker, type]] = [
        ("a list", lambda g: [1, 2], Mismatch),
        ("None", lambda g: None, Mismatch),
        ("a tensor", lambda g: torch.zeros(3), Mismatch),
        ("an unknown class at the top", lambda g: Call(Global("argparse", "Namespace")), Mismatch),
        ("g_ema a list", lambda g: {"g_ema": [1]}, Corrupt),
        ("g_ema None", lambda g: {"g_ema": None}, Corrupt),
        ("g_ema an unknown class", lambda g: {"g_ema": Call(Global("evil", "Weights"), 1)}, Mismatch),
        ("g_ema with a number as key", lambda g: {"g_ema": {1: torch.zeros(1), **g.g_ema}}, Corrupt),
        ("g_ema with a tensor as key", lambda g: {"g_ema": {torch.zeros(1): torch.zeros(1)}}, Corrupt),
        ("g_ema with a string value", lambda g: sg(g, "style.1.weight", "x"), Corrupt),
        ("g_ema with a list value", lambda g: sg(g, "conv1.conv.weight", [1.0]), Corrupt),
        ("g_ema with 1-D where 2-D", lambda g: sg(g, "style.1.weight", torch.zeros(16)), Mismatch),
        ("g_ema with a 0x0 mapping", lambda g: sg(g, "style.1.weight", torch.zeros(0, 0)), Mismatch),
        ("g_ema with a wrong shape", lambda g: sg(g, "to_rgb1.bias", torch.zeros(2)), Mismatch),
        ("latent_avg a string", lambda g: {"g_ema": g.g_ema, "latent_avg": "avg"}, Mismatch),
        ("latent_avg too short", lambda g: {"g_ema": g.g_ema, "latent_avg": torch.zeros(3)}, Mismatch),
        ("complex latent_avg",
         lambda g: {"g_ema": g.g_ema, "latent_avg": torch.zeros(16).cfloat()}, Mismatch),
        ("latent_avg sparse", lambda g: {"g_ema": g.g_ema, "latent_avg": torch.eye(4).to_sparse()}, Corrupt),
        *_entry_cases("conv1.conv.weight", sg),
        *[(kind, lambda g, b=bad: {"g_ema": g.g_ema, "x": b}, Corrupt) for kind, bad in BAD_PICKLES.items()],
    ]
    cases += [Case("stylegan2", name, _obj(make, "stylegan2.pt"), want) for name, make, want in sg_cases]
    cases += [
        Case("stylegan2", "legacy file cut short",
             lambda g, d: _cut(save(_legacy_train(g), d / "x.pt", legacy=True), 0.5), Corrupt),
        Case("stylegan2", "legacy file without its storages",
             lambda g, d: _cut(save(_legacy_train(g), d / "x.pt", legacy=True), 0.98), Corrupt),
        Case("stylegan2", "legacy file with a bad pickle",
             _obj(lambda g: _legacy_train(g, TAMPER_DEFAULTS), "x.pt", legacy=True), Corrupt),
    ]

    # taming's Lightning last.ckpt
    def vq(g: Goods, key: str, value: object) -> object:
        return _lightning(_with(g.vq_state, key, value))

    bad_rebuild = BAD_PICKLES["rebuild call with wrong arguments"]
    vq_cases: list[tuple[str, Maker, type]] = [
        ("state_dict a list", lambda g: _lightning([1, 2]), Corrupt),
        ("no state_dict", lambda g: {"epoch": 3, "global_step": 5}, Corrupt),
        ("state_dict with a number as key", lambda g: _lightning({7: torch.zeros(1), **g.vq_state}), Corrupt),
        ("state_dict with a string value", lambda g: vq(g, "quant_conv.bias", "b"), Corrupt),
        ("state_dict with a wrong shape", lambda g: vq(g, "quant_conv.bias", torch.zeros(3)), Mismatch),
        ("state_dict of another model", lambda g: _lightning({"visual.proj": torch.zeros(2)}), Mismatch),
        ("optimizer state that cannot be rebuilt",
         lambda g: _lightning(g.vq_state, optimizer_states=[bad_rebuild]), Corrupt),
        ("callbacks that set torch's defaults",
         lambda g: _lightning(g.vq_state, callbacks={Global("pl", "Checkpoint"): TAMPER_DEFAULTS}), Corrupt),
        *_entry_cases("quant_conv.weight", vq),
    ]
    cases += [Case("vqgan", name, _obj(make, "last.ckpt"), want) for name, make, want in vq_cases]

    # taming's model.yaml (read with the good last.ckpt)
    cases += [
        Case("yaml", "empty file", _yaml(""), Corrupt),
        Case("yaml", "only comments", _yaml("# model: nothing here\n\n"), Corrupt),
        Case("yaml", "a list", _yaml("- a\n- b\n"), Corrupt),
        Case("yaml", "a string", _yaml("just some text\n"), Corrupt),
        Case("yaml", "model a list", _yaml("model: []\n"), Corrupt),
        Case("yaml", "keys of mixed types", _yaml("1: a\nb: c\n"), Corrupt),
        Case("yaml", "target a list", _yaml("model:\n  target: [taming.models.vqgan.VQModel]\n"), Corrupt),
        Case("yaml", "target a mapping", _yaml("model:\n  target: {a: 1}\n"), Corrupt),
        Case("yaml", "a date that is none", _yaml("created: 2021-13-45\nmodel: {}\n"), Corrupt),
        Case("yaml", "not UTF-8", _yaml(b"model: \xff\xfe\x00\x81\n"), Corrupt),
        Case("yaml", "a key that is a list", _yaml("? [1, 2]\n: 3\n"), Corrupt),
        Case("yaml", "nested deeper than the parser", _yaml("[" * 20_000 + "]" * 20_000), Corrupt),
        Case("yaml", "a list that holds itself", _yaml("model: &m [*m]\n"), Corrupt),
        Case("yaml", "ch a string", _ddconfig(ch="abc"), Corrupt),
        Case("yaml", "ch a float", _ddconfig(ch=32.5), Corrupt),
        Case("yaml", "ch zero", _ddconfig(ch=0), Corrupt),
        Case("yaml", "ch not a multiple of 32", _ddconfig(ch=33), Corrupt),
        Case("yaml", "ch true", _ddconfig(ch=True), Corrupt),
        Case("yaml", "ch_mult of strings", _ddconfig(ch_mult=["a"]), Corrupt),
        Case("yaml", "ch_mult with a zero", _ddconfig(ch_mult=[1, 0]), Corrupt),
        Case("yaml", "ch_mult empty", _ddconfig(ch_mult=[]), Corrupt),
        Case("yaml", "ch_mult a number", _ddconfig(ch_mult=4), Corrupt),
        Case("yaml", "attn_resolutions a number", _ddconfig(attn_resolutions=8), Corrupt),
        Case("yaml", "num_res_blocks negative", _ddconfig(num_res_blocks=-1), Corrupt),
        Case("yaml", "z_channels zero", _ddconfig(z_channels=0), Corrupt),
        Case("yaml", "resolution a list", _ddconfig(resolution=[32]), Corrupt),
        Case("yaml", "dropout a string", _ddconfig(dropout="none"), Corrupt),
        Case("yaml", "double_z the string false", _ddconfig(double_z="false"), Corrupt),
        Case("yaml", "ddconfig with a number as key", _ddconfig({1: 2}), Corrupt),
        Case("yaml", "embed_dim a string", _params(embed_dim="8"), Corrupt),
        Case("yaml", "n_embed zero", _params(n_embed=0), Corrupt),
        Case("yaml", "n_embed a list", _params(n_embed=[32]), Corrupt),
        Case("yaml", "a million channels", _ddconfig(ch=1_024_000), Mismatch),
        Case("yaml", "a billion codes", _params(n_embed=10**9), Mismatch),
    ]

    # open_clip state dict (.bin) and OpenAI state dicts
    def clip(g: Goods, key: str, value: object) -> object:
        return _with(g.clip_state, key, value)

    clip_cases: list[tuple[str, Maker, type]] = [
        ("a list", lambda g: [1, 2], Corrupt),
        ("None", lambda g: None, Corrupt),
        ("a tensor", lambda g: torch.zeros(3), Corrupt),
        ("an unknown class", lambda g: Call(Global("evil", "Model")), Mismatch),
        ("a number as key", lambda g: {3: torch.zeros(1), **g.clip_state}, Corrupt),
        ("a tensor as key", lambda g: {torch.zeros(1): torch.zeros(1)}, Corrupt),
        ("an unknown class as key", lambda g: {Global("evil", "Key"): torch.zeros(1)}, Corrupt),
        ("a string value", lambda g: clip(g, "logit_scale", "s"), Corrupt),
        ("OpenAI's extras as numbers", lambda g: clip(g, "input_resolution", 224), Corrupt),
        ("state_dict a list", lambda g: {"state_dict": [1]}, Corrupt),
        ("a wrong shape", lambda g: clip(g, "logit_scale", torch.zeros(4)), Mismatch),
        ("a model of another size", lambda g: _shrunk(g.clip_state), Mismatch),
        ("a StyleGAN2 file", lambda g: {"g_ema": g.g_ema, "latent_avg": torch.zeros(16)}, Corrupt),
        *_entry_cases("visual.proj", clip),
        *[(kind, lambda g, b=bad: clip(g, "extra", b), Corrupt) for kind, bad in BAD_PICKLES.items()],
    ]
    cases += [Case("clip", name, _obj(make, "open_clip.bin"), want) for name, make, want in clip_cases]

    # open_clip .safetensors
    cases += [
        Case("safetensors", "header length beyond the file",
             _bytes_of(lambda b: (2**40).to_bytes(8, "little") + b[8:], ST), Corrupt),
        Case("safetensors", "header that is no JSON",
             _bytes_of(lambda b: (9).to_bytes(8, "little") + b"not json!" + b[17:], ST), Corrupt),
        Case("safetensors", "header of the wrong shape",
             _bytes_of(lambda b: (2).to_bytes(8, "little") + b"[]", ST), Corrupt),
        Case("safetensors", "int32 weights",
             _safetensors(lambda g: {k: v.to(torch.int32) for k, v in g.clip_state.items()}), Mismatch),
        Case("safetensors", "a missing key",
             _safetensors(lambda g: dict(list(g.clip_state.items())[1:])), Mismatch),
    ]

    # OpenAI's TorchScript archive, read inertly (digest check off: the replica is not OpenAI's file)
    def w(g: Goods) -> torch.Tensor:
        return g.clip_state["visual.proj"]

    def ts(g: Goods, key: str, value: object) -> object:
        return _tree(_with(g.clip_state, key, value))

    ts_cases: list[tuple[str, Maker, type]] = [
        ("data.pkl a list", lambda g: [1, 2], Corrupt),
        ("data.pkl None", lambda g: None, Corrupt),
        ("data.pkl a tensor", lambda g: torch.zeros(3), Corrupt),
        ("data.pkl a plain dict of tensors", lambda g: dict(g.clip_state), Corrupt),
        ("a module made by a call, with no state", lambda g: Call(SCRIPTED_CLIP, 1), Corrupt),
        ("a module made by __new__, with no state", lambda g: New(SCRIPTED_CLIP), Corrupt),
        ("an unknown global with tensors", lambda g: Call(Global("__torch__.evil", "Thing"), w(g)), Corrupt),
        ("module state a tuple", lambda g: module("CLIP", (None, {"proj": w(g)})), Corrupt),
        ("module state a list", lambda g: module("CLIP", [w(g)]), Corrupt),
        ("an attribute named by a number", lambda g: module("CLIP", {1: w(g)}), Corrupt),
        ("an attribute named by a tensor", lambda g: module("CLIP", {torch.zeros(1): w(g)}), Corrupt),
        ("a sub-module made by a call",
         lambda g: module("CLIP", {"visual": Call(Global("__torch__.m", "V"), 1)}), Corrupt),
        ("modules nested 100 deep", lambda g: _chain(100, module("Leaf", {"weight": w(g)})), Corrupt),
        ("a module that holds itself", lambda g: _cycle(), Mismatch),
        ("a module shared 2**30 ways", lambda g: _diamond(30, module("Leaf", {"weight": w(g)})), Mismatch),
        ("the right names with wrong shapes", lambda g: _tree(_shrunk(g.clip_state)), Mismatch),
        ("the right names, one missing", lambda g: _tree(dict(list(g.clip_state.items())[1:])), Mismatch),
        *_entry_cases("visual.proj", ts),
        *[(kind, lambda g, b=bad: module("CLIP", {"vit": b}), Corrupt) for kind, bad in BAD_PICKLES.items()],
    ]
    cases += [Case("torchscript", name, _scripted(make), want) for name, make, want in ts_cases]
    # fmt: on
    return cases


def _safetensors(tensors: Callable[[Goods], dict[str, torch.Tensor]]) -> Callable[[Goods, Path], Path]:
    def make(goods: Goods, d: Path) -> Path:
        out = d / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in tensors(goods).items()}, str(out))
        return out

    return make


PKL = "/data.pkl"
SCRIPTED_CLIP = Global("__torch__.model", "CLIP")
ST = "clip_safetensors"
LOADERS: dict[str, Callable[[Goods, Path], object]] = {
    "stylegan2": lambda g, p: load_stylegan2(p),
    "vqgan": lambda g, p: load_vqgan(g.vq_yaml, p),
    "yaml": lambda g, p: load_vqgan(p, g.vq_ckpt),
    "clip": lambda g, p: load_clip(p, model_cfg=TOY, openai_sha256=None),
    "safetensors": lambda g, p: load_clip(p, model_cfg=TOY, openai_sha256=None),
    "torchscript": lambda g, p: load_clip(p, model_cfg=TOY, openai_sha256=None),
}
CASES = _cases()


def _torch_as_it_was() -> tuple[object, ...]:
    return (torch._utils._rebuild_tensor_v2.__defaults__, torch.Tensor.__dict__.get("__repr__"))


@pytest.mark.parametrize("case", CASES, ids=[f"{c.layout}: {c.name}" for c in CASES])
def test_each_crafted_file_is_a_typed_error_naming_it(case: Case, goods: Goods, tmp_path: Path) -> None:
    path = case.make(goods, tmp_path)
    before = _torch_as_it_was()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")  # shown, not raised: the engine's own setting
        with pytest.raises(Exception) as info:
            LOADERS[case.layout](goods, path)
    assert type(info.value) is case.expected, f"{type(info.value).__name__}: {info.value}"
    assert str(path) in str(info.value)
    assert len(str(info.value)) < 2000, str(info.value)
    assert _torch_as_it_was() == before, "loading the file changed torch itself"


def test_a_directory_where_each_file_should_be(goods: Goods, tmp_path: Path) -> None:
    folder = tmp_path / "stylegan2-ffhq-config-f.pt"
    folder.mkdir()
    for layout, load in LOADERS.items():
        with pytest.raises(MissingWeightsError) as info:
            load(goods, folder)
        message = str(info.value)
        assert f"at {folder} is a directory, not a file" in message, (layout, message)
        assert "not found" not in message
    cfg = ModelsConfig(preset="full", device="cpu", cache_dir=tmp_path / "cache", stylegan2=folder)
    with pytest.raises(MissingWeightsError) as info:
        load_models(cfg)
    assert f"StyleGAN2 checkpoint (rosinality .pt): {folder} (a directory, not a file)" in str(info.value)
    with pytest.raises(DownloadError, match=f"{folder} is a directory, where"):
        fetch_file(WeightFile(folder.name, urls=("https://example.invalid/x",)), tmp_path)


def test_an_empty_file_and_an_empty_yaml_say_so(goods: Goods, tmp_path: Path) -> None:
    empty = tmp_path / "last.ckpt"
    empty.write_bytes(b"")
    for layout, load in LOADERS.items():
        with pytest.raises(CorruptWeightsError) as info:
            load(goods, empty)
        assert f"at {empty} is an empty file (0 bytes)" in str(info.value), (layout, str(info.value))
        assert "EOFError" not in str(info.value)
    blank = tmp_path / "model.yaml"
    blank.write_text("# taming config\n\n", encoding="utf-8")
    with pytest.raises(CorruptWeightsError) as info:
        load_vqgan(blank, goods.vq_ckpt)
    assert "the YAML file is empty" in str(info.value) and "NoneType" not in str(info.value)


def test_a_broken_link_says_where_it_points(goods: Goods, tmp_path: Path) -> None:
    link = tmp_path / "open_clip_pytorch_model.bin"
    link.symlink_to(tmp_path / "blobs" / ("0" * 64))
    with pytest.raises(MissingWeightsError, match=r"is a link to .*, which does not exist") as info:
        load_clip(link, model_cfg=TOY)
    assert str(link) in str(info.value)


def test_crafted_but_valid_files_load(goods: Goods, tmp_path: Path) -> None:
    """What real files hold beside their weights (pickled classes, containers) still loads."""
    od = Build(Call(Global("collections", "OrderedDict")), {"_metadata": {"": {"version": 1}}})
    state = Call(Global("collections", "OrderedDict"), [list(kv) for kv in goods.vq_state.items()])
    lightning = _lightning(
        state,
        callbacks={Global("pytorch_lightning.callbacks", "ModelCheckpoint"): {"best_model_score": None}},
        hyper_parameters=Build(New(Global("pytorch_lightning.utilities", "AttributeDict")), {"lr": 1e-4}),
        extra=od,
    )
    vq = load_vqgan(goods.vq_yaml, save(lightning, tmp_path / "last.ckpt"))
    assert torch.equal(vq.codebook, goods.vq_state["quantize.embedding.weight"])
    train = {
        "g_ema": goods.g_ema,
        "args": Build(New(Global("argparse", "Namespace")), {"size": 8, "lr": 0.002}),
    }
    for legacy in (False, True):
        sg = load_stylegan2(save(train, tmp_path / f"train-{legacy}.pt", legacy=legacy))
        assert torch.equal(sg.style[1].weight, goods.g_ema["style.1.weight"])
    clip = load_clip(
        scripted(_tree(goods.clip_state), tmp_path / "ViT-B-32.pt"), model_cfg=TOY, openai_sha256=None
    )
    assert torch.equal(clip.model.visual.proj, goods.clip_state["visual.proj"])


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux /proc")
def test_files_that_promise_huge_models_allocate_nothing(goods: Goods, tmp_path: Path) -> None:
    """Keys (StyleGAN2) or a yaml (VQGAN) that describe gigabytes are refused before anything is built."""
    g = StyleGAN2Generator(size=8, style_dim=512, n_mlp=1, channel_multiplier=1, channel_max=16)
    g_ema = dict(g.state_dict())
    g_ema |= {f"style.{i}.weight": torch.zeros(1, 1) for i in range(2, 2002)}  # 2,000 layers of 1 MiB
    sg = tmp_path / "sg.pt"
    torch.save({"g_ema": g_ema}, sg)
    config = copy.deepcopy(toy_yaml())
    config["model"]["params"]["ddconfig"] |= {"ch": 1024, "num_res_blocks": 8}  # gigabytes of weights
    big_yaml = tmp_path / "big.yaml"
    big_yaml.write_text(yaml.safe_dump(config), encoding="utf-8")
    code = (
        "import sys\n"
        "from engine.models.stylegan2 import load_stylegan2\n"
        "from engine.models.vqgan import load_vqgan\n"
        "from spooky.errors import CheckpointMismatchError\n"
        "def hwm():\n"
        "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "before = hwm()\n"
        "for load in (lambda: load_stylegan2(sys.argv[1]), lambda: load_vqgan(sys.argv[2], sys.argv[3])):\n"
        "    try:\n"
        "        load()\n"
        "    except CheckpointMismatchError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('loaded')\n"
        "print((hwm() - before) // 1024)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    args = [sys.executable, "-c", code, str(sg), str(big_yaml), str(goods.vq_ckpt)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    grew_mib = int(out.stdout.split()[-1])
    assert grew_mib < 150, f"refusing the files grew the peak RSS by {grew_mib} MiB"


def test_the_digest_check_comes_first_for_a_torchscript_archive(goods: Goods, tmp_path: Path) -> None:
    """With OpenAI's digest required (the default), a crafted archive is refused before it is read."""
    path = scripted(Call(Global("__torch__.model", "CLIP"), 1), tmp_path / "ViT-B-32.pt")
    with pytest.raises(CorruptWeightsError, match=r"not OpenAI's ViT-B-32\.pt"):
        load_clip(path, model_cfg=TOY)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(CorruptWeightsError, match="without module weights"):
        load_clip(path, model_cfg=TOY, openai_sha256=digest)  # its own digest: read, and refused
