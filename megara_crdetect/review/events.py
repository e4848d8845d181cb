"""Cosmic-ray events of MEDIANCR and the per-pixel quantities the review shows.

A *CR event* is an 8-connected group of MEDIANCR pixels, numbered 1, 2, ...
in raster order of its first pixel (numpy row-major order, i.e. increasing
FITS Y, then X), the numbering of ``mediancr_identified.csv``.  Everything the
figures, the region file and the candidate table say about an event comes
from :class:`EventTable`, computed once with vectorised numpy (fast for
thousands of events on a 4k x 4k frame).

Coordinates: arrays here are 0-based numpy ``(row, col)``; the ``x_*`` /
``y_*`` attributes are FITS 1-based (``X = col + 1``, ``Y = row + 1``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from ..core import mmdiagram as mm
from ..core.masks import coordinates
from ..core.noise import sigma
from ..core.pipeline import CODES

__all__ = ["CODE_NAMES", "EventTable", "ReviewData", "cutout", "find_events", "label_events", "near_misses"]

#: Meaning of the MEDIANCR codes.
CODE_NAMES = CODES
_EIGHT = np.ones((3, 3), dtype=bool)
#: The review's margins are exact down to this far below the boundary (sigma units; near misses use 1).
MARGIN_DEPTH = 2.0


def label_events(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected groups of ``mask`` numbered in raster order of their first pixel.

    Returns
    -------
    labels : ndarray of int32, shape of ``mask``
        0 outside the mask, ``i`` (1-based) in group ``i``.
    n : int
        Number of groups.
    """
    labels, n = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT)
    return labels.astype(np.int32, copy=False), int(n)


@dataclass
class EventTable:
    """Per-event summary of a labelled mask (all arrays have one entry per event).

    Attributes
    ----------
    labels : ndarray of int32, shape (ny, nx)
        Event number of every pixel (0: none).
    rows, cols, codes, t, margin : ndarray
        Every mask pixel (0-based position, MEDIANCR code, normalised height
        ``t = (median2d - min2d) / u`` and ``margin = t - t_B(u)``), sorted by
        event and, inside an event, in raster order.
    start : ndarray of int
        Index in the pixel arrays of the first pixel of every event.
    npix, n_dilation, n_mm, n_la, n_both, n_user, n_pair : ndarray of int
        Pixel counts by code (``n_pair``: pairs, code 6, the second hit of a
        coincidence; ``n_mm``: MM detections above the boundary only).
    x_centre, y_centre : ndarray of float
        Unweighted centroid (FITS).
    x_peak, y_peak : ndarray of int
        Pixel of the event with the largest ``t`` (FITS).
    xmin, xmax, ymin, ymax : ndarray of int
        Bounding box (FITS, inclusive).
    t_max, margin_max : ndarray of float
        Largest ``t`` and largest margin above the boundary (sigma units;
        NaN without MM boundary).
    """

    labels: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    codes: np.ndarray
    t: np.ndarray
    margin: np.ndarray
    start: np.ndarray
    npix: np.ndarray
    n_dilation: np.ndarray
    n_mm: np.ndarray
    n_la: np.ndarray
    n_both: np.ndarray
    n_user: np.ndarray
    n_pair: np.ndarray
    x_centre: np.ndarray
    y_centre: np.ndarray
    x_peak: np.ndarray
    y_peak: np.ndarray
    xmin: np.ndarray
    xmax: np.ndarray
    ymin: np.ndarray
    ymax: np.ndarray
    t_max: np.ndarray
    margin_max: np.ndarray

    def __len__(self) -> int:
        return len(self.npix)

    @property
    def number(self) -> np.ndarray:
        """Event numbers 1..n."""
        return np.arange(1, len(self) + 1)

    def method(self, i: int) -> str:
        """How event ``i`` (0-based) was found: ``LA only``, ``MM only``, ``pair only``, ``LA+MM``,
        ``MM+pair``, ``user``..."""
        parts = [name for name, n in (("LA", self.n_la[i] + self.n_both[i]), ("MM", self.n_mm[i] + self.n_both[i]),
                                      ("pair", self.n_pair[i])) if n > 0]
        text = "+".join(parts) + (" only" if len(parts) == 1 else "")
        if self.n_user[i]:
            text = "user" + (f" + {text}" if parts else "")
        return text or "dilation"

    def category(self, i: int) -> str:
        """Colour category of event ``i``: ``la``, ``mm``, ``both``, ``pair``, ``user`` or ``dilation``.

        The strongest evidence wins: user, LA and MM, LA, MM, pair (an event
        with pairs and a pixel above the boundary is ``mm``).
        """
        if self.n_user[i]:
            return "user"
        la = self.n_la[i] + self.n_both[i] > 0
        mm = self.n_mm[i] + self.n_both[i] > 0
        if la or mm:
            return "both" if la and mm else "la" if la else "mm"
        return "pair" if self.n_pair[i] else "dilation"

    def pixels(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """0-based ``(rows, cols, codes)`` of the pixels of event ``i`` (0-based)."""
        sl = slice(self.start[i], self.start[i] + self.npix[i])
        return self.rows[sl], self.cols[sl], self.codes[sl]

    def window(self, i: int, semiwindow: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
        """0-based half-open cut-out ``(r0, r1, c0, c1)`` of ``semiwindow`` around the centroid.

        Near the image edge the cut-out is moved inward, not cut (see :func:`cutout`).
        """
        rc = int(np.floor(self.y_centre[i] - 1 + 0.5))
        cc = int(np.floor(self.x_centre[i] - 1 + 0.5))
        return cutout(rc, cc, semiwindow, shape)


def cutout(rc: int, cc: int, semiwindow: int, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """0-based half-open ``(r0, r1, c0, c1)`` of side ``2 semiwindow + 1`` around ``(rc, cc)``, inside the image.

    At the image edge the window keeps its size and moves inward (the event
    is then off-centre), so that every cut-out of a page has the same shape
    and none is squashed; it is cut only where the image is smaller.
    """
    out = []
    for centre, n in ((rc, shape[0]), (cc, shape[1])):
        size = min(2 * semiwindow + 1, n)
        lo = min(max(centre - semiwindow, 0), n - size)
        out += [lo, lo + size]
    return tuple(out)


def _group_reduce(values: np.ndarray, start: np.ndarray, ufunc: np.ufunc) -> np.ndarray:
    if len(start) == 0:
        return np.zeros(0, dtype=values.dtype)
    return ufunc.reduceat(values, start)


def find_events(mask: np.ndarray, codes: np.ndarray, t: np.ndarray, margin: np.ndarray | None = None
                ) -> EventTable:
    """Summarise the 8-connected events of ``mask``.

    Parameters
    ----------
    mask : ndarray of bool, shape (ny, nx)
        MEDIANCR.
    codes : ndarray of int, shape (ny, nx)
        MEDIANCR codes (0 none, 1 dilation, 2 MM, 3 LA, 4 both, 5 user, 6 pair).
    t : ndarray, shape (ny, nx)
        Normalised height ``(median2d - min2d) / u`` (u: noise scale).
    margin : ndarray, shape (ny, nx), optional
        ``t - t_B(u)`` (height above the MM boundary, sigma units); NaN when
        not given.

    Returns
    -------
    EventTable
    """
    labels, _ = label_events(mask)
    rows, cols = coordinates(labels)
    lab = labels[rows, cols]
    order = np.argsort(lab, kind="stable")  # nonzero is raster order already
    rows, cols, lab = rows[order], cols[order], lab[order]
    start = np.flatnonzero(np.r_[True, lab[1:] != lab[:-1]]) if lab.size else np.zeros(0, dtype=np.intp)
    npix = np.diff(np.r_[start, lab.size]).astype(np.int64)
    pc = np.asarray(codes)[rows, cols].astype(np.int8)
    pt = np.asarray(t)[rows, cols].astype(np.float64)  # gathered first: no float64 copy of the frame
    pm = np.full(pt.shape, np.nan) if margin is None else np.asarray(margin)[rows, cols].astype(np.float64)
    count = {c: _group_reduce((pc == c).astype(np.int64), start, np.add) for c in CODE_NAMES if c}
    # peak: the largest t of each event (ties: first in raster order)
    key = np.lexsort((-np.arange(lab.size), pt, lab))
    last = np.r_[start[1:] - 1, lab.size - 1] if lab.size else np.zeros(0, dtype=np.intp)
    peak = key[last]
    with np.errstate(invalid="ignore"):
        mmax = _group_reduce(np.where(np.isnan(pm), -np.inf, pm), start, np.maximum)
    mmax = np.where(np.isneginf(mmax), np.nan, mmax)
    return EventTable(
        labels=labels, rows=rows, cols=cols, codes=pc, t=pt, margin=pm, start=start, npix=npix,
        n_dilation=count[1], n_mm=count[2], n_la=count[3], n_both=count[4], n_user=count[5], n_pair=count[6],
        x_centre=_group_reduce(cols.astype(float), start, np.add) / np.maximum(npix, 1) + 1,
        y_centre=_group_reduce(rows.astype(float), start, np.add) / np.maximum(npix, 1) + 1,
        x_peak=cols[peak] + 1, y_peak=rows[peak] + 1,
        xmin=_group_reduce(cols, start, np.minimum) + 1, xmax=_group_reduce(cols, start, np.maximum) + 1,
        ymin=_group_reduce(rows, start, np.minimum) + 1, ymax=_group_reduce(rows, start, np.maximum) + 1,
        t_max=_group_reduce(pt, start, np.maximum), margin_max=mmax)


def near_misses(margin: np.ndarray, exclude: np.ndarray, *, depth: float = 1.0,
                limit: int = 20, extra: np.ndarray | None = None) -> np.ndarray:
    """Pixels just below the MM boundary: the first candidates to add by hand.

    Parameters
    ----------
    margin : ndarray, shape (ny, nx)
        Height above the MM boundary, ``t - t_B(u)`` (sigma units).
    exclude : ndarray of bool
        Pixels not to report (MEDIANCR).
    depth : float
        Largest distance below the boundary, in sigma.
    limit : int
        At most this many pixels, closest to the boundary first.
    extra : ndarray of bool, optional
        Additional condition every reported pixel must meet (e.g. the
        ``max2d`` clause of the MM test).

    Returns
    -------
    ndarray of int, shape (M, 2)
        0-based ``(row, col)`` of the pixels, closest to the boundary first.
    """
    sel = (margin > -depth) & (margin <= 0) & ~exclude
    if extra is not None:
        sel &= extra
    rows, cols = coordinates(sel)
    if rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    m = margin[rows, cols]
    order = np.argsort(-m, kind="stable")[:limit]
    return np.column_stack([rows[order], cols[order]]).astype(np.int64)


class ReviewData:
    """The quantities every review product needs, computed once and lazily.

    Parameters
    ----------
    result : CRMaskResult
        Result (or partial result, during the interactive review) of
        :func:`~megara_crdetect.core.pipeline.compute_crmasks`.
    rnoise_e : float
        Readout noise in electrons.
    stack : ndarray, shape (N, ny, nx), optional
        Exposures in electrons (cut-outs of the exposures need them).
    """

    def __init__(self, result, rnoise_e: float, stack: np.ndarray | None = None):
        self.result = result
        self.stats = result.stats
        self.rnoise_e = float(rnoise_e)
        self.stack = stack

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (ny, nx)."""
        return self.stats.median2d.shape

    @property
    def boundary(self):
        """MM boundary of the median (None without MM)."""
        return (self.result.boundaries or {}).get("median")

    @cached_property
    def grid(self) -> mm.DiagramGrid:
        """Grid of the simulated diagrams (or one built from min2d without MM)."""
        sims = self.result.diagrams
        return sims.grid if sims is not None else mm.make_grid(self.u, self.rnoise_e)

    @cached_property
    def columns(self) -> np.ndarray:
        """Diagram column of every pixel (clipped to the grid; int16 when the grid is that small, else int32)."""
        grid = self.grid
        if hasattr(grid, "column_index"):
            small = grid.shape[0] <= np.iinfo(np.int16).max
            return grid.column_index(self.u, dtype=np.int16 if small else np.int32)
        col = np.searchsorted(grid.u_edges, self.u, side="right").astype(np.int32) - 1
        return np.clip(col, 0, len(grid.u_edges) - 2, out=col)

    @cached_property
    def u(self) -> np.ndarray:
        """Noise scale ``u`` of every pixel (electrons): the one that normalised the MM diagrams.

        ``result.noise`` when the pipeline provides it, else
        :func:`~megara_crdetect.core.mmdiagram.noise_map` of min2d, else
        ``sigma(min2d)``.
        """
        noise = getattr(self.result, "noise", None)
        if noise is not None:
            return noise
        noise_map = getattr(mm, "noise_map", None)
        if noise_map is not None:
            return noise_map(self.stats.min2d, self.rnoise_e)
        return sigma(self.stats.min2d, self.rnoise_e)

    def t_of(self, target: np.ndarray) -> np.ndarray:
        """``(target - min2d) / u`` of every pixel."""
        t = np.subtract(target, self.stats.min2d, dtype=np.float32)
        t /= self.u
        return t

    @cached_property
    def t(self) -> np.ndarray:
        """Normalised height of median2d."""
        return self.t_of(self.stats.median2d)

    def margin_of(self, t: np.ndarray, boundary, *, where: np.ndarray | None = None) -> np.ndarray | None:
        """``t - t_B(u)`` for a boundary (None without one).

        With ``where`` (bool), exact there and wherever the margin exceeds
        ``-MARGIN_DEPTH``; elsewhere ``-inf`` (farther below the boundary).  A
        spline boundary never lies below its lowest table value, so only the
        pixels of ``t`` above that minus the depth are interpolated: a few
        per cent of a frame instead of all of it.
        """
        if boundary is None:
            return None
        if where is None or boundary.kind == "piecewise" or not len(boundary.t_table):
            level = boundary.t_at32(self.u)
            return np.subtract(t, level, out=level)
        out = np.full(t.shape, -np.inf, dtype=np.float32)
        rows, cols = coordinates((t > np.float32(np.min(boundary.t_table) - MARGIN_DEPTH)) | where)
        out[rows, cols] = t[rows, cols] - boundary.t_at32(self.u[rows, cols])
        return out

    @cached_property
    def margin(self) -> np.ndarray | None:
        """Height of median2d above the MM boundary (sigma units): exact at MEDIANCR and wherever it
        exceeds ``-MARGIN_DEPTH``, ``-inf`` elsewhere (see :meth:`margin_of`)."""
        return self.margin_of(self.t, self.boundary, where=self.result.mediancr)

    @cached_property
    def events(self) -> EventTable:
        """The CR events of MEDIANCR."""
        return find_events(self.result.mediancr, self.result.mediancr_codes, self.t, self.margin)

    def corrected(self, use_lamedian: bool = False) -> np.ndarray:
        """median2d with the MEDIANCR pixels repaired (min2d or ``repair_min``, or the L.A.Cosmic median)."""
        repl = self.stats.min2d if self.result.repair_min is None else self.result.repair_min
        if use_lamedian and self.result.lamedian is not None:
            repl = self.result.lamedian
        out = self.stats.median2d.copy()
        m = self.result.mediancr
        out[m] = np.asarray(repl)[m]
        return out
