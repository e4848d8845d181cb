"""L.A.Cosmic single-image detector (ccdproc / astroscrappy) on images in electrons.

`run_lacosmic` runs L.A.Cosmic with ccdproc's arguments (``cosmicray_lacosmic``)
on an image already in electrons: ``gain=1`` and the read noise in electrons,
so the noise model is right whatever the detector gain (the reference passed
the read noise in ADU).  It gives astroscrappy's result, computed by
:mod:`.lacosmic_incremental` where that supports the options (later
iterations only near what changed), else by ccdproc itself.
`run_lacosmic_many` runs several images in parallel threads.

Two passes (numina 0.40): ``sigclip``, ``sigfrac`` and ``objlim`` may each be
a ``(peak, tail)`` pair.  L.A.Cosmic then runs twice on the same (padded)
image, first with the peak values (strict), then with the tail values
(permissive); a group of tail detections (8-connected) is kept whole when it
holds at least one peak detection, and the cleaned image is that of the tail
pass (`merge_peak_tail`).

Parallelism (astroscrappy 1.3.0, 2-core machine): astroscrappy's median
filters are C loops parallelised with OpenMP and called without the GIL, and
its remaining steps are NumPy calls that release the GIL too. A serial run on two
2000x2000 images took 4.0 s wall for 7.2 s CPU (OpenMP already keeps ~1.8
cores busy); two threads took 3.7 s, a spawn-based process pool 6.0 s
(oversubscribed OpenMP teams plus pickling). A fork-based process pool hangs:
GNU libgomp is not fork-safe once OpenMP has run in the parent. Threads are
therefore used: no copies, no pickling, results bit-identical to a serial run
(each output pixel of every kernel is computed independently).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = [
    "CLEANTYPES",
    "merge_peak_tail",
    "threshold_passes",
    "FSMODES",
    "PSFMODELS",
    "gaussxy_kernel",
    "run_lacosmic",
    "run_lacosmic_many",
]

logger = logging.getLogger(__name__)

CLEANTYPES = ("median", "medmask", "meanmask", "idw")
FSMODES = ("median", "convolve")
PSFMODELS = ("gauss", "moffat", "gaussx", "gaussy", "gaussxy")

#: ccdproc's saturation level when none is given (electrons).
_CCDPROC_SATLEVEL = 65535.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def threshold_passes(**thresholds) -> list[dict]:
    """Threshold sets of one or two passes from values that are numbers or ``(peak, tail)`` pairs.

    Returns ``[peak]`` when every value is a single number (or an equal
    pair), else ``[peak, tail]`` where a single number is used by both passes.
    """
    pairs = {k: (v, v) if np.isscalar(v) else (v[0], v[1]) for k, v in thresholds.items()}
    peak = {k: v[0] for k, v in pairs.items()}
    tail = {k: v[1] for k, v in pairs.items()}
    return [peak] if peak == tail else [peak, tail]


def merge_peak_tail(peak: np.ndarray, tail: np.ndarray) -> np.ndarray:
    """Tail detections (8-connected groups) that touch a peak detection.

    A peak pixel outside every tail group is dropped (numina 0.40's rule).
    """
    from .masks import keep_groups_with

    return keep_groups_with(tail, peak)


def _check_odd_size(name: str, size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        msg = f"{name} must be an odd integer >= 3, got {size!r}"
        raise ValueError(msg)
    if size < 3 or size % 2 == 0:
        msg = f"{name} must be an odd integer >= 3, got {size}"
        raise ValueError(msg)
    return int(size)


def _check_positive(name: str, value, *, allow_zero: bool = False) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = float("nan")
    if not np.isfinite(out) or out < 0 or (out == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        msg = f"{name} must be a finite number {bound}, got {value!r}"
        raise ValueError(msg)
    return out


def gaussxy_kernel(fwhm_x: float, fwhm_y: float, size: int) -> np.ndarray:
    """Elliptical Gaussian kernel with axes along X (columns) and Y (rows).

    Parameters
    ----------
    fwhm_x, fwhm_y : float
        Full widths at half maximum along X and Y in pixels (> 0).
    size : int
        Kernel side (odd >= 3).

    Returns
    -------
    numpy.ndarray
        float32 ``(size, size)`` array ``K[v, u] = exp(-(u/sx)**2/2 - (v/sy)**2/2)``
        with ``u, v`` in ``-size//2 .. size//2`` and ``s = FWHM / (2 sqrt(2 ln 2))``,
        normalised to unit sum. It is symmetric, so the flip astroscrappy
        applies to its own kernels is not needed.
    """
    sigma_x = _check_positive("fwhm_x", fwhm_x) * _FWHM_TO_SIGMA
    sigma_y = _check_positive("fwhm_y", fwhm_y) * _FWHM_TO_SIGMA
    half = _check_odd_size("size", size) // 2
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * ((offsets[None, :] / sigma_x) ** 2 + (offsets[:, None] / sigma_y) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def _psf_arguments(psfmodel, psffwhm_x, psffwhm_y, psfsize, psfbeta) -> dict:
    """Translate our PSF options into ccdproc keyword arguments."""
    if psfmodel not in PSFMODELS:
        msg = f"psfmodel must be one of {', '.join(PSFMODELS)}; got {psfmodel!r}"
        raise ValueError(msg)
    psfsize = _check_odd_size("psfsize", psfsize)
    kwargs = {"psfsize": psfsize, "psfbeta": _check_positive("psfbeta", psfbeta)}
    if psfmodel in ("gauss", "moffat"):
        fwhm_x = _check_positive("psffwhm_x", psffwhm_x)
        fwhm_y = _check_positive("psffwhm_y", psffwhm_y)
        kwargs.update(psfmodel=psfmodel, psffwhm=0.5 * (fwhm_x + fwhm_y))
    elif psfmodel == "gaussx":
        kwargs.update(psfmodel="gaussx", psffwhm=_check_positive("psffwhm_x", psffwhm_x))
    elif psfmodel == "gaussy":
        kwargs.update(psfmodel="gaussy", psffwhm=_check_positive("psffwhm_y", psffwhm_y))
    else:
        # astroscrappy has no 'gaussxy': give it the kernel (which it uses as
        # is) and a valid model name that it then ignores.
        kernel = gaussxy_kernel(psffwhm_x, psffwhm_y, psfsize)
        kwargs.update(psfmodel="gauss", psffwhm=0.5 * (psffwhm_x + psffwhm_y), psfk=kernel)
    return kwargs


def _lacosmic_arguments(options: dict) -> dict:
    """Validate the scalar options of `run_lacosmic` and build ccdproc kwargs."""
    o = options
    if o["cleantype"] not in CLEANTYPES:
        msg = f"cleantype must be one of {', '.join(CLEANTYPES)}; got {o['cleantype']!r}"
        raise ValueError(msg)
    if o["fsmode"] not in FSMODES:
        msg = f"fsmode must be one of {', '.join(FSMODES)}; got {o['fsmode']!r}"
        raise ValueError(msg)
    niter = o["niter"]
    if isinstance(niter, bool) or not isinstance(niter, (int, np.integer)) or niter < 1:
        msg = f"niter must be an integer >= 1, got {niter!r}"
        raise ValueError(msg)
    kwargs = {
        "gain": 1.0,
        "readnoise": _check_positive("rnoise_e", o["rnoise_e"], allow_zero=True),
        "sigclip": _check_positive("sigclip", o["sigclip"]),
        "sigfrac": _check_positive("sigfrac", o["sigfrac"]),
        "objlim": _check_positive("objlim", o["objlim"]),
        "niter": int(niter),
        "sepmed": bool(o["sepmed"]),
        "cleantype": o["cleantype"],
        "fsmode": o["fsmode"],
        "verbose": bool(o["verbose"]),
        "gain_apply": True,  # irrelevant with gain 1; explicit to avoid surprises
    }
    if o["satlevel_e"] is not None:
        kwargs["satlevel"] = _check_positive("satlevel_e", o["satlevel_e"])
    psf = (o["psfmodel"], o["psffwhm_x"], o["psffwhm_y"], o["psfsize"], o["psfbeta"])
    kwargs.update(_psf_arguments(*psf))
    return kwargs


def _check_image(image, padwidth) -> tuple[np.ndarray, int]:
    image = np.asarray(image)
    if image.ndim != 2 or min(image.shape) < 3:
        msg = f"image must be a 2-D array of at least 3x3 pixels, got shape {image.shape}"
        raise ValueError(msg)
    if not np.all(np.isfinite(image)):
        msg = "image contains NaN or infinite values"
        raise ValueError(msg)
    if isinstance(padwidth, bool) or not isinstance(padwidth, (int, np.integer)) or padwidth < 0:
        msg = f"padwidth must be an integer >= 0, got {padwidth!r}"
        raise ValueError(msg)
    if padwidth >= min(image.shape):
        msg = f"padwidth={padwidth} must be smaller than the image size {image.shape}"
        raise ValueError(msg)
    return image, int(padwidth)


def _one_pass(work: np.ndarray, kwargs: dict, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """One L.A.Cosmic run with ccdproc's keyword arguments: ``(cleaned, mask)`` as ccdproc returns them.

    Runs :func:`.lacosmic_incremental.detect_cosmics` (astroscrappy's
    result, bit for bit, in a fraction of its time; ``workers`` threads)
    when it supports the options, else ccdproc (which runs astroscrappy).
    """
    from . import lacosmic_incremental as incremental

    if not incremental.supported(kwargs["cleantype"], kwargs["fsmode"], kwargs["psfmodel"]):
        from ccdproc import cosmicray_lacosmic  # lazy: astropy/ccdproc import is slow

        return cosmicray_lacosmic(work, **kwargs)
    psfk = kwargs.get("psfk")
    if psfk is None and kwargs["fsmode"] == "convolve":
        psfk = incremental.psf_kernel(kwargs["psfmodel"], kwargs["psffwhm"], kwargs["psfsize"])
    mask, cleaned = incremental.detect_cosmics(
        work, readnoise=kwargs["readnoise"], sigclip=kwargs["sigclip"], sigfrac=kwargs["sigfrac"],
        objlim=kwargs["objlim"], satlevel=kwargs.get("satlevel", _CCDPROC_SATLEVEL), niter=kwargs["niter"],
        sepmed=kwargs["sepmed"], cleantype=kwargs["cleantype"], fsmode=kwargs["fsmode"], psfk=psfk,
        psfsize=kwargs["psfsize"], workers=workers)
    return cleaned, mask


def run_lacosmic(
    image: np.ndarray,
    *,
    rnoise_e: float,
    sigclip: float | tuple[float, float] = 5.0,
    sigfrac: float | tuple[float, float] = 0.3,
    objlim: float | tuple[float, float] = 5.0,
    satlevel_e: float | None = None,
    niter: int = 4,
    sepmed: bool = True,
    cleantype: str = "meanmask",
    fsmode: str = "median",
    psfmodel: str = "gauss",
    psffwhm_x: float = 2.5,
    psffwhm_y: float = 2.5,
    psfsize: int = 7,
    psfbeta: float = 4.765,
    padwidth: int = 0,
    verbose: bool = False,
    workers: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Run L.A.Cosmic on one image in electrons.

    Parameters
    ----------
    image : numpy.ndarray
        Image ``(ny, nx)`` in electrons (bias subtracted, gain applied); finite.
    rnoise_e : float
        Read noise in electrons (>= 0).
    sigclip, sigfrac, objlim : float or (float, float), optional
        Laplacian-to-noise limit, neighbour fraction and fine-structure
        contrast limit (all > 0).  A ``(peak, tail)`` pair in any of them
        runs two passes merged by `merge_peak_tail`.
    satlevel_e : float or None, optional
        Saturation level in electrons; None leaves ccdproc's default (65535).
    niter : int, optional
        Number of L.A.Cosmic iterations (>= 1).
    sepmed : bool, optional
        Use the separable median filters.
    cleantype : {'median', 'medmask', 'meanmask', 'idw'}, optional
        Cleaning algorithm for the returned image.
    fsmode : {'median', 'convolve'}, optional
        How the fine-structure image is built.
    psfmodel : {'gauss', 'moffat', 'gaussx', 'gaussy', 'gaussxy'}, optional
        PSF for ``fsmode='convolve'``. ``gauss``/``moffat`` use the mean of
        the two FWHMs, ``gaussx``/``gaussy`` one of them, ``gaussxy`` the
        elliptical kernel of `gaussxy_kernel`.
    psffwhm_x, psffwhm_y : float, optional
        PSF FWHM along X (columns) and Y (rows) in pixels.
    psfsize : int, optional
        PSF kernel side (odd >= 3).
    psfbeta : float, optional
        Moffat beta.
    padwidth : int, optional
        Reflect-pad (numpy ``reflect``, edge pixel not repeated) the image by
        this many pixels on every side before running, then crop back.
    verbose : bool, optional
        Let astroscrappy print its progress.
    workers : int, optional
        Threads of one run (:func:`.lacosmic_incremental.detect_cosmics`).

    Returns
    -------
    mask : numpy.ndarray
        Bool ``(ny, nx)``, True at detected cosmic-ray pixels.
    cleaned : numpy.ndarray
        float32 ``(ny, nx)`` cleaned image, electrons.

    Notes
    -----
    ccdproc is called with ``gain=1`` and ``readnoise=rnoise_e`` because the
    image is already in electrons; the cleaned image is therefore in
    electrons too. With ``psfmodel='gaussxy'`` the kernel is passed as
    ``psfk`` together with ``psfmodel='gauss'`` (astroscrappy knows no
    'gaussxy' and ignores the model name when ``psfk`` is given).

    Padding and fibre spectra (measured on 200x200 fibre images, spectra
    along X, pitch 6.5 px, FWHM 3 px, no cosmic rays): without padding about
    200 false flags appear within 10 px of the edges, mostly left/right, whatever the
    fibre positions. ``padwidth=10`` removes them, but when reflection about
    the top/bottom edge puts the mirrored edge fibre 2-5 px from the real one
    (7 of 13 sub-pixel phases tried), that fibre is flagged along whole rows
    (117-965 false flags). Summed over the 13 phases: 3589 (padwidth 0), 4199
    (2), 2898 (10).
    """
    image, padwidth = _check_image(image, padwidth)
    options = {
        "rnoise_e": rnoise_e, "satlevel_e": satlevel_e, "niter": niter,
        "sepmed": sepmed, "cleantype": cleantype, "fsmode": fsmode,
        "psfmodel": psfmodel, "psffwhm_x": psffwhm_x, "psffwhm_y": psffwhm_y,
        "psfsize": psfsize, "psfbeta": psfbeta, "verbose": verbose,
    }
    passes = threshold_passes(sigclip=sigclip, sigfrac=sigfrac, objlim=objlim)
    work = np.asarray(image, dtype=np.float32)
    if padwidth:
        work = np.pad(work, padwidth, mode="reflect")
    inner = (slice(padwidth, -padwidth), slice(padwidth, -padwidth)) if padwidth else (slice(None),) * 2
    mask = None
    for thresholds in passes:  # peak pass, then (two passes) the tail pass, merged once cropped
        cleaned, found = _one_pass(work, _lacosmic_arguments({**options, **thresholds}), workers)
        cleaned, found = cleaned[inner], np.asarray(found[inner], dtype=bool)
        mask = found if mask is None else merge_peak_tail(mask, found)
    logger.debug("L.A.Cosmic flagged %d pixels", int(np.count_nonzero(mask)))
    return (
        np.ascontiguousarray(mask, dtype=bool),
        np.ascontiguousarray(cleaned, dtype=np.float32),
    )


def run_lacosmic_many(
    images: Sequence[np.ndarray], *, workers: int | None = None, **kwargs
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Run `run_lacosmic` on several images in parallel threads.

    Parameters
    ----------
    images : sequence of numpy.ndarray
        Images ``(ny, nx)`` in electrons.
    workers : int or None, optional
        Number of threads; None uses ``min(len(images), os.cpu_count())``,
        1 runs serially in the calling thread.
    **kwargs
        Keyword arguments of `run_lacosmic` (``rnoise_e`` is required).

    Returns
    -------
    list of tuple
        ``(mask, cleaned)`` for each image, in input order; bit-identical to
        running `run_lacosmic` on each image in turn.

    Notes
    -----
    astroscrappy releases the GIL in its C filters (which also use OpenMP),
    so threads share the images without copying or pickling. See the module
    docstring for the measurements behind this choice.
    """
    images = list(images)
    if workers is None:
        workers = min(len(images), os.cpu_count() or 1)
    elif isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        msg = f"workers must be an integer >= 1 or None, got {workers!r}"
        raise ValueError(msg)
    if workers <= 1 or len(images) <= 1:
        return [run_lacosmic(image, **kwargs) for image in images]
    with ThreadPoolExecutor(max_workers=min(int(workers), len(images))) as pool:
        futures = [pool.submit(run_lacosmic, image, **kwargs) for image in images]
        return [future.result() for future in futures]
