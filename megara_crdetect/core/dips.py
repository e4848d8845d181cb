"""Noise dips: isolated pixels where median2d - min2d is large because min2d is low.

The MM diagram of the median measures ``median2d - min2d``.  A pixel hit in
two of three exposures raises ``median2d``; a pixel where one exposure falls
a few sigmas below its level by noise lowers ``min2d`` and gives the same
diagram value.  The diagram cannot tell them apart (the simulations reproduce
the dips, and the boundary lets about one per column through), but the
neighbours can: a cosmic-ray pair puts ``median2d`` further above the local
level than ``min2d`` falls below it; a dip does the opposite.

Only single-pixel detections whose eight neighbours lie inside the image and
are quiet (the exposures agree there within ``QUIET_SIGMA`` noise sigmas, so
no cosmic ray raises them) are judged.  The local level is the median of the
four means of opposite neighbours (the linear interpolations through the
pixel along the row, the column and both diagonals), which follows a
gradient or a line flank where the plain median of the neighbours would not.
"""

from __future__ import annotations

import numpy as np

from .masks import label_groups
from .stack import StackStats

__all__ = ["QUIET_SIGMA", "noise_dips"]

#: A neighbourhood is quiet when (max2d - min2d) / noise stays below this at every neighbour.
QUIET_SIGMA = 5.0

#: neighbour k and neighbour 7 - k are opposite through the pixel
_NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])


def noise_dips(candidates: np.ndarray, stats: StackStats, noise: np.ndarray,
               quiet_sigma: float = QUIET_SIGMA) -> np.ndarray:
    """Candidates that are noise dips of ``min2d`` rather than raised medians.

    Parameters
    ----------
    candidates : ndarray of bool, shape (ny, nx)
        Pixels flagged on the median; groups of more than one pixel
        (8-connected) are never dips.
    stats : StackStats
        Stack statistics (``median2d``, ``min2d``, ``max2d``).
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma (electrons).
    quiet_sigma : float
        Largest ``(max2d - min2d) / noise`` of a quiet neighbour.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        Isolated candidates in a quiet neighbourhood whose ``median2d`` stands
        less above the local level than ``min2d`` falls below it.
    """
    labels, n = label_groups(candidates)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    single = candidates & (sizes[labels] == 1)
    single[[0, -1], :] = False
    single[:, [0, -1]] = False
    ys, xs = np.nonzero(single)
    out = np.zeros(candidates.shape, dtype=bool)
    if ys.size == 0:
        return out
    yy, xx = ys[:, None] + _NEIGHBOURS[:, 0], xs[:, None] + _NEIGHBOURS[:, 1]
    around = stats.median2d[yy, xx]
    level = np.median(0.5 * (around[:, :4] + around[:, :3:-1]), axis=1)
    spread = (stats.max2d[yy, xx] - stats.min2d[yy, xx]) / noise[yy, xx]
    quiet = spread.max(axis=1) < quiet_sigma
    median, low = stats.median2d[ys, xs], stats.min2d[ys, xs]
    dip = quiet & (median - level < level - low)
    out[ys[dip], xs[dip]] = True
    return out
