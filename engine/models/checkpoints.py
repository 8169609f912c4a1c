"""Load torch checkpoint files without ever running code from them.

`torch.load(weights_only=True)` refuses files that pickle a Python object it does not know, such as
the `argparse.Namespace` in rosinality's training checkpoints or Lightning's hyper-parameter
containers in taming's `last.ckpt`. We only need the tensors in those files. So, when the strict
load refuses, we unpickle again with an unpickler whose `find_class` hands out only what torch's
own weights-only loader allows (tensor rebuild functions, storages, plain containers) and replaces
every other class by an inert stand-in that records its arguments and state and runs nothing:
the named module is never imported and none of its code is called.
"""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path
from typing import Any

import torch

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


_inert_pickle = types.ModuleType("spooky_inert_pickle")
_inert_pickle.Unpickler = _InertUnpickler  # type: ignore[attr-defined]
_inert_pickle.load = pickle.load  # type: ignore[attr-defined]  # legacy (non-zip) files: refused below


def load_torch_file(path: str | Path, *, what: str, fetch_hint: str, map_location: str = "cpu") -> Any:
    """Load `path` with torch's restricted unpickler; unknown classes become `InertObject`s.

    `what` names the file for messages ("StyleGAN2 checkpoint"); `fetch_hint` says how to get it.
    Raises MissingWeightsError / CorruptWeightsError naming the file.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what} not found: {p}", hint=fetch_hint)
    try:
        try:
            return torch.load(p, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError:
            if not zipfile.is_zipfile(p):
                raise
            return torch.load(p, map_location=map_location, weights_only=False, pickle_module=_inert_pickle)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as e:
        raise CorruptWeightsError(
            f"{what} at {p} could not be read as a torch checkpoint ({type(e).__name__}: {e})",
            hint=f"the file may be truncated or of another format; {fetch_hint}",
        ) from e
