"""How real exposures of the same scene differ: a smooth local model of ``exposure - scene``.

Real exposures of one scene are not equivalent: transparency and slit losses
change the flux by a ratio that varies across the detector (along and across
a trace, from line to line of an arc lamp, along a fibre), and seeing and
guiding change the width and position of a trace by a fraction of a pixel.
Judged against a noise-only model of equal exposures, every bright flank then
looks like a cosmic ray.

The model: for exposure ``k`` and the common scene ``m`` (the median of the
exposures),

    e_k - m = c0 + c1 m + c2 dm/dx + c3 dm/dy + c4 d2m/dx2 + c5 d2m/dy2 + noise + cosmic rays

with coefficients ``c`` that vary smoothly across the detector: they are
fitted by weighted least squares over a box window around every pixel (a
local offset, a local ratio, a local shift and a local width change).  The
fit is robust: pixels where any exposure stands more than ``CLIP_SIGMA``
noise sigmas off the model of the previous iteration (and their 8
neighbours) leave the fit of every exposure, and so do spikes of the scene
(hot pixels, coincident hits); a cosmic ray, a few sharp pixels, cannot be
fitted by a ratio and a shift that hold over the whole window.  The basis
(``m`` and its derivatives) is built not from the median, which a cosmic ray
hitting most exposures spoils, but from the mean of the exposures brought onto
one scene without the values that stand above the lowest one by more than
the noise allows: a hit pixel has an ordinary basis and cannot explain itself
away (its own spike in the basis would give it the leverage to).  Each
window's coefficients are kept only where they are significant (their Wald
``chi2`` with ``P`` parameters beyond the ``SIGNIFICANCE`` false-alarm level)
and then shrunk by ``1 - P / chi2`` (James-Stein), so that where the data
cannot tell a variation from the noise the model is identity and adds no
noise of its own: on equivalent exposures it is zero almost everywhere.
Lines closer than the window (blended arc lines, neighbouring fibres) change
their strength each by its own ratio: after each fit, every pixel column and
every pixel row also takes a ratio of its own, smooth along the line
(:func:`_add_line_ratios`).  The fitted part minus its mean over the exposures
(only the differences between exposures matter, and a common part, e.g. from
the noise of ``m`` itself, cancels) is real variation: it is subtracted from
each exposure before the detection, which then sees exposures that differ by
noise and cosmic rays only.

The coefficients are solved at the centres of blocks of ``step`` x ``step``
pixels from sums over a window of blocks (each block's sums of all the
weighted products are one small matrix product), and interpolated
bilinearly; the normal matrix is the same for every exposure and is
factorised once per fit (Cholesky, vectorised over the blocks).  Everything
is local, so each fit runs strip by strip (``STRIP_ROWS``), each strip with a
margin wider than one fit's reach, on several threads, from the previous fit
of the whole frame, which it replaces in place: the result is the whole
frame's, bit for bit (the window sums are plain sums in a fixed order, the
interpolation weights exact), and the memory is one frame-sized model and a
few strips.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import chdtri

from .locallevel import neighbour_index
from .masks import coordinates
from .noise import sigma
from .offsets import neighbour_maximum, neighbour_minimum
from .stack import AGREEMENT_SIGMA

__all__ = ["VariationFit", "scene_regressors", "fit_variations", "CLIP_SIGMA", "SPIKE_SIGMA", "BASIS_SIGMA"]

_log = logging.getLogger(__name__)

#: A pixel whose residual exceeds this many noise sigmas in some exposure leaves the fit (with its neighbours).
CLIP_SIGMA = 4.0
#: A scene pixel this many noise sigmas above all of its 8 neighbours is a spike (hot pixel, coincident
#: hit, even a faint one): it leaves the fit, and the basis there is the median of its neighbours.
SPIKE_SIGMA = 10.0
#: ... and whose excess over the highest neighbour is at least this fraction of its height over the lowest.
SPIKE_CONTRAST = 0.8
#: Values this many noise sigmas above the lowest of their pixel (cosmic rays) stay out of the basis scene.
BASIS_SIGMA = 4.0
#: A pixel whose lowest value lies this many readout sigmas below zero is defective (bad column).
DEFECT_RNOISE = 10.0
#: Prior scale of each coefficient (offset in electrons, ratio, shifts in pixels, width terms): real
#: variations are smaller; where the data cannot tell, the fitted variation shrinks to zero (identity).
PRIOR_SCALE = (20.0, 0.2, 1.0, 1.0, 0.5, 0.5)
#: False-alarm probability of the test that keeps a window's variation (chi2 of its P coefficients): on
#: equivalent exposures about one window in a thousand takes a (shrunk) model.
SIGNIFICANCE = 1e-3
#: The ratio along a line: blocks of the model's step along the line, one pixel across it, fitted over this
#: many blocks (odd) along the line (:func:`_add_line_ratios`).
LINE_SPAN = 9
#: Prior scale of that ratio (a fraction).
LINE_PRIOR = 0.2
#: Below this fraction of pixels near a kept line ratio, only those pixels are evaluated.
LINE_SPARSE = 0.25
#: False-alarm probability of the test that keeps a line ratio (chi2 of one coefficient, 23.9).  There are
#: about ten times as many line windows as model windows and each pixel takes the better of two
#: directions, so the level is stricter than the window's; real line changes pass it by far (5 % of a
#: 1000 e- line over 45 rows: chi2 ~ 100).
LINE_SIGNIFICANCE = 1e-6
#: Relative ridge added to the diagonal of the normalised normal equations (numerical safety only).
RIDGE = 1e-6


@dataclass
class VariationFit:
    """Result of :func:`fit_variations`.

    Attributes
    ----------
    model : ndarray, shape (N, ny, nx), float32, or None
        Fitted variation of every exposure (electrons), summing to zero over
        the exposures; ``stack - model`` are the exposures brought onto one
        scene (None in a pipeline result: released once subtracted).
    used : ndarray of bool, shape (ny, nx)
        Pixels that took part in the last fit.
    chi2 : ndarray, shape (2, N)
        Mean squared noise-normalised residual of each exposure against the
        median over the used pixels, before and after the model.
    """

    model: np.ndarray | None
    used: np.ndarray
    chi2: np.ndarray


def scene_regressors(scene: np.ndarray) -> list[np.ndarray]:
    """The local basis of the model: 1, m, dm/dx, dm/dy, d2m/dx2, d2m/dy2 (float32, edges replicated)."""
    rest = _regressors(scene)
    return [np.ones_like(rest[0])] + rest


def _box_sum(grid: np.ndarray, span: tuple[int, int], mode: str) -> np.ndarray:
    """Sums over ``span`` (odd) cells centred on every cell of the last two axes, in a fixed order.

    ``mode`` "constant" (zeros outside) or "edge".  Unlike a running-sum
    filter, every output depends only on its own window, so the result of a
    part of the grid does not depend on where the part starts.  The terms are
    added from the lowest offset to the highest (a missing term adds zero).
    """
    if grid.ndim > 2:  # plane by plane: each plane's passes stay in the cache
        out = np.empty(grid.shape, dtype=grid.dtype)
        for index in np.ndindex(grid.shape[:-2]):
            out[index] = _box_sum(grid[index], span, mode)
        return out
    if mode != "constant":
        pads = [(0, 0)] * (grid.ndim - 2) + [(h // 2, h // 2) for h in span]
        grid = np.pad(grid, pads, mode=mode)
        ny, nx = grid.shape[-2] - 2 * (span[0] // 2), grid.shape[-1] - 2 * (span[1] // 2)
        rows = grid[..., 0:ny, :].copy()
        for i in range(1, span[0]):
            rows += grid[..., i:i + ny, :]
        out = rows[..., 0:nx].copy()
        for j in range(1, span[1]):
            out += rows[..., j:j + nx]
        return out
    out = grid
    for axis, h in ((-2, span[0] // 2), (-1, span[1] // 2)):
        if h == 0:
            continue
        n, src = grid.shape[axis], out
        out = np.empty(grid.shape, dtype=grid.dtype)
        for shift in range(-h, h + 1):
            lo, hi = max(0, -shift), min(n, n - shift)  # out[i] += src[i + shift] where both exist
            dst = (Ellipsis, slice(lo, hi)) + ((slice(None),) if axis == -2 else ())
            from_ = (Ellipsis, slice(lo + shift, hi + shift)) + ((slice(None),) if axis == -2 else ())
            if shift == -h:  # the first term is 0 + src: the same values, without a pass of zeros
                out[dst] = src[from_] if lo < hi else 0
                out[(Ellipsis, slice(0, lo)) + ((slice(None),) if axis == -2 else ())] = 0
            elif lo < hi:
                out[dst] += src[from_]
    return out.copy() if out is grid else out


def _regressors(scene: np.ndarray) -> list[np.ndarray]:
    """The non-constant part of the basis: m, dm/dx, dm/dy, d2m/dx2, d2m/dy2 (float32, edges replicated)."""
    m = np.asarray(scene, dtype=np.float32)
    p = np.pad(m, 1, mode="edge")
    c = p[1:-1, 1:-1]
    left, right, down, up = p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]
    return [m, 0.5 * (right - left), 0.5 * (up - down), right - 2 * c + left, up - 2 * c + down]


#: Block rows whose products are summed in one batch (bounds the memory of :func:`_block_products`).
PRODUCT_CHUNK = 8


def _block_products(planes: list[np.ndarray | None], weight: np.ndarray, npar: int, step: int) -> np.ndarray:
    """Sums over every block of ``weight * a * b`` for the pairs of :func:`_product_pairs`.

    ``None`` in ``planes`` is the constant 1.  Each block's pixels are laid out
    as one row, so the sums of all the products are one small matrix product
    per block ``(npar, step**2) x (step**2, len(planes))`` (float32, as the
    pixels); a block's sums depend on that block only, in a fixed order.  Of
    the symmetric normal matrix only the lower triangle is kept.

    Returns
    -------
    ndarray, shape (len(pairs), by, bx), float64
    """
    ny, nx = weight.shape
    by, bx, npix = ny // step, nx // step, step * step
    rows_of, cols_of = np.array(_product_pairs(npar, len(planes))).T
    out = np.empty((len(rows_of), by, bx), dtype=np.float64)

    def blocks(image: np.ndarray, nb: int) -> np.ndarray:  # (nb, bx, step, step) view: one block per (row, col)
        return image.reshape(nb, step, bx, step).transpose(0, 2, 1, 3)

    chunk = min(PRODUCT_CHUNK, by)
    x_buf = np.empty((chunk, bx, len(planes), npix), dtype=np.float32)  # reused: no new pages per chunk
    xw_buf = np.empty((chunk, bx, npar, npix), dtype=np.float32)
    for b0 in range(0, by, chunk):
        b1 = min(by, b0 + chunk)
        rows = slice(b0 * step, b1 * step)
        x, xw = x_buf[:b1 - b0], xw_buf[:b1 - b0]
        for i, g in enumerate(planes):  # each block's pixels laid out as one row, copied once
            x[:, :, i].reshape(b1 - b0, bx, step, step)[...] = 1.0 if g is None else blocks(g[rows], b1 - b0)
        xw.reshape(b1 - b0, bx, npar, step, step)[...] = blocks(weight[rows], b1 - b0)[:, :, None]
        xw *= x[:, :, :npar]
        out[:, b0:b1] = np.moveaxis(np.matmul(xw, x.transpose(0, 1, 3, 2))[:, :, rows_of, cols_of], -1, 0)
    return out


def _product_pairs(npar: int, nplanes: int) -> list[tuple[int, int]]:
    """The products ``(i, j)`` summed by :func:`_block_products`: the normal matrix's lower triangle
    (``j <= i < npar``), then every regressor against every target (``j >= npar``)."""
    return [(i, j) for i in range(npar) for j in range(i + 1)] + \
        [(i, j) for j in range(npar, nplanes) for i in range(npar)]


def _cholesky_solve(a, rhs: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for symmetric positive definite ``a`` (P, P, ...) and ``b`` (T, P, ...), vectorised.

    The Cholesky factor is built and applied element by element over the
    trailing (grid) axes: thousands of small systems in a few array operations.
    Only the lower triangle ``a[i][j]`` (``j <= i``) is read: ``a`` may be a
    list of rows holding those planes only.
    """
    npar = len(a)
    low = [[None] * npar for _ in range(npar)]
    for j in range(npar):
        d = a[j][j] - sum(low[j][k] ** 2 for k in range(j))
        # a non-positive pivot (not met: every coefficient has a prior) gives its coefficient 0, not NaN
        low[j][j] = np.sqrt(np.where(d > 0, d, np.inf))
        for i in range(j + 1, npar):
            low[i][j] = (a[i][j] - sum(low[i][k] * low[j][k] for k in range(j))) / low[j][j]
    x = np.empty(rhs.shape)
    for t in range(rhs.shape[0]):
        y = [None] * npar
        for i in range(npar):
            y[i] = (rhs[t, i] - sum(low[i][k] * y[k] for k in range(i))) / low[i][i]
        for i in reversed(range(npar)):
            x[t, i] = (y[i] - sum(low[k][i] * x[t, k] for k in range(i + 1, npar))) / low[i][i]
    return x


def _local_coefficients(basis: list[np.ndarray], weight: np.ndarray, targets: list[np.ndarray], step: int,
                        span: tuple[int, int]) -> list[np.ndarray]:
    """Weighted local least squares of every target on the basis, over windows of blocks.

    ``basis`` holds the non-constant regressors (the constant one is implicit).
    The sums over each block of all the weighted products are built at once
    (:func:`_block_products`) and summed over the window of blocks; the normal
    matrix depends on the weights and the basis only and is factorised once
    for all the targets.

    Returns
    -------
    list of ndarray, shape (P, by, bx)
        The coefficients of every target at the block centres.
    """
    npar = len(basis) + 1
    planes = [None] + list(basis) + list(targets)
    sums = _box_sum(_block_products(planes, weight, npar, step), span, "constant")
    where = {pair: k for k, pair in enumerate(_product_pairs(npar, len(planes)))}
    a = [[sums[where[i, j]] for j in range(i + 1)] for i in range(npar)]  # lower triangle, views of ``sums``
    prior = 1.0 / np.square(np.asarray(PRIOR_SCALE[:npar]))
    for j in range(npar):
        a[j][j] += prior[j]  # Gaussian prior
    diag = np.array([a[j][j] for j in range(npar)])
    scale = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))  # (P, by, bx)
    for i in range(npar):
        for j in range(i + 1):
            a[i][j] *= scale[i] * scale[j]  # columns of very different magnitudes
        a[i][i] += RIDGE
    b = np.array([[sums[where[i, npar + t]] for i in range(npar)] for t in range(len(targets))]) * scale
    del sums
    coef_s = _cholesky_solve(a, b)
    return [_significant(c, bk, scale, span) for c, bk in zip(coef_s, b)]


def _significant(coef_s: np.ndarray, b: np.ndarray, scale: np.ndarray, span: tuple[int, int]) -> np.ndarray:
    """Keep and shrink one target's solved (scaled) coefficients only in significant windows."""
    # a window's variation is kept only if it is significant (Wald chi2 of its coefficients, b' A^-1 b, beyond
    # the SIGNIFICANCE false-alarm level), and then shrunk by 1 - P / chi2 (James-Stein): where the data
    # cannot tell a variation from the noise, the model is identity and adds no noise of its own
    chi2 = np.sum(coef_s * b, axis=0)
    npar = coef_s.shape[0]
    significant = chi2 > chdtri(npar, SIGNIFICANCE)
    coef = coef_s * (np.where(significant, 1.0 - npar / np.maximum(chi2, 1e-12), 0.0) * scale)
    # every window containing a block fits it: the block takes the mean of their fits (no extrapolation)
    return _box_sum(coef, span, "edge") / (span[0] * span[1])


def _axis_weights(n: int, nc: int, step: int):
    """Linear interpolation along one axis from ``nc`` block centres to ``n`` pixels: (lower, upper, fraction)."""
    # position (i - (step - 1) / 2) / step in whole blocks and a fraction, in integers (exact anywhere)
    lo, rest = np.divmod(2 * np.arange(n) - (step - 1), 2 * step)
    frac = (rest / (2 * step)).astype(np.float32)
    frac[lo < 0] = 0  # before the first centre: the first value
    lo = np.clip(lo, 0, nc - 1)
    last = lo >= nc - 1  # at or after the last centre: the last value, as the upper end of the last interval
    lo[last], frac[last] = max(nc - 2, 0), 1 if nc > 1 else 0
    return lo, np.minimum(lo + 1, nc - 1), frac


def _evaluate(basis: list[np.ndarray], coef: np.ndarray, step: int) -> np.ndarray:
    """The model ``sum_p g_p c_p`` at every pixel, the coefficients interpolated one plane at a time.

    Where the exposures agree almost every window's coefficients are zero:
    when fewer than ``EVALUATE_SPARSE`` of the pixels have a non-zero block
    among the four they are interpolated from, only those pixels are
    evaluated, with the same operations (the same bits) as the whole plane.
    """
    shape = basis[0].shape
    coef = coef.astype(np.float32)
    out = np.zeros(shape, dtype=np.float32)
    nonzero = np.any(coef != 0, axis=0)
    if not nonzero.any():
        return out
    y0, y1, fy = _axis_weights(shape[0], coef.shape[1], step)
    x0, x1, fx = _axis_weights(shape[1], coef.shape[2], step)
    rows = nonzero[y0] | nonzero[y1]
    active = rows[:, x0] | rows[:, x1]
    if active.mean() > EVALUATE_SPARSE:  # bilinear interpolation of whole planes
        wx = fx[None, :]
        plane, upper = np.empty(shape, dtype=np.float32), np.empty(shape, dtype=np.float32)
        for g, c in zip([None] + list(basis), coef):
            if not c.any():  # an all-zero plane adds nothing
                continue
            along = c[:, x0] * (1 - wx) + c[:, x1] * wx  # (by, nx)
            _interpolate_rows(along, (y0, y1, fy), step, plane, upper)
            if g is not None:
                plane *= g
            out += plane
        return out
    ys, xs = np.nonzero(active)
    a0, a1, b0, b1 = y0[ys], y1[ys], x0[xs], x1[xs]
    wy, wx = fy[ys], fx[xs]
    value = np.zeros(ys.size, dtype=np.float32)
    for g, c in zip([None] + list(basis), coef):
        if not c.any():
            continue
        plane = (c[a0, b0] * (1 - wx) + c[a0, b1] * wx) * (1 - wy)
        plane += (c[a1, b0] * (1 - wx) + c[a1, b1] * wx) * wy
        if g is not None:
            plane *= g[ys, xs]
        value += plane
    out[ys, xs] = value
    return out


def _interpolate_rows(along: np.ndarray, weights, step: int, out: np.ndarray, work: np.ndarray) -> None:
    """``out = along[y0] * (1 - fy) + along[y1] * fy`` (``weights`` from :func:`_axis_weights`), into ``out``.

    From the first block centre on, the rows repeat with the period ``step``
    (from block ``k`` to ``k + 1``, the same fractions), so that part is
    computed by broadcasting instead of gathering rows: the same operations
    on the same values (the same bits).  ``work`` is a buffer of ``out``'s shape.
    """
    y0, y1, fy = weights
    start = step // 2  # the first row at or past the first centre
    nper = max(0, min(along.shape[0] - 1, (len(fy) - start) // step))
    stop = start + nper * step
    periodic = (np.array_equal(y0[start:stop], np.repeat(np.arange(nper), step))
                and np.array_equal(y1[start:stop], y0[start:stop] + 1)
                and np.array_equal(fy[start:stop], np.tile(fy[start:start + step], nper)))
    if not periodic:
        start = stop = nper = 0
    rest = np.r_[0:start, stop:len(fy)]
    if rest.size:
        wy = fy[rest, None]
        out[rest] = along[y0[rest]] * (1 - wy) + along[y1[rest]] * wy
    if nper:
        frac = fy[start:start + step, None]
        mid, tmp = out[start:stop].reshape(nper, step, -1), work[start:stop].reshape(nper, step, -1)
        np.multiply(along[:nper, None, :], 1 - frac, out=mid)
        mid += np.multiply(along[1:nper + 1, None, :], frac, out=tmp)


def _add_line_ratios(scene: np.ndarray, diffs: list[np.ndarray], fitted: np.ndarray, weight: np.ndarray,
                     step: int) -> None:
    """A ratio for every pixel across a line, smooth along the line: ``b_k * m`` added to ``fitted[k]``.

    Lines that lie close together (blended arc lines, neighbouring fibres, the
    core and the wings of a trace whose seeing changed) change their strength
    each by its own ratio, so within one model window the ratio changes from
    pixel to pixel across the lines; along a line it is smooth.  Each pixel
    column takes its own ratio, fitted to the residual ``diffs[k] - fitted[k]``
    over ``LINE_SPAN`` blocks of ``step`` rows, and so does each row over
    ``LINE_SPAN`` blocks of columns; each is kept where it is significant and
    shrunk as the window's coefficients are, and interpolated between the
    block centres.  A pixel takes the direction whose ratios are the more
    significant (summed over the exposures): along a line the ratio is
    coherent, across blended lines it is not.  The test that keeps a ratio is
    stricter than the window's (``LINE_SIGNIFICANCE``).  Only the pixels near a
    kept ratio are evaluated: where exposures are equal that is almost none.
    """
    wm = weight * scene
    threshold = chdtri(1, LINE_SIGNIFICANCE)
    wmm = wm * scene
    smm = [_line_sums(wmm, step, axis) + 1.0 / LINE_PRIOR ** 2 for axis in (0, 1)]
    del wmm
    ratios, scores = ([], []), [np.zeros(g.shape) for g in smm]
    product = np.empty(wm.shape, dtype=np.float32)
    for k in range(len(diffs)):
        np.multiply(wm, np.subtract(diffs[k], fitted[k], out=product), out=product)
        for axis in (0, 1):
            srm = _line_sums(product, step, axis)
            chi2 = srm * srm / smm[axis]
            scores[axis] += chi2
            kept = chi2 > threshold
            ratios[axis].append(np.where(kept, srm / smm[axis] * (1.0 - 1.0 / np.maximum(chi2, 1e-12)), 0.0))
    del wm, product
    active = _near_kept(ratios, step, scene.shape)
    if active is None:
        return
    points = None if active.mean() > LINE_SPARSE else np.nonzero(active)  # few pixels: those only
    spread = [_line_interpolator(g.shape, scene.shape, step, axis, points) for axis, g in enumerate(smm)]
    along_y = spread[0](scores[0]) >= spread[1](scores[1])
    m = scene if points is None else scene[points]
    for k in range(len(diffs)):
        value = np.where(along_y, spread[0](ratios[0][k]), spread[1](ratios[1][k])) * m
        if points is None:
            fitted[k] += value
        else:
            fitted[k][points] += value


def _near_kept(ratios: tuple[list, list], step: int, shape: tuple[int, int]) -> np.ndarray | None:
    """Pixels within one block of a kept line ratio (None: none kept)."""
    active = None
    for axis, grids in enumerate(ratios):
        kept = np.any([g != 0 for g in grids], axis=0)
        if not kept.any():
            continue
        kept = ndimage.binary_dilation(kept, np.ones((3, 1) if axis == 0 else (1, 3), bool))
        pixels = np.repeat(kept, step, axis=axis)
        active = pixels if active is None else active | pixels
    return active if active is None else active[:shape[0], :shape[1]]


def _line_interpolator(grid_shape: tuple[int, int], shape: tuple[int, int], step: int, axis: int, points):
    """Linear interpolation along ``axis`` from block centres to every pixel, or to ``points`` only."""
    lo, hi, frac = _axis_weights(shape[axis], grid_shape[axis], step)

    def spread(grid: np.ndarray) -> np.ndarray:
        grid = grid.astype(np.float32)
        if points is not None:
            along, across = points[axis], points[1 - axis]
            index = (lambda i: (i, across)) if axis == 0 else (lambda i: (across, i))
            return grid[index(lo[along])] * (1 - frac[along]) + grid[index(hi[along])] * frac[along]
        if axis == 0:
            out = np.empty((len(lo), grid.shape[1]), dtype=np.float32)
            _interpolate_rows(grid, (lo, hi, frac), step, out, np.empty_like(out))
            return out
        return grid[:, lo] * (1 - frac) + grid[:, hi] * frac

    return spread


def _line_sums(image: np.ndarray, step: int, axis: int) -> np.ndarray:
    """Sums over ``LINE_SPAN`` blocks of ``step`` pixels along ``axis``, one pixel across (float64, fixed order)."""
    if axis == 0:
        blocks = image.reshape(image.shape[0] // step, step, image.shape[1]).sum(axis=1, dtype=np.float64)
        return _box_sum(blocks, (LINE_SPAN, 1), "constant")
    blocks = image[:, 0::step].astype(np.float64)  # the pixels of each block added in order, as a sum would
    for j in range(1, step):
        blocks += image[:, j::step]
    return _box_sum(blocks, (1, LINE_SPAN), "constant")


#: Below this fraction of pixels near a non-zero coefficient, the model is evaluated at those pixels only.
EVALUATE_SPARSE = 0.25
#: Rows of the strips the model is fitted in (a multiple of the block step is used): the fit is local, so
#: strips with a margin give exactly the whole-frame result with a fraction of its memory, on several threads.
STRIP_ROWS = 512
#: ... but at most 1/STRIP_FRACTION of the frame's rows (at least MIN_STRIP_ROWS): a strip being fitted holds
#: ~110 bytes a pixel, and two 512-row strips (632 with their margins) are 60 % of a 2056-row frame.
STRIP_FRACTION, MIN_STRIP_ROWS = 8, 256


def fit_variations(stack: np.ndarray, scene: np.ndarray, rnoise_e: float, *, window: int | tuple = 15,
                   step: int | None = None, niter: int = 3, clip_sigma: float = CLIP_SIGMA,
                   usable: np.ndarray | None = None, workers: int | None = None,
                   strip_rows: int | None = None, lines: bool = True) -> VariationFit:
    """Fit the smooth local variation of every exposure against the common scene.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Exposures in electrons (flux factors already divided out, if any).
    scene : ndarray, shape (ny, nx)
        The common scene (median of the exposures).
    rnoise_e : float
        Readout noise (electrons).
    window : int or (int, int)
        Box (rows, columns) over which the coefficients are fitted.
    step : int, optional
        Spacing of the coarse grid where the coefficients are solved
        (default: a third of the window, at least 1).
    niter : int
        Fits; after each one, pixels off the model by ``clip_sigma`` in some
        exposure (and their neighbours) leave the next.
    usable : ndarray of bool, optional
        Pixels that may take part at all (e.g. without defective lines).
    workers : int, optional
        Threads fitting strips of rows at the same time (default: cores).
    lines : bool
        Also fit a ratio for every pixel across a line (:func:`_add_line_ratios`).
    strip_rows : int, optional
        Rows of each strip (default: ``STRIP_ROWS``, at most an eighth of
        the frame's rows, at least ``MIN_STRIP_ROWS``).  Every fit runs
        strip by strip, each strip with a margin wider than the reach of one
        fit, on the previous fit of the whole frame, so the result does not
        depend on it.

    Returns
    -------
    VariationFit
    """
    n, ny, nx = stack.shape
    if strip_rows is None:
        strip_rows = min(STRIP_ROWS, max(MIN_STRIP_ROWS, ny // STRIP_FRACTION))
    win = (window, window) if np.isscalar(window) else tuple(window)
    step = step or max(1, min(win) // 3)
    span = tuple(max(1, int(round(w / step))) | 1 for w in win)  # odd numbers of blocks
    frame = _Frame(stack, np.asarray(scene, dtype=np.float32), float(rnoise_e), step)
    workers = max(1, workers or os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        def run(task, margin: int) -> list:
            strips = _strips(frame.shape[0], step, strip_rows, margin)
            return list(pool.map(task, strips)) if workers > 1 and len(strips) > 1 else [task(s) for s in strips]

        fixed = _fixed_planes(frame, usable, lambda task: run(task, step))
        fitted = np.zeros((n,) + frame.shape, dtype=np.float32)
        used = [fixed.keep_fit.copy(), np.empty(frame.shape, dtype=bool)]
        strips = _strips(frame.shape[0], step, strip_rows, _fit_reach(span, lines) * step)
        for it in range(niter):
            last = it + 1 == niter
            _refit_in_place(fitted, strips, pool, lambda previous, bounds: _fit_strip(
                frame, fixed, previous, used[0], bounds, span, clip_sigma, lines, used_out=None if last else used[1]))
            if not last:
                used.reverse()
        parts = run(lambda bounds: _finish_strip(frame, fixed, fitted, used[0], bounds), step)
    model = _unpadded(fitted, ny, nx)
    sums = np.sum(parts, axis=0)
    chi = sums[0::2] / np.maximum(sums[1::2], 1)  # (before, after) x exposures
    used = used[0][:ny, :nx].copy()
    _log.info("exposure-difference model: mean chi2 against the median %s -> %s (%.1f %% of the pixels used)",
              np.round(chi[0], 3).tolist(), np.round(chi[1], 3).tolist(), 100 * used.mean())
    return VariationFit(model=model, used=used, chi2=chi)


class _Frame:
    """The exposures and the scene, read strip by strip padded to whole blocks (edges replicated)."""

    def __init__(self, stack: np.ndarray, scene: np.ndarray, rnoise_e: float, step: int):
        self.stack, self.scene, self.rnoise_e, self.step = stack, scene, rnoise_e, step
        self.n, self.ny, self.nx = stack.shape
        self.shape = (self.ny + (-self.ny % step), self.nx + (-self.nx % step))

    def rows(self, image: np.ndarray, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the padded frame of ``image`` (2-d or a stack)."""
        end = min(b, self.ny)
        pad = [(0, 0)] * (image.ndim - 2) + [(0, b - end), (0, self.shape[1] - self.nx)]
        return np.pad(image[..., a:end, :], pad, mode="edge")

    def noise(self, a: int, b: int) -> np.ndarray:
        """Noise sigma of the scene's rows [a, b) (padded)."""
        return sigma(self.rows(self.scene, a, b), self.rnoise_e)


@dataclass
class _Fixed:
    """Planes of the padded frame that every fit reads: which pixels may take part, spikes, defects."""

    keep_fit: np.ndarray
    spikes: np.ndarray
    #: the scene with defective pixels filled, the filling and the pixels next to a defect (None: no defect)
    filled: np.ndarray | None = None
    fill: np.ndarray | None = None
    near: np.ndarray | None = None

    def scene_rows(self, frame: _Frame, a: int, b: int) -> np.ndarray:
        """Rows [a, b) of the padded scene, defective pixels filled."""
        return frame.rows(frame.scene, a, b) if self.filled is None else self.filled[a:b]


def _fixed_planes(frame: _Frame, usable: np.ndarray | None, run) -> _Fixed:
    """Spikes, defective pixels and the pixels that may take part in the fit, strip by strip."""
    fixed = _Fixed(np.empty(frame.shape, dtype=bool), np.empty(frame.shape, dtype=bool))
    defects = []

    def one(bounds: tuple[int, int, int, int]) -> None:
        lo, hi, a, b = bounds
        scene, noise = frame.rows(frame.scene, a, b), frame.noise(a, b)
        # defective pixels (a bad column's wild values of both signs): far below zero in some exposure; they
        # leave the fit, and the scene and the basis take the mean of their valid neighbours there
        defective = frame.rows(frame.stack, a, b).min(axis=0) < -DEFECT_RNOISE * frame.rnoise_e
        if defective.any():
            total = _box_sum(np.where(defective, 0, scene), (3, 3), "edge")
            count = _box_sum((~defective).astype(np.float32), (3, 3), "edge")
            fill = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
            near = ndimage.binary_dilation(defective, np.ones((3, 3), bool))
            scene = np.where(defective, fill, scene)
            defects.append((lo, hi, scene[lo - a:hi - a], fill[lo - a:hi - a], near[lo - a:hi - a]))
        # isolated spikes of the median (hot pixels, coincident hits) leave the fit: their derivatives would
        # spread them over the model around them (the basis scene replaces its own spikes, see _basis_scene)
        spikes = _spikes(scene, noise)[lo - a:hi - a]
        keep = ~spikes & ~defective[lo - a:hi - a]
        keep[max(0, frame.ny - lo):] = False
        keep[:, frame.nx:] = False
        if usable is not None:
            keep[:max(0, min(hi, frame.ny) - lo), :frame.nx] &= usable[lo:min(hi, frame.ny)]
        fixed.spikes[lo:hi], fixed.keep_fit[lo:hi] = spikes, keep

    run(one)
    if defects:
        fixed.filled = frame.rows(frame.scene, 0, frame.shape[0])
        fixed.fill = np.zeros(frame.shape, dtype=np.float32)
        fixed.near = np.zeros(frame.shape, dtype=bool)
        for lo, hi, scene, fill, near in defects:
            fixed.filled[lo:hi], fixed.fill[lo:hi], fixed.near[lo:hi] = scene, fill, near
    return fixed


def _fit_strip(frame: _Frame, fixed: _Fixed, previous: np.ndarray, used: np.ndarray,
               bounds: tuple[int, int, int, int], span: tuple[int, int], clip_sigma: float, lines: bool, *,
               used_out: np.ndarray | None) -> np.ndarray:
    """One fit of rows [lo, hi) from rows [a, b) of the previous fit (``previous``, those rows only).

    Returns the fit of rows [lo, hi); writes the pixels of the next fit there into ``used_out``.
    """
    lo, hi, a, b = bounds
    step = frame.step
    padded, noise = frame.rows(frame.stack, a, b), frame.noise(a, b)
    scene = fixed.scene_rows(frame, a, b)
    near, fill = (None, None) if fixed.near is None else (fixed.near[a:b], fixed.fill[a:b])
    diffs = [padded[k] - scene for k in range(frame.n)]
    basis = _regressors(_basis_scene(padded, previous, noise, near, fill))
    weight = (used[a:b] / (noise * noise)).astype(np.float32)
    coefs = _local_coefficients(basis, weight, diffs, step, span)
    fitted = np.empty(padded.shape, dtype=np.float32)
    for k in range(frame.n):
        fitted[k] = _evaluate(basis, coefs[k], step)
    if lines:
        _add_line_ratios(basis[0], diffs, fitted, weight, step)
    del basis, coefs, weight
    if used_out is not None:  # pixels off the model in some exposure (and their neighbours) leave the next fit
        off = np.zeros(scene.shape, dtype=bool)
        limit, residual = clip_sigma * noise, np.empty(scene.shape, dtype=np.float32)
        for k in range(frame.n):
            np.abs(np.subtract(diffs[k], fitted[k], out=residual), out=residual)
            off |= residual > limit
        off = ndimage.binary_dilation(off, structure=np.ones((3, 3), bool))
        used_out[lo:hi] = fixed.keep_fit[lo:hi] & ~off[lo - a:hi - a]
    return fitted[:, lo - a:hi - a].copy()


def _refit_in_place(fitted: np.ndarray, strips: list[tuple[int, int, int, int]], pool: ThreadPoolExecutor,
                    fit: Callable[[np.ndarray, tuple[int, int, int, int]], np.ndarray]) -> None:
    """Replace ``fitted`` by its next fit, strip by strip, without a second copy of the frame.

    Each strip's fit starts from a copy of its rows [a, b) of the previous
    fit; its new rows [lo, hi) are written once every strip that reads them
    has taken its copy, so every strip sees the previous fit only.
    """
    copied = [threading.Event() for _ in strips]
    readers = [[j for j, (_, _, a, b) in enumerate(strips) if a < hi and b > lo] for lo, hi, _, _ in strips]

    def task(i: int) -> np.ndarray:
        _, _, a, b = strips[i]
        try:
            previous = fitted[:, a:b].copy()
        finally:  # also on failure: the writer waits for it
            copied[i].set()
        return fit(previous, strips[i])

    futures = [pool.submit(task, i) for i in range(len(strips))]
    for i in range(len(strips)):
        new = futures[i].result()
        futures[i] = None  # a written strip's result is not held until the end
        for j in readers[i]:
            copied[j].wait()
        fitted[:, strips[i][0]:strips[i][1]] = new
        del new


def _finish_strip(frame: _Frame, fixed: _Fixed, fitted_all: np.ndarray, used: np.ndarray,
                  bounds: tuple[int, int, int, int]) -> np.ndarray:
    """The model of rows [lo, hi), in place (mean over the exposures removed, hot pixels left out); chi2 sums."""
    lo, hi, a, b = bounds
    n = frame.n
    inner = slice(lo - a, hi - a)
    fitted = fitted_all[:, lo:hi]
    fitted -= fitted.mean(axis=0, dtype=np.float32)
    padded, noise = frame.rows(frame.stack, a, b), frame.noise(a, b)
    # a spike whose exposures agree is a detector feature (hot pixel): it does not vary with the scene,
    # and neither it nor its neighbours (whose derivatives it raises) take the model
    agree = padded.max(axis=0) - padded.min(axis=0) < AGREEMENT_SIGMA * noise
    hot = ndimage.binary_dilation(agree & fixed.spikes[a:b], np.ones((3, 3), bool))
    fitted[:, hot[inner]] = 0
    scene = fixed.scene_rows(frame, a, b)
    before, after = fixed.keep_fit[lo:hi], used[lo:hi]
    noise = noise[inner]
    sums = np.zeros((4, n))  # chi2 sums and counts before and after the model
    sums[1], sums[3] = before.sum(), after.sum()
    for k in range(n):
        diff = padded[k][inner] - scene[inner]
        sums[0, k] = np.sum(np.square(diff[before] / noise[before]), dtype=np.float64)
        sums[2, k] = np.sum(np.square((diff - fitted[k])[after] / noise[after]), dtype=np.float64)
    return sums


def _unpadded(padded: np.ndarray, ny: int, nx: int) -> np.ndarray:
    """The ``(n, ny, nx)`` corner of a C-contiguous ``(n, NY, NX)`` array, moved in place to its start.

    Every row moves to a lower address, so copying the rows in order never
    overwrites one still to be moved; the result shares the array's memory.
    """
    n, big_y, big_x = padded.shape
    if (big_y, big_x) == (ny, nx):
        return padded
    flat = padded.reshape(-1)
    for k in range(n):
        for y in range(ny):
            start = (k * ny + y) * nx
            flat[start:start + nx] = padded[k, y, :nx]
    return flat[:n * ny * nx].reshape(n, ny, nx)


def _fit_reach(span: tuple[int, int], lines: bool) -> int:
    """Blocks one fit reaches: window sums and their mean over ``span`` blocks each side, the interpolation,
    the basis' derivatives and spikes, the clipping's dilation, and the line ratios' span; plus one."""
    return 2 * (span[0] // 2) + 3 + (LINE_SPAN // 2 + 2 if lines else 0) + 1


def _strips(ny: int, step: int, rows: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Strips ``(lo, hi, a, b)`` of a frame of ``ny`` rows (a whole number of blocks): rows [lo, hi) are
    computed from rows [a, b), ``margin`` more each side; all block-aligned."""
    rows = max(step, rows // step * step)
    if ny <= rows + 2 * margin:
        return [(0, ny, 0, ny)]
    return [(lo, min(lo + rows, ny), max(0, lo - margin), min(ny, lo + rows + margin)) for lo in range(0, ny, rows)]


def _basis_scene(stack: np.ndarray, fitted: np.ndarray, noise: np.ndarray, near: np.ndarray | None,
                 fill: np.ndarray | None) -> np.ndarray:
    """The scene the basis is built from: free of cosmic rays, even of those that spoil the median.

    The mean of the exposures brought onto one scene by the current model
    (``stack - fitted``), leaving out every value more than ``BASIS_SIGMA``
    noise sigmas above the lowest one: a cosmic ray that hits some of the
    exposures (even most of them) is not in it, so a hit pixel has an
    ordinary basis and cannot explain itself away through its own
    derivatives.  Where the exposures agree it is the plain mean, less noisy
    than the median.  Next to defective pixels it takes ``fill``; isolated
    spikes (hot pixels, hits in every exposure) take the median of their
    neighbours.
    """
    # one exposure at a time: the memory is a few planes, not a corrected copy of the stack
    limit = stack[0] - fitted[0]
    corrected = np.empty(limit.shape, dtype=np.float32)
    for k in range(1, len(stack)):
        np.minimum(limit, np.subtract(stack[k], fitted[k], out=corrected), out=limit)
    limit += np.float32(BASIS_SIGMA) * noise
    total = np.zeros(limit.shape, dtype=np.float32)
    count = np.zeros(limit.shape, dtype=np.uint16)  # exposures kept at each pixel
    inside = np.empty(limit.shape, dtype=bool)
    for k in range(len(stack)):
        np.subtract(stack[k], fitted[k], out=corrected)
        np.less_equal(corrected, limit, out=inside)
        corrected *= inside
        total += corrected
        count += inside
    del corrected, inside, limit
    out = np.divide(total, count, out=total, dtype=np.float64)  # in float64, rounded once to float32
    if near is not None:
        out = np.where(near, fill, out).astype(np.float32, copy=False)
    ys, xs = coordinates(_spikes(out, noise))
    if ys.size:  # few pixels: the median of their neighbours there only
        yy, xx = neighbour_index(ys, xs, out.shape)
        out[ys, xs] = np.partition(out[yy, xx], 4, axis=1)[:, 4]  # upper middle of 8, as ndimage's median
    return out


def _spikes(scene: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Pixels of the scene ``SPIKE_SIGMA`` noise sigmas above all of their 8 neighbours, and sharper than any
    resolved peak: their excess over the highest neighbour is ``SPIKE_CONTRAST`` of their height over the
    lowest one (a point source or a sky-line spot one pixel wide has neighbours at ~0.6 of its peak)."""
    excess = scene - neighbour_maximum(scene, include_centre=False)
    height = scene - neighbour_minimum(scene, include_centre=False)
    return (excess > SPIKE_SIGMA * noise) & (excess > SPIKE_CONTRAST * height)
