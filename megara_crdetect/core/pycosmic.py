"""PyCosmic single-image cosmic-ray detector (Husemann et al. 2012, A&A 545, A137), our implementation.

PyCosmic was designed for fibre-fed integral-field spectrographs.  It is
L.A.Cosmic's Laplacian edge detection (van Dokkum 2001) with a different
test against real features ("PSF convolution approach"): the Laplacian of
the image is compared with the Laplacian of the image convolved with a
Gaussian of the instrumental resolution.  Convolution takes most of the
Laplacian of a cosmic ray, sharper than anything the optics deliver, and a
smaller, known share of that of a feature already as wide as the resolution.

One detection pass on an image ``I`` (electrons), with ``L+(X)`` the
Laplacian of ``X`` subsampled 2 x 2 (kernel 4 at the centre, -1 on the four
sides), negative values set to 0, averaged back over each 2 x 2 block
(:func:`laplacian_plus`, computed without building the subsampled image):

1. noise ``N = sqrt(max(M5(I), 0) + rnoise**2)`` with ``M5`` a 5 x 5 median;
2. significance ``S = L+(I) / (2 N)`` and ``S' = S - M5(S)`` (smooth
   structure removed); a single pixel ``A`` above a flat background gives
   ``S = A / N``, so ``sigma_det`` is in noise sigmas;
3. contrast ``R = L+(I) / (c L+(G * I))``, ``G`` the Gaussian of FWHM
   ``fwhm_gauss_x`` x ``fwhm_gauss_y`` and ``c`` the same ratio at the peak
   of a point source of the instrumental resolution (itself shaped as
   ``G``; :func:`contrast_scale`): ``R`` is 1 for such a source, below 1
   for wider features (fibre profiles, lines: blurred in one direction only),
   about 5 for a single-pixel cosmic ray with the default FWHMs;
4. flagged: ``S' > sigma_det`` and ``R > rlim``.

Iterations: flagged pixels are replaced by the median of the unflagged pixels
of a ``replace_box_x`` x ``replace_box_y`` box and the pass runs again on the
cleaned image, noise model included (``iterations`` times at most, stopping
when nothing new is found); the final mask is grown by ``increase_radius`` pixels and those
pixels are replaced too.  ``sigma_det`` and ``rlim`` may be ``(peak, tail)``
pairs: two complete runs merged like L.A.Cosmic's two passes
(:func:`~megara_crdetect.core.lacosmic.merge_peak_tail`).

The 5 x 5 medians are separable (5 x 1 then 1 x 5), as L.A.Cosmic's
``sepmed``; every step is a whole-array NumPy/SciPy operation, and the
replacement medians are taken only at the flagged pixels.
"""

from __future__ import annotations

import logging

import numpy as np
from scipy import ndimage

from .lacosmic import merge_peak_tail, threshold_passes
from .masks import dilate

__all__ = ["laplacian_plus", "separable_median5", "contrast_scale", "run_pycosmic"]

_log = logging.getLogger(__name__)

_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def laplacian_plus(image: np.ndarray) -> np.ndarray:
    """Positive Laplacian of the 2 x 2 subsampled image, averaged back to the original grid.

    In the subsampled image each pixel ``v`` is a 2 x 2 block; the Laplacian
    (4 at the centre, -1 on the sides) of a sub-pixel is ``2 v - a - b``,
    with ``a`` and ``b`` the two neighbouring original pixels it touches
    (the other two sides lie in its own block).  The four sub-pixels use the
    pairs (up, left), (up, right), (down, left), (down, right); edges are
    replicated.

    Returns
    -------
    ndarray, float32
    """
    img = np.asarray(image, dtype=np.float32)
    p = np.pad(img, 1, mode="edge")
    up, down = p[:-2, 1:-1], p[2:, 1:-1]
    left, right = p[1:-1, :-2], p[1:-1, 2:]
    two = 2 * img
    out = np.zeros_like(img)
    for a, b in ((up, left), (up, right), (down, left), (down, right)):
        term = two - a
        term -= b
        np.maximum(term, 0, out=term)
        out += term
    out *= np.float32(0.25)  # block average
    return out


def contrast_scale(sigma_xy: tuple[float, float]) -> float:
    """``L+(P) / L+(G * P)`` at the peak of a point source ``P`` shaped as the smoothing Gaussian ``G``."""
    half = int(np.ceil(6 * max(sigma_xy))) + 2
    point = np.zeros((2 * half + 1, 2 * half + 1), dtype=np.float32)
    point[half, half] = 1.0
    source = ndimage.gaussian_filter(point, sigma=sigma_xy, mode="constant", truncate=4.0)
    smooth = ndimage.gaussian_filter(source, sigma=sigma_xy, mode="constant", truncate=4.0)
    return float(laplacian_plus(source)[half, half] / laplacian_plus(smooth)[half, half])


def _median5(a, b, c, d, e):
    """Element-wise median of five arrays (min/max network: median of e and the two middle candidates)."""
    lo = np.maximum(np.minimum(a, b), np.minimum(c, d))
    hi = np.minimum(np.maximum(a, b), np.maximum(c, d))
    return np.maximum(np.minimum(e, lo), np.minimum(np.maximum(e, lo), hi))


def _median5_axis(image: np.ndarray, axis: int) -> np.ndarray:
    """Running median of 5 along one axis (edges reflected, as scipy's ``reflect``)."""
    pad = [(0, 0), (0, 0)]
    pad[axis] = (2, 2)
    p = np.pad(image, pad, mode="symmetric")
    n = image.shape[axis]
    take = [p[(slice(None),) * axis + (slice(k, k + n),)] for k in range(5)]
    return _median5(*take)


def separable_median5(image: np.ndarray) -> np.ndarray:
    """5 x 1 then 1 x 5 median (the separable approximation of the 5 x 5 median)."""
    return _median5_axis(_median5_axis(np.asarray(image, dtype=np.float32), 0), 1)


def _replace(work: np.ndarray, mask: np.ndarray, where: np.ndarray, box: tuple[int, int]) -> None:
    """Replace ``work`` at ``where`` by the median of the unmasked pixels of a box (in place).

    Pixels whose whole box is masked keep their value.
    """
    rows, cols = np.nonzero(where)
    if rows.size == 0:
        return
    by, bx = box
    dy = np.arange(by) - by // 2
    dx = np.arange(bx) - bx // 2
    ny, nx = work.shape
    rr = np.clip(rows[:, None, None] + dy[None, :, None], 0, ny - 1)
    cc = np.clip(cols[:, None, None] + dx[None, None, :], 0, nx - 1)
    values = work[rr, cc].reshape(rows.size, -1).astype(np.float64)
    bad = mask[rr, cc].reshape(rows.size, -1)
    ok = ~bad.all(axis=1)
    values[bad] = np.nan
    work[rows[ok], cols[ok]] = np.nanmedian(values[ok], axis=1)


def _noise2(image: np.ndarray, rnoise_e: float) -> np.ndarray:
    """Twice the noise model ``2 N`` of an image (float32, > 0)."""
    noise2 = separable_median5(image)
    np.maximum(noise2, 0, out=noise2)
    noise2 += np.float32(rnoise_e) ** 2
    np.sqrt(noise2, out=noise2)
    np.maximum(noise2, np.float32(1e-6), out=noise2)
    noise2 *= np.float32(2)
    return noise2


def _one_pass(work: np.ndarray, rnoise_e: float, *, sigma_det: float, rlim: float,
              sigma_xy: tuple[float, float], scale: float) -> np.ndarray:
    """Pixels of ``work`` flagged by one detection pass."""
    lap = laplacian_plus(work)
    s = lap / _noise2(work, rnoise_e)
    s -= separable_median5(s)
    candidates = s > sigma_det
    if not candidates.any():
        return candidates
    lap_smooth = laplacian_plus(ndimage.gaussian_filter(work, sigma=sigma_xy, mode="nearest", truncate=4.0))
    # R > rlim  <=>  L+(I) > rlim c L+(G * I)  (no division: L+(G * I) may be 0)
    return candidates & (lap > np.float32(rlim * scale) * lap_smooth)


def _run(image: np.ndarray, rnoise_e: float, *, sigma_det: float, rlim: float, iterations: int,
         sigma_xy: tuple[float, float], box: tuple[int, int], increase_radius: int,
         verbose: bool) -> tuple[np.ndarray, np.ndarray]:
    work = np.array(image, dtype=np.float32)
    mask = np.zeros(work.shape, dtype=bool)
    scale = contrast_scale(sigma_xy)
    for it in range(1, iterations + 1):
        new = _one_pass(work, rnoise_e, sigma_det=sigma_det, rlim=rlim, sigma_xy=sigma_xy,
                        scale=scale) & ~mask
        n_new = int(np.count_nonzero(new))
        (_log.info if verbose else _log.debug)("PyCosmic iteration %d: %d new pixels", it, n_new)
        if n_new == 0:
            break
        mask |= new
        _replace(work, mask, new, box)
    if increase_radius > 0 and mask.any():
        grown = dilate(mask, increase_radius)
        _replace(work, grown, grown & ~mask, box)
        mask = grown
    return mask, work


def run_pycosmic(image: np.ndarray, *, rnoise_e: float,
                 sigma_det: float | tuple[float, float] = 5.0, rlim: float | tuple[float, float] = 1.2,
                 iterations: int = 5, fwhm_gauss_x: float = 2.5, fwhm_gauss_y: float = 2.5,
                 replace_box_x: int = 5, replace_box_y: int = 5, increase_radius: int = 0,
                 verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Detect the cosmic rays of one image with PyCosmic's algorithm.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Image in electrons (bias subtracted, gain applied); finite.
    rnoise_e : float
        Readout noise in electrons.
    sigma_det : float or (float, float)
        Detection limit of ``S'`` (noise sigmas); a ``(peak, tail)`` pair
        runs two passes (see the module notes).
    rlim : float or (float, float)
        Contrast limit of ``L+ / L+(G * I)``; may be a pair as well.
    iterations : int
        Detection iterations (>= 1).
    fwhm_gauss_x, fwhm_gauss_y : float
        FWHM (pixels) of the smoothing Gaussian along X (columns) and Y (rows).
    replace_box_x, replace_box_y : int
        Size of the median box that replaces flagged pixels.
    increase_radius : int
        Grow the final mask by this many pixels (Chebyshev radius).
    verbose : bool
        Log every iteration at INFO instead of DEBUG.

    Returns
    -------
    mask : ndarray of bool, shape (ny, nx)
        Flagged pixels.
    cleaned : ndarray of float32, shape (ny, nx)
        The image with the flagged pixels replaced (that of the tail pass
        with two passes).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2 or min(image.shape) < 3:
        raise ValueError(f"image must be a 2-D array of at least 3x3 pixels, got shape {image.shape}")
    if not np.all(np.isfinite(image)):
        raise ValueError("image contains NaN or infinite values")
    if iterations < 1 or replace_box_x < 1 or replace_box_y < 1 or increase_radius < 0:
        raise ValueError("iterations and the replace box must be >= 1, increase_radius >= 0")
    sigma_xy = (fwhm_gauss_y * _FWHM_TO_SIGMA, fwhm_gauss_x * _FWHM_TO_SIGMA)
    mask = cleaned = None
    for thresholds in threshold_passes(sigma_det=sigma_det, rlim=rlim):
        found, cleaned = _run(image, rnoise_e, iterations=iterations, sigma_xy=sigma_xy,
                              box=(replace_box_y, replace_box_x), increase_radius=increase_radius,
                              verbose=verbose, **thresholds)
        mask = found if mask is None else merge_peak_tail(mask, found)
    _log.debug("PyCosmic flagged %d pixels", int(np.count_nonzero(mask)))
    return mask, cleaned
