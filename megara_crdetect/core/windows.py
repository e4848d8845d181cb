"""Run a local single-frame detector on windows or tiles of a frame, with results identical to one run.

A single-frame detector (L.A.Cosmic, and any detector with the signature
``image -> bool mask`` such as those of :mod:`megara_crdetect.core.auxdetect`)
is *local with reach r* when its output at a pixel depends only on the input
within Chebyshev distance ``r`` of it.  Then running it on a rectangle of the
frame gives, at every pixel further than ``r`` from a side of the rectangle
that is not a side of the frame, exactly what the whole-frame run gives: every
difference between the two runs starts at that side (the rectangle's
neighbours are missing or, with padding, replaced) and travels at most ``r``
pixels inward.  Sides that are sides of the frame see the same input (and the
same mirror padding, which only repeats the pixels next to that side) in both
runs, so no margin is needed there.

Two uses are built on that:

* :func:`tiled` splits the frame into tiles, runs each tile padded by the
  margin (in parallel threads) and keeps its inner part: the whole frame,
  bit-identical to a single run, with less memory and better use of the cores.
* :func:`around_candidates` runs only on windows around candidate pixels and
  keeps the 8-connected groups of flags that contain a candidate: identical
  to the groups of the whole-frame run that contain a candidate (see the
  proof there).  Callers that only keep groups seeded by candidates (the
  confirmation of :func:`~megara_crdetect.core.pipeline._confirm`) get the
  same result as from the whole frame.

Exactness holds only for detectors that are local with a known reach and use
no statistic of the whole image.  :func:`lacosmic_reach` gives the reach of
L.A.Cosmic (astroscrappy); its one whole-image statistic (the median level
used to clean a pixel whose 5x5 neighbourhood is entirely masked) is given
to every window by :func:`lacosmic_runner` (filler pixels beyond a side inside
the frame that set the window's median to the frame's, see
:func:`_with_level`); frames with saturated pixels are run whole.  Detectors that
normalise by image-wide statistics (a global sky level, a network input
scaled by the image's own median or percentiles) are not local: run them on
the whole frame.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .masks import coordinates

__all__ = ["Window", "NotLocal", "local", "frame_level", "lacosmic_reach", "lacosmic_step_reach",
           "lacosmic_fine_reach", "lacosmic_runner", "windows_around", "tiles",
           "tiled", "around_candidates", "WindowedDetection"]

_log = logging.getLogger(__name__)
_EIGHT = np.ones((3, 3), dtype=bool)
#: Pixels added around the candidates' bounding box in the exact part of a window (a cosmic ray's group
#: of flags around its brightest pixel); a group reaching further is run again on a larger window.
GROW = 8

#: Most pixels in one L.A.Cosmic tile: astroscrappy holds some fifteen float32 copies of what it runs, so
#: a tile of this size takes up to ~270 MB while it runs.  The tiles running at once also cover at most
#: half of the frame (tiles of at least MIN_TILE_PIXELS): 4 tiles on 2 threads for a full and a quarter
#: MEGARA frame instead of 2, about half of L.A.Cosmic's memory for ~7 % (~14 %) more of its time.
TILE_PIXELS, MIN_TILE_PIXELS = 4_500_000, 1_000_000

#: A detector run on one rectangle: ``(image, window) -> mask`` or ``(image, window) -> (mask, cleaned)``;
#: :func:`local` turns a plain ``image -> mask`` detector into one.
Runner = Callable[[np.ndarray, "Window"], "np.ndarray | tuple[np.ndarray, np.ndarray]"]


def local(detect: Callable[[np.ndarray], np.ndarray]) -> Runner:
    """A window runner of a plain ``image -> mask`` detector (local, no whole-image statistic)."""
    return lambda image, window: detect(image)


class NotLocal(RuntimeError):
    """A windowed run used a whole-image statistic: its result may differ from the whole-frame run."""


@dataclass(frozen=True)
class Window:
    """A rectangle ``[y0:y1, x0:x1]`` that is run, and its exact part ``[iy0:iy1, ix0:ix1]``."""

    y0: int
    y1: int
    x0: int
    x1: int
    iy0: int
    iy1: int
    ix0: int
    ix1: int

    @property
    def area(self) -> int:
        """Pixels run."""
        return (self.y1 - self.y0) * (self.x1 - self.x0)

    @property
    def run(self) -> tuple[slice, slice]:
        """Slices of the rectangle that is run."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    @property
    def inner(self) -> tuple[slice, slice]:
        """Slices of the exact part, in frame coordinates."""
        return slice(self.iy0, self.iy1), slice(self.ix0, self.ix1)

    @property
    def inner_local(self) -> tuple[slice, slice]:
        """Slices of the exact part, in the coordinates of the rectangle."""
        return slice(self.iy0 - self.y0, self.iy1 - self.y0), slice(self.ix0 - self.x0, self.ix1 - self.x0)


def _window(y0: int, y1: int, x0: int, x1: int, margin: int, shape: tuple[int, int]) -> Window:
    """The window whose exact part is ``[y0:y1, x0:x1]`` (clipped to the frame)."""
    ny, nx = shape
    y0, y1, x0, x1 = max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx)
    return Window(max(y0 - margin, 0), min(y1 + margin, ny), max(x0 - margin, 0), min(x1 + margin, nx),
                  y0, y1, x0, x1)


def lacosmic_reach(*, niter: int, sepmed: bool, fsmode: str, psfsize: int) -> int:
    """Reach (Chebyshev radius, pixels) of astroscrappy's L.A.Cosmic, mask and cleaned image.

    Derivation (astroscrappy 1.x, ``detect_cosmics``; ``s`` = separable
    median filters if ``sepmed`` else full ones):

    * saturation mask: median (7-wide separable, radius 3; full 5x5: 2),
      then two 5x5 dilations (4): ``r_mask`` = 7 (6);
    * one iteration's detections: Laplacian of the 2x subsampled image,
      rebinned (1); noise = median of the variance (3; 2); ``sp = s - med(s)``
      (twice that: 6; 4); fine structure: convolution with the PSF kernel
      (``psfsize // 2``) of images divided by the noise, or a median (2; 1),
      then a median (separable 9: 4; full 7: 3): ``r_f``; the detections
      need ``max(sp, f)`` and grow twice by a 3x3 dilation: ``r_det =
      max(r_sp, r_f) + 2``;
    * cleaning (after every iteration, the last one included) reads the 5x5
      neighbourhood of the mask and of the image: 2.

    The image and variance are exact everywhere in the rectangle before the
    first iteration and the mask ``r_mask`` inside; by induction they are
    exact ``r_mask + i (r_det + 2)`` inside after iteration ``i``, so after
    ``niter`` iterations both the mask (``- 2``) and the cleaned image are
    exact ``r_mask + niter (r_det + 2)`` inside.  Stopping early (an
    iteration without detections anywhere) leaves the state unchanged, which
    another iteration would not change either.  Defaults (``niter`` 4,
    separable medians, convolution with an 11x11 kernel): 71 pixels.
    """
    r_mask = 7 if sepmed else 6
    return r_mask + int(niter) * (lacosmic_step_reach(sepmed=sepmed, fsmode=fsmode, psfsize=psfsize) + 2)


def lacosmic_fine_reach(*, sepmed: bool, fsmode: str, psfsize: int) -> int:
    """Reach of L.A.Cosmic's fine-structure image from the image and the noise (see :func:`lacosmic_reach`).

    A convolution with the PSF kernel (``psfsize // 2``) or a median (2; 1),
    then a median (separable 9: 4; full 7: 3).
    """
    first = psfsize // 2 if fsmode == "convolve" else (2 if sepmed else 1)
    return first + (4 if sepmed else 3)


def lacosmic_step_reach(*, sepmed: bool, fsmode: str, psfsize: int) -> int:
    """Reach of one L.A.Cosmic iteration's detections from the image and its variance: ``r_det``.

    See :func:`lacosmic_reach`; the noise (a median of the variance) enters
    the fine structure of the convolution mode before its filters.
    """
    r_noise = 3 if sepmed else 2
    r_sp = 2 * r_noise
    r_fine = lacosmic_fine_reach(sepmed=sepmed, fsmode=fsmode, psfsize=psfsize)
    if fsmode == "convolve":
        r_fine += r_noise
    return max(r_sp, r_fine) + 2


def frame_level(image: np.ndarray, padwidth: int, satlevel_e: float | None) -> float | None:
    """astroscrappy's whole-image level of a frame: the median of the (mirror-padded) frame.

    astroscrappy cleans a pixel whose 5x5 neighbourhood is entirely masked
    with the median of the good pixels of the whole image (and the variance
    with the same order statistic of the variance, which is the image plus a
    constant).  Computed here with astroscrappy's own median so that a
    window can be given the same level (:func:`lacosmic_runner`).  None when
    the frame has saturated pixels (then the good pixels depend on
    astroscrappy's saturation mask and windows are not used).
    """
    from astroscrappy.utils import median

    work = np.asarray(image, dtype=np.float32)
    if padwidth:
        work = np.pad(work, padwidth, mode="reflect")
    if np.any(work >= (65535.0 if satlevel_e is None else satlevel_e)):
        return None
    flat = np.ascontiguousarray(work).ravel()
    return float(median(flat, flat.size))


def _with_level(work: np.ndarray, level: np.float32, free: str) -> np.ndarray:
    """``work`` with rows (or columns) appended on side ``free`` so that its median is ``level``.

    astroscrappy's median of ``n`` values is the order statistic ``(n - 1) // 2``
    (0-based).  With ``a`` values below the level, ``e`` equal and ``b`` above,
    filler pixels equal to the level, plus ``a - e - b`` above it (or
    ``e + b - a`` below it) put that order statistic on the level.  The filler
    lies beyond the side of the window that is inside the frame, where the
    window's margin already absorbs anything.
    """
    a = int(np.count_nonzero(work < level))
    e = int(np.count_nonzero(work == level))
    b = work.size - a - e
    d = a - e - b
    transpose = free in ("left", "right")
    w = work.T if transpose else work
    width = w.shape[1]
    rows = (abs(d) + 1 + width - 1) // width + 1
    fill = np.full(rows * width, level, dtype=np.float32)
    # the extra equal values must not move the order statistic off the level: balance them too
    extra = fill.size - abs(d) - 1
    n_hi = max(d, 0) + extra // 2
    n_lo = max(-d, 0) + extra // 2
    fill[:n_lo] = np.nextafter(level, np.float32(-np.inf))
    if n_hi:
        fill[fill.size - n_hi:] = np.nextafter(level, np.float32(np.inf))
    fill = fill.reshape(rows, width)
    out = np.concatenate([w, fill] if free in ("bottom", "right") else [fill, w], axis=0)
    return np.ascontiguousarray(out.T if transpose else out)


def lacosmic_runner(satlevel_e: float | None, padwidth: int, level: float | None, shape: tuple[int, int],
                    **kwargs) -> Callable[[np.ndarray, Window], tuple[np.ndarray, np.ndarray]]:
    """A window runner of :func:`~megara_crdetect.core.lacosmic.run_lacosmic` that keeps the frame's level.

    The window is mirror-padded by ``padwidth`` here (as ``run_lacosmic``
    does), then given filler beyond a side inside the frame so that
    astroscrappy's whole-image level is the frame's (``level``, from
    :func:`frame_level`; see :func:`_with_level`).  A window that is the
    whole frame is run as it is.
    """
    from .lacosmic import run_lacosmic

    ny, nx = shape
    lev = None if level is None else np.float32(level)

    def run(image: np.ndarray, w: Window) -> tuple[np.ndarray, np.ndarray]:
        work = np.asarray(image, dtype=np.float32)
        if padwidth:
            if padwidth >= min(work.shape):
                raise NotLocal(f"window {work.shape} smaller than the padding {padwidth}")
            work = np.pad(work, padwidth, mode="reflect")
        free = next((side for side, inside in (("bottom", w.y1 < ny), ("top", w.y0 > 0), ("right", w.x1 < nx),
                                               ("left", w.x0 > 0)) if inside), None)
        if free is not None:
            if lev is None:
                raise NotLocal("the frame has saturated pixels")
            work = _with_level(work, lev, free)
        mask, cleaned = run_lacosmic(work, satlevel_e=satlevel_e, padwidth=0, **kwargs)
        if free is not None:  # drop the filler
            h, wd = image.shape[0] + 2 * padwidth, image.shape[1] + 2 * padwidth
            y0 = mask.shape[0] - h if free == "top" else 0
            x0 = mask.shape[1] - wd if free == "left" else 0
            mask, cleaned = mask[y0:y0 + h, x0:x0 + wd], cleaned[y0:y0 + h, x0:x0 + wd]
        if padwidth:
            inner = (slice(padwidth, -padwidth), slice(padwidth, -padwidth))
            mask, cleaned = mask[inner], cleaned[inner]
        return mask, cleaned

    return run


def tiles(shape: tuple[int, int], margin: int, n_tiles: int) -> list[Window]:
    """Split a frame into ``n_tiles`` horizontal bands whose exact parts cover it once."""
    ny, nx = shape
    n_tiles = max(1, min(int(n_tiles), ny // max(2 * margin, 1) or 1))
    edges = np.linspace(0, ny, n_tiles + 1).round().astype(int)
    return [_window(int(a), int(b), 0, nx, margin, shape) for a, b in zip(edges[:-1], edges[1:])]


def windows_around(candidates: np.ndarray, margin: int, grow: int = GROW) -> list[Window]:
    """Rectangles whose exact parts cover every candidate pixel.

    Candidates closer than ``2 * margin + 1`` share a rectangle: one per
    8-connected group of the candidates dilated by ``margin``, whose exact
    part is the bounding box of its candidates grown by ``grow`` (room for
    the group of flags around a candidate).
    """
    if not candidates.any():
        return []
    near = ndimage.maximum_filter(candidates.view(np.uint8), size=2 * margin + 1, mode="constant") > 0
    labels, _ = ndimage.label(near, structure=_EIGHT)
    labels[~candidates] = 0
    return [_window(s[0].start - grow, s[0].stop + grow, s[1].start - grow, s[1].stop + grow, margin,
                    candidates.shape) for s in ndimage.find_objects(labels) if s is not None]


def _run_all(runner: Runner, image: np.ndarray, wins: list[Window], workers: int | None) -> list:
    workers = min(len(wins), os.cpu_count() or 1) if workers is None else max(1, int(workers))

    def one(w: Window):
        out = runner(np.ascontiguousarray(image[w.run]), w)
        return out if isinstance(out, tuple) else (out,)

    if workers <= 1 or len(wins) <= 1:
        return [one(w) for w in wins]
    with ThreadPoolExecutor(max_workers=min(workers, len(wins))) as pool:
        return list(pool.map(one, wins))


@dataclass
class WindowedDetection:
    """Mask (and cleaned image, if the detector gives one) and what was run."""

    mask: np.ndarray
    cleaned: np.ndarray | None
    n_windows: int
    fraction: float  # pixels run / pixels of the frame
    whole_frame: bool  # True when it fell back to (or chose) one whole-frame run


def tiled(runner: Runner, image: np.ndarray, margin: int, *, n_tiles: int, workers: int | None = None
          ) -> WindowedDetection:
    """Run on tiles padded by ``margin`` and paste their exact parts: the whole-frame result.

    Raises :class:`NotLocal` if the runner does (the caller then runs the
    whole frame).
    """
    wins = tiles(image.shape, margin, n_tiles)
    results = _run_all(runner, image, wins, workers)
    mask = np.zeros(image.shape, dtype=bool)
    cleaned = np.empty(image.shape, dtype=np.float32) if len(results[0]) > 1 else None
    for w, res in zip(wins, results):
        mask[w.inner] = res[0][w.inner_local]
        if cleaned is not None:
            cleaned[w.inner] = res[1][w.inner_local]
    return WindowedDetection(mask, cleaned, len(wins), sum(w.area for w in wins) / image.size, len(wins) == 1)


def _complete_groups(flags: np.ndarray, cands: np.ndarray, w: Window, shape) -> tuple[np.ndarray, np.ndarray]:
    """Groups of the exact part containing a candidate: (complete ones, incomplete ones), local coordinates.

    A group is complete when none of its pixels lies on a side of the exact
    part that is not a side of the frame (its neighbours beyond are unknown).
    """
    inner = flags[w.inner_local]
    labels, n = ndimage.label(inner, structure=_EIGHT)
    if n == 0:
        return np.zeros_like(inner), np.zeros_like(inner)
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[np.unique(labels[cands[w.inner] & inner])] = True
    seeded[0] = False
    open_ = np.zeros(n + 1, dtype=bool)
    ny, nx = shape
    sides = []
    if w.iy0 > 0:
        sides.append(labels[0, :])
    if w.iy1 < ny:
        sides.append(labels[-1, :])
    if w.ix0 > 0:
        sides.append(labels[:, 0])
    if w.ix1 < nx:
        sides.append(labels[:, -1])
    for s in sides:
        open_[np.unique(s)] = True
    open_[0] = False
    return (seeded & ~open_)[labels], (seeded & open_)[labels]


def cell_boxes(ys: np.ndarray, xs: np.ndarray, side: int, nx: int):
    """The pixels ``(ys, xs)`` (at least one) grouped by the ``side`` x ``side`` cell that holds them.

    Returns the order that sorts them by cell, the start of each cell's run
    in that order, and the bounding box ``(y0, y1, x0, x1)`` of each cell's
    pixels (ends exclusive), for rows ``nx`` pixels long.
    """
    cell = (ys // side) * (-(-nx // side)) + xs // side
    order = np.argsort(cell, kind="stable")
    cell, ys, xs = cell[order], ys[order], xs[order]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]])
    boxes = (np.minimum.reduceat(ys, starts), np.maximum.reduceat(ys, starts) + 1,
             np.minimum.reduceat(xs, starts), np.maximum.reduceat(xs, starts) + 1)
    return order, starts, boxes


def _cells_covered(candidates: np.ndarray, side: int) -> int:
    """Pixels of the ``side`` x ``side`` cells that hold a candidate: no more than the windows cover.

    A window reaches ``side`` pixels beyond its candidate on every side, so
    it covers the whole cell of that candidate: a cheap lower bound of the
    windows' area that spares building them when it is already too large.
    """
    ys, xs = coordinates(candidates)
    if ys.size == 0:
        return 0
    side = max(int(side), 1)
    ny, nx = candidates.shape
    ncx = -(-nx // side)
    cells = np.unique((ys // side) * ncx + xs // side)
    cy, cx = cells // ncx, cells % ncx
    return int(np.sum(np.minimum(side, ny - cy * side) * np.minimum(side, nx - cx * side)))


def around_candidates(runner: Runner, image: np.ndarray, candidates: np.ndarray, margin: int, *,
                      workers: int | None = None, max_fraction: float = 0.6, max_rounds: int = 4
                      ) -> WindowedDetection | None:
    """The groups of flags that contain a candidate, found on windows around the candidates.

    Returns ``mask`` = the union of the 8-connected groups of the whole-frame
    flags that contain a candidate pixel, and ``cleaned`` = ``image`` with
    the whole-frame cleaned values on those groups; or None when the windows
    would cover more than ``max_fraction`` of the frame (the caller then runs
    the whole frame; :func:`_cells_covered` tells that before the windows
    are built).

    Proof of identity.  Every candidate lies in the exact part of a window
    (``windows_around``), where the window's flags equal the whole-frame
    flags (module docstring).  A group of the exact part that touches no side
    of the exact part inside the frame has all its 8-neighbours in the exact
    part, unflagged in both runs, so it is a whole group of the whole-frame
    flags; a group that does touch such a side is run again on a window
    grown around it (at most ``max_rounds`` times, then None).  The cleaned
    values on a group are exact too (the reach covers the cleaning).
    """
    shape = image.shape
    mask = np.zeros(shape, dtype=bool)
    cleaned = None
    todo, n_run, area = candidates, 0, 0
    for _ in range(max_rounds):
        wins = windows_around(todo, margin)
        if not wins:
            break
        area += sum(w.area for w in wins)
        if area > max_fraction * image.size:
            return None
        results = _run_all(runner, image, wins, workers)
        n_run += len(wins)
        if cleaned is None and len(results[0]) > 1:
            cleaned = np.array(image, dtype=np.float32, copy=True)
        todo = np.zeros(shape, dtype=bool)
        for w, res in zip(wins, results):
            done, open_ = _complete_groups(res[0], candidates, w, shape)
            mask[w.inner] |= done
            if cleaned is not None:
                cleaned[w.inner][done] = res[1][w.inner_local][done]
            todo[w.inner] |= open_
        todo &= ~mask  # complete in another window
        if not todo.any():
            return WindowedDetection(mask, cleaned, n_run, area / image.size, False)
        # an open group: the next window covers it whole plus a band for its continuation
        todo = ndimage.binary_dilation(todo, _EIGHT, iterations=margin // 2)
    return None


def _n_tiles(npix: int, workers: int) -> int:
    """Tiles of a whole-frame L.A.Cosmic run: a multiple of the workers, see ``TILE_PIXELS``."""
    tile = min(TILE_PIXELS, max(MIN_TILE_PIXELS, npix // (2 * workers)))
    return workers * max(1, -(-npix // (workers * tile)))  # ceil


def lacosmic_where_needed(image: np.ndarray, candidates: np.ndarray | None, *, workers: int | None = None,
                          padwidth: int = 0, satlevel_e: float | None = None, max_fraction: float = 0.5,
                          **kwargs) -> tuple[np.ndarray, np.ndarray, WindowedDetection | None]:
    """L.A.Cosmic on one image: on windows around ``candidates`` when they are few, else on the whole frame.

    The whole frame runs the incremental L.A.Cosmic (its threads), or, for
    options only astroscrappy runs, tiles in parallel threads.

    Parameters
    ----------
    image : ndarray (ny, nx)
        Image in electrons.
    candidates : ndarray of bool or None
        Pixels that may seed a group that counts (the caller keeps only the
        groups of flags that contain one).  None: the whole frame's flags are
        needed.
    workers : int, optional
        Threads (windows and tiles run in parallel; default: cores).
    padwidth, satlevel_e, **kwargs
        :func:`~megara_crdetect.core.lacosmic.run_lacosmic` arguments.

    Returns
    -------
    mask, cleaned : ndarray
        With candidates: the groups of the whole-frame flags that contain a
        candidate, and the image with the whole-frame cleaned values on them.
        Without: the whole-frame flags and cleaned image (bit-identical
        however they were run).
    info : WindowedDetection or None
        What was run (None: one whole-frame run).
    """
    from .lacosmic import run_lacosmic
    from .lacosmic_incremental import supported

    image = np.asarray(image, dtype=np.float32)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    margin = lacosmic_reach(niter=kwargs["niter"], sepmed=kwargs.get("sepmed", True),
                            fsmode=kwargs.get("fsmode", "median"), psfsize=kwargs.get("psfsize", 7))
    # the incremental L.A.Cosmic already spends its time only where it can matter: no tiles
    incremental = supported(kwargs.get("cleantype", "meanmask"), kwargs.get("fsmode", "median"),
                            kwargs.get("psfmodel", "gauss"))
    few = candidates is not None and _cells_covered(candidates, margin) <= max_fraction * image.size
    if candidates is not None and not few:
        _log.debug("L.A.Cosmic: windows of %d px around %d candidates would cover more than %.0f %% of the "
                   "frame", margin, int(np.count_nonzero(candidates)), 100 * max_fraction)
    level = frame_level(image, padwidth, satlevel_e) if few or not incremental else None
    try:
        if few and level is not None:
            runner = lacosmic_runner(satlevel_e, padwidth, level, image.shape, **kwargs)
            found = around_candidates(runner, image, candidates, margin, workers=workers,
                                      max_fraction=max_fraction)
            if found is not None:
                _log.debug("L.A.Cosmic on %d windows around %d candidates (%.1f %% of the frame)",
                           found.n_windows, int(np.count_nonzero(candidates)), 100 * found.fraction)
                return found.mask, found.cleaned, found
        n_tiles = _n_tiles(image.size, workers)
        if not incremental and level is not None and len(tiles(image.shape, margin, n_tiles)) > 1:
            runner = lacosmic_runner(satlevel_e, padwidth, level, image.shape, **kwargs)
            found = tiled(runner, image, margin, n_tiles=n_tiles, workers=workers)
            _log.debug("L.A.Cosmic on %d tiles (%.1f %% of the frame)", found.n_windows, 100 * found.fraction)
            return found.mask, found.cleaned, found
    except NotLocal as exc:  # pragma: no cover - guarded by frame_level
        _log.debug("L.A.Cosmic on the whole frame: %s", exc)
    mask, cleaned = run_lacosmic(image, satlevel_e=satlevel_e, padwidth=padwidth,
                                 workers=workers if incremental else 1, **kwargs)
    return mask, cleaned, None
