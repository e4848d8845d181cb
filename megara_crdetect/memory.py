"""The C allocator of the process (glibc): one malloc arena for every thread, freed memory given back.

The detection's threads (the exposure-difference model, the simulations,
L.A.Cosmic's tiles and OpenMP threads) free most of what they allocate.
glibc gives each thread an arena of its own (up to 8 per core), and the
memory freed in one arena is not reused by the others nor given back to the
system: on a 4112 x 4096 x 3 run without figures the peak resident memory
fell from ~2000 to ~1770 MB with one arena, at the same wall time.
:func:`share_one_arena` makes the threads created from then on share the main
arena, where a block freed by any thread serves the next request.

Blocks freed inside the arena (a step's temporaries below the ones it keeps)
stay resident too; :func:`releasing_between_steps` gives their pages back to
the system (``malloc_trim``) whenever a long step ends, so that the next
step's peak starts from what is really held: ~1600 MB on the same run, same
wall time (docs/speed.md, Memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import time
from collections.abc import Callable

__all__ = ["share_one_arena", "release_free_memory", "releasing_between_steps"]

_log = logging.getLogger(__name__)
#: ``mallopt`` parameter of the number of arenas (glibc's malloc.h).
M_ARENA_MAX = -8


@functools.lru_cache(maxsize=1)
def _glibc():
    """The C library if it is glibc, else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl, macOS: no such function)
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def share_one_arena() -> bool:
    """Limit glibc malloc to one arena; True if done (False: not glibc, nothing changed).

    Process-wide and harmless for correctness: it only changes where freed
    blocks are kept.  Threads that already have an arena keep it.
    """
    libc = _glibc()
    if libc is None:
        return False
    done = libc.mallopt(M_ARENA_MAX, 1) == 1
    if not done:  # pragma: no cover - glibc refuses only unknown parameters
        _log.debug("mallopt(M_ARENA_MAX, 1) refused")
    return done


def release_free_memory() -> None:
    """Give the pages of freed malloc blocks back to the system (glibc's ``malloc_trim``; else nothing)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def releasing_between_steps(progress: Callable[[str, int, int], None] | None, *, interval: float = 1.0
                            ) -> Callable[[str, int, int], None]:
    """``progress(step, done, total)`` that also calls :func:`release_free_memory` when a step ends.

    A step ends when ``done == total``; every report of ``writing products``
    counts (each product written frees its arrays).  At most once per
    ``interval`` seconds.  ``progress`` None: only the release; a callable
    made here is returned as it is.
    """
    if getattr(progress, "releases_memory", False):
        return progress
    last = [float("-inf")]

    def report(step: str, done: int, total: int) -> None:
        if progress is not None:
            progress(step, done, total)
        now = time.monotonic()
        if (done >= total or step == "writing products") and now - last[0] >= interval:
            release_free_memory()
            last[0] = now

    report.releases_memory = True
    return report
