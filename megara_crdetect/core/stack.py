"""Per-pixel statistics of a stack of exposures."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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
    """Mean of the ``n_low`` lowest values of each pixel of ``stack`` (N, ...)."""
    n = stack.shape[0]
    if not 1 <= n_low <= n:
        raise ValueError(f"n_low must be in 1..{n}, got {n_low}")
    if n_low == 1:
        return stack.min(axis=0)
    part = np.partition(stack, n_low - 1, axis=0)[:n_low]
    return part.mean(axis=0, dtype=np.float32)


def median_of_stack(stack: np.ndarray) -> np.ndarray:
    """Median along the first axis, with a fast path for three exposures."""
    if stack.shape[0] == 3:
        a, b, c = stack
        return np.maximum(np.minimum(a, b), np.minimum(np.maximum(a, b), c))
    return np.median(stack, axis=0).astype(stack.dtype, copy=False)


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
