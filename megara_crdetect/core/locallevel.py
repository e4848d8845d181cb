"""The local level around a pixel, from its neighbours: noise dips and raised medians.

Both functions judge a pixel of an aligned stack against the level its eight
neighbours give, where the per-pixel diagram (median2d - min2d) cannot.

Noise dips
----------
Isolated pixels where median2d - min2d is large because min2d is low.  The MM
diagram of the median measures ``median2d - min2d``.  A pixel hit in two of
three exposures raises ``median2d``; a pixel where one exposure falls
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

Spoiled minima
--------------
Where every exposure is hit, min2d (the value that repairs MEDIANCR) is
spoiled as well.  Among pixels known to be hit in every exposure, those whose
min2d stands ``RAISED_SIGMA`` noise sigmas above even the highest of the four
means of opposite neighbours' min2d are repaired with the mean of the two
neighbours along the flattest of the four lines (the neighbours' min2d is
clean wherever not every exposure is hit there).

Raised medians
--------------
Where an exposure is known to be hit, the median may be spoiled although
median2d - min2d is small: a 2-of-3 coincidence whose clean exposure is high
by noise, or a coincidence in all exposures (min2d is spoiled too).  min2d of
the neighbours is clean wherever not every exposure is hit there, so the
highest of the four means of opposite neighbours' min2d (along the flattest
line through the pixel: along a sky line or a trace it follows the line), plus
the typical median2d - min2d of the image, is the level a clean median would
have.  median2d more than ``RAISED_SIGMA`` noise sigmas above it is raised.
"""

from __future__ import annotations

import numpy as np

from .masks import coordinates, keep_groups_with, pixel_groups
from .stack import AGREEMENT_SIGMA, StackStats

__all__ = ["QUIET_SIGMA", "RAISED_SIGMA", "neighbour_index", "noise_dips", "raised_medians", "spoiled_minima",
           "typical_spread"]

#: A neighbourhood is quiet when (max2d - min2d) / noise stays below this at every neighbour.
QUIET_SIGMA = 5.0

#: median2d above the local level of a clean median, in noise sigmas, for a raised median
RAISED_SIGMA = 5.0

#: Offsets (dy, dx) of the 8 neighbours; neighbour k and neighbour 7 - k are opposite through the pixel.
NEIGHBOURS = np.array([(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)])
_BOX = np.array([(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)])


def neighbour_index(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int], *,
                    centre: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices, shape (m, 8), of the 8 neighbours of the pixels (ys, xs).

    Neighbour k and neighbour 7 - k are opposite through the pixel.  With
    ``centre`` the 3x3 box, shape (m, 9), pixel included.  Indices are
    clipped at the image edges (the edge pixel stands in for the missing
    neighbours).
    """
    step = _BOX if centre else NEIGHBOURS
    yy = np.clip(ys[:, None] + step[:, 0], 0, shape[0] - 1)
    xx = np.clip(xs[:, None] + step[:, 1], 0, shape[1] - 1)
    return yy, xx


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
    ys, xs, groups, n = pixel_groups(candidates)
    single = np.bincount(groups, minlength=n + 1)[groups] == 1
    ys, xs = _inside(ys[single], xs[single], candidates.shape)
    out = np.zeros(candidates.shape, dtype=bool)
    if ys.size == 0:
        return out
    yy, xx = neighbour_index(ys, xs, candidates.shape)
    # the local level: the median of the four lines through the pixel where they agree (a locally linear
    # scene); where they disagree beyond the noise (the steep, curved flank of a fibre profile, whose lines
    # across pass far above the pixel's own level) the flattest line, whose two neighbours agree best.
    # With the four lines there, raised medians looked like dips of min2d and single-pixel coincidences of
    # thousands of electrons were dropped on a MEGARA OB.
    around = stats.median2d[yy, xx]
    means = _opposite_means(around)
    level = np.median(means, axis=1)
    curved = means.max(axis=1) - means.min(axis=1) > quiet_sigma * noise[ys, xs]
    flattest = np.argmin(np.abs(around[:, :4] - around[:, :3:-1]), axis=1)
    level[curved] = np.take_along_axis(means, flattest[:, None], axis=1)[curved, 0]
    spread = (stats.max2d[yy, xx] - stats.min2d[yy, xx]) / noise[yy, xx]
    quiet = spread.max(axis=1) < quiet_sigma
    median, low = stats.median2d[ys, xs], stats.min2d[ys, xs]
    dip = quiet & (median - level < level - low)
    out[ys[dip], xs[dip]] = True
    return out


def _opposite_means(values: np.ndarray) -> np.ndarray:
    """(m, 4) means of opposite neighbours of (m, 8) values gathered by :func:`neighbour_index`.

    These are the linear interpolations through the pixel along the row, the
    column and both diagonals.
    """
    return 0.5 * (values[:, :4] + values[:, :3:-1])


def _inner(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the True pixels of ``mask`` that have 8 neighbours."""
    return _inside(*coordinates(mask), mask.shape)


def _inside(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The pixels ``(ys, xs)`` that have 8 neighbours, in the same order."""
    keep = (ys > 0) & (ys < shape[0] - 1) & (xs > 0) & (xs < shape[1] - 1)
    return ys[keep], xs[keep]


def typical_spread(stats: StackStats, noise: np.ndarray, step: int = 7) -> float:
    """Median of (median2d - min2d) / noise over every ``step``-th pixel (the noise-only offset)."""
    sub = (slice(None, None, step), slice(None, None, step))
    return float(np.median((stats.median2d[sub] - stats.min2d[sub]) / noise[sub]))


def raised_medians(where: np.ndarray, stats: StackStats, noise: np.ndarray, offset: float,
                   raised_sigma: float = RAISED_SIGMA) -> np.ndarray:
    """Pixels of ``where`` whose median2d stands above the clean level of their neighbours.

    Parameters
    ----------
    where : ndarray of bool, shape (ny, nx)
        Pixels to judge (where some exposure is known to be hit).
    stats : StackStats
        Stack statistics of aligned exposures (``median2d``, ``min2d``, ``max2d``).
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma (electrons); the median of the
        neighbours' is used.
    offset : float
        Typical ``(median2d - min2d) / noise`` of noise (:func:`typical_spread`).
    raised_sigma : float
        Excess over the level, in noise sigmas.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
        Raised pixels, in groups (8-connected) where the exposures of at
        least one pixel differ by more than ``AGREEMENT_SIGMA``: hot pixels and
        their clusters are as sharp in min2d, but identical in every exposure.
    """
    ys, xs = _inner(where)
    out = np.zeros(where.shape, dtype=bool)
    if ys.size == 0:
        return out
    yy, xx = neighbour_index(ys, xs, where.shape)
    low = stats.min2d[yy, xx]
    level = _opposite_means(low).max(axis=1)
    u = np.median(noise[yy, xx], axis=1)  # the pixel's own noise scale follows its (possibly hit) min2d
    level += np.float32(offset) * u
    hit = stats.median2d[ys, xs] - level > raised_sigma * u
    ys, xs = ys[hit], xs[hit]
    out[ys, xs] = True
    differ = stats.max2d[ys, xs] - stats.min2d[ys, xs] > AGREEMENT_SIGMA * noise[ys, xs]
    seeds = np.zeros(where.shape, dtype=bool)
    seeds[ys[differ], xs[differ]] = True
    return keep_groups_with(out, seeds)


def spoiled_minima(where: np.ndarray, stats: StackStats, noise: np.ndarray,
                   raised_sigma: float = RAISED_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of ``where`` whose min2d stands above the clean level of their neighbours, and that level.

    Parameters
    ----------
    where : ndarray of bool, shape (ny, nx)
        Pixels known to be hit in every exposure (judged only there).
    stats : StackStats
        Stack statistics of aligned exposures (``min2d``).
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma (electrons); the median of the
        neighbours' is used (the pixel's own follows its spoiled min2d).
    raised_sigma : float
        Excess of min2d over the highest of the four means of opposite
        neighbours, in noise sigmas.

    Returns
    -------
    spoiled : ndarray of bool, shape (ny, nx)
        The pixels whose min2d is spoiled.
    values : ndarray, shape (m,)
        Their repair value, in the order of ``np.nonzero(spoiled)``: the
        mean of the two opposite neighbours' min2d along the flattest of the
        four lines through the pixel (row, column, diagonals), the one whose
        min2d changes least from the neighbours to the pixels beyond them
        (:func:`_flattest_means`): along a fibre trace or a sky line, not
        across it, on a peak as in a valley.
    """
    ys, xs = _inner(where)
    out = np.zeros(where.shape, dtype=bool)
    if ys.size == 0:
        return out, np.zeros(0, dtype=stats.min2d.dtype)
    yy, xx = neighbour_index(ys, xs, where.shape)
    means = _opposite_means(stats.min2d[yy, xx])
    u = np.median(noise[yy, xx], axis=1)
    hit = stats.min2d[ys, xs] - means.max(axis=1) > raised_sigma * u
    out[ys[hit], xs[hit]] = True
    return out, _flattest_means(stats.min2d, ys[hit], xs[hit])


#: the four lines through a pixel: row, column and both diagonals
_LINES = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])


def _flattest_means(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Mean of the two neighbours of each pixel along the line where ``image`` is flattest around it.

    Flatness of a line: ``|image[p - 2d] - image[p - d]| + |image[p + 2d] - image[p + d]|``
    (the pixel itself is not used: it is the one to replace).  Indices are
    clipped at the image edges.
    """
    ny, nx = image.shape

    def at(k: int) -> np.ndarray:  # (m, 4) values at distance k along each line
        yy = np.clip(ys[:, None] + k * _LINES[:, 0], 0, ny - 1)
        xx = np.clip(xs[:, None] + k * _LINES[:, 1], 0, nx - 1)
        return image[yy, xx]

    near_minus, near_plus = at(-1), at(1)
    slope = np.abs(at(-2) - near_minus) + np.abs(at(2) - near_plus)
    best = np.argmin(slope, axis=1)
    rows = np.arange(ys.size)
    return (0.5 * (near_minus[rows, best] + near_plus[rows, best])).astype(image.dtype)
