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
noise of its own: on equivalent exposures it is zero almost everywhere.  The fitted
part minus its mean over the exposures (only the differences between
exposures matter, and a common part, e.g. from the noise of ``m`` itself,
cancels) is real variation: it is subtracted from each exposure before the
detection, which then sees exposures that differ by noise and cosmic rays
only.

The coefficients are solved at the centres of blocks of ``step`` x ``step``
pixels from sums over a window of blocks, and interpolated bilinearly; the
normal matrix is the same for every exposure and is inverted once per
iteration.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import chi2 as _chi2

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
#: Relative ridge added to the diagonal of the normalised normal equations (numerical safety only).
RIDGE = 1e-6


@dataclass
class VariationFit:
    """Result of :func:`fit_variations`.

    Attributes
    ----------
    model : ndarray, shape (N, ny, nx), float32
        Fitted variation of every exposure (electrons), summing to zero over
        the exposures; ``stack - model`` are the exposures brought onto one scene.
    used : ndarray of bool, shape (ny, nx)
        Pixels that took part in the last fit.
    chi2 : ndarray, shape (2, N)
        Mean squared noise-normalised residual of each exposure against the
        median over the used pixels, before and after the model.
    """

    model: np.ndarray
    used: np.ndarray
    chi2: np.ndarray


def scene_regressors(scene: np.ndarray) -> list[np.ndarray]:
    """The local basis of the model: 1, m, dm/dx, dm/dy, d2m/dx2, d2m/dy2 (float32, edges replicated)."""
    m = np.asarray(scene, dtype=np.float32)
    p = np.pad(m, 1, mode="edge")
    c = p[1:-1, 1:-1]
    left, right, down, up = p[1:-1, :-2], p[1:-1, 2:], p[:-2, 1:-1], p[2:, 1:-1]
    return [np.ones_like(m), m, 0.5 * (right - left), 0.5 * (up - down), right - 2 * c + left, up - 2 * c + down]


def _block_sums(image: np.ndarray, step: int) -> np.ndarray:
    """Sums over blocks of ``step`` x ``step`` pixels (float64; the image is zero-padded to whole blocks)."""
    ny, nx = image.shape
    by, bx = -(-ny // step), -(-nx // step)
    if (by * step, bx * step) != (ny, nx):
        image = np.pad(image, ((0, by * step - ny), (0, bx * step - nx)))
    rows = image.reshape(by, step, bx * step).sum(axis=1)
    return rows.reshape(by, bx, step).sum(axis=2).astype(np.float64)


def _window_sums(image: np.ndarray, step: int, span: tuple[int, int]) -> np.ndarray:
    """Sums over ``span`` blocks (rows, columns) centred on every block."""
    return ndimage.uniform_filter(_block_sums(image, step), size=span, mode="constant") * (span[0] * span[1])


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
    nb = None
    rhs = []
    for i, g in enumerate(regressors):
        wg = weight if g is None else weight * g
        if nb is None:
            nb = _block_sums(wg, step).shape
            a = np.empty(nb + (npar, npar))
            rhs = [np.empty(nb + (npar,)) for _ in targets]
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
    significant = chi2 > _chi2.isf(SIGNIFICANCE, npar)
    coef_s *= np.where(significant, 1.0 - npar / np.maximum(chi2, 1e-12), 0.0)[..., None]
    coef = np.moveaxis(coef_s * scale, -1, 0)
    # every window containing a block fits it: the block takes the mean of their fits (no extrapolation)
    return ndimage.uniform_filter(coef, size=(1,) + span, mode="nearest")


def _interpolator(shape: tuple[int, int], ncoef: tuple[int, int], step: int):
    """Bilinear interpolation from block centres to every pixel: returns ``f(c, out)``."""
    centre = (step - 1) / 2

    def axis(n: int, nc: int):
        pos = np.clip((np.arange(n, dtype=np.float32) - centre) / step, 0, nc - 1)
        lo = np.minimum(pos.astype(np.int32), max(nc - 2, 0))
        return lo, np.minimum(lo + 1, nc - 1), (pos - lo).astype(np.float32)

    y0, y1, fy = axis(shape[0], ncoef[0])
    x0, x1, fx = axis(shape[1], ncoef[1])
    fy, fx = fy[:, None], fx[None, :]

    def interpolate(c: np.ndarray, out: np.ndarray) -> np.ndarray:
        along = c[:, x0] * (1 - fx) + c[:, x1] * fx  # (by, nx)
        np.multiply(along[y0], 1 - fy, out=out)
        out += along[y1] * fy
        return out

    return interpolate


def _evaluate(basis: list[np.ndarray], coef: np.ndarray, step: int) -> np.ndarray:
    """The model ``sum_p g_p c_p`` at every pixel, the coefficients interpolated one plane at a time."""
    shape = basis[0].shape
    interpolate = _interpolator(shape, coef.shape[1:], step)
    out = np.zeros(shape, dtype=np.float32)
    plane = np.empty(shape, dtype=np.float32)
    for g, c in zip([None] + list(basis), coef.astype(np.float32)):
        if not c.any():  # an all-zero plane adds nothing
            continue
        interpolate(c, plane)
        if g is not None:
            plane *= g
        out += plane
    return out


def fit_variations(stack: np.ndarray, scene: np.ndarray, rnoise_e: float, *, window: int | tuple = 15,
                   step: int | None = None, niter: int = 3, clip_sigma: float = CLIP_SIGMA,
                   usable: np.ndarray | None = None) -> VariationFit:
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

    Returns
    -------
    VariationFit
    """
    n, ny, nx = stack.shape
    win = (window, window) if np.isscalar(window) else tuple(window)
    step = step or max(1, min(win) // 3)
    span = tuple(max(1, int(round(w / step))) | 1 for w in win)  # odd numbers of blocks
    pad = ((0, -ny % step), (0, -nx % step))  # whole blocks; the padding takes no part in the fit
    scene = np.pad(np.asarray(scene, dtype=np.float32), pad, mode="edge")
    noise = sigma(scene, rnoise_e)
    inv_var = 1.0 / (noise * noise)
    # defective pixels (a bad column's wild values of both signs): far below zero in some exposure; they
    # leave the fit, and the scene and the basis take the mean of their valid neighbours there
    padded = np.pad(stack, ((0, 0),) + pad, mode="edge")
    defective = padded.min(axis=0) < -DEFECT_RNOISE * rnoise_e
    fill = near = None
    if defective.any():
        valid = (~defective).astype(np.float32)
        mean = ndimage.uniform_filter(np.where(defective, 0, scene), 3, mode="nearest")
        frac = ndimage.uniform_filter(valid, 3, mode="nearest")
        fill = np.where(frac > 0, mean / np.maximum(frac, 1e-6), 0).astype(np.float32)
        near = ndimage.binary_dilation(defective, np.ones((3, 3), bool))
        scene = np.where(defective, fill, scene)
    # isolated spikes of the median (hot pixels, coincident hits) leave the fit: their derivatives would spread
    # them over the model around them (the basis scene replaces its own spikes, see _basis_scene)
    spikes = _spikes(scene, noise)
    keep = ~spikes & ~defective
    keep[ny:, :] = False
    keep[:, nx:] = False
    if usable is not None:
        keep[:ny, :nx] &= usable
    diffs = [padded[k] - scene for k in range(n)]
    chi_before = np.array([np.mean((d[keep] / noise[keep]) ** 2) for d in diffs])
    used = keep.copy()
    fitted = np.zeros((n,) + scene.shape, dtype=np.float32)
    for it in range(niter):
        basis = _regressors(_basis_scene(padded, fitted, noise, near, fill))
        coefs = _local_coefficients(basis, (inv_var * used).astype(np.float32), diffs, step, span)
        for k in range(n):
            fitted[k] = _evaluate(basis, coefs[k], step)
        del basis, coefs
        if it + 1 < niter:
            off = np.zeros(scene.shape, dtype=bool)
            for k in range(n):
                off |= np.abs(diffs[k] - fitted[k]) > clip_sigma * noise
            used = keep & ~ndimage.binary_dilation(off, structure=np.ones((3, 3), bool))
    fitted -= fitted.mean(axis=0, dtype=np.float32)
    # a spike whose exposures agree is a detector feature (hot pixel): it does not vary with the scene,
    # and neither it nor its neighbours (whose derivatives it raises) take the model
    agree = padded.max(axis=0) - padded.min(axis=0) < AGREEMENT_SIGMA * noise
    del padded
    hot = ndimage.binary_dilation(agree & spikes, np.ones((3, 3), bool))
    fitted[:, hot] = 0
    chi_after = np.array([np.mean(((diffs[k] - fitted[k])[used] / noise[used]) ** 2) for k in range(n)])
    fitted, used = np.ascontiguousarray(fitted[:, :ny, :nx]), used[:ny, :nx]
    _log.info("exposure-difference model: mean chi2 against the median %s -> %s (%.1f %% of the pixels used)",
              np.round(chi_before, 3).tolist(), np.round(chi_after, 3).tolist(), 100 * used.mean())
    return VariationFit(model=fitted, used=used, chi2=np.stack([chi_before, chi_after]))


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
