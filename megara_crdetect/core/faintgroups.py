"""Faint cosmic-ray events found as groups: evidence summed over connected pixels (issue 17).

A cosmic ray that hits two of three aligned exposures leaves min2d clean, so
each hit exposure stands above min2d by its deposit.  Many such events are
faint in both hit exposures: every pixel stays below the single-pixel
boundary of the exposure's MM diagram (noise alone puts single pixels of
``t = (exposure - min2d) / u`` at 3.5-3.8 with a probability of 1e-2 and at
5.5-6 with 1e-4), yet several neighbouring pixels stand a few sigma up
together, which noise rarely does.

The statistic here adds the evidence over such a group: the 8-connected
groups of pixels with ``t`` above a low ``level`` are scored by their summed
excess ``sum(t - level)``.  Two maps are searched:

* each exposure's own ``t_k`` (level :data:`EXPOSURE_LEVEL`): a group there
  is a hit of exposure *k* (optionally only where it holds a pixel already
  known to be hit, ``seeds`` of :func:`faint_groups`);
* the median's ``t_med = (median2d - min2d) / u`` (level
  :data:`MEDIAN_LEVEL`): with three exposures it is the lower of the two
  exposures above min2d, so a group there says that two exposures are hit
  at the same place, the evidence of both added; the exposures standing
  above the same level there are the hit ones.

The score a group must exceed is calibrated on noise-only stacks simulated
with the detector noise model around the data's own median2d (flux factors
divided out as in the data, min2d and the noise scale ``u`` computed as for
the data), at a fixed false-alarm rate of :data:`FALSE_GROUP_RATE` groups per
pixel and map.  The tail of the simulated scores is extrapolated from their
``TAIL_RATE`` quantile with an exponential whose scale is the mean excess
of the scores above that quantile (peaks over a threshold), so a few
simulated frames suffice for a rate far below one per simulated frame.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .mmdiagram import noise_scale
from .noise import NoiseSampler
from .stack import low_mean, median_of_stack

__all__ = ["EXPOSURE_LEVEL", "MEDIAN_LEVEL", "FALSE_GROUP_RATE", "TAIL_RATE", "GroupThresholds",
           "group_scores", "passing_groups", "calibrate", "faint_groups"]

#: level of ``t_k`` above which the pixels of exposure k form groups
EXPOSURE_LEVEL = 3.0
#: level of ``t_med`` above which pixels form coincidence groups
MEDIAN_LEVEL = 2.5
#: false groups allowed per pixel, per searched map
FALSE_GROUP_RATE = 1e-6
#: the simulated scores' quantile (per pixel) above which their tail is fitted
TAIL_RATE = 1e-4
#: simulated pixels per map (at least) for the calibration
MIN_SIMULATED_PIXELS = 2_000_000
#: at most this many simulated stacks
MAX_SIMULATIONS = 64
#: rows simulated at a time (memory); a group cut by a block edge scores a little lower
BLOCK_ROWS = 256

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class GroupThresholds:
    """Scores (summed excess) a group must exceed: on the exposures and on the median."""

    exposure: float
    median: float


def group_scores(t: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """8-connected groups of ``t > level`` and their summed excess ``sum(t - level)``.

    Parameters
    ----------
    t : ndarray, shape (ny, nx)
        Normalised excess (noise sigmas).
    level : float
        Level above which pixels join a group.

    Returns
    -------
    labels : ndarray of int32
        0 outside the groups, 1..n inside.
    scores : ndarray, shape (n,)
        Summed excess of each group (float64).
    """
    above = t > level
    # only the pixels above the level (a small fraction): no frame-sized float64 or int64 copies
    return _scores(above, t[above], level)


def _scores(above: np.ndarray, values: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_scores` from the map ``above`` and the values there (raster order)."""
    labels, n = ndimage.label(above, structure=_EIGHT)
    if n == 0:
        return labels, np.zeros(0)
    return labels, np.bincount(labels[above], weights=values - np.float32(level), minlength=n + 1)[1:]


def _kept(labels: np.ndarray, scores: np.ndarray, threshold: float, seeds: np.ndarray | None) -> np.ndarray:
    """The pixels of the groups scoring above ``threshold`` (with ``seeds``: holding one)."""
    keep = np.concatenate([[False], scores > threshold])
    if seeds is not None:
        seeded = np.zeros(keep.shape, dtype=bool)
        seeded[labels[seeds]] = True
        keep &= seeded
    return keep[labels]


def passing_groups(t: np.ndarray, level: float, threshold: float, seeds: np.ndarray | None = None) -> np.ndarray:
    """Pixels of the groups of ``t > level`` whose summed excess exceeds ``threshold``.

    With ``seeds`` (bool, same shape), only the groups holding a seed pixel.
    """
    return _kept(*group_scores(t, level), threshold, seeds)


def _tail_threshold(scores: np.ndarray, npix: int, rate: float, tail_rate: float = TAIL_RATE) -> float:
    """Score exceeded by ``rate * npix`` groups, the tail above the ``tail_rate`` quantile taken as exponential."""
    n_tail = max(int(round(tail_rate * npix)), 5)
    if scores.size <= n_tail:  # too few groups: the largest simulated score
        return float(scores.max(initial=0.0))
    top = np.partition(scores, scores.size - n_tail - 1)[scores.size - n_tail - 1:]
    base = float(top[0])
    scale = float(np.mean(top[1:] - base))
    return base + scale * float(np.log(n_tail / max(rate * npix, 1e-12)))


def calibrate(expected: np.ndarray, floor: np.ndarray, rnoise_e: float, *, n_low: int = 1,
              n_exposures: int = 3, raw_factors: np.ndarray | None = None, seed: int | None = None,
              exposure_level: float = EXPOSURE_LEVEL, median_level: float = MEDIAN_LEVEL,
              rate: float = FALSE_GROUP_RATE, min_pixels: int = MIN_SIMULATED_PIXELS,
              nbinom_shape: float | None = None) -> GroupThresholds:
    """Group-score thresholds from noise-only stacks of the same noise model.

    Parameters
    ----------
    expected : ndarray, shape (N, ny, nx) or (ny, nx)
        Expected signal of each exposure (electrons, flux factors divided out);
        one image serves every exposure (``n_exposures`` of them).
    floor : ndarray, shape (ny, nx)
        Signal floor of the noise scale (:func:`~megara_crdetect.core.mmdiagram.noise_floor`).
    rnoise_e : float
        Readout noise (electrons).
    n_low : int
        min2d is the mean of the ``n_low`` lowest exposures.
    n_exposures : int
        Exposures of a stack, when ``expected`` is one image and there are no ``raw_factors``.
    raw_factors : ndarray, shape (N,), optional
        Flux factors divided out of the data: exposure k is drawn around
        ``f_k * expected`` and divided by ``f_k`` (its own noise).
    seed : int, optional
        Random seed.
    exposure_level, median_level : float
        Levels of the groups (see :func:`group_scores`).
    rate : float
        False groups allowed per pixel of each map.
    min_pixels : int
        Simulated pixels per map, at least.
    nbinom_shape : float, optional
        Negative-binomial photon noise (see :class:`~megara_crdetect.core.noise.NoiseSampler`).

    Returns
    -------
    GroupThresholds
    """
    n = len(raw_factors) if raw_factors is not None else (expected.shape[0] if expected.ndim == 3 else n_exposures)
    factors = np.ones(n, dtype=np.float32) if raw_factors is None else np.asarray(raw_factors, dtype=np.float32)
    ny = floor.shape[0]
    nsim = int(min(MAX_SIMULATIONS, max(1, -(-min_pixels // floor.size))))
    # a frame much larger than needed: every stride-th block of rows (a sample spread over the whole frame)
    nblocks = -(-ny // BLOCK_ROWS)
    needed = -(-min_pixels // (BLOCK_ROWS * floor.shape[1]))
    stride = max(1, nblocks // max(needed, 1)) if nsim == 1 else 1
    rng = np.random.default_rng(seed)
    exp_scores, med_scores = [], []
    npix = 0
    for r0 in range(0, ny, BLOCK_ROWS * stride):  # blocks of rows: the memory of a few rows per exposure
        rows = slice(r0, min(r0 + BLOCK_ROWS, ny))
        images = expected[:, rows] if expected.ndim == 3 else [expected[rows]] * n
        samplers = [NoiseSampler(lam * f, rnoise_e, nbinom_shape=nbinom_shape) for lam, f in zip(images, factors)]
        block_floor = floor[rows]
        npix += nsim * block_floor.size
        z = np.empty((n,) + block_floor.shape, dtype=np.float32)
        for _ in range(nsim):
            for k, sampler in enumerate(samplers):
                sampler.draw(rng, out=z[k])
                z[k] /= factors[k]
            lo = low_mean(z, n_low)
            inv = np.float32(1.0) / noise_scale(lo, block_floor, rnoise_e)
            med_scores.append(group_scores((median_of_stack(z) - lo) * inv, median_level)[1])
            for k in range(n):
                exp_scores.append(group_scores((z[k] - lo) * inv, exposure_level)[1])
    return GroupThresholds(exposure=_tail_threshold(np.concatenate(exp_scores), n * npix, rate),
                           median=_tail_threshold(np.concatenate(med_scores), npix, rate))


def faint_groups(stack: np.ndarray, min2d: np.ndarray, median2d: np.ndarray, noise: np.ndarray,
                 thresholds: GroupThresholds, where: np.ndarray | None = None, seeds: np.ndarray | None = None, *,
                 exposure_level: float = EXPOSURE_LEVEL, median_level: float = MEDIAN_LEVEL,
                 workers: int | None = None) -> np.ndarray:
    """Per exposure, the pixels of the groups that pass the calibrated test.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx)
        Exposures (electrons, flux factors divided out, aligned).
    min2d, median2d, noise : ndarray, shape (ny, nx)
        The stack's min2d and median2d and the noise scale ``u``.
    thresholds : GroupThresholds
        From :func:`calibrate`.
    where : ndarray of bool, shape (ny, nx), optional
        Where pixels may be flagged (outside, ``t`` counts as 0).
    seeds : ndarray of bool, shape (N, ny, nx), optional
        What is already known of each exposure (its CRMASKk).  A group of
        one exposure alone is then kept only where it holds a seed or a
        passing median group: evidence in one exposure only, away from
        anything detected, is what a systematic difference of that exposure
        (a line or a trace brighter in it than the exposure-difference model
        says) looks like as well.
    exposure_level, median_level : float
        The levels the thresholds were calibrated for.
    workers : int, optional
        Threads over the exposures (default: cores); the result is the same.

    Returns
    -------
    ndarray of bool, shape (N, ny, nx)
        Exposure k's pixels: those of its own passing groups, and those of
        the passing median groups where it stands above ``median_level``.
    """
    inv = np.float32(1.0) / noise
    t_med = (median2d - min2d) * inv
    if where is not None:
        t_med[~where] = 0
    coinc = passing_groups(t_med, median_level, thresholds.median)
    del t_med
    out = np.empty(stack.shape, dtype=bool)

    def one(k: int) -> None:
        above, values, own = _exposure_excess(stack[k], min2d, inv, where, coinc, exposure_level, median_level)
        labels, scores = _scores(above, values, exposure_level)
        del above, values
        out[k] = _kept(labels, scores, thresholds.exposure, None if seeds is None else seeds[k] | own)
        out[k] |= own

    n = stack.shape[0]
    workers = max(1, min(n, workers or os.cpu_count() or 1))
    if workers == 1:
        for k in range(n):
            one(k)
    else:  # the labelling and NumPy release the GIL
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, range(n)))
    return out


def _exposure_excess(image, min2d, inv, where, coinc, level: float, median_level: float, rows: int = BLOCK_ROWS):
    """``t = (image - min2d) * inv`` (0 outside ``where``) a block of rows at a time, never whole.

    Returns the map ``t > level``, the values of ``t`` there (raster order)
    and ``coinc & (t > median_level)``.
    """
    above = np.empty(image.shape, dtype=bool)
    own = np.empty(image.shape, dtype=bool)
    values = []
    for a in range(0, image.shape[0], rows):
        part = slice(a, a + rows)
        t = image[part] - min2d[part]
        t *= inv[part]
        if where is not None:
            t[~where[part]] = 0
        np.greater(t, level, out=above[part])
        values.append(t[above[part]])
        np.greater(t, median_level, out=own[part])
        own[part] &= coinc[part]
    return above, np.concatenate(values), own
