"""CLIP through open_clip's factory, with weights read from a local file only.

The weights are loaded by us (restricted unpickler or safetensors, then a strict state-dict copy) so
that a missing, corrupt or wrong file is one of our typed errors naming the file; open_clip is never
given a `pretrained` tag, so nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from engine.models.checkpoints import InertObject, load_torch_file, load_torchscript_data
from engine.models.clip_files import find_clip_files
from engine.models.clip_tokens import check_prompt_tokens
from engine.models.digests import DigestRecords
from engine.models.file_kinds import check_model_file, is_torchscript
from engine.models.registry import OPENAI_VIT_B_32_SHA256
from engine.models.state_dicts import check_state_dict, describe_contents, load_strict
from spooky.errors import (
    CorruptWeightsError,
    InvalidSizeError,
    MissingWeightsError,
)

FETCH_HINT = "run `spooky weights fetch clip_vit_b_32` (or set models.clip in config.toml to the file)"
# Keys OpenAI's own state dicts carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
# Tensor attributes of OpenAI's scripted modules that are no weights (the causal text mask).
_TORCHSCRIPT_NON_WEIGHTS = ("attn_mask",)
TEXT_CACHE_SIZE = 256

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> SimpleTokenizer:
    # Building a tokenizer reads the whole BPE merges file: every model with this context shares one.
    return SimpleTokenizer(context_length=context_length)


class ClipModel:
    """A frozen CLIP in eval mode: image and text embeddings plus prompt checks."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.float().to(self.device).eval().requires_grad_(False)
        size = model.visual.image_size
        self.image_size: int = int(size[0] if isinstance(size, tuple | list) else size)
        self.embed_dim: int = int(model.text_projection.shape[1])
        self.context_length: int = int(model.context_length)
        self.tokenizer = _tokenizer(self.context_length)
        self.mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(open_clip.OPENAI_DATASET_STD, device=self.device).view(1, 3, 1, 1)
        self._text_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.text_cache_hits = 0

    @property
    def max_prompt_tokens(self) -> int:
        return self.context_length - 2  # start and end tokens take two places

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> CLIP's input normalisation."""
        return (x01 - self.mean) / self.std

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised [N,3,S,S] -> [N,D] embeddings (not L2-normalised); differentiable in x."""
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            raise InvalidSizeError(
                f"CLIP expects [N,3,{self.image_size},{self.image_size}] images, got {tuple(x.shape)}",
                hint=f"resize cutouts to {self.image_size}x{self.image_size}",
            )
        return self.model.encode_image(x)

    def count_tokens(self, text: str) -> int:
        """BPE tokens of `text`, not counting the start and end tokens."""
        return len(self.tokenizer.encode(text))

    def check_prompt(self, text: str) -> str:
        """The stripped prompt; EmptyPromptError / PromptTooLongError when CLIP cannot take it whole."""
        return check_prompt_tokens(text, self.context_length)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """[N,D] text embeddings; each prompt is checked (never silently truncated) and cached."""
        texts = [self.check_prompt(p) for p in prompts]
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        self.text_cache_hits += sum(t in self._text_cache for t in texts)
        if todo:
            tokens = self.tokenizer(todo).to(self.device)
            for text, emb in zip(todo, self.model.encode_text(tokens), strict=True):
                self._text_cache[text] = emb
        out = []
        for text in texts:
            self._text_cache.move_to_end(text)
            out.append(self._text_cache[text])
        while len(self._text_cache) > TEXT_CACHE_SIZE:
            self._text_cache.popitem(last=False)
        return torch.stack(out)


class _DropRandomInitNotice(logging.Filter):
    # open_clip logs "No pretrained weights loaded ... initialized randomly" because we load the
    # weights ourselves right after; the notice would mislead whoever reads the log.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


def build_clip_model(
    model_name: str = "ViT-B-32", model_cfg: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """A randomly initialised open_clip CLIP: the built-in `model_name`, or `model_cfg` (toy sizes)."""
    if model_cfg is not None:
        return open_clip.CLIP(**copy.deepcopy(dict(model_cfg)))
    root = logging.getLogger()
    notice = _DropRandomInitNotice()
    root.addFilter(notice)
    try:
        # OpenAI's weights were trained with QuickGELU (open_clip's tag says so); without it the
        # embeddings are slightly wrong.
        return open_clip.create_model(model_name, pretrained=None, precision="fp32", force_quick_gelu=True)
    finally:
        root.removeFilter(notice)


def find_cached_clip(cache_dir: Path) -> Path | None:
    """The first CLIP file on disk: SpookyGAN's cache, then Hugging Face's, then OpenAI's (see
    `clip_files.find_clip_files`)."""
    found = find_clip_files(cache_dir)
    return found[0].path if found else None


_MAX_MODULE_DEPTH = 32  # far deeper than any CLIP's module tree


def _torchscript_tensors(root: Any) -> dict[str, torch.Tensor]:
    """Dotted names -> tensors of a scripted module tree read inertly (attributes, sub-modules).

    Each module is visited once, however often the pickle refers to it (a cycle, or one module
    shared a million times over, is one visit).
    """
    out: dict[str, torch.Tensor] = {}
    todo: list[tuple[Any, str, int]] = [(root, "", 0)]
    seen: set[int] = set()
    while todo:
        obj, prefix, depth = todo.pop()
        if id(obj) in seen or not isinstance(obj, InertObject) or not isinstance(obj.state, Mapping):
            continue
        seen.add(id(obj))
        if depth > _MAX_MODULE_DEPTH:
            raise ValueError(f"its module tree is nested deeper than {_MAX_MODULE_DEPTH} levels")
        for name, value in obj.state.items():
            if not isinstance(name, str):
                raise ValueError(f"a module attribute is named {name!r:.40}, not by a string")
            if isinstance(value, torch.Tensor) and name not in _TORCHSCRIPT_NON_WEIGHTS:
                out[prefix + name] = value
            elif isinstance(value, InertObject):
                todo.append((value, f"{prefix}{name}.", depth + 1))
    return out


def _read_torchscript(
    path: Path, what: str, openai_sha256: str | None, digests: DigestRecords
) -> dict[str, torch.Tensor]:
    # OpenAI's file is verified before anything in it is read: its digest is in its download URL.
    if openai_sha256 is not None:
        digest = digests.digest(path)
        if digest != openai_sha256.lower():
            raise CorruptWeightsError(
                f"CLIP file {path} is a TorchScript archive, but not OpenAI's ViT-B-32.pt: its sha256 is "
                f"{digest}, OpenAI publishes {openai_sha256.lower()}",
                hint="download it again (`spooky weights fetch clip_vit_b_32_openai`) or use open_clip's "
                "state dict; " + FETCH_HINT,
            )
    try:
        tree = load_torchscript_data(path)
        tensors = _torchscript_tensors(tree)
    except Exception as e:
        # Like torch.load, torch's archive reader raises whatever the bytes lead it to.
        raise CorruptWeightsError(
            f"{what} at {path} is a TorchScript archive whose data.pkl could not be read "
            f"({type(e).__name__}: {e})",
            hint=f"the file may be truncated; {FETCH_HINT}",
        ) from e
    if not tensors:
        raise CorruptWeightsError(
            f"{what} at {path} is a TorchScript archive without module weights in its data.pkl",
            hint=FETCH_HINT,
        )
    return tensors


def read_clip_state_dict(
    path: Path,
    *,
    openai_sha256: str | None = OPENAI_VIT_B_32_SHA256,
    digests: DigestRecords | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors of a CLIP file: open_clip's .bin/.safetensors, an OpenAI state dict, or OpenAI's
    TorchScript `ViT-B-32.pt` (its data.pkl read inertly after checking `openai_sha256`; None skips
    the check). `digests` spares re-hashing a TorchScript file that has not changed."""
    what = "CLIP weights"
    check_model_file(path, what, FETCH_HINT, expected="an open_clip ViT-B-32 state dict")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as e:
            # SafetensorError for most bad headers; the reader promises no narrower type.
            raise CorruptWeightsError(
                f"{what} at {path} is not a readable safetensors file ({type(e).__name__}: {e})",
                hint=FETCH_HINT,
            ) from e
    elif is_torchscript(path):
        obj = _read_torchscript(path, what, openai_sha256, digests or DigestRecords(None))
    else:
        obj = load_torch_file(path, what=what, fetch_hint=FETCH_HINT)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptWeightsError(
            f"{what} at {path} hold no CLIP state dict: {describe_contents(obj)}", hint=FETCH_HINT
        )
    sd = check_state_dict(obj, what=what, path=path, hint=FETCH_HINT)
    return {k.removeprefix("module."): v for k, v in sd.items() if k not in _OPENAI_EXTRA_KEYS}


def load_clip(
    path: Path | None,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    *,
    model_name: str = "ViT-B-32",
    model_cfg: Mapping[str, Any] | None = None,
    openai_sha256: str | None = OPENAI_VIT_B_32_SHA256,
    digests: DigestRecords | None = None,
) -> ClipModel:
    """CLIP with weights from `path` (or the first one `find_cached_clip` finds); never downloads.

    `openai_sha256` is the digest a TorchScript file must have (OpenAI's); None skips that check.
    `digests` (the cache's records) spares re-hashing a file that has not changed since.
    """
    if path is None:
        found = find_cached_clip(Path(cache_dir).expanduser()) if cache_dir is not None else None
        if found is None:
            where = f"in {cache_dir}" if cache_dir is not None else "(no path and no cache directory given)"
            raise MissingWeightsError(f"CLIP ViT-B-32 weights not found {where}", hint=FETCH_HINT)
        path = found
    path = Path(path).expanduser()
    state_dict = read_clip_state_dict(path, openai_sha256=openai_sha256, digests=digests)
    model = build_clip_model(model_name, model_cfg)
    load_strict(
        model,
        state_dict,
        what=f"CLIP weights ({model_name if model_cfg is None else 'custom config'})",
        path=path,
        hint=FETCH_HINT,
    )
    log.info("CLIP %s loaded from %s", model_name, path)
    return ClipModel(model, device)
