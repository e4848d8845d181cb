"""astroscrappy's L.A.Cosmic, bit for bit, with its later iterations computed only where they can change.

L.A.Cosmic (van Dokkum 2001, as astroscrappy 1.x implements it) repeats one
detection step ``niter`` times: find the cosmic-ray pixels of the current
image, add them to the mask, clean the masked pixels from their 5x5
neighbourhood, start again.  astroscrappy runs every step on the whole
image, yet after the first one the image differs from the previous step's
only at the pixels whose cleaned value changed (a few hundred to a few
thousand on a MEGARA frame).

One step's detection at a pixel depends only on the image within
:func:`~megara_crdetect.core.windows.lacosmic_step_reach` of it (14 pixels with the guide's
parameters).  So a
pixel further than that from every changed pixel keeps the previous step's
answer, and step ``i + 1`` only runs on windows whose exact part covers the
changed pixels grown by the reach, padded by the reach (on the whole image
when those would cover more than half of it).  The first step runs on bands
of rows.  In every band and window the fine structure (the costly part) is
computed only on the rectangle holding the Laplacian's candidates in the
part that is kept, padded by its own reach.

Everything else is astroscrappy's: its Laplacian, dilation, convolution
and non-separable median filters (``astroscrappy.utils``), its saturation
mask, its levels, the same float32 operations in the same order.  Written
here, with the same results: the separable medians (the same order
statistics, by sorting networks: :mod:`~megara_crdetect.core.sortnet`), the
fine-structure test where bounds decide it
(:mod:`~megara_crdetect.core.lacosmic_fine`), and the cleaning of the
masked pixels (``meanmask``, ``medmask``) in astroscrappy's summation
order.  astroscrappy compiles its filters with ``-ffast-math``, so their
sums cannot be rewritten in NumPy; the windows need a filter's value at a
pixel not to depend on where the pixel lies in the array, which a test
checks.  The tests compare masks and cleaned images with astroscrappy's bit
for bit.  The ``median`` cleaning (astroscrappy's reads memory it never
wrote), ``idw`` and the Moffat kernel (not exported by astroscrappy) run
astroscrappy itself (:func:`supported`).
"""

from __future__ import annotations

import ctypes
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from functools import lru_cache

import numpy as np

from .lacosmic_fine import fine_structure_test, separable_kernel
from .masks import coordinates
from .sortnet import separable_median
from .windows import _window, cell_boxes, lacosmic_fine_reach, lacosmic_step_reach, tiles

__all__ = ["supported", "psf_kernel", "detect_cosmics"]

_log = logging.getLogger(__name__)

#: Cleaning types written here (astroscrappy's ``median`` and ``idw`` run astroscrappy itself).
CLEANTYPES = ("meanmask", "medmask")
#: Largest fraction of the image the windows of a later step may cover before it runs on the whole image.
MAX_WINDOW_FRACTION = 0.5
#: Side of the cells that group the masked pixels into windows.
CELL = 64
#: Pixels of one band of rows of the first step (~90 MB of temporaries each).
STRIP_PIXELS = 2_000_000
#: Fraction of the image flagged above which the mean cleaning runs on whole rows instead of gathers.
DENSE_FRACTION = 0.05
_HALF = 2  # the cleaning reads the 5x5 neighbourhood
_DILATIONS = 2  # the detections grow twice by a 3x3 dilation


def supported(cleantype: str, fsmode: str, psfmodel: str) -> bool:
    """Whether :func:`detect_cosmics` reproduces astroscrappy with these options."""
    return cleantype in CLEANTYPES and (fsmode == "median" or psfmodel != "moffat")


def _c_float(value: float) -> float:
    """``value`` as astroscrappy sees it: its parameters are C floats."""
    return float(np.float32(value))


def psf_kernel(psfmodel: str, psffwhm: float, psfsize: int) -> np.ndarray:
    """astroscrappy's fine-structure kernel for ``gauss``, ``gaussx`` or ``gaussy`` (flipped as it does)."""
    from astroscrappy.astroscrappy import gausskernel, gaussxkernel, gaussykernel

    make = {"gauss": gausskernel, "gaussx": gaussxkernel, "gaussy": gaussykernel}[psfmodel]
    kernel = np.asarray(make(psffwhm, psfsize))
    return np.ascontiguousarray(kernel[::-1, ::-1], dtype=np.float32)


def _detections(clean: np.ndarray, var: np.ndarray, good: np.ndarray, o: dict,
                need: tuple[slice, slice] | None = None) -> np.ndarray:
    """One L.A.Cosmic detection step on ``clean`` (astroscrappy's operations, in its order).

    The fine structure (two convolutions and a median: the costly part) is
    needed only at the Laplacian's candidates within ``need`` (the part of
    the result the caller keeps, grown by the two dilations); it is computed
    on the smallest rectangle that holds them, padded by its reach.
    """
    from astroscrappy.utils import dilate3, laplaceconvolve, medfilt5, rebin, subsample

    conved = laplaceconvolve(subsample(clean))
    conved[conved < 0] = 0.0
    s = rebin(conved)
    del conved
    m5 = separable_median(var, 7) if o["sepmed"] else medfilt5(var)
    m5[m5 < 0.00001] = 0.00001
    noise = np.sqrt(m5)
    del m5
    s /= 2.0 * noise
    sp = s - (separable_median(s, 7) if o["sepmed"] else medfilt5(s))
    del s
    cosmics = np.logical_and(sp > o["sigclip"], good)
    if need is not None:
        cosmics[:need[0].start] = cosmics[need[0].stop:] = False
        cosmics[:, :need[1].start] = cosmics[:, need[1].stop:] = False
    if not cosmics.any():  # nothing for the fine structure to confirm: no detection (common in later steps)
        return cosmics
    ys, xs = np.nonzero(cosmics.any(axis=1))[0], np.nonzero(cosmics.any(axis=0))[0]
    r, (ny, nx) = o["fine_reach"], clean.shape
    box = slice(max(ys[0] - r, 0), min(ys[-1] + 1 + r, ny)), slice(max(xs[0] - r, 0), min(xs[-1] + 1 + r, nx))
    # exact where the candidates are (the box's inner part)
    cosmics[box] = fine_structure_test(np.ascontiguousarray(clean[box]), np.ascontiguousarray(noise[box]),
                                       sp[box], cosmics[box], o)
    del noise
    cosmics = np.logical_and(dilate3(cosmics), good)
    cosmics = np.logical_and(sp > o["sigclip"], cosmics)
    cosmics = np.logical_and(dilate3(cosmics), good)
    return np.logical_and(sp > o["sigcliplow"], cosmics)


def _windows(changed: np.ndarray, reach: int) -> list:
    """Windows whose exact parts cover ``changed`` grown by ``reach``, padded by ``reach``; one per cell."""
    ys, xs = coordinates(changed)
    if ys.size == 0:
        return []
    _, _, (y0, y1, x0, x1) = cell_boxes(ys, xs, CELL, changed.shape[1])
    return [_window(int(a) - reach, int(b) + reach, int(c) - reach, int(d) + reach, reach, changed.shape)
            for a, b, c, d in zip(y0, y1, x0, x1)]


@lru_cache(maxsize=1)
def _libgomp():
    """The GNU OpenMP runtime astroscrappy's filters use, or None (not loaded, not Linux)."""
    import astroscrappy.utils  # noqa: F401  (loads it)

    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps if "libgomp" in line},
                           key=lambda p: "astroscrappy" not in p)  # its own copy first, if it ships one
        return ctypes.CDLL(paths[0]) if paths else None
    except (OSError, AttributeError):
        return None


@contextmanager
def _one_openmp_thread():
    """astroscrappy's filters called from this thread use one OpenMP thread (restored after).

    The parallelism is ours (bands and windows in ``workers`` threads): two
    OpenMP teams per band on two cores only add contention (full frame:
    4.3 s instead of 4.6-5.0 s, 7.7 instead of 8.3-8.9 CPU s).  OpenMP's
    thread count is a per-thread setting, so other threads are not affected.
    """
    lib = _libgomp()
    if lib is None:
        yield
        return
    before = lib.omp_get_max_threads()
    lib.omp_set_num_threads(1)
    try:
        yield
    finally:
        lib.omp_set_num_threads(before)


def _on_windows(clean, var, good, o, wins, found, pool) -> np.ndarray:
    """Detections on each window, pasted into ``found`` on its exact part (windows in parallel threads)."""

    def one(w) -> None:
        run, (ys, xs) = w.run, w.inner_local
        need = (slice(max(ys.start - _DILATIONS, 0), ys.stop + _DILATIONS),
                slice(max(xs.start - _DILATIONS, 0), xs.stop + _DILATIONS))
        with _one_openmp_thread():
            part = _detections(np.ascontiguousarray(clean[run]), np.ascontiguousarray(var[run]), good[run], o,
                               need)
        found[w.inner] = part[w.inner_local]  # overlapping exact parts hold the same values

    if pool is None or len(wins) < 2:
        for w in wins:
            one(w)
    else:
        list(pool.map(one, wins))
    return found


def _first_step(clean, var, good, o, reach, pool) -> np.ndarray:
    """The first step on the whole image, computed on bands of rows (less memory, parallel threads)."""
    wins = tiles(clean.shape, reach, -(-clean.size // STRIP_PIXELS))  # bands of about STRIP_PIXELS
    if len(wins) < 2:
        with _one_openmp_thread() if pool is None else nullcontext():
            return _detections(clean, var, good, o)
    return _on_windows(clean, var, good, o, wins, np.empty(clean.shape, dtype=bool), pool)


def _later_step(clean, var, good, found, changed, o, reach, pool) -> np.ndarray:
    """Detections of a step after the first, from the previous step's ``found`` and the ``changed`` pixels.

    Away from the changed pixels they are the previous step's; near them
    they are computed again on windows (or on the whole image when the
    windows would cover too much of it).
    """
    wins = _windows(changed, reach)
    if sum(w.area for w in wins) > MAX_WINDOW_FRACTION * clean.size:
        return _first_step(clean, var, good, o, reach, pool)
    return _on_windows(clean, var, good, o, wins, found, pool)


def _neighbour_values(arr: np.ndarray, bad: np.ndarray, ys: np.ndarray, xs: np.ndarray):
    """The 25 neighbours of each pixel in astroscrappy's order (rows, then columns), and which are good."""
    for dy in range(-_HALF, _HALF + 1):
        for dx in range(-_HALF, _HALF + 1):
            yield arr[ys + dy, xs + dx], ~bad[ys + dy, xs + dx]


def _mean_of_good_neighbours_dense(arr: np.ndarray, good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sums and counts of the good 5x5 neighbours of every pixel at least 2 from the sides (same order)."""
    ny, nx = arr.shape
    total = np.zeros((ny - 2 * _HALF, nx - 2 * _HALF), dtype=np.float32)
    n = np.zeros(total.shape, dtype=np.int8)
    for dy in range(-_HALF, _HALF + 1):
        for dx in range(-_HALF, _HALF + 1):
            part = (slice(_HALF + dy, ny - _HALF + dy), slice(_HALF + dx, nx - _HALF + dx))
            ok = good[part]
            total += arr[part] * ok  # adds exactly the value or a zero: astroscrappy's sum of the good ones
            n += ok
    return total, n


def _clean(arr: np.ndarray, bad: np.ndarray, ys, xs, cleantype: str, level) -> None:
    """Replace ``arr`` at ``(ys, xs)`` by the mean (or median) of their good 5x5 neighbours, in place.

    astroscrappy's ``clean_meanmask`` / ``clean_medmask``: float32 sums in
    its order; the median is the order statistic ``(n - 1) // 2``; a pixel
    without good neighbours gets ``level()`` (the image's level).
    """
    n = np.zeros(ys.size, dtype=np.int64)
    if cleantype == "meanmask":
        total = np.zeros(ys.size, dtype=np.float32)
        for values, ok in _neighbour_values(arr, bad, ys, xs):
            total = np.where(ok, total + values, total)
            n += ok
        out = total / np.maximum(n, 1).astype(np.float32)
    else:
        values = np.full((ys.size, (2 * _HALF + 1) ** 2), np.inf, dtype=np.float32)
        for j, (v, ok) in enumerate(_neighbour_values(arr, bad, ys, xs)):
            values[ok, j] = v[ok]
            n += ok
        values.sort(axis=1)
        out = values[np.arange(ys.size), np.maximum(n - 1, 0) // 2]
    if not n.all():
        out[n == 0] = level()
    arr[ys, xs] = out


def _levels(image: np.ndarray, mask: np.ndarray, rn2: float):
    """astroscrappy's levels of the whole uncleaned image and of its variance, computed when first needed."""
    from astroscrappy.utils import median

    cache = {}

    def level(which: str) -> np.float32:
        if not cache:
            good = np.ascontiguousarray(image[~mask], dtype=np.float32)
            cache["image"] = median(good, good.size)
            good += np.float32(rn2)  # the variance is the image plus the read-noise variance
            cache["var"] = median(good, good.size)
        return np.float32(cache[which])

    return level


def detect_cosmics(image: np.ndarray, *, readnoise: float, sigclip: float, sigfrac: float, objlim: float,
                   satlevel: float, niter: int, sepmed: bool, cleantype: str, fsmode: str,
                   psfk: np.ndarray | None = None, psfsize: int = 7, workers: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """astroscrappy's ``detect_cosmics`` with gain 1 and no input mask, background or variance.

    Parameters
    ----------
    image : numpy.ndarray
        Image ``(ny, nx)`` in electrons; finite.
    readnoise, sigclip, sigfrac, objlim, satlevel, niter, sepmed, fsmode
        astroscrappy's parameters of the same names (read noise in electrons).
    cleantype : {'meanmask', 'medmask'}
        Cleaning of the flagged pixels (:func:`supported`).
    psfk : numpy.ndarray or None, optional
        Fine-structure kernel as astroscrappy uses it (:func:`psf_kernel`,
        or a symmetric kernel given as is); needed with ``fsmode='convolve'``.
    psfsize : int, optional
        Side of the kernel (it sets the reach of the windows).
    workers : int, optional
        Threads for the bands of the first iteration and the windows of the
        later ones.

    Returns
    -------
    mask : numpy.ndarray
        Bool ``(ny, nx)``, the flagged pixels.
    cleaned : numpy.ndarray
        float32 ``(ny, nx)`` cleaned image.  Both bit-identical to astroscrappy's.
    """
    from astroscrappy.astroscrappy import update_mask

    if cleantype not in CLEANTYPES:
        raise ValueError(f"cleantype must be one of {', '.join(CLEANTYPES)}; got {cleantype!r}")
    clean = np.empty(image.shape, dtype=np.float32)
    clean[:, :] = image * 1.0
    rn2 = float(np.float32(readnoise) * np.float32(readnoise))
    var = clean + rn2
    mask = np.zeros(image.shape, dtype=np.uint8)
    if np.any(clean >= _c_float(satlevel)):  # else astroscrappy's saturation mask is empty
        update_mask(clean, mask, _c_float(satlevel), sepmed)
    mask = mask.view(bool)
    good = ~mask
    o = {"sepmed": sepmed, "fsmode": fsmode, "psfk": psfk, "sigclip": _c_float(sigclip),
         "separable": separable_kernel(psfk) if fsmode == "convolve" and psfk is not None else None,
         "objlim": _c_float(objlim), "sigcliplow": float(np.float32(sigfrac) * np.float32(sigclip)),
         "fine_reach": lacosmic_fine_reach(sepmed=sepmed, fsmode=fsmode, psfsize=psfsize)}
    reach = lacosmic_step_reach(sepmed=sepmed, fsmode=fsmode, psfsize=psfsize)
    level = _levels(image, mask, rn2)  # of the image before any cleaning, as astroscrappy's
    crmask = np.zeros(image.shape, dtype=bool)
    changed = np.zeros(image.shape, dtype=bool)
    with ThreadPoolExecutor(max_workers=workers) if workers > 1 else nullcontext() as pool:
        for i in range(int(niter)):
            if i == 0:
                found = _first_step(clean, var, good, o, reach, pool)
            else:
                found = _later_step(clean, var, good, found, changed, o, reach, pool)
            numcr = int(np.count_nonzero(found))
            _log.debug("L.A.Cosmic iteration %d: %d pixels", i + 1, numcr)
            crmask |= found
            if numcr == 0:
                break
            _clean_step(clean, var, crmask, mask, changed, cleantype, level)
    return crmask, clean


def _clean_step(clean, var, crmask, mask, changed, cleantype, level) -> None:
    """Clean every masked pixel (not the outer 2 rows and columns, as astroscrappy); mark those that changed."""
    ny, nx = clean.shape
    bad = crmask | mask
    inner = (slice(_HALF, ny - _HALF), slice(_HALF, nx - _HALF))
    if cleantype == "meanmask" and np.count_nonzero(crmask) > DENSE_FRACTION * crmask.size:
        _clean_dense(clean, var, bad, crmask[inner], changed, level)
        return
    ys, xs = coordinates(crmask[inner])
    ys += _HALF
    xs += _HALF
    before = clean[ys, xs], var[ys, xs]
    _clean(clean, bad, ys, xs, cleantype, lambda: level("image"))
    _clean(var, bad, ys, xs, cleantype, lambda: level("var"))
    changed[:] = False  # the state the next step sees differs from this one's only there
    changed[ys, xs] = (clean[ys, xs] != before[0]) | (var[ys, xs] != before[1])


def _clean_dense(clean, var, bad, flagged, changed, level) -> None:
    """The mean cleaning of many pixels at once: whole arrays instead of gathers (same values)."""
    changed[:] = False
    inner_changed = changed[_HALF:-_HALF, _HALF:-_HALF]
    good = ~bad
    for arr, which in ((clean, "image"), (var, "var")):
        total, n = _mean_of_good_neighbours_dense(arr, good)
        new = total / np.maximum(n, 1).astype(np.float32)
        empty = flagged & (n == 0)
        if empty.any():
            new[empty] = level(which)
        old = arr[_HALF:-_HALF, _HALF:-_HALF]
        inner_changed |= flagged & (new != old)
        np.copyto(old, new, where=flagged)
