"""The C allocator's settings and the release of freed memory between steps (megara_crdetect/memory.py)."""

from __future__ import annotations

import sys

import pytest

from megara_crdetect import memory

glibc = pytest.mark.skipif(memory._glibc() is None, reason="glibc only (mallopt, malloc_trim)")


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:"))


@glibc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_release_gives_freed_blocks_back_to_the_system():
    blocks = [bytearray(100_000) for _ in range(3000)]  # 300 MB of blocks below glibc's first mmap threshold
    for b in blocks:
        b[::4096] = b"x" * len(b[::4096])  # touch every page
    pin = bytearray(100_000)  # the heap's top stays in use: only malloc_trim can free the blocks below
    del blocks
    before = _rss_mb()
    memory.release_free_memory()
    after = _rss_mb()
    assert before - after > 200, (before, after)
    del pin


@glibc
def test_one_arena_is_accepted():
    assert memory.share_one_arena() is True


def test_progress_is_passed_on_and_memory_released_when_a_step_ends(monkeypatch):
    released, seen = [], []
    monkeypatch.setattr(memory, "release_free_memory", lambda: released.append(1))
    report = memory.releasing_between_steps(lambda *a: seen.append(a), interval=0.0)
    for args in [("model", 0, 1), ("model", 1, 1), ("simulations", 3, 65), ("writing products", 2, 10)]:
        report(*args)
    assert seen == [("model", 0, 1), ("model", 1, 1), ("simulations", 3, 65), ("writing products", 2, 10)]
    assert len(released) == 2  # the end of "model" and a product written
    assert memory.releasing_between_steps(report) is report  # not wrapped twice
    memory.releasing_between_steps(None, interval=0.0)("masks", 2, 2)
    assert len(released) == 3
