"""Order statistics of small neighbourhoods by sorting networks of NumPy minima and maxima.

A sorting network is a fixed list of comparators ``(i, j)``: wire ``i``
takes the minimum of the two values, wire ``j`` the maximum.  Applied to
whole arrays (one array per wire: the image shifted by each offset of the
neighbourhood) it sorts every pixel's neighbourhood at once with vectorised
``np.minimum``/``np.maximum``.  Only the comparators that lead to the wanted
rank are kept.  The value of a rank is unique, so the result is exactly
that of any other correct median or rank filter (finite values; the two
zeros ``-0.0`` and ``+0.0`` compare equal and either may come out).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

__all__ = ["batcher_network", "pruned_network", "select", "separable_median", "by_rows"]

#: Rows worked on at a time by :func:`separable_median` (its planes stay in the cache).
BLOCK_ROWS = 64


@lru_cache(maxsize=None)
def batcher_network(n: int) -> tuple[tuple[int, int], ...]:
    """Batcher's odd-even merge sort of ``n`` values: comparators ``(i, j)``, ``i < j``, min to ``i``.

    Built for the next power of two; comparators reaching past ``n`` are
    dropped (those wires hold ``+inf``, which never moves).
    """
    if n < 1:
        raise ValueError(f"a sorting network needs at least one value; got {n}")
    size = 1 << (n - 1).bit_length()
    out = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        out.append((a, b))
            k //= 2
        p *= 2
    return tuple(out)


@lru_cache(maxsize=None)
def pruned_network(n: int, ranks: int | tuple[int, ...]) -> tuple[tuple[int, int, bool, bool], ...]:
    """The comparators of :func:`batcher_network` that lead to output ``ranks`` (one or several).

    Each is ``(i, j, low, high)``: whether the minimum (wire ``i``) and the
    maximum (wire ``j``) are still needed.
    """
    wanted = {ranks} if isinstance(ranks, int) else set(ranks)
    if not wanted or not all(0 <= r < n for r in wanted):
        raise ValueError(f"rank must be in 0..{n - 1}; got {ranks}")
    needed, steps = set(wanted), []
    for i, j in reversed(batcher_network(n)):
        if i in needed or j in needed:
            steps.append((i, j, i in needed, j in needed))
            needed |= {i, j}
    return tuple(steps[::-1])


def select(wires, rank: int | tuple[int, ...]) -> np.ndarray | list[np.ndarray]:
    """Value of ``rank`` (0-based, ascending) among the arrays ``wires``, element by element.

    Parameters
    ----------
    wires : sequence of ndarray
        Arrays of one shape (views are fine: they are not written).
    rank : int or tuple of int
        0 for the minimum, ``len(wires) // 2`` for the median of an odd
        count; a tuple for several ranks at once.

    Returns
    -------
    ndarray or list of ndarray
        New arrays (or some of ``wires`` themselves when nothing moves them),
        one per rank of a tuple.
    """
    wires = list(wires)
    for i, j, low, high in pruned_network(len(wires), rank):
        a, b = wires[i], wires[j]
        wires[i] = np.minimum(a, b) if low else None
        wires[j] = np.maximum(a, b) if high else None
    return wires[rank] if isinstance(rank, int) else [wires[r] for r in rank]


def separable_median(data: np.ndarray, size: int, *, block: int = BLOCK_ROWS) -> np.ndarray:
    """Median of ``size`` values along each row, then of ``size`` of those along each column.

    astroscrappy's ``sepmedfilt<size>`` (its separable median filter): the
    pixels closer than ``size // 2`` to a side keep their input value, as in
    astroscrappy, and every other value is the same order statistic.

    Parameters
    ----------
    data : ndarray (ny, nx), float32
        Finite values.
    size : int
        Odd filter length (3 or more).
    block : int, optional
        Rows per block of work.

    Returns
    -------
    ndarray (ny, nx), float32
        A new array.
    """
    if size < 3 or size % 2 == 0:
        raise ValueError(f"the filter length must be odd and at least 3; got {size}")
    data = np.asarray(data, dtype=np.float32)
    half = size // 2
    ny, nx = data.shape
    out = data.copy()
    if ny < size or nx < size:  # no pixel is far enough from the sides
        return out
    inner = nx - 2 * half
    rows = np.empty((ny, inner), dtype=np.float32)  # the row medians
    for a in range(0, ny, block):
        part = data[a:a + block]
        rows[a:a + block] = select([part[:, d:d + inner] for d in range(size)], half)
    for a in range(half, ny - half, block):
        b = min(a + block, ny - half)
        out[a:b, half:nx - half] = select([rows[a - half + d:b - half + d] for d in range(size)], half)
    return out


def by_rows(stack: np.ndarray, fn, *, block: int = BLOCK_ROWS) -> np.ndarray:
    """``fn(list of planes) -> plane`` over a stack ``(N, ny, ...)``, a block of rows at a time (float32 out)."""
    out = np.empty(stack.shape[1:], dtype=np.float32)
    for a in range(0, stack.shape[1], block):
        out[a:a + block] = fn(list(stack[:, a:a + block]))
    return out
