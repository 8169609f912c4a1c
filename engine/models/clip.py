"""CLIP through open_clip's factory, with weights read from a local file only.

The weights are loaded by us (restricted unpickler or safetensors, then a strict state-dict copy) so
that a missing, corrupt or wrong file is one of our typed errors naming the file; open_clip is never
given a `pretrained` tag, so nothing is downloaded.
"""

from __future__ import annotations

import copy
import functools
import logging
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import SimpleTokenizer

from engine.models.checkpoints import load_torch_file
from engine.models.state_dicts import load_strict
from engine.models.weights import REGISTRY
from spooky.errors import (
    CorruptWeightsError,
    EmptyPromptError,
    InvalidSizeError,
    MissingWeightsError,
    PromptTooLongError,
)

FETCH_HINT = "run `spooky weights fetch clip_vit_b_32` (or set models.clip in config.toml to the file)"
#: Where open_clip's own download of the openai ViT-B/32 weights lands inside a Hugging Face cache.
_OPEN_CLIP_HF_DIR = "models--timm--vit_base_patch32_clip_224.openai"
_OPEN_CLIP_HF_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# Keys OpenAI's own state dicts carry besides the weights.
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
TEXT_CACHE_SIZE = 256

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> SimpleTokenizer:
    # Reading the BPE merges takes a quarter of a second; every model with this context shares one.
    return SimpleTokenizer(context_length=context_length)


def check_prompt_tokens(text: str, context_length: int) -> str:
    """`ClipModel.check_prompt` with the tokenizer alone (no weights): the engine checks submits
    with it while the models are still loading."""
    stripped = text.strip()
    if not stripped:
        raise EmptyPromptError("the prompt is empty", hint="describe the face, e.g. 'dracula pale fangs'")
    n = len(_tokenizer(context_length).encode(stripped))
    limit = context_length - 2  # start and end tokens take two places
    if n > limit:
        raise PromptTooLongError(
            f"the prompt is {n} CLIP tokens long; the limit is {limit}", hint="shorten the prompt"
        )
    return stripped


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
    """Our registry file in `cache_dir`, else open_clip's own download of the openai weights there."""
    ours = cache_dir / REGISTRY["clip_vit_b_32"].files[0].filename
    if ours.is_file():
        return ours
    for name in _OPEN_CLIP_HF_FILES:
        found = sorted((cache_dir / _OPEN_CLIP_HF_DIR / "snapshots").glob(f"*/{name}"))
        if found:
            return found[-1]
    return None


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in zf.namelist())


def read_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of an open_clip / OpenAI CLIP state dict (.pt/.bin, restricted unpickler; or .safetensors)."""
    what = "CLIP weights"
    if not path.is_file():
        raise MissingWeightsError(
            f"{what} not found: {path} (expected an open_clip ViT-B-32 state dict)", hint=FETCH_HINT
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as e:
            raise CorruptWeightsError(
                f"{what} at {path} is not a readable safetensors file ({e})", hint=FETCH_HINT
            ) from e
    elif _is_torchscript(path):
        raise CorruptWeightsError(
            f"{what} at {path} is a TorchScript archive (OpenAI's original ViT-B-32.pt); "
            "SpookyGAN reads plain state dicts only, without running TorchScript",
            hint=FETCH_HINT,
        )
    else:
        obj = load_torch_file(path, what=what, fetch_hint=FETCH_HINT)
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CorruptWeightsError(
            f"{what} at {path} hold no state dict of tensors (found {type(obj).__name__})", hint=FETCH_HINT
        )
    sd = {k.removeprefix("module."): v for k, v in obj.items() if k not in _OPENAI_EXTRA_KEYS}
    return sd


def load_clip(
    path: Path | None,
    device: str | torch.device = "cpu",
    cache_dir: Path | None = None,
    *,
    model_name: str = "ViT-B-32",
    model_cfg: Mapping[str, Any] | None = None,
) -> ClipModel:
    """CLIP with weights from `path` (or the cached openai file in `cache_dir`); never downloads."""
    if path is None:
        found = find_cached_clip(Path(cache_dir).expanduser()) if cache_dir is not None else None
        if found is None:
            where = f"in {cache_dir}" if cache_dir is not None else "(no path and no cache directory given)"
            raise MissingWeightsError(f"CLIP ViT-B-32 weights not found {where}", hint=FETCH_HINT)
        path = found
    path = Path(path).expanduser()
    state_dict = read_clip_state_dict(path)
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
