"""Load torch checkpoint files without ever running code from them.

`torch.load(weights_only=True)` refuses files that pickle a Python object it does not know, such as
the `argparse.Namespace` in rosinality's training checkpoints or Lightning's hyper-parameter
containers in taming's `last.ckpt`. We only need the tensors in those files. So, when the strict
load refuses, we unpickle again with an unpickler whose `find_class` hands out only what torch's
own weights-only loader allows (tensor rebuild functions, storages, plain containers) and replaces
every other class by an inert stand-in that records its arguments and state and runs nothing:
the named module is never imported and none of its code is called. Like torch's loader, it lets a
file set state only on tensors, OrderedDicts and the stand-ins.

Whatever a file holds, reading it ends in the file's data or in a typed error naming the file.

The same unpickler reads pre-1.6 (non-zip) files and the `data.pkl` of a TorchScript archive
(OpenAI's `ViT-B-32.pt`), whose code is never compiled. Zip files are memory-mapped, so tensors
that are never used (Adam moments in a training checkpoint) are never read into memory.
"""

from __future__ import annotations

import os
import pickle
import types
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch

from engine.models.file_kinds import check_model_file, is_torchscript
from spooky.errors import CorruptWeightsError


class InertObject(dict):
    """Stands in for a class the checkpoint names but we do not trust: holds data, runs nothing.

    A pickle makes one either by calling the class (`args`, `kwargs`) or through `__new__` alone
    (TorchScript modules); either way `state` is what the file set on it, None when it set nothing.
    """

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = MappingProxyType({})
    state: Any = None

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


class _InertUnpickler(pickle._Unpickler):
    """Python's own unpickler with torch's allow-list, inert stand-ins, and torch's rule for BUILD.

    The pure-Python unpickler, because its BUILD can be replaced: a pickle may set state on any
    object on its stack, and on a function or a class that means rewriting torch (a function's
    `__defaults__`, a class attribute) for the rest of the process.
    """

    dispatch: ClassVar[dict[int, Any]] = dict(pickle._Unpickler.dispatch)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._allowed = _allowed_globals()  # once per file, not once per pickled global

    def find_class(self, module: str, name: str) -> Any:
        qualified = f"{module}.{name}"
        found = self._allowed.get(qualified)
        return found if found is not None else _inert_class(qualified)

    def load_build(self) -> None:
        # The objects torch's weights-only unpickler lets a file set state on, plus our stand-ins.
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, InertObject):
            inst.__setstate__(state)
        elif type(inst) is OrderedDict:  # a state dict's `_metadata`
            inst.__dict__.update(state)
        elif type(inst) is torch.Tensor:  # legacy tensors
            inst.set_(*state)
        elif type(inst) is torch.nn.Parameter:
            inst.__setstate__(state)
        else:
            name = getattr(inst, "__qualname__", None)
            target = f"{type(inst).__name__} {name}" if isinstance(name, str) else type(inst).__name__
            raise pickle.UnpicklingError(f"the file sets the state of {target}, which no checkpoint does")

    dispatch[pickle.BUILD[0]] = load_build


def _inert_load(file: Any, **kwargs: Any) -> Any:
    # torch reads a legacy file's header records (magic number, sys info, storage keys) with
    # `pickle_module.load`: those go through the inert unpickler too.
    return _InertUnpickler(file, **kwargs).load()


_inert_pickle = types.ModuleType("spooky_inert_pickle")
_inert_pickle.Unpickler = _InertUnpickler  # type: ignore[attr-defined]
_inert_pickle.load = _inert_load  # type: ignore[attr-defined]


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
    Raises MissingWeightsError / CorruptWeightsError naming the file, whatever the bytes are.
    """
    p = Path(path).expanduser()
    check_model_file(p, what, fetch_hint)
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
            # A global torch does not allow (a training checkpoint's Namespace, Lightning's
            # containers). A TorchScript archive never gets here: torch refuses it in weights-only
            # mode with a RuntimeError instead of handing it to torch.jit.load.
            return torch.load(
                p, map_location=map_location, weights_only=False, pickle_module=_inert_pickle, mmap=mmap
            )
    except Exception as e:
        # torch's readers raise whatever the bytes lead them to (AttributeError for a storage
        # type that is not one, TypeError for a rebuild call with the wrong arguments, ...).
        raise CorruptWeightsError(
            f"{what} at {p} could not be read as a torch checkpoint ({type(e).__name__}: {e})",
            hint=f"the file may be truncated or of another format; {fetch_hint}",
        ) from e
