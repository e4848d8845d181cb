"""Per-pixel statistics of a stack of exposures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .sortnet import by_rows, select

__all__ = ["StackStats", "stack_statistics", "low_mean", "median_of_stack"]


@dataclass(frozen=True)
class StackStats:
    """Per-pixel statistics of N exposures (electrons, float32).

    Attributes
    ----------
    min2d : ndarray
        Mean of the ``N - n_c`` lowest values (the plain minimum for N = 3,
        n_c = 2): the estimate that stays clean when ``n_c`` exposures are hit.
    max2d, median2d, mean2d : ndarray
        Maximum, median (mean of the two middle values for even N) and mean.
    """

    min2d: np.ndarray
    max2d: np.ndarray
    median2d: np.ndarray
    mean2d: np.ndarray


def low_mean(stack: np.ndarray, n_low: int) -> np.ndarray:
    """Mean of the ``n_low`` lowest values of each pixel of ``stack`` (N, ...), float32.

    The lowest values are selected by a sorting network and summed in
    ascending order, so the bits do not depend on how a selection happens
    to arrange them.
    """
    n = stack.shape[0]
    if not 1 <= n_low <= n:
        raise ValueError(f"n_low must be in 1..{n}, got {n_low}")
    if n_low == 1:
        return stack.min(axis=0)

    def mean_of_lowest(planes):
        lowest = select(planes, tuple(range(n_low)))
        total = lowest[0] + lowest[1]
        for plane in lowest[2:]:
            total += plane
        total /= np.float32(n_low)
        return total

    return by_rows(np.asarray(stack, dtype=np.float32), mean_of_lowest)


def median_of_stack(stack: np.ndarray) -> np.ndarray:
    """Median along the first axis (the mean of the two middle values for an even count), float32.

    np.median's values, selected by a sorting network a block of rows at a time.
    """
    n = stack.shape[0]
    if n == 3:
        a, b, c = stack
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    if n % 2:
        return by_rows(np.asarray(stack, dtype=np.float32), lambda planes: select(planes, n // 2))

    def middle(planes):
        low, high = select(planes, (n // 2 - 1, n // 2))
        total = low + high
        total /= np.float32(2)
        return total

    return by_rows(np.asarray(stack, dtype=np.float32), middle)


def stack_statistics(stack: np.ndarray, *, n_coincidences: int = 2) -> StackStats:
    """Compute min2d, max2d, median2d and mean2d of a stack.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Exposures in electrons.
    n_coincidences : int
        Number of cosmic-ray hits per pixel that the method must survive;
        ``min2d`` is the mean of the ``N - n_coincidences`` lowest values.

    Returns
    -------
    StackStats
    """
    if stack.ndim != 3 or stack.shape[0] < 2:
        raise ValueError(f"stack must have shape (N >= 2, ny, nx), got {stack.shape}")
    n = stack.shape[0]
    if not 1 <= n_coincidences < n:
        raise ValueError(f"n_coincidences must be in 1..{n - 1}, got {n_coincidences}")
    return StackStats(
        min2d=low_mean(stack, n - n_coincidences),
        max2d=stack.max(axis=0),
        median2d=median_of_stack(stack),
        mean2d=stack.mean(axis=0, dtype=np.float32),
    )


#: Exposures that differ by less than this many noise sigmas agree: a feature identical in every
#: exposure (hot pixel, bias structure) is not a cosmic ray.
AGREEMENT_SIGMA = 5.0
#: A detector feature that does not move or scale (hot pixel) stands this many noise sigmas above the
#: median of its 8 neighbours.
HOT_PIXEL_SIGMA = 10.0


def spread_sigmas(stats: StackStats, noise: np.ndarray) -> np.ndarray:
    """``(max2d - min2d) / noise``: how far the exposures disagree, in noise sigmas."""
    out = stats.max2d - stats.min2d
    out /= noise
    return out
