"""Keep freed host memory for reuse while a render runs on the CPU.

glibc's malloc serves every block above its mmap threshold (32 MiB at most) with a fresh `mmap`
and gives it back with `munmap` on free. A stage-2 step on the CPU allocates and frees its
activations (gigabytes, in blocks of hundreds of MiB) every step, so without this each step pays
the kernel to map and zero them again: millions of page faults and seconds of kernel time per
decoder forward + backward (docs/operators.md has the figures).

`reuse_freed_memory()` makes malloc take big blocks from its heap (`M_MMAP_MAX` 0) and keep what
is freed (`M_TRIM_THRESHOLD` -1: never trim) while a render runs, so from the second step on
the step reuses its own pages: no page faults, no kernel time. When the last render ends, glibc's
documented defaults come back and `malloc_trim` hands the freed memory back to the system, so
an idle engine does not keep a job's peak. PyTorch's CUDA allocator caches device memory the
same way; this does it for the host. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import threading
from collections.abc import Iterator

# mallopt parameters (glibc's malloc.h) and their documented defaults.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536

_lock = threading.Lock()
_active = 0


def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def supported() -> bool:
    """Whether this process's malloc can be told to keep freed memory (glibc)."""
    return _LIBC is not None


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[None]:
    """Within the block (and any block nested or running beside it), freed host memory is kept for reuse."""
    global _active
    if not enabled or _LIBC is None:
        yield
        return
    with _lock:
        if _active == 0:
            _LIBC.mallopt(_M_MMAP_MAX, 0)
            _LIBC.mallopt(_M_TRIM_THRESHOLD, -1)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                _LIBC.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM_THRESHOLD)
                _LIBC.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
                _LIBC.malloc_trim(0)
