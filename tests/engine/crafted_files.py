"""Write model files whose pickles say anything a crafted file can say, in the published layouts.

`save(obj, path)` is `torch.save` (real storages, real zip or legacy layout) with a pickler that
also understands the markers below, so a test can write a call of any named function, a BUILD on
any object or a persistent id of any shape without the named modules existing.
"""

from __future__ import annotations

import pickle
import types
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import torch


class Global:
    """A reference to `module.name`, which need not exist (GLOBAL)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class Call:
    """`func(*args)` at load time (REDUCE)."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args


class New:
    """`cls.__new__(cls, *args)` at load time (NEWOBJ), as TorchScript writes its modules."""

    def __init__(self, cls: Any, *args: Any) -> None:
        self.cls, self.args = cls, args


class Build:
    """`obj` with `state` set on it at load time (BUILD)."""

    def __init__(self, obj: Any, state: Any) -> None:
        self.obj, self.state = obj, state


class PersistentId:
    """A persistent id (BINPERSID) of any value: what torch resolves to a storage."""

    def __init__(self, pid: Any) -> None:
        self.pid = pid


class Raw:
    """Opcodes written as they are."""

    def __init__(self, data: bytes) -> None:
        self.data = data


class _Pickler(pickle._Pickler):  # type: ignore[name-defined]
    dispatch: ClassVar[dict[type, Any]] = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def _global(self, obj: Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    def _call(self, obj: Call) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def _new(self, obj: New) -> None:
        self.save(obj.cls)
        self.save(obj.args)
        self.write(pickle.NEWOBJ)
        self.memoize(obj)

    def _build(self, obj: Build) -> None:
        self.save(obj.obj)
        self.save(obj.state)
        self.write(pickle.BUILD)
        self.memoize(obj)  # a module shared by two parents is pickled once, then referred to

    def _persistent(self, obj: PersistentId) -> None:
        self.save(obj.pid)
        self.write(pickle.BINPERSID)

    def _raw(self, obj: Raw) -> None:
        self.write(obj.data)

    dispatch[Global] = _global
    dispatch[Call] = _call
    dispatch[New] = _new
    dispatch[Build] = _build
    dispatch[PersistentId] = _persistent
    dispatch[Raw] = _raw


_crafting = types.ModuleType("crafting_pickle")
_crafting.Pickler = _Pickler  # type: ignore[attr-defined]
_crafting.dump = lambda obj, f, protocol=2: _Pickler(f, protocol).dump(obj)  # type: ignore[attr-defined]


def save(obj: Any, path: Path, *, legacy: bool = False) -> Path:
    """`torch.save(obj, path)`, markers included; `legacy` writes the pre-1.6 (non-zip) format."""
    torch.save(obj, path, pickle_module=_crafting, _use_new_zipfile_serialization=not legacy)
    return path


def rewrite_zip(src: Path, dest: Path, *, replace: dict[str, bytes] | None = None, drop: str = "") -> Path:
    """A copy of the zip `src` with records replaced (by name suffix) or dropped."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if drop and info.filename.endswith(drop):
                continue
            data = next((v for k, v in replace.items() if info.filename.endswith(k)), None)
            zout.writestr(info, zin.read(info) if data is None else data)
    return dest


def scripted(obj: Any, path: Path) -> Path:
    """A zip laid out like a TorchScript archive (`constants.pkl`, `code/`) whose data.pkl pickles `obj`."""
    plain = save(obj, path.with_name(path.name + ".plain"))
    with zipfile.ZipFile(plain) as zin:
        prefix = zin.namelist()[0].split("/")[0]
    with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info, zin.read(info))
        zout.writestr(f"{prefix}/constants.pkl", pickle.dumps((), protocol=2))
        zout.writestr(f"{prefix}/code/__torch__/model.py", "raise SystemExit('TorchScript code ran')\n")
    plain.unlink()
    return path


def module(name: str, state: Any) -> Build:
    """A scripted module as TorchScript pickles one: `__torch__.<name>` made by NEWOBJ, then BUILD."""
    return Build(New(Global("__torch__.model", name)), state)
