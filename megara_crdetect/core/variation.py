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
pixels from sums over a window of blocks, and interpolated bilinearly; the
normal matrix is the same for every exposure and is inverted once per
iteration.  Everything is local, so the model is fitted in strips of rows
(``STRIP_ROWS``) with a margin wider than the reach of the ``niter`` fits, on
several threads: the result is the whole frame's, bit for bit (the window
sums are plain sums in a fixed order, the interpolation weights exact), and
the memory is that of a few strips, not of a dozen full frames.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.special import chdtri

from .locallevel import neighbour_index
from .noise import sigma
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


def _block_sums(image: np.ndarray, step: int) -> np.ndarray:
    """Sums over blocks of ``step`` x ``step`` pixels (float64; the image is zero-padded to whole blocks)."""
    ny, nx = image.shape
    by, bx = -(-ny // step), -(-nx // step)
    if (by * step, bx * step) != (ny, nx):
        image = np.pad(image, ((0, by * step - ny), (0, bx * step - nx)))
    rows = image.reshape(by, step, bx * step).sum(axis=1)
    return rows.reshape(by, bx, step).sum(axis=2).astype(np.float64)


def _box_sum(grid: np.ndarray, span: tuple[int, int], mode: str) -> np.ndarray:
    """Sums over ``span`` (odd) cells centred on every cell of the last two axes, in a fixed order.

    ``mode`` "constant" (zeros outside) or "edge".  Unlike a running-sum
    filter, every output depends only on its own window, so the result of a
    part of the grid does not depend on where the part starts.
    """
    pads = [(0, 0)] * (grid.ndim - 2) + [(h // 2, h // 2) for h in span]
    padded = np.pad(grid, pads, mode=mode)
    ny, nx = grid.shape[-2:]
    rows = padded[..., 0:ny, :].copy()
    for i in range(1, span[0]):
        rows += padded[..., i:i + ny, :]
    out = rows[..., 0:nx].copy()
    for j in range(1, span[1]):
        out += rows[..., j:j + nx]
    return out


def _window_sums(image: np.ndarray, step: int, span: tuple[int, int]) -> np.ndarray:
    """Sums over ``span`` blocks (rows, columns) centred on every block."""
    return _box_sum(_block_sums(image, step), span, "constant")


def _regressors(scene: np.ndarray) -> list[np.ndarray]:
    """The non-constant part of the basis: m, dm/dx, dm/dy, d2m/dx2, d2m/dy2 (float32, edges replicated)."""
    m = np.asarray(scene, dtype=np.float32)
    p = np.pad(m, 1, mode="edge")
    c = p[1:-1, 1:-1]
    left, right, down, up = p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]
    return [m, 0.5 * (right - left), 0.5 * (up - down), right - 2 * c + left, up - 2 * c + down]


def _local_coefficients(basis: list[np.ndarray], weight: np.ndarray, targets: list[np.ndarray], step: int,
                        span: tuple[int, int]) -> list[np.ndarray]:
    """Weighted local least squares of every target on the basis, over windows of blocks.

    ``basis`` holds the non-constant regressors (the constant one is implicit).
    The normal matrix depends on the weights and the basis only, so it is built
    and inverted once for all the targets.  One weighted regressor is held at
    a time: the memory is a few planes, not one per regressor.

    Returns
    -------
    list of ndarray, shape (P, by, bx)
        The coefficients of every target at the block centres.
    """
    npar = len(basis) + 1
    regressors = [None] + list(basis)  # None: the constant
    nb = (weight.shape[0] // step, weight.shape[1] // step)  # the strip is padded to whole blocks
    a = np.empty(nb + (npar, npar))
    rhs = [np.empty(nb + (npar,)) for _ in targets]
    for i, g in enumerate(regressors):
        wg = weight if g is None else weight * g
        for j in range(i, npar):
            a[..., i, j] = a[..., j, i] = _window_sums(wg if j == 0 else wg * regressors[j], step, span)
        for b, target in zip(rhs, targets):
            b[..., i] = _window_sums(wg * target, step, span)
        del wg
    prior = 1.0 / np.square(np.asarray(PRIOR_SCALE[:npar]))
    a[..., np.arange(npar), np.arange(npar)] += prior  # Gaussian prior on each coefficient
    diag = np.einsum("...ii->...i", a).copy()
    scale = 1.0 / np.sqrt(np.where(diag > 0, diag, 1.0))
    a *= scale[..., :, None] * scale[..., None, :]  # columns of very different magnitudes
    a[..., np.arange(npar), np.arange(npar)] += RIDGE
    inverse = np.linalg.inv(a)
    return [_significant(b * scale, inverse, a, scale, span) for b in rhs]


def _significant(b: np.ndarray, inverse: np.ndarray, normal: np.ndarray, scale: np.ndarray,
                 span: tuple[int, int]) -> np.ndarray:
    """Solve one target's scaled normal equations; keep and shrink only significant windows."""
    coef_s = np.einsum("...ij,...j->...i", inverse, b)
    # a window's variation is kept only if it is significant (Wald chi2 of its coefficients beyond the
    # SIGNIFICANCE false-alarm level), and then shrunk by 1 - P / chi2 (James-Stein): where the data
    # cannot tell a variation from the noise, the model is identity and adds no noise of its own
    chi2 = np.einsum("...i,...ij,...j->...", coef_s, normal, coef_s)
    npar = coef_s.shape[-1]
    significant = chi2 > chdtri(npar, SIGNIFICANCE)
    coef_s *= np.where(significant, 1.0 - npar / np.maximum(chi2, 1e-12), 0.0)[..., None]
    coef = np.moveaxis(coef_s * scale, -1, 0)
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
        wy, wx = fy[:, None], fx[None, :]
        plane = np.empty(shape, dtype=np.float32)
        for g, c in zip([None] + list(basis), coef):
            if not c.any():  # an all-zero plane adds nothing
                continue
            along = c[:, x0] * (1 - wx) + c[:, x1] * wx  # (by, nx)
            np.multiply(along[y0], 1 - wy, out=plane)
            plane += along[y1] * wy
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
    smm = [_line_sums(wm * scene, step, axis) + 1.0 / LINE_PRIOR ** 2 for axis in (0, 1)]
    ratios, scores = ([], []), [np.zeros(g.shape) for g in smm]
    for k in range(len(diffs)):
        product = wm * (diffs[k] - fitted[k])
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
            return grid[lo] * (1 - frac[:, None]) + grid[hi] * frac[:, None]
        return grid[:, lo] * (1 - frac) + grid[:, hi] * frac

    return spread


def _line_sums(image: np.ndarray, step: int, axis: int) -> np.ndarray:
    """Sums over ``LINE_SPAN`` blocks of ``step`` pixels along ``axis``, one pixel across (float64, fixed order)."""
    if axis == 0:
        blocks = image.reshape(image.shape[0] // step, step, image.shape[1]).sum(axis=1, dtype=np.float64)
        return _box_sum(blocks, (LINE_SPAN, 1), "constant")
    blocks = image.reshape(image.shape[0], image.shape[1] // step, step).sum(axis=2, dtype=np.float64)
    return _box_sum(blocks, (1, LINE_SPAN), "constant")


#: Below this fraction of pixels near a non-zero coefficient, the model is evaluated at those pixels only.
EVALUATE_SPARSE = 0.25
#: Rows of the strips the model is fitted in (a multiple of the block step is used): the fit is local, so
#: strips with a margin give exactly the whole-frame result with a fraction of its memory, on several threads.
STRIP_ROWS = 512


def fit_variations(stack: np.ndarray, scene: np.ndarray, rnoise_e: float, *, window: int | tuple = 15,
                   step: int | None = None, niter: int = 3, clip_sigma: float = CLIP_SIGMA,
                   usable: np.ndarray | None = None, workers: int | None = None,
                   strip_rows: int = STRIP_ROWS, lines: bool = True) -> VariationFit:
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
    strip_rows : int
        Rows of each strip.  Every strip is fitted with a margin wider than
        the reach of ``niter`` fits, so the result does not depend on it.

    Returns
    -------
    VariationFit
    """
    n, ny, nx = stack.shape
    win = (window, window) if np.isscalar(window) else tuple(window)
    step = step or max(1, min(win) // 3)
    span = tuple(max(1, int(round(w / step))) | 1 for w in win)  # odd numbers of blocks
    scene = np.asarray(scene, dtype=np.float32)
    strips = _strips(ny, step, span, niter, strip_rows, lines)
    fitted = np.empty(stack.shape, dtype=np.float32)
    used = np.empty((ny, nx), dtype=bool)
    parts = []

    def one(bounds: tuple[int, int, int, int]) -> None:
        lo, hi, a, b = bounds  # rows [lo, hi) are kept from the fit of rows [a, b)
        part = _fit_rows(stack[:, a:b], scene[a:b], rnoise_e, step, span, niter, clip_sigma,
                         None if usable is None else usable[a:b], keep=(lo - a, hi - a), lines=lines)
        fitted[:, lo:hi], used[lo:hi] = part[0], part[1]
        parts.append(part[2])

    workers = max(1, min(len(strips), workers or os.cpu_count() or 1))
    if workers == 1:
        for bounds in strips:
            one(bounds)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(one, strips))
    sums = np.sum(parts, axis=0)
    chi = sums[0::2] / np.maximum(sums[1::2], 1)  # (before, after) x exposures
    _log.info("exposure-difference model: mean chi2 against the median %s -> %s (%.1f %% of the pixels used)",
              np.round(chi[0], 3).tolist(), np.round(chi[1], 3).tolist(), 100 * used.mean())
    return VariationFit(model=fitted, used=used, chi2=chi)


def _strips(ny: int, step: int, span: tuple[int, int], niter: int, rows: int,
            lines: bool = False) -> list[tuple[int, int, int, int]]:
    """Strips ``(lo, hi, a, b)``: rows [lo, hi) taken from a fit of rows [a, b), all block-aligned.

    The margin covers what one fit reaches (window sums and their mean over
    ``span`` blocks each side, the interpolation, the basis' derivatives and
    spikes, the clipping's dilation), ``niter`` times, in whole blocks.
    """
    per_fit = 2 * (span[0] // 2) + 3 + (LINE_SPAN // 2 + 2 if lines else 0)  # with the line ratios' reach
    reach = niter * per_fit + 1  # blocks
    margin = reach * step
    rows = max(step, rows // step * step)
    if ny <= rows + 2 * margin:
        return [(0, ny, 0, ny)]
    out = []
    for lo in range(0, ny, rows):
        hi = min(lo + rows, ny)
        out.append((lo, hi, max(0, lo - margin), min(ny, hi + margin)))
    return out


def _fit_rows(stack: np.ndarray, scene: np.ndarray, rnoise_e: float, step: int, span: tuple[int, int],
              niter: int, clip_sigma: float, usable: np.ndarray | None, keep: tuple[int, int], lines: bool = False):
    """The model of a block-aligned strip; returns its rows ``keep`` (fitted, used) and chi2 sums."""
    n, ny, nx = stack.shape
    pad = ((0, -ny % step), (0, -nx % step))  # whole blocks; the padding takes no part in the fit
    scene = np.pad(scene, pad, mode="edge")
    noise = sigma(scene, rnoise_e)
    inv_var = 1.0 / (noise * noise)
    # defective pixels (a bad column's wild values of both signs): far below zero in some exposure; they
    # leave the fit, and the scene and the basis take the mean of their valid neighbours there
    padded = np.pad(stack, ((0, 0),) + pad, mode="edge")
    defective = padded.min(axis=0) < -DEFECT_RNOISE * rnoise_e
    fill = near = None
    if defective.any():
        total = _box_sum(np.where(defective, 0, scene), (3, 3), "edge")
        count = _box_sum((~defective).astype(np.float32), (3, 3), "edge")
        fill = np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)
        near = ndimage.binary_dilation(defective, np.ones((3, 3), bool))
        scene = np.where(defective, fill, scene)
    # isolated spikes of the median (hot pixels, coincident hits) leave the fit: their derivatives would spread
    # them over the model around them (the basis scene replaces its own spikes, see _basis_scene)
    spikes = _spikes(scene, noise)
    keep_fit = ~spikes & ~defective
    keep_fit[ny:, :] = False
    keep_fit[:, nx:] = False
    if usable is not None:
        keep_fit[:ny, :nx] &= usable
    diffs = [padded[k] - scene for k in range(n)]
    used = keep_fit.copy()
    fitted = np.zeros((n,) + scene.shape, dtype=np.float32)
    for it in range(niter):
        basis = _regressors(_basis_scene(padded, fitted, noise, near, fill))
        weight = (inv_var * used).astype(np.float32)
        coefs = _local_coefficients(basis, weight, diffs, step, span)
        for k in range(n):
            fitted[k] = _evaluate(basis, coefs[k], step)
        if lines:
            _add_line_ratios(basis[0], diffs, fitted, weight, step)
        del basis, coefs, weight
        if it + 1 < niter:
            off = np.zeros(scene.shape, dtype=bool)
            for k in range(n):
                off |= np.abs(diffs[k] - fitted[k]) > clip_sigma * noise
            used = keep_fit & ~ndimage.binary_dilation(off, structure=np.ones((3, 3), bool))
    fitted -= fitted.mean(axis=0, dtype=np.float32)
    # a spike whose exposures agree is a detector feature (hot pixel): it does not vary with the scene,
    # and neither it nor its neighbours (whose derivatives it raises) take the model
    agree = padded.max(axis=0) - padded.min(axis=0) < AGREEMENT_SIGMA * noise
    del padded
    hot = ndimage.binary_dilation(agree & spikes, np.ones((3, 3), bool))
    fitted[:, hot] = 0
    r0, r1 = keep
    inner = np.zeros(used.shape, dtype=bool)
    inner[r0:r1] = True
    before, after = keep_fit & inner, used & inner
    sums = np.zeros((4, n))  # chi2 sums and counts before and after the model
    sums[1], sums[3] = before.sum(), after.sum()
    for k in range(n):
        sums[0, k] = np.sum(np.square(diffs[k][before] / noise[before]), dtype=np.float64)
        sums[2, k] = np.sum(np.square((diffs[k] - fitted[k])[after] / noise[after]), dtype=np.float64)
    return fitted[:, r0:r1, :nx], used[r0:r1, :nx], sums


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
    for k in range(1, len(stack)):
        np.minimum(limit, stack[k] - fitted[k], out=limit)
    limit += np.float32(BASIS_SIGMA) * noise
    total = np.zeros(limit.shape, dtype=np.float32)
    count = np.zeros(limit.shape, dtype=np.int64)
    for k in range(len(stack)):
        corrected = stack[k] - fitted[k]
        inside = corrected <= limit
        corrected *= inside
        total += corrected
        count += inside
    del corrected, inside, limit
    out = total / count
    if near is not None:
        out = np.where(near, fill, out)
    out = out.astype(np.float32, copy=False)
    ys, xs = np.nonzero(_spikes(out, noise))
    if ys.size:  # few pixels: the median of their neighbours there only
        yy, xx = neighbour_index(ys, xs, out.shape)
        out[ys, xs] = np.partition(out[yy, xx], 4, axis=1)[:, 4]  # upper middle of 8, as ndimage's median
    return out


def _spikes(scene: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Pixels of the scene ``SPIKE_SIGMA`` noise sigmas above all of their 8 neighbours, and sharper than any
    resolved peak: their excess over the highest neighbour is ``SPIKE_CONTRAST`` of their height over the
    lowest one (a point source or a sky-line spot one pixel wide has neighbours at ~0.6 of its peak)."""
    footprint = np.ones((3, 3), dtype=bool)
    footprint[1, 1] = False
    excess = scene - ndimage.maximum_filter(scene, footprint=footprint, mode="nearest")
    height = scene - ndimage.minimum_filter(scene, footprint=footprint, mode="nearest")
    return (excess > SPIKE_SIGMA * noise) & (excess > SPIKE_CONTRAST * height)
