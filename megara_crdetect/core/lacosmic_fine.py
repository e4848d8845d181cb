"""L.A.Cosmic's fine-structure test, decided from certified bounds where it is certain.

A candidate of L.A.Cosmic (Laplacian over noise ``sp`` above ``sigclip``)
is kept only if ``sp / f > objlim``, where the fine structure ``f`` is, for
``fsmode='convolve'``, ``c - sepmed9(c)`` over the noise with ``c`` a ratio
of two convolutions by the PSF kernel.  astroscrappy computes the two
convolutions with 121 float32 products per pixel, summed in an order its
compiler chooses (``-ffast-math``): they cost more than everything else of
a detection step, and their bits cannot be reproduced in NumPy.

They do not need to be.  Any summation order of ``n`` products lies within
``(n + 2) u`` of the exact sum of their absolute values (``u = 2**-24``,
Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., sec.
3.1), so a cheap separable convolution (the kernels are products of two
1-D Gaussians) gives astroscrappy's ``c`` within ``K |c| + delta``, with
``delta`` collecting what is not proportional to ``c`` (negative pixels,
the kernel's distance to an exact product).  A median (any order statistic)
commutes with the increasing maps ``v -> v -/+ (K |v| + delta)``, so the
same bound holds for ``sepmed9(c)`` around the median of the approximation.
From there ``sp / f`` lies in an interval; where the interval is on one side
of ``objlim`` the test is decided, and the few candidates it straddles are
computed exactly with astroscrappy's own convolution on a small patch
around them (its value at a pixel does not depend on where the pixel lies
in the array).  The result is astroscrappy's test, bit for bit, at a third
of the cost.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .masks import coordinates
from .sortnet import separable_median
from .windows import cell_boxes, lacosmic_fine_reach

__all__ = ["SeparableKernel", "separable_kernel", "fine_structure", "fine_structure_test"]

_log = logging.getLogger(__name__)

#: Unit roundoff of float32.
_U = 2.0 ** -24
#: Side of the tiles over which the additive parts of the bound are taken (at least the test's reach).
TILE = 32
#: Side of the cells that group the undecided candidates into exactly computed patches.
CELL = 64
#: Largest relative distance of a kernel's entries to the product of its two 1-D factors for the bounds to be used.
MAX_RESIDUAL = 1e-4
#: Fraction of the candidates whose bound's additive part alone spans the test, above which it is computed whole.
MAX_HOPELESS = 0.05
#: Fraction of the array the exactly computed patches may cover before it is computed whole.
MAX_PATCH_FRACTION = 0.3
_CLIP = float(np.float32(0.01))  # astroscrappy's floor of the fine structure, as a float32


@dataclass(frozen=True)
class SeparableKernel:
    """A non-negative kernel ``K`` and non-negative float32 factors with ``K ~ outer(rows, cols) = K'``.

    ``|K - K'| <= relative K' + absolute`` entry by entry, exactly.
    """

    rows: np.ndarray  # applied along axis 0
    cols: np.ndarray  # applied along axis 1
    relative: float
    absolute: float
    total: float  # sum of K
    taps: int  # number of products astroscrappy sums per pixel


def separable_kernel(kernel: np.ndarray) -> SeparableKernel | None:
    """The factors of ``kernel`` (as astroscrappy uses it), or None if it is not a non-negative product."""
    k = np.asarray(kernel, dtype=np.float32)
    if k.ndim != 2 or not np.all(np.isfinite(k)) or np.any(k < 0) or not np.any(k > 0):
        return None
    k64 = k.astype(np.float64)
    left, sv, right = np.linalg.svd(k64)
    rows, cols = left[:, 0] * np.sqrt(sv[0]), right[0] * np.sqrt(sv[0])
    if rows.sum() < 0:
        rows, cols = -rows, -cols
    rows, cols = np.maximum(rows, 0).astype(np.float32), np.maximum(cols, 0).astype(np.float32)
    product = np.outer(rows.astype(np.float64), cols.astype(np.float64))
    residual = np.abs(product - k64)
    large = product > 1e-3 * product.max()
    relative = float((residual[large] / product[large]).max())
    absolute = float(residual[~large].max(initial=0.0))
    if relative > MAX_RESIDUAL:
        return None
    return SeparableKernel(rows=rows, cols=cols, relative=relative, absolute=absolute, total=float(k64.sum()),
                           taps=k.size)


def fine_structure(clean: np.ndarray, noise: np.ndarray, o: dict) -> np.ndarray:
    """astroscrappy's fine-structure image over the noise, clipped at 0.01 (its own operations)."""
    from astroscrappy.utils import convolve, medfilt3, medfilt7

    if o["fsmode"] == "convolve":
        f = convolve(clean / noise / noise, o["psfk"])
        f = f / convolve(1.0 / noise / noise, o["psfk"])
    else:
        f = separable_median(clean, 5) if o["sepmed"] else medfilt3(clean)
    f = (f - (separable_median(f, 9) if o["sepmed"] else medfilt7(f))) / noise
    f[f < 0.01] = 0.01
    return f


def fine_structure_test(clean: np.ndarray, noise: np.ndarray, sp: np.ndarray, candidates: np.ndarray,
                        o: dict) -> np.ndarray:
    """``candidates & (sp / f > objlim)`` with astroscrappy's ``f`` on this array, bit for bit.

    Parameters
    ----------
    clean, noise, sp : ndarray (ny, nx), float32
        The image of this step, its noise and its Laplacian over the noise
        with its median removed (astroscrappy's arrays).
    candidates : ndarray of bool (ny, nx)
        Where the test is needed.
    o : dict
        The step's options: ``fsmode``, ``psfk``, ``sepmed``, ``objlim`` and
        ``separable`` (:func:`separable_kernel` of ``psfk``, or None).

    Returns
    -------
    ndarray of bool (ny, nx)
        The candidates that pass.
    """
    kernel = o.get("separable")
    reach = None if kernel is None else lacosmic_fine_reach(
        sepmed=True, fsmode="convolve", psfsize=max(kernel.rows.size, kernel.cols.size))
    if o["fsmode"] != "convolve" or not o["sepmed"] or kernel is None or reach > TILE:
        return _whole(clean, noise, sp, candidates, o)
    ys, xs = coordinates(candidates)
    passed = np.zeros(candidates.shape, dtype=bool)
    if ys.size == 0:
        return passed
    decided = _decided(clean, noise, sp, ys, xs, kernel, o["objlim"])
    if decided is None:  # bounds too wide here (noise floored at astroscrappy's minimum, ...)
        _log.debug("fine structure: computed whole, the bounds are too wide for %d candidates", ys.size)
        return _whole(clean, noise, sp, candidates, o)
    sure, unsure = decided
    passed[ys[sure], xs[sure]] = True
    if unsure.any():
        ys, xs = ys[unsure], xs[unsure]
        order, starts, boxes = cell_boxes(ys, xs, CELL, clean.shape[1])
        if starts.size * (CELL + 2 * reach) ** 2 > MAX_PATCH_FRACTION * clean.size:
            _log.debug("fine structure: computed whole, %d of %d candidates undecided", ys.size, sure.size)
            return _whole(clean, noise, sp, candidates, o)
        _log.debug("fine structure: %d of %d candidates left undecided by the bounds", ys.size, sure.size)
        ys, xs = ys[order], xs[order]
        passed[ys, xs] = (sp[ys, xs] / _on_patches(clean, noise, (ys, xs, starts, boxes), reach, o)) > o["objlim"]
    return passed


def _whole(clean, noise, sp, candidates, o: dict) -> np.ndarray:
    """The test with astroscrappy's fine structure of the whole array."""
    return candidates & ((sp / fine_structure(clean, noise, o)) > o["objlim"])


def _decided(clean, noise, sp, ys, xs, kernel: SeparableKernel, objlim: float):
    """Which candidates surely pass, and which the bounds leave undecided (None: most would be)."""
    x1 = clean / noise / noise  # the arrays astroscrappy convolves, the same operations
    x2 = 1.0 / noise / noise
    c2 = _separable(x2, kernel)
    scale, offset = _tile_bounds(x1, x2, c2, kernel)
    del x2
    ty, tx = ys // TILE, xs // TILE
    k, delta = scale[ty, tx], offset[ty, tx]
    n, s = noise[ys, xs].astype(np.float64), sp[ys, xs].astype(np.float64)
    if np.mean(~(4 * delta < 0.5 * n * s / objlim)) > MAX_HOPELESS:  # the additive part alone is too wide
        return None
    c = np.divide(_separable(x1, kernel), c2, out=c2)
    del x1
    m = separable_median(c, 9)
    c, m = c[ys, xs].astype(np.float64), m[ys, xs].astype(np.float64)
    c_err, m_err = k * np.abs(c) + delta, k * np.abs(m) + delta
    low, high = (c - c_err) - (m + m_err), (c + c_err) - (m - m_err)  # c - m, before its float32 rounding
    f_low = np.maximum((low - 2 * _U * np.abs(low)) / n * (1 - 2 * _U), _CLIP)
    f_high = np.maximum((high + 2 * _U * np.abs(high)) / n * (1 + 2 * _U), _CLIP)
    sure = (s > 0) & (s / f_high * (1 - 2 * _U) > objlim)
    never = (s > 0) & (s / f_low * (1 + 2 * _U) <= objlim)
    return sure, ~(sure | never)


def _separable(a: np.ndarray, kernel: SeparableKernel) -> np.ndarray:
    """``a`` convolved by ``outer(rows, cols)`` with zeros outside (float32, sums in float64 per pass)."""
    out = ndimage.convolve1d(a, kernel.cols, axis=1, mode="constant")
    return ndimage.convolve1d(out, kernel.rows, axis=0, mode="constant", output=out)


def _tile_bounds(x1, x2, c2, kernel: SeparableKernel) -> tuple[np.ndarray, np.ndarray]:
    """Per tile, ``K`` and ``delta`` of ``|c_astroscrappy - c| <= K |c| + delta`` on the tile and around it.

    ``c`` is the float32 ratio of the separable convolutions ``c1 / c2``.
    Each convolution is within ``g`` of the sum of the absolute values of
    its products, plus the kernel's absolute residual times the largest
    value it covers; the sum of absolute values is the convolution itself
    plus twice that of the negative pixels.
    """
    n, res, total = kernel.taps, kernel.absolute, kernel.total
    # astroscrappy's sum in any order, the two roundings of ours, and the relative distance of the kernels
    g1 = ((n + 6) * _U + kernel.relative) * 1.01
    g = g1 / (1 - g1)
    neg = np.maximum(-_tiles(x1, np.minimum), 0.0)
    w1 = np.maximum(_tiles(x1, np.maximum), neg)
    w2 = _tiles(x2, np.maximum)
    c2_min = _tiles(c2, np.minimum)
    with np.errstate(divide="ignore", invalid="ignore"):
        d1 = g * 2 * total * neg + (g + 1 + g1) * res * n * w1
        d2 = (g + 1 + g1) * res * n * w2
        rho, delta1 = d2 / c2_min, d1 / c2_min
        denominator = 1 - g - rho
        scale = (2 * g + rho) / denominator
        offset = delta1 / denominator
        bad = ~(c2_min > 0) | ~(denominator > 0.5)
    scale = 2 * (scale + 3 * _U) * (1 + 3 * _U)  # the float32 quotients, and a factor 2 to spare
    offset = 2 * offset * (1 + _U) + 1e-37
    scale[bad] = np.inf
    return scale, offset


def _tiles(a: np.ndarray, extreme) -> np.ndarray:
    """``extreme`` (np.maximum or np.minimum) of ``a`` over each tile and its 8 neighbours (float64)."""
    ny, nx = a.shape
    per_tile = extreme.reduceat(extreme.reduceat(a, np.arange(0, ny, TILE), axis=0), np.arange(0, nx, TILE),
                                axis=1).astype(np.float64)
    padded = np.pad(per_tile, 1, mode="edge")
    out = per_tile.copy()
    for dy in range(3):
        for dx in range(3):
            extreme(out, padded[dy:dy + out.shape[0], dx:dx + out.shape[1]], out=out)
    return out


def _on_patches(clean, noise, groups, reach: int, o: dict) -> np.ndarray:
    """astroscrappy's fine structure at the grouped pixels, computed on a patch around each cell's.

    ``groups`` is the pixels sorted by cell with :func:`~megara_crdetect.core.windows.cell_boxes`'
    starts and boxes; the patches reach ``reach`` beyond each box, so the values are the whole
    array's (a filter's value does not depend on where the pixel lies in the array).
    """
    ys, xs, starts, (y0, y1, x0, x1) = groups
    ny, nx = clean.shape
    out = np.empty(ys.size, dtype=np.float32)
    for a, b, top, bottom, left, right in zip(starts, np.r_[starts[1:], ys.size], y0, y1, x0, x1):
        top, left = max(int(top) - reach, 0), max(int(left) - reach, 0)
        patch = (slice(top, min(int(bottom) + reach, ny)), slice(left, min(int(right) + reach, nx)))
        f = fine_structure(np.ascontiguousarray(clean[patch]), np.ascontiguousarray(noise[patch]), o)
        out[a:b] = f[ys[a:b] - top, xs[a:b] - left]
    return out
