"""Relative flux factors between exposures (transparency / exposure changes).

The factor ``f_k`` of exposure ``k`` is its cosmic-ray-cleaned flux over the
area with significant signal, relative to the median flux of the exposures
(median of the factors = 1).  On bright pixels the median image is the
exposure of median flux, so ``S_k ~= f_k * M`` with ``M`` the median image:
with true factors 0.8 / 1.0 / 1.2 the estimates are 0.80 / 1.00 / 1.20
(measured within 0.003).  Flux sums, unlike per-pixel ratios, are insensitive
to sub-pixel offsets between the exposures.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from megara_crdetect.core.offsets import isolated_peaks, neighbour_maximum

__all__ = ["FluxFactorFit", "estimate_flux_factors", "fit_flux_factors",
           "image_number_at_median", "TooFewSignificantPixels"]


class TooFewSignificantPixels(ValueError):
    """The median has too few pixels well above its noise to measure flux ratios (faint frames)."""

_log = logging.getLogger(__name__)

#: relative margin above the local maximum of the prediction before a pixel can
#: be a cosmic ray (sampling phase of a 0.5 px shifted, ~2.8 px FWHM profile
#: changes the peak pixel by up to ~30 %)
_ENV_MARGIN = 0.5

#: rows per block in :func:`image_number_at_median`
_BLOCK_ROWS = 256


@dataclass(frozen=True)
class FluxFactorFit:
    """Result of :func:`fit_flux_factors`.

    Attributes
    ----------
    factors : numpy.ndarray
        (N,) flux factors relative to the median image (median factor = 1).
    uncertainties : numpy.ndarray
        (N,) one-sigma photon + read noise of each factor (from the noise of
        the flux sums; the normalisation and systematic errors, ~0.002 for
        0.5 px offsets, are not included).
    npix : numpy.ndarray
        (N,) number of pixels summed for each exposure, not counting the
        cosmic-ray pixels (which were replaced by the prediction).
    signal : numpy.ndarray
        (m,) median-image values at a regular subsample of the summed area
        (for diagnostic plots).
    ratio : numpy.ndarray
        (N, m) ratio ``S_k / signal`` at the same pixels (raw: with sub-pixel
        offsets it scatters widely around the factor at steep features).
    used : numpy.ndarray
        (N, m) bool, False where the pixel was flagged as a cosmic ray.
    """

    factors: np.ndarray
    uncertainties: np.ndarray
    npix: np.ndarray
    signal: np.ndarray
    ratio: np.ndarray
    used: np.ndarray


def _validate(stack: np.ndarray, median: np.ndarray, region_mask: np.ndarray | None,
              rnoise_e: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check the arguments and return (stack, median, usable-pixel mask)."""
    stack = np.asarray(stack)
    median = np.asarray(median)
    if stack.ndim != 3 or stack.shape[0] < 2:
        msg = f"stack must be a (N >= 2, ny, nx) array, got shape {stack.shape}"
        raise ValueError(msg)
    if median.shape != stack.shape[1:]:
        msg = f"median has shape {median.shape}, expected {stack.shape[1:]}"
        raise ValueError(msg)
    if not np.isfinite(rnoise_e) or rnoise_e < 0:
        msg = f"rnoise_e must be a finite number >= 0, got {rnoise_e}"
        raise ValueError(msg)
    usable = np.isfinite(median)
    if region_mask is not None:
        region_mask = np.asarray(region_mask)
        if region_mask.shape != median.shape or region_mask.dtype != bool:
            msg = (f"region_mask must be a boolean array of shape {median.shape}, got "
                   f"{region_mask.dtype} {region_mask.shape}")
            raise ValueError(msg)
        usable &= region_mask
    return stack, median, usable


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation with a (2 radius + 1)**2 square."""
    for _ in range(radius):
        mask = neighbour_maximum(mask)
    return mask


def _flux_area(median: np.ndarray, usable: np.ndarray, spikes: np.ndarray, var_floor: float,
               min_snr: float, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels whose flux is summed, and the significant core of that area.

    Core: ``median > min_snr * sqrt(max(median, 0) + rnoise**2)``.  Area: the
    core grown by ``grow`` pixels (so that whole features, with their wings,
    are summed).  Single-pixel spikes of the median (hot pixels, identical in
    every exposure, which would pull every factor towards 1; ``spikes``) are
    excluded.
    """
    with np.errstate(invalid="ignore"):
        core = usable & ~spikes & (median > min_snr * np.sqrt(np.maximum(median, 0.0)
                                                               + var_floor))
    area = _dilate(core, grow) if grow > 0 else core
    return area & usable & ~spikes, core


def _median_of_others(stack: np.ndarray, factors: np.ndarray, k: int) -> np.ndarray:
    """Flux-normalised median (float32) of all exposures except ``k``."""
    others = [j for j in range(stack.shape[0]) if j != k]
    if len(others) == 1:
        return (stack[others[0]] / np.float32(factors[others[0]])).astype(np.float32)
    if len(others) == 2:
        a, b = others
        return (0.5 * (stack[a] / np.float32(factors[a]) + stack[b] / np.float32(factors[b]))
                ).astype(np.float32)
    scaled = stack[others] / factors[others, None, None].astype(np.float32)
    return np.median(scaled, axis=0).astype(np.float32)


def _cosmic_rays(image: np.ndarray, ref: np.ndarray, factor: float, peaks: np.ndarray,
                 var_floor: float, nsigma: float) -> np.ndarray:
    """Cosmic-ray pixels of one exposure, given the prediction ``factor * ref``.

    A pixel is a cosmic ray when it is a single-pixel spike absent from the
    median (``peaks``), or when it exceeds ``(1 + _ENV_MARGIN) * factor *
    (3 x 3 maximum of ref)`` by ``nsigma`` sigma (the local maximum and the
    margin tolerate sub-pixel offsets and sampling-phase differences between
    exposures).  Neighbours of a hit more than 2 sigma above ``factor`` times
    the local maximum are flagged too (halo).
    """
    env = neighbour_maximum(ref)
    env *= np.float32(factor)
    with np.errstate(invalid="ignore"):
        sigma = np.sqrt(np.maximum(env, 0.0) + np.float32(var_floor))
        hits = image - np.float32(1.0 + _ENV_MARGIN) * env > np.float32(nsigma) * sigma
        halo = image - env > 2.0 * sigma
    hits |= peaks
    return hits | (_dilate(hits, 1) & halo)


def _flux_sums(stack: np.ndarray, factors: np.ndarray, area: np.ndarray,
               peaks: list[np.ndarray], var_floor: float, nsigma: float
               ) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Cosmic-ray-cleaned flux of every exposure over ``area`` and its variance.

    Cosmic-ray pixels take the prediction ``f_k R`` (``R`` = flux-normalised
    median of the other exposures).
    """
    nexp = stack.shape[0]
    sums, variances, crs = np.empty(nexp), np.empty(nexp), []
    for k in range(nexp):
        ref = _median_of_others(stack, factors, k)
        hits = _cosmic_rays(stack[k], ref, float(factors[k]), peaks[k], var_floor, nsigma)
        hits &= area
        clean = np.where(hits, np.float32(factors[k]) * ref, stack[k])
        sums[k] = np.sum(clean, where=area, dtype=np.float64)
        np.maximum(clean, 0.0, out=clean)
        variances[k] = np.sum(clean, where=area, dtype=np.float64) + var_floor * area.sum()
        crs.append(hits)
    return sums, variances, crs


def fit_flux_factors(stack: np.ndarray, median: np.ndarray, *,
                     region_mask: np.ndarray | None = None, rnoise_e: float,
                     min_snr: float = 10.0, grow: int = 3, nsigma: float = 5.0,
                     niter: int = 3, max_samples: int = 20_000) -> FluxFactorFit:
    """Estimate the flux factor of every exposure, with diagnostics.

    Parameters
    ----------
    stack : numpy.ndarray
        (N, ny, nx) exposures in electrons (bias subtracted), N >= 2.
    median : numpy.ndarray
        (ny, nx) median of the stack.
    region_mask : numpy.ndarray of bool, optional
        (ny, nx) map of the pixels to use (True = use), built by the caller
        from FITS regions.  None = whole image.
    rnoise_e : float
        Read noise in electrons.
    min_snr : float, optional
        Pixels whose median exceeds ``min_snr`` times its noise
        ``sqrt(max(median, 0) + rnoise_e**2)`` are significant (default 10).
    grow : int, optional
        The significant pixels are grown by this many pixels (default 3) to
        form the area whose flux is summed.
    nsigma : float, optional
        Cosmic-ray threshold above the local maximum of the prediction.
    niter : int, optional
        Maximum number of "factors -> cosmic rays -> flux sums" passes
        (default 3).
    max_samples : int, optional
        Number of (signal, ratio) samples kept for diagnostic plots.

    Returns
    -------
    FluxFactorFit
        Factors, uncertainties, pixel counts and plot samples.

    Raises
    ------
    ValueError
        For bad shapes or options.
    TooFewSignificantPixels
        Fewer than 100 significant pixels (a ValueError too).

    Notes
    -----
    Exposures taken with sub-pixel offsets differ pixel by pixel by much more
    than their flux ratio (a 0.5 px shift of a 3 px wide line changes the
    central pixel by ~20 %), so per-pixel ratios or a clipped regression are
    biased by several per cent.  The flux over an area that contains whole
    features is invariant under small shifts, hence:

    1. area = significant pixels of the median grown by ``grow`` px, minus
       the single-pixel spikes of the median (hot pixels);
    2. start: median over the significant pixels of ``S_k / median``;
    3. in each exposure, cosmic rays are the single-pixel spikes absent from
       the median and the pixels above 1.5 ``f_k`` times the 3 x 3 local
       maximum of ``R`` by ``nsigma`` sigma, ``R`` being the flux-normalised
       median of the *other* exposures (variance = max(signal, 0) +
       rnoise_e**2), plus their neighbours that are > 2 sigma above
       ``f_k`` times that maximum; they are replaced by ``f_k R``;
    4. ``F_k`` = cleaned flux of exposure k over the area; ``f_k = F_k /
       median_j(F_j)``; steps 3-4 are repeated up to ``niter`` times (until
       the factors change by < 1e-5).

    Normalisation: the median of the factors is 1 (for odd N the exposure of
    median flux gets exactly 1).  On bright pixels the median image *is* that
    exposure, so the factors are relative to the median image; with true
    factors 0.8 / 1.0 / 1.2 they come out as 0.8 / 1.0 / 1.2.  (The direct
    ratio sum(S_k) / sum(median) is also logged; it differs by the flux the
    median loses where misaligned exposures swap order, ~0.5 % for 0.5 px
    offsets.)  Uncertainties are the photon + read noise of each sum.

    Unlike the reference implementation (2-D histogram ridge, quantised to
    0.01, never 1.00, errors up to 0.16) the estimate is continuous.
    """
    stack, median, usable = _validate(stack, median, region_mask, rnoise_e)
    if min_snr <= 0 or nsigma <= 0 or int(niter) < 1 or int(grow) < 0:
        msg = (f"min_snr and nsigma must be > 0, niter >= 1, grow >= 0; got "
               f"min_snr={min_snr}, nsigma={nsigma}, niter={niter}, grow={grow}")
        raise ValueError(msg)
    var_floor = max(float(rnoise_e) ** 2, 1e-6)
    usable &= np.all(np.isfinite(stack), axis=0)
    spikes = isolated_peaks(median, var_floor)
    area, core = _flux_area(median, usable, spikes, var_floor, min_snr, int(grow))
    ncore = int(np.count_nonzero(core))
    if ncore < 100:
        msg = (f"only {ncore} significant pixels in the median ({min_snr:g} times above their noise); "
               "at least 100 are needed to measure flux ratios")
        raise TooFewSignificantPixels(msg)
    idx = np.flatnonzero(core)[:: max(1, ncore // 1_000_000)]
    flat = stack.reshape(stack.shape[0], -1)
    factors = np.median(flat[:, idx] / median.ravel()[idx], axis=1).astype(np.float64)
    peaks = [isolated_peaks(im, var_floor) & ~spikes for im in stack]
    for _ in range(int(niter)):
        sums, variances, crs = _flux_sums(stack, factors, area, peaks, var_floor, nsigma)
        new = sums / np.median(sums)
        change = float(np.max(np.abs(new - factors)))
        factors = new
        if change < 1e-5:
            break
    sigmas = factors * np.sqrt(variances) / sums
    _log.debug("flux factors: area %d pixels (%d significant); sum(S_k)/sum(median) = %s",
               int(area.sum()), int(core.sum()),
               np.array2string(sums / float(median[area].sum()), precision=5))
    result = _make_result(stack, median, area, factors, sigmas, crs, max_samples)
    for k in range(stack.shape[0]):
        _log.debug("flux factor image %d: %.5f +- %.5f (%d pixels, %d cosmic-ray pixels "
                   "replaced)", k + 1, factors[k], sigmas[k], result.npix[k],
                   int(crs[k].sum()))
    return result


def _make_result(stack: np.ndarray, median: np.ndarray, area: np.ndarray,
                 factors: np.ndarray, sigmas: np.ndarray, crs: list[np.ndarray],
                 max_samples: int) -> FluxFactorFit:
    """Assemble the result with a regular subsample of diagnostic points."""
    idx = np.flatnonzero(area)
    idx = idx[:: max(1, int(np.ceil(idx.size / max(int(max_samples), 1))))]
    signal = median.ravel()[idx].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = stack.reshape(stack.shape[0], -1)[:, idx] / signal
    used = ~np.array([c.ravel()[idx] for c in crs])
    npix = np.array([int(area.sum() - c.sum()) for c in crs], dtype=np.int64)
    return FluxFactorFit(factors=factors, uncertainties=sigmas, npix=npix, signal=signal,
                         ratio=ratio, used=used)


def estimate_flux_factors(stack: np.ndarray, median: np.ndarray, *,
                          region_mask: np.ndarray | None = None, rnoise_e: float,
                          min_snr: float = 10.0, grow: int = 3, nsigma: float = 5.0,
                          niter: int = 3) -> np.ndarray:
    """Flux factor of every exposure relative to the median image.

    Parameters
    ----------
    stack : numpy.ndarray
        (N, ny, nx) exposures in electrons (bias subtracted), N >= 2.
    median : numpy.ndarray
        (ny, nx) median of the stack.
    region_mask : numpy.ndarray of bool, optional
        (ny, nx) map of the pixels to use (True = use); None = whole image.
    rnoise_e : float
        Read noise in electrons.
    min_snr, grow, nsigma, niter : optional
        See :func:`fit_flux_factors`.

    Returns
    -------
    numpy.ndarray
        (N,) float64 factors ``f_k`` with ``S_k ~= f_k * median`` (median of
        the factors = 1).

    Raises
    ------
    ValueError
        For bad shapes or options, or too few significant pixels.

    Notes
    -----
    Thin wrapper around :func:`fit_flux_factors`, which also returns
    uncertainties and the samples for a diagnostic plot.
    """
    return fit_flux_factors(stack, median, region_mask=region_mask, rnoise_e=rnoise_e,
                            min_snr=min_snr, grow=grow, nsigma=nsigma,
                            niter=niter).factors


def image_number_at_median(stack: np.ndarray) -> np.ndarray:
    """1-based index of the exposure that supplies the median at each pixel.

    Parameters
    ----------
    stack : numpy.ndarray
        (N, ny, nx) exposures, 1 <= N <= 127.

    Returns
    -------
    numpy.ndarray
        (ny, nx) int8 map.  For odd N the exposure holding the median value;
        for even N the lower of the two middle values.  Ties go to one of
        the tied exposures; NaN values sort last.

    Raises
    ------
    ValueError
        If ``stack`` is not 3-D or N is outside 1..127.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or not 1 <= stack.shape[0] <= 127:
        msg = f"stack must be a (N, ny, nx) array with 1 <= N <= 127, got {stack.shape}"
        raise ValueError(msg)
    kth = (stack.shape[0] - 1) // 2
    out = np.empty(stack.shape[1:], dtype=np.int8)
    for y0 in range(0, stack.shape[1], _BLOCK_ROWS):
        block = stack[:, y0:y0 + _BLOCK_ROWS]
        out[y0:y0 + _BLOCK_ROWS] = np.argpartition(block, kth, axis=0)[kth] + 1
    return out
