"""Measurement of sub-pixel offsets between exposures.

Sign convention (same as the reference's ``mm_xy_offsets``): an offset
``(dx, dy)`` means that the content of an image appears displaced by ``+dx``
columns and ``+dy`` rows, i.e. towards larger numpy indices, relative to the
reference image.  :func:`~megara_crdetect.core.shift.shift_image` applies such a displacement and
:func:`measure_offsets` measures it, so that
``shift_image(reference, *measure_offsets(reference, [image])[0])`` models
``image``.  The two helpers :func:`neighbour_maximum` and
:func:`isolated_peaks` are shared with :mod:`megara_crdetect.core.fluxfactor`.
The translations themselves live in :mod:`megara_crdetect.core.shift` (and
are re-exported here).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import fft as sp_fft
from scipy import ndimage

from .shift import SPLINE_PAD, shift_image, shift_image_spline, shift_spline_coefficients, spline_coefficients

__all__ = ["SPLINE_PAD", "isolated_peaks", "measure_offsets", "neighbour_maximum", "neighbour_minimum", "shift_image",
           "shift_image_spline", "shift_spline_coefficients", "spline_coefficients"]

_log = logging.getLogger(__name__)

#: rows per chunk when accumulating the normal equations (bounds the memory)
_CHUNK_ROWS = 64
#: largest side of the (central) box used by the coarse cross-correlation
_CC_MAX_SIDE = 2048


# --------------------------------------------------------------------------
# helpers for the measurement
# --------------------------------------------------------------------------
def neighbour_maximum(data: np.ndarray, *, include_centre: bool = True) -> np.ndarray:
    """Maximum over the 3 x 3 neighbourhood of every pixel (edges replicated).

    Parameters
    ----------
    data : numpy.ndarray
        2-D array (any real or bool dtype; NaN propagates to its neighbours).
    include_centre : bool, optional
        If False, the maximum of the 8 neighbours only.

    Returns
    -------
    numpy.ndarray
        Array of the same shape and dtype.

    Notes
    -----
    Slicing-based equivalent of ``scipy.ndimage.maximum_filter(data, 3,
    mode="nearest")`` (with a ring footprint when ``include_centre`` is
    False), several times faster on large images.
    """
    return _neighbour_extreme(data, np.maximum, include_centre)


def neighbour_minimum(data: np.ndarray, *, include_centre: bool = True) -> np.ndarray:
    """Minimum over the 3 x 3 neighbourhood of every pixel (edges replicated); see :func:`neighbour_maximum`."""
    return _neighbour_extreme(data, np.minimum, include_centre)


def _neighbour_extreme(data: np.ndarray, extreme: np.ufunc, include_centre: bool) -> np.ndarray:
    pad = np.pad(data, 1, mode="edge")
    rows = extreme(extreme(pad[:, :-2], pad[:, 2:]), pad[:, 1:-1])
    out = extreme(rows[:-2], rows[2:])
    if include_centre:
        return extreme(out, rows[1:-1], out=out)
    return extreme(out, extreme(pad[1:-1, :-2], pad[1:-1, 2:]), out=out)


def isolated_peaks(data: np.ndarray, var_floor: float, *, nsigma: float = 5.0,
                   contrast: float = 2.0) -> np.ndarray:
    """Flag single-pixel spikes (hot pixels, one-pixel cosmic rays).

    Parameters
    ----------
    data : numpy.ndarray
        2-D image in electrons.
    var_floor : float
        Variance floor (read noise squared) in electrons**2.
    nsigma : float, optional
        Significance threshold.
    contrast : float, optional
        Required ratio to the brightest neighbour.

    Returns
    -------
    numpy.ndarray
        Boolean map, True where ``data - contrast * max(8 neighbours, 0)``
        exceeds ``nsigma * sqrt(max(data, 0) + var_floor)``.

    Notes
    -----
    Real features sampled with a FWHM >= ~2 px have neighbours at >= 0.5 of
    their peak and are never flagged.  Non-finite pixels are never flagged
    (callers treat them separately) and do not hide their neighbours.
    """
    work = np.where(np.isfinite(data), data, -np.inf).astype(np.float32, copy=False)
    nbmax = neighbour_maximum(work, include_centre=False)
    with np.errstate(invalid="ignore"):
        np.maximum(nbmax, 0.0, out=nbmax)
        sigma = np.sqrt(np.maximum(work, 0.0) + np.float32(var_floor))
        return work - np.float32(contrast) * nbmax > np.float32(nsigma) * sigma


def _parse_region(region: tuple[slice, slice] | None, shape: tuple[int, int]
                  ) -> tuple[int, int, int, int]:
    """Validate ``region`` and return (row0, row1, col0, col1), half-open."""
    if region is None:
        return 0, shape[0], 0, shape[1]
    if (not isinstance(region, tuple) or len(region) != 2
            or not all(isinstance(s, slice) for s in region)):
        msg = "region must be None or a tuple of two slices (rows, columns)"
        raise ValueError(msg)
    bounds = []
    for sl, n in zip(region, shape):
        start, stop, step = sl.indices(n)
        if step != 1 or stop - start < 8:
            msg = f"region slices must have step 1 and span >= 8 pixels, got {region}"
            raise ValueError(msg)
        bounds += [start, stop]
    return bounds[0], bounds[1], bounds[2], bounds[3]


def _coarse_candidates(ref: np.ndarray, img: np.ndarray, bad: np.ndarray,
                       max_shift: float, *, ncand: int = 4) -> list[tuple[int, int]]:
    """Integer (dx, dy) of the strongest cross-correlation maxima within ``max_shift``.

    Several candidates are returned (best first) because periodic structure
    (fibre traces every ~6.6 rows) gives near-equal peaks one period apart;
    the least-squares fit decides between them.
    """
    ny, nx = ref.shape
    good = ~bad
    if np.count_nonzero(good) < 64:
        msg = "region has fewer than 64 usable pixels (all masked or non-finite?)"
        raise ValueError(msg)
    from scipy.signal import windows  # imported here: scipy.signal takes 0.3 s to import

    win = np.outer(windows.tukey(ny, 0.25), windows.tukey(nx, 0.25)).astype(np.float32)
    a = np.where(good, ref - np.mean(ref[good]), 0.0).astype(np.float32) * win
    b = np.where(good, img - np.mean(img[good]), 0.0).astype(np.float32) * win
    spec = sp_fft.rfft2(b, workers=-1) * np.conj(sp_fft.rfft2(a, workers=-1))
    cc = sp_fft.irfft2(spec, s=(ny, nx), workers=-1)
    sy = np.fft.fftfreq(ny, 1.0 / ny).astype(int)
    sx = np.fft.fftfreq(nx, 1.0 / nx).astype(int)
    allowed = (np.abs(sy)[:, None] <= max_shift) & (np.abs(sx)[None, :] <= max_shift)
    cc[~allowed] = -np.inf
    peaks = (cc == ndimage.maximum_filter(cc, size=3, mode="wrap")) & allowed
    iy, ix = np.nonzero(peaks)
    order = np.argsort(cc[iy, ix])[::-1][:ncand]
    top = cc[iy[order[0]], ix[order[0]]]
    return [(int(sx[ix[j]]), int(sy[iy[j]])) for j in order
            if cc[iy[j], ix[j]] >= 0.5 * top or j == order[0]]


#: interpolation kernels of the fit model -> number of taps on each side
_KERNEL_RADIUS = {"linear": 1, "cubic": 2}


def _kernel_weights(d: np.ndarray | float, centre: int, kernel: str) -> np.ndarray:
    """Interpolation weights of the integer shifts ``centre - R .. centre + R``.

    ``linear`` is the hat function of :func:`shift_image`; ``cubic`` is the
    Keys (a = -0.5) cubic convolution kernel.  Valid for |d - centre| <= 1.
    """
    rad = _KERNEL_RADIUS[kernel]
    s = np.arange(centre - rad, centre + rad + 1, dtype=np.float64)
    t = np.abs(np.asarray(d, dtype=np.float64)[..., None] - s)
    if kernel == "linear":
        return np.clip(1.0 - t, 0.0, None)
    inner = (1.5 * t - 2.5) * t * t + 1.0
    outer = ((-0.5 * t + 2.5) * t - 4.0) * t + 2.0
    return np.where(t <= 1.0, inner, np.where(t < 2.0, outer, 0.0))


# --------------------------------------------------------------------------
# least-squares refinement
# --------------------------------------------------------------------------
@dataclass
class _Fit:
    """State of one offset fit (cutout coordinates)."""

    dx: float
    dy: float
    scale: float = 1.0
    bkg: float = 0.0
    npix: int = 0
    chi2: float = float("nan")


class _Problem:
    """Weighted fit of ``img ~ scale * shift(src, dx, dy) + bkg``.

    For a centre ``(cx, cy)`` the shifted source is a fixed linear combination
    (separable kernel weights) of the integer translations of ``src`` by
    ``(cx + i, cy + j)``, |i|, |j| <= R.  The weighted normal matrix of those
    nv = (2R + 1)**2 images, a constant and the image therefore gives chi2 for
    every (dx, dy) in the 2 x 2 px box around the centre at O(1) cost.
    """

    def __init__(self, src: np.ndarray, img: np.ndarray, bounds: tuple[int, int, int, int],
                 bad: tuple[np.ndarray, np.ndarray], var_floor: float, kernel: str,
                 independent: bool) -> None:
        # non-finite values are masked through ``bad``; zero them so that they
        # cannot reach the normal matrix (a copy only when needed)
        self.src = src if np.isfinite(src).all() else np.where(np.isfinite(src), src, 0.0)
        self.img = img if np.isfinite(img).all() else np.where(np.isfinite(img), img, 0.0)
        self.bounds = bounds
        self.bad_src, self.bad_img = bad
        r0, r1, c0, c1 = bounds
        #: fraction of usable image pixels, to size the row-block sampling
        self.usable_fraction = max(float(np.mean(~self.bad_img[r0:r1, c0:c1])), 1e-6)
        self.var_floor, self.kernel = var_floor, kernel
        #: noise of src and img independent -> correct chi2 for the smoothing
        #: of the src noise by the interpolation (see ``_chi2_grid``)
        self.independent = independent
        self.gamma = 0.0
        self.rad = _KERNEL_RADIUS[kernel]
        self.nv = (2 * self.rad + 1) ** 2

    def coef(self, dx: np.ndarray | float, dy: np.ndarray | float, cx: int, cy: int
             ) -> np.ndarray:
        """(..., nv) weights of the integer translations for shifts (dx, dy)."""
        wy = _kernel_weights(dy, cy, self.kernel)
        wx = _kernel_weights(dx, cx, self.kernel)
        return (wy[..., :, None] * wx[..., None, :]).reshape(wx.shape[:-1] + (self.nv,))

    def _chunks(self, cx: int, cy: int, max_pixels: int):
        """Yield (shifted source chunks, image chunk, usable mask) by row blocks.

        When the box holds more than ``max_pixels`` usable pixels only every
        k-th block of ``_CHUNK_ROWS`` rows is used (spread over the region).
        """
        r0, r1, c0, c1 = self.bounds
        ny, nx = self.src.shape
        rad = self.rad
        y0, y1 = max(r0, cy + rad), min(r1, ny + cy - rad)
        x0, x1 = max(c0, cx + rad), min(c1, nx + cx - rad)
        starts = list(range(y0, y1, _CHUNK_ROWS))
        per_block = _CHUNK_ROWS * max(x1 - x0, 1) * self.usable_fraction
        wanted = max(1, int(max_pixels / per_block))
        step = max(1, math.ceil(len(starts) / wanted))
        for ya in starts[(len(starts) - 1) % step // 2::step]:
            yb = min(ya + _CHUNK_ROWS, y1)
            views, bads = [], np.zeros((yb - ya, x1 - x0), dtype=bool)
            for sy in range(cy - rad, cy + rad + 1):
                for sx in range(cx - rad, cx + rad + 1):
                    sl = (slice(ya - sy, yb - sy), slice(x0 - sx, x1 - sx))
                    views.append(self.src[sl])
                    bads |= self.bad_src[sl]
            ok = ~(bads | self.bad_img[ya:yb, x0:x1])
            yield views, self.img[ya:yb, x0:x1], ok

    def normal_matrix(self, fit: _Fit, cx: int, cy: int, *, clip: float | None,
                      max_pixels: int) -> tuple[np.ndarray, int, float]:
        """Weighted normal matrix around (cx, cy) with residuals of ``fit``.

        Returns the (nv + 2)**2 matrix of [nv shifted sources, constant,
        image] with weights 1 / variance (variance = max(model, 0) + floor
        for the model of ``fit``), leaving out pixels whose normalised
        residual ``z`` exceeds ``clip`` (None: no clipping); the number of
        pixels used; and the robust (MAD) scale of ``z`` over all usable
        pixels, i.e. the quality of ``fit``.
        """
        coef = self.coef(fit.dx, fit.dy, cx, cy)
        nv = self.nv
        gram = np.zeros((nv + 2, nv + 2))
        npix, zsamples, gamma_sum = 0, [], 0.0
        for views, img, ok in self._chunks(cx, cy, max_pixels):
            vec = np.empty((nv + 2, int(np.count_nonzero(ok))))
            if vec.shape[1] == 0:
                continue
            for k, v in enumerate(views):
                vec[k] = v[ok]
            vec[nv] = 1.0
            vec[nv + 1] = img[ok]
            model = fit.scale * (coef @ vec[:nv]) + fit.bkg
            inv_sd = 1.0 / np.sqrt(np.maximum(model, 0.0) + self.var_floor)
            z = (vec[nv + 1] - model) * inv_sd
            zsamples.append(z[::3])
            use = np.ones(z.size, dtype=bool) if clip is None else np.abs(z) <= clip
            if self.independent:
                var_src = np.maximum(vec[nv // 2][use], 0.0) + self.var_floor
                gamma_sum += fit.scale ** 2 * float(np.sum(var_src * inv_sd[use] ** 2))
            vec *= np.where(use, inv_sd, 0.0)
            gram += vec @ vec.T
            npix += int(np.count_nonzero(use))
        self.gamma = gamma_sum / npix if npix else 0.0
        zcat = np.concatenate(zsamples) if zsamples else np.empty(0)
        if zcat.size == 0:
            return gram, 0, np.inf
        zscale = float(1.4826 * np.median(np.abs(zcat - np.median(zcat))))
        return gram, npix, zscale


def _chi2_grid(problem: _Problem, gram: np.ndarray, dxs: np.ndarray, dys: np.ndarray,
               cx: int, cy: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """chi2, scale and background (both profiled out) for arrays of (dx, dy)."""
    nv = problem.nv
    coef = problem.coef(dxs, dys, cx, cy)
    gvv, gv1, gvi = gram[:nv, :nv], gram[:nv, nv], gram[:nv, nv + 1]
    g11, g1i, gii = gram[nv, nv], gram[nv, nv + 1], gram[nv + 1, nv + 1]
    a11 = np.einsum("pi,ij,pj->p", coef, gvv, coef)
    a12 = coef @ gv1
    r1 = coef @ gvi
    det = a11 * g11 - a12 * a12
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = (g11 * r1 - a12 * g1i) / det
        bkg = (a11 * g1i - a12 * r1) / det
    chi2 = gii - scale * r1 - bkg * g1i
    if problem.gamma > 0.0:
        # the interpolated source noise has variance q = sum(coef**2) times
        # that of one source pixel (q < 1 between integer shifts), which would
        # lower chi2 at half-pixel shifts ("pixel locking"); divide by the
        # expected noise term 1 + gamma q (gamma = scaled source / image noise)
        chi2 = chi2 / (1.0 + problem.gamma * np.sum(coef * coef, axis=1))
    return np.where(det > 0, chi2, np.inf), scale, bkg


def _minimise(problem: _Problem, gram: np.ndarray, cx: int, cy: int) -> _Fit:
    """Minimise the profiled chi2 over the 2 x 2 px box around (cx, cy).

    Vectorised zooming grid search (steps 0.05, 0.005, 5e-4, 5e-5 px): robust
    to the slope discontinuities of the linear kernel at integer shifts.
    """
    bx, by, half = float(cx), float(cy), 1.0
    for npts in (41, 21, 21, 21):
        grid = np.linspace(-half, half, npts)
        gx, gy = (g.ravel() for g in np.meshgrid(bx + grid, by + grid))
        inside = (np.abs(gx - cx) <= 1.0) & (np.abs(gy - cy) <= 1.0)
        gx, gy = gx[inside], gy[inside]
        chi2, _, _ = _chi2_grid(problem, gram, gx, gy, cx, cy)
        best = int(np.argmin(chi2))
        bx, by = float(gx[best]), float(gy[best])
        half = grid[1] - grid[0]
    chi2, scale, bkg = _chi2_grid(problem, gram, np.array([bx]), np.array([by]), cx, cy)
    return _Fit(dx=bx, dy=by, scale=float(scale[0]), bkg=float(bkg[0]), chi2=float(chi2[0]))


def _refine(problem: _Problem, candidates: list[tuple[int, int]], opts: dict) -> _Fit:
    """Pick the best integer candidate, then iterate fit / re-centre / clip.

    Each candidate gets an unclipped fit on a small pixel sample; the one
    whose fit leaves the smallest robust residual scale wins.  Then: normal
    matrix (weights from the previous fit, clipping at ``kappa`` times the
    previous residual scale) -> minimise, until the shift moves by < 5e-4 px
    or ``maxiter`` passes.
    """
    kappa, cap = opts["kappa"], opts["max_pixels"]
    small = min(cap, 40_000)
    best, zscale = None, np.inf
    for cx, cy in candidates:
        gram, _, _ = problem.normal_matrix(_Fit(dx=float(cx), dy=float(cy)), cx, cy,
                                           clip=None, max_pixels=small)
        fit = _minimise(problem, gram, cx, cy)
        _, _, zs = problem.normal_matrix(fit, round(fit.dx), round(fit.dy), clip=None,
                                         max_pixels=small)
        if zs < zscale:
            best, zscale = fit, zs
    if best is None:
        msg = "no usable pixels left for the offset fit (region too small or masked?)"
        raise ValueError(msg)
    fit = best
    for _ in range(opts["maxiter"]):
        cx, cy = round(fit.dx), round(fit.dy)
        gram, npix, zs = problem.normal_matrix(fit, cx, cy, clip=kappa * max(zscale, 1e-6),
                                               max_pixels=cap)
        new = _minimise(problem, gram, cx, cy)
        new.npix, zscale = npix, zs
        moved = max(abs(new.dx - fit.dx), abs(new.dy - fit.dy))
        fit = new
        if moved < 5e-4:
            break
    return fit


def _fit_pair(src: np.ndarray, img: np.ndarray, bad_src: np.ndarray, bad_img: np.ndarray,
              bounds: tuple[int, int, int, int], opts: dict, *, independent: bool) -> _Fit:
    """Offset of ``img`` relative to ``src`` (cutouts); ``opts`` holds the options.

    ``independent``: the noise of ``src`` and ``img`` is independent (two
    different exposures), which enables the pixel-locking correction.
    """
    inner = []
    for lo, hi in ((bounds[0], bounds[1]), (bounds[2], bounds[3])):
        extra = max(0, (hi - lo - _CC_MAX_SIDE) // 2)
        inner.append(slice(lo + extra, hi - extra))
    inner = tuple(inner)
    cands = _coarse_candidates(src[inner], img[inner], (bad_src | bad_img)[inner],
                               opts["max_shift"])
    problem = _Problem(src, img, bounds, (bad_src, bad_img), opts["var_floor"],
                       opts["kernel"], independent)
    fit = _refine(problem, cands, opts)
    _log.debug("offset fit: candidates %s -> dx=%.4f dy=%.4f scale=%.5f bkg=%.3f "
               "npix=%d chi2/npix=%.3f", cands, fit.dx, fit.dy, fit.scale, fit.bkg,
               fit.npix, fit.chi2 / max(fit.npix, 1))
    return fit


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------
def _as_image_list(reference: np.ndarray, images) -> list[np.ndarray]:
    ref = np.asarray(reference)
    if ref.ndim != 2:
        msg = f"reference must be 2-D, got shape {ref.shape}"
        raise ValueError(msg)
    if isinstance(images, np.ndarray) and images.ndim != 3:
        msg = "images must be a 3-D array (N, ny, nx) or a sequence of 2-D arrays"
        raise ValueError(msg)
    imgs = [np.asarray(im) for im in images]
    if not imgs:
        msg = "images must contain at least one image"
        raise ValueError(msg)
    for k, im in enumerate(imgs):
        if im.shape != ref.shape:
            msg = f"images[{k}] has shape {im.shape}, expected {ref.shape} (reference)"
            raise ValueError(msg)
    return imgs


def _check_options(rnoise_e: float, max_shift: float, kappa: float, maxiter: int,
                   max_pixels: int, min_snr: float) -> None:
    for name, val in (("rnoise_e", rnoise_e), ("max_shift", max_shift), ("kappa", kappa),
                      ("min_snr", min_snr)):
        if not np.isfinite(val) or val < 0 or (name != "rnoise_e" and val == 0):
            msg = f"{name} must be a finite positive number, got {val}"
            raise ValueError(msg)
    if int(maxiter) < 1:
        msg = f"maxiter must be >= 1, got {maxiter}"
        raise ValueError(msg)
    if int(max_pixels) < 1000:
        msg = f"max_pixels must be >= 1000, got {max_pixels}"
        raise ValueError(msg)


def _pick_anchor(ref: np.ndarray, imgs: list[np.ndarray]) -> int:
    """Index of the image closest to the reference (median |image - reference|)."""
    step = max(1, int(np.sqrt(ref.size / 250_000)))
    sub = (slice(None, None, step), slice(None, None, step))
    dist = []
    for im in imgs:
        diff = np.abs(np.asarray(im[sub], dtype=np.float32) - ref[sub])
        dist.append(np.nanmedian(diff) if np.isfinite(diff).any() else np.inf)
    return int(np.argmin(dist))


def _clean_anchor(anchor: np.ndarray, ref: np.ndarray, user_bad: np.ndarray,
                  var_floor: float, max_shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Copy of the anchor exposure with its cosmic rays replaced from ``ref``.

    Spikes present in both the anchor and the reference are hot pixels and
    are masked.  If the anchor is aligned with the reference (their
    cross-correlation peaks at integer offset (0, 0)), pixels of the anchor
    above ``s * (5 x 5 maximum of ref)`` by 5 sigma, or spikes absent from the
    reference, are cosmic rays: they and their 8 neighbours take the value
    ``s * ref``, ``s`` being the median anchor/ref ratio of bright pixels.  A
    cosmic ray in the model source would otherwise contaminate every model
    pixel whose kernel touches it.  Otherwise (offsets of pixels between the
    exposures: the median is no translate of the anchor) only the spikes are
    masked.

    Returns
    -------
    clean, bad : numpy.ndarray
        float32 cleaned anchor and boolean map of unusable source pixels.
    """
    peaks_a = isolated_peaks(anchor, var_floor)
    hot = peaks_a & isolated_peaks(ref, var_floor)
    finite = np.isfinite(anchor) & np.isfinite(ref)
    shift = _coarse_candidates(ref, anchor, hot | ~finite, max_shift)[0]
    if shift != (0, 0):
        _log.debug("anchor not aligned with the reference (integer offset %s): "
                   "only spikes masked", shift)
        return anchor, user_bad | ~np.isfinite(anchor) | peaks_a
    with np.errstate(invalid="ignore", divide="ignore"):
        bright = finite & ~hot & (ref > 10.0 * np.sqrt(np.maximum(ref, 0.0) + var_floor))
        scale = (float(np.median(anchor[bright] / ref[bright]))
                 if np.count_nonzero(bright) > 100 else 1.0)
        env = np.where(finite, ref, -np.inf).astype(np.float32)
        env = scale * neighbour_maximum(neighbour_maximum(env))
        high = finite & (anchor - env > 5.0 * np.sqrt(np.maximum(env, 0.0) + var_floor))
    crs = neighbour_maximum(high | (peaks_a & ~hot)) & np.isfinite(ref)
    clean = np.where(crs, scale * ref, anchor).astype(np.float32)
    _log.debug("anchor cleaning: scale %.4f, %d cosmic-ray pixels replaced, %d hot pixels",
               scale, int(crs.sum()), int(hot.sum()))
    return clean, user_bad | ~np.isfinite(clean) | hot


def _informative(ref: np.ndarray, bounds: tuple[int, int, int, int], var_floor: float,
                 min_snr: float) -> np.ndarray:
    """Pixels worth fitting: within 2 px of significant structure of ``ref``.

    Significant: more than ``min_snr`` sigma (variance = max(ref, 0) + floor)
    above the median level of the region, single-pixel spikes excepted.
    Noise-only pixels carry no offset information, but fitting them pulls the
    result towards half-pixel shifts (interpolating a noisy source smooths its
    noise, which lowers chi2) and shrinks the fitted scale.  If fewer than
    500 pixels qualify, all pixels are used.
    """
    inner = ref[bounds[0]:bounds[1], bounds[2]:bounds[3]]
    step = max(1, int(np.sqrt(inner.size / 250_000)))
    level = float(np.nanmedian(inner[::step, ::step]))
    with np.errstate(invalid="ignore"):
        sig = ref - level > min_snr * np.sqrt(np.maximum(ref, 0.0) + var_floor)
    sig &= ~isolated_peaks(ref, var_floor)
    sig = neighbour_maximum(neighbour_maximum(sig))
    nsig = int(np.count_nonzero(sig[bounds[0]:bounds[1], bounds[2]:bounds[3]]))
    if nsig < 500:
        _log.warning("only %d informative pixels (min_snr=%g): fitting all pixels", nsig,
                     min_snr)
        return np.ones(ref.shape, dtype=bool)
    _log.debug("offset fit uses %d informative pixels of %d", nsig, inner.size)
    return sig


def _pairwise(ref_c: np.ndarray, imgs_c: list[np.ndarray], bads: list[np.ndarray],
              user_bad: np.ndarray, useless: np.ndarray, bounds: tuple[int, int, int, int],
              opts: dict, zero_point: str) -> np.ndarray:
    """Offsets of every image against the anchor, minus the zero point.

    ``bads``: per-image unusable pixels; ``user_bad``: the caller's mask;
    ``useless``: pixels without structure (left out of every fit).
    """
    a = _pick_anchor(ref_c, imgs_c)
    src, bad_src = _clean_anchor(imgs_c[a], ref_c, user_bad, opts["var_floor"],
                                 opts["max_shift"])
    out = np.zeros((len(imgs_c), 2))
    for k, img in enumerate(imgs_c):
        if k != a:
            fit = _fit_pair(src, img, bad_src, bads[k], bounds, opts, independent=True)
            out[k] = fit.dx, fit.dy
    if zero_point == "reference":
        bad_ref = (user_bad | useless | ~np.isfinite(ref_c)
                   | isolated_peaks(ref_c, opts["var_floor"]))
        fit = _fit_pair(src, ref_c, bad_src, bad_ref, bounds, opts, independent=False)
        zero = np.array([fit.dx, fit.dy])
    else:
        zero = np.median(out, axis=0)
    _log.debug("pairwise offsets: anchor image %d, zero point (%s) at (%.4f, %.4f)",
               a + 1, zero_point, zero[0], zero[1])
    if zero_point == "reference" and np.ptp(out, axis=0).max() > 2.0:
        _log.warning("offsets between exposures exceed 2 px: the median is not a "
                     "translate of any exposure; zero_point='median' is more robust")
    return out - zero


def measure_offsets(reference: np.ndarray, images: Sequence[np.ndarray] | np.ndarray, *,
                    region: tuple[slice, slice] | None = None,
                    mask: np.ndarray | None = None, rnoise_e: float = 0.0,
                    pairwise: bool = True, zero_point: str = "median",
                    kernel: str = "cubic",
                    min_snr: float = 5.0, max_shift: float = 4.0, kappa: float = 5.0,
                    maxiter: int = 6, max_pixels: int = 2_000_000) -> np.ndarray:
    """Measure the sub-pixel offset of each image relative to a reference.

    Parameters
    ----------
    reference : numpy.ndarray
        Reference image (normally the median of the stack), shape (ny, nx),
        in electrons.
    images : numpy.ndarray or sequence of numpy.ndarray
        The N exposures, a (N, ny, nx) array or a sequence of (ny, nx) arrays.
    region : tuple of two slices, optional
        0-based numpy region ``(rows, columns)``, e.g.
        ``(slice(650, 733), slice(213, 320))``; steps must be 1 and each side
        >= 8 px.  Pixels just outside it are used as interpolation support.
        None (default) = whole image.  FITS regions are converted by the caller.
    mask : numpy.ndarray of bool, optional
        (ny, nx) map of pixels to ignore (True = ignore), e.g. known bad
        pixels.  Applied to every image and, through the shift, to the model.
    rnoise_e : float, optional
        Read noise in electrons (weights: variance = max(model, 0) + rnoise_e**2,
        floored at 1 e-**2).
    pairwise : bool, optional
        If True (default) measure every image against one exposure (the
        anchor: the image closest to ``reference``, cleaned of cosmic rays)
        and subtract the zero point; if False (or for a single image) fit
        every image directly against ``reference``.  See Notes.
    zero_point : {"median", "reference"}, optional
        Pairwise mode only: position subtracted from the exposures' positions.
        "median" (default): the per-axis median of the exposures' positions.
        A median image follows, pixel by pixel, the exposure with the middle
        value, so its effective position is that median position; this choice
        needs no fit against the median and is robust.  "reference": the
        offset of ``reference`` itself fitted against the anchor (literal, but
        that fit mixes correlated noise - the median contains the anchor - and
        on faint data it locks towards half-pixel values; measured 0.35 px off
        on real long-slit frames).
    kernel : {"cubic", "linear"}, optional
        Interpolation kernel of the fit model: "cubic" (Keys, default) is the
        most accurate against truth (<= 0.01 px on MEGARA-like frames);
        "linear" is the kernel of :func:`shift_image`, i.e. gives the offsets
        with which ``shift_image`` best reproduces the images (up to ~0.02 px
        different for quarter-pixel offsets).
    min_snr : float, optional
        Only pixels within 2 px of reference pixels more than ``min_snr``
        sigma above the median level of the region are fitted (default 5);
        noise-only pixels would bias the fit towards half-pixel shifts.
    max_shift : float, optional
        Largest |dx|, |dy| searched by the coarse cross-correlation (default
        4 px, less than the MEGARA fibre pitch; limited to a quarter of the
        region size).
    kappa : float, optional
        Clipping threshold for outliers, in robust sigmas of the residuals.
    maxiter : int, optional
        Maximum number of clip/refit iterations per fit.
    max_pixels : int, optional
        Cap on the pixels used by the least-squares fit: larger regions are
        sampled in blocks of rows spread over the region (default 2e6; a
        global translation is over-determined long before that).

    Returns
    -------
    numpy.ndarray
        float64 array (N, 2) with ``(dx, dy)`` per image: the content of image
        k appears displaced by ``(+dx, +dy)`` pixels with respect to
        ``reference`` (positive towards larger column / row index), the same
        meaning as the arguments of :func:`shift_image`.  With the default
        ``zero_point="median"`` the position of ``reference`` is taken to be
        the per-axis median of the exposures' positions.

    Raises
    ------
    ValueError
        For inconsistent shapes, a bad ``region`` or bad numeric options.

    Notes
    -----
    Each fit (``img`` against a model source ``src``):

    1. single-pixel spikes (hot pixels, one-pixel cosmic rays), non-finite
       values, ``mask`` and pixels far from significant structure (see
       ``min_snr``) are masked;
    2. integer candidates: strongest peaks of the FFT cross-correlation of
       the mean-subtracted, Tukey-windowed region within ``max_shift``;
    3. weighted least squares (weights 1 / variance of the model) of
       ``img = s * shift(src, dx, dy) + b`` with free scale ``s`` (flux
       factors do not bias the offsets) and background ``b``, ``shift``
       being separable interpolation with ``kernel``.  Within 1 px of an
       integer centre the shifted source is a fixed combination of 9 (linear)
       or 25 (cubic) integer translations, so one pass over the pixels builds
       a small normal matrix from which chi2 (with ``s`` and ``b`` profiled
       out) is evaluated in O(1) for any (dx, dy); it is minimised by a
       zooming grid search to 5e-5 px.  The candidate with the smallest
       robust residual scale wins; residuals beyond ``kappa`` robust sigmas
       (cosmic rays, hot pixels smeared by the shift) are clipped and the fit
       repeated until it moves by < 5e-4 px.

    A median image is, pixel by pixel, a mixture of the shifted exposures, so
    a direct fit of an exposure against it is biased by a few 0.01 px
    (measured up to 0.047 px for 0.5 px offsets).  The pairwise mode fits
    exposures against a single exposure (a pure translate, whose cosmic rays
    are replaced from ``reference`` so they do not spread through the
    kernel), which keeps the error near 0.01 px.  In these fits the noise of
    source and image is independent, and chi2 is divided by its expected
    noise term ``1 + gamma * sum(coef**2)`` (the interpolated source noise is
    smaller between integer shifts), which removes the bias towards
    half-pixel shifts on faint data.  Periodic structure (fibre traces) makes the coarse step
    ambiguous by one period; the least-squares comparison of the
    candidates resolves it.  Unlike the reference tool (scikit-image phase
    correlation on a 1/100 px grid, errors up to 0.25 px) the result is not
    quantised.
    """
    imgs = _as_image_list(reference, images)
    ref = np.asarray(reference, dtype=np.float32)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != ref.shape:
            msg = f"mask has shape {mask.shape}, expected {ref.shape}"
            raise ValueError(msg)
    _check_options(rnoise_e, max_shift, kappa, maxiter, max_pixels, min_snr)
    if zero_point not in ("reference", "median"):
        msg = f"zero_point must be 'reference' or 'median', got {zero_point!r}"
        raise ValueError(msg)
    if kernel not in _KERNEL_RADIUS:
        msg = f"kernel must be one of {sorted(_KERNEL_RADIUS)}, got {kernel!r}"
        raise ValueError(msg)
    r0, r1, c0, c1 = _parse_region(region, ref.shape)
    max_shift = min(float(max_shift), (r1 - r0) / 4.0, (c1 - c0) / 4.0)
    opts = {"max_shift": max_shift, "var_floor": max(float(rnoise_e) ** 2, 1.0),
            "kappa": float(kappa), "maxiter": int(maxiter), "kernel": kernel,
            "max_pixels": int(max_pixels)}
    margin = math.ceil(max_shift) + 2
    cut = (slice(max(r0 - margin, 0), min(r1 + margin, ref.shape[0])),
           slice(max(c0 - margin, 0), min(c1 + margin, ref.shape[1])))
    bounds = (r0 - cut[0].start, r1 - cut[0].start, c0 - cut[1].start, c1 - cut[1].start)
    user_bad = np.zeros(ref[cut].shape, dtype=bool) if mask is None else mask[cut]
    ref_c = ref[cut]
    imgs_c = [np.asarray(im[cut], dtype=np.float32) for im in imgs]
    var_floor = opts["var_floor"]
    useless = ~_informative(ref_c, bounds, var_floor, float(min_snr))
    bads = [user_bad | useless | ~np.isfinite(im) | isolated_peaks(im, var_floor)
            for im in imgs_c]
    if pairwise and len(imgs) > 1:
        out = _pairwise(ref_c, imgs_c, bads, user_bad, useless, bounds, opts, zero_point)
    else:
        bad_ref = user_bad | ~np.isfinite(ref_c) | isolated_peaks(ref_c, var_floor)
        out = np.zeros((len(imgs), 2))
        for k, img in enumerate(imgs_c):
            fit = _fit_pair(ref_c, img, bad_ref, bads[k], bounds, opts, independent=False)
            out[k] = fit.dx, fit.dy
    for k, (dx, dy) in enumerate(out):
        _log.debug("offset image %d: dx=%+.4f dy=%+.4f", k + 1, dx, dy)
    return out
