"""Give memory that freed tensors leave in the C heap back to the operating system (glibc).

Local learning frees each module's activations before the next module runs, but on CPU the
memory goes back to glibc's heap, not to the system: fragmentation keeps the heap at its
high-water mark, so the process's resident memory (what an OOM killer and a user's ``top`` see)
keeps most of the saving from showing. ``malloc_trim`` returns every whole free page; calling it
when a module's graph has been freed makes the operating system see the live-tensor saving.

Elsewhere (macOS, musl, Windows) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None


def trim() -> None:
    """Return the heap's free pages to the operating system, if the C library can."""
    malloc_trim = _malloc_trim()
    if malloc_trim is not None:
        malloc_trim(0)
