"""Load torch checkpoint files without ever running code from them.

`torch.load(weights_only=True)` refuses files that pickle a Python object it does not know, such as
the `argparse.Namespace` in rosinality's training checkpoints or Lightning's hyper-parameter
containers in taming's `last.ckpt`. We only need the tensors in those files. So, when the strict
load refuses, we unpickle again with an unpickler whose `find_class` hands out only what torch's
own weights-only loader allows (tensor rebuild functions, storages, plain containers) and replaces
every other class by an inert stand-in that records its arguments and state and runs nothing:
the named module is never imported and none of its code is called.

The same unpickler reads pre-1.6 (non-zip) files and the `data.pkl` of a TorchScript archive
(OpenAI's `ViT-B-32.pt`), whose code is never compiled. Zip files are memory-mapped, so tensors
that are never used (Adam moments in a training checkpoint) are never read into memory.
"""

from __future__ import annotations

import os
import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

from engine.models.file_kinds import is_torchscript, looks_like_html_bytes
from spooky.errors import CorruptWeightsError, MissingWeightsError


class InertObject(dict):
    """Stands in for a class the checkpoint names but we do not trust: holds data, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self.args = args
        self.kwargs = kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {type(self).__module__}.{type(self).__qualname__}>"


def _inert_class(qualified: str) -> type:
    module, _, name = qualified.rpartition(".")
    return type(name, (InertObject,), {"__module__": module, "__qualname__": name})


def _allowed_globals() -> dict[str, Any]:
    # torch's own allow-list for weights_only loads, plus anything registered as a safe global.
    from torch import _weights_only_unpickler as wo

    allowed = dict(wo._get_allowed_globals())
    allowed.update(wo._get_user_allowed_globals())
    return allowed


class _InertUnpickler(pickle.Unpickler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _allowed_globals()  # once per file, not once per pickled global

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        found = self._allowed.get(qualified)
        return found if found is not None else _inert_class(qualified)


def _inert_load(file: Any, **kwargs: Any) -> Any:
    # torch reads a legacy file's header records (magic number, sys info, storage keys) with
    # `pickle_module.load`: those go through the inert unpickler too.
    return _InertUnpickler(file, **kwargs).load()


_inert_pickle = types.ModuleType("spooky_inert_pickle")
_inert_pickle.Unpickler = _InertUnpickler  # type: ignore[attr-defined]
_inert_pickle.load = _inert_load  # type: ignore[attr-defined]


def looks_like_html(path: Path) -> bool:
    """True when the file starts like a web page (what a dead mirror or a login wall returns)."""
    with open(path, "rb") as f:
        return looks_like_html_bytes(f.read(512))


def html_error(path: Path, what: str, fetch_hint: str) -> CorruptWeightsError:
    size = path.stat().st_size
    return CorruptWeightsError(
        f"{what} at {path} is a web page ({size} bytes of HTML), not the model file: "
        "the mirror it came from returned an error, login or quota page",
        hint=f"delete it and download the file again; {fetch_hint}",
    )


def load_torchscript_data(path: str | Path) -> Any:
    """The pickled module tree of a TorchScript archive, read from its `data.pkl` only.

    Every scripted class comes back as an `InertObject` whose `state` holds its attributes
    (parameters, buffers, sub-modules); the archive's `code/` is never read, let alone compiled.
    Storages are memory-mapped from the file.
    """
    p = Path(path)
    reader = torch._C.PyTorchFileReader(str(p))
    storage = torch.UntypedStorage.from_file(str(p), False, os.path.getsize(p))
    # torch's own zip reader (storage offsets, byte order, record prefix); `torch.load` itself
    # refuses TorchScript archives or hands them to `torch.jit.load`, which compiles the code.
    return torch.serialization._load(reader, "cpu", _inert_pickle, overall_storage=storage)


def load_torch_file(path: str | Path, *, what: str, fetch_hint: str, map_location: str = "cpu") -> Any:
    """Load `path` with torch's restricted unpickler; unknown classes become `InertObject`s.

    `what` names the file for messages ("StyleGAN2 checkpoint"); `fetch_hint` says how to get it.
    Raises MissingWeightsError / CorruptWeightsError naming the file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what} not found: {p}", hint=fetch_hint)
    if looks_like_html(p):
        raise html_error(p, what, fetch_hint)
    if is_torchscript(p):
        # Never handed to torch.load: with weights_only=False it would run torch.jit.load.
        raise CorruptWeightsError(
            f"{what} at {p} is a TorchScript archive (a scripted model such as OpenAI's CLIP "
            "ViT-B-32.pt), not this kind of checkpoint",
            hint=fetch_hint,
        )
    # mmap: only the tensors that are used are ever read (not a training checkpoint's optimizer
    # state). Legacy (pre-1.6) files cannot be mapped and are read whole.
    mmap = zipfile.is_zipfile(p)
    try:
        try:
            return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
        except pickle.UnpicklingError:
            return torch.load(
                p, map_location=map_location, weights_only=False, pickle_module=_inert_pickle, mmap=mmap
            )
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CorruptWeightsError(
            f"{what} at {p} could not be read as a torch checkpoint ({type(e).__name__}: {e})",
            hint=f"the file may be truncated or of another format; {fetch_hint}",
        ) from e
