"""Detection boundary of the MM diagram: spline with upward extension or piecewise line.

The spline is fitted in the normalised coordinates of
:mod:`megara_crdetect.core.mmdiagram` (``u = sigma(min2d)``,
``t = (target - min2d) / sigma``) by weighted linear least squares on a clamped
cubic B-spline basis with ``mm_knots_splfit`` equally spaced knots (an exact,
fast solve; the reference minimises the same objective with SLSQP and finite
differences).  Outside the fitted range the normalised boundary is held
constant, so in the diagram it keeps growing like the noise (the reference
extrapolates the end polynomials when flagging but clamps them when
plotting).  The piecewise boundary is the line through the fixed points,
constant beyond the first and last point, as in the reference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.interpolate import BSpline

from .chunks import CHUNK, map_in_chunks
from .mmdiagram import DiagramGrid
from .noise import sigma

__all__ = ["Boundary", "fit_spline_boundary", "piecewise_boundary", "expected_false_positives"]

_TABLE = 2048
_FINE = 65536


@dataclass(frozen=True)
class Boundary:
    """A detection boundary ``y_B(x)`` of the MM diagram (electrons).

    Attributes
    ----------
    kind : str
        ``spline`` or ``piecewise``.
    rnoise_e : float
        Readout noise (electrons) of the normalisation ``sigma(x)``.
    u_table, t_table : ndarray
        Spline boundary sampled in normalised coordinates (spline only).
    fixed : ndarray, shape (M, 3)
        Fixed points ``(x, y, weight)`` in electrons.
    points : tuple of ndarray
        The boundary points ``(u, t)`` the spline was fitted to.
    iterations : list of (ndarray, ndarray)
        ``(u_table, t_table)`` of every fit, first one first (for plots).
    """

    kind: str
    rnoise_e: float
    u_table: np.ndarray = field(default_factory=lambda: np.zeros(0))
    t_table: np.ndarray = field(default_factory=lambda: np.zeros(0))
    fixed: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    points: tuple = (np.zeros(0), np.zeros(0))
    iterations: list = field(default_factory=list)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Boundary ``y_B`` (electrons) at reference signal ``x`` (electrons)."""
        x = np.asarray(x, dtype=np.float32)
        if self.kind == "piecewise":
            return np.interp(x, self.fixed[:, 0], self.fixed[:, 1]).astype(np.float32)
        s = sigma(x, self.rnoise_e)
        t = np.interp(s, self.u_table, self.t_table).astype(np.float32)
        t *= s
        return t

    def y_at(self, u: np.ndarray) -> np.ndarray:
        """Boundary ``y_B`` (electrons) for pixels of noise scale ``u`` (float32)."""
        u = np.asarray(u, dtype=np.float32)
        if self.kind == "piecewise":
            x = np.maximum(u * u - np.float32(self.rnoise_e) ** 2, 0)
            return np.interp(x, self.fixed[:, 0], self.fixed[:, 1]).astype(np.float32)
        y = self._lookup(u)
        y *= u
        return y

    def _lookup(self, u: np.ndarray) -> np.ndarray:
        """Normalised level at ``u`` (float32) from a fine uniform table: O(1) per pixel.

        ``np.interp`` on the 2048-point table costs ~1 s per full frame; the
        65536-point uniform table differs from it by far less than a diagram row.
        """
        table = self.__dict__.get("_fine")
        if table is None:
            u_fine = np.linspace(self.u_table[0], self.u_table[-1], _FINE)
            table = (float(u_fine[0]), (_FINE - 1) / max(float(u_fine[-1] - u_fine[0]), 1e-12),
                     np.interp(u_fine, self.u_table, self.t_table).astype(np.float32))
            object.__setattr__(self, "_fine", table)
        u0, scale, values = table
        idx = (u - np.float32(u0)) * np.float32(scale) + np.float32(0.5)
        np.clip(idx, 0, _FINE - 1, out=idx)
        return values[idx.astype(np.int32)]

    def t_at(self, u: np.ndarray) -> np.ndarray:
        """Normalised boundary level at noise ``u`` (works for both kinds)."""
        u = np.asarray(u, dtype=float)
        return self._t_at64(u)

    def t_at32(self, u: np.ndarray, chunk: int = CHUNK) -> np.ndarray:
        """``t_at(u)`` as float32, ``chunk`` pixels at a time (no float64 copy of a whole frame)."""
        return map_in_chunks(lambda part: self._t_at64(part.astype(float)), u, np.float32, chunk)

    def _t_at64(self, u: np.ndarray) -> np.ndarray:
        """:meth:`t_at` of float64 ``u``."""
        if self.kind == "piecewise":
            x = np.maximum(u**2 - self.rnoise_e**2, 0.0)
            return np.interp(x, self.fixed[:, 0], self.fixed[:, 1]) / np.maximum(u, 1e-12)
        return np.interp(u, self.u_table, self.t_table)


def _basis(u: np.ndarray, knots: np.ndarray) -> np.ndarray:
    return BSpline.design_matrix(u, knots, 3, extrapolate=True).toarray()


def _fit_once(u: np.ndarray, t: np.ndarray, w: np.ndarray, knots: np.ndarray) -> np.ndarray:
    a = _basis(u, knots) * np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(a, t * np.sqrt(w), rcond=None)
    return coef


def fit_spline_boundary(u: np.ndarray, t: np.ndarray, *, rnoise_e: float, knots: int = 3, niter: int = 4,
                        weight: float = 10.0, fixed_points: Sequence[Sequence[float]] = (),
                        u_edges: np.ndarray | None = None) -> Boundary:
    """Fit the spline boundary with its iterative upward extension.

    Parameters
    ----------
    u, t : ndarray
        Boundary points in normalised coordinates (see
        :func:`~megara_crdetect.core.mmdiagram.boundary_points`).
    rnoise_e : float
        Readout noise in electrons.
    knots : int
        Total number of knots (``mm_knots_splfit``, >= 2).
    niter : int
        Upward extension iterations (``mm_niter_boundary_extension``).
    weight : float
        ``mm_weight_boundary_extension``: in iteration ``i`` the points above
        the previous fit get weight ``weight**i``.
    fixed_points : sequence of (x, y, w)
        Points in the diagram (electrons) the fit must follow; their weight is
        multiplied by the largest weight of the iteration.
    u_edges : ndarray, optional
        Column edges of the diagram.  The spline is fitted against the column
        rank ``v`` (``u_edges[i] -> i``), in which the equally populated
        columns are equally spaced, so that the equally spaced knots are not
        left without points where the columns are wide.  Default: fit in ``u``.

    Returns
    -------
    Boundary
    """
    fixed = np.asarray(fixed_points, dtype=float).reshape(-1, 3)
    fu = sigma(fixed[:, 0].astype(np.float32), rnoise_e).astype(float)
    ft = fixed[:, 1] / fu
    u = np.asarray(u, dtype=float)
    t = np.asarray(t, dtype=float)
    edges = np.asarray(u_edges, dtype=float) if u_edges is not None else None
    to_v = (lambda q: np.interp(q, edges, np.arange(edges.size))) if edges is not None else (lambda q: q)
    all_v = to_v(np.concatenate([u, fu]))
    if all_v.size == 0:
        raise ValueError("no boundary points: the image is too small to build the MM diagram")
    lo, hi = float(all_v.min()), float(all_v.max())
    if hi <= lo:
        hi = lo + 1.0
    nk = int(min(knots, max(2, all_v.size - 2)))
    kv = np.concatenate([[lo] * 3, np.linspace(lo, hi, nk), [hi] * 3])
    v_table = np.linspace(lo, hi, _TABLE)
    u_table = np.interp(v_table, np.arange(edges.size), edges) if edges is not None else v_table
    v = all_v[:u.size]
    w = np.ones_like(u)
    iterations = []
    previous = None
    for it in range(niter + 1):
        if previous is not None:
            w = np.where(t > np.interp(v, v_table, previous), weight**it, 1.0)
        wmax = w.max() if w.size else 1.0
        coef = _fit_once(all_v, np.concatenate([t, ft]), np.concatenate([w, fixed[:, 2] * wmax]), kv)
        fitted = BSpline(kv, coef, 3)(v_table)
        # the extension only moves the boundary up: where a few heavily weighted points leave an end of the
        # range unconstrained, the new fit may swing far below every point there (seen: 4.2 sigma at the
        # low end of a column set whose points all lie at 6.5-7.3, 400 false detections)
        previous = fitted if previous is None else np.maximum(fitted, previous)
        iterations.append((u_table, previous))
    return Boundary("spline", float(rnoise_e), u_table, previous, fixed, (u, t), iterations)


def piecewise_boundary(fixed_points: Sequence[Sequence[float]], *, rnoise_e: float) -> Boundary:
    """Straight lines through the fixed points ``(x, y[, w])`` (electrons), constant beyond them."""
    fixed = np.asarray([tuple(p[:2]) + (1.0,) for p in fixed_points], dtype=float).reshape(-1, 3)
    if len(fixed) < 2:
        raise ValueError("a piecewise boundary needs at least 2 fixed points")
    fixed = fixed[np.argsort(fixed[:, 0], kind="stable")]
    return Boundary("piecewise", float(rnoise_e), fixed=fixed)


def expected_false_positives(hist: np.ndarray, grid: DiagramGrid, boundary: Boundary, nsim: int) -> float:
    """Simulated pixels above the boundary, per simulated set of exposures.

    This is the number of pixels the boundary is expected to flag in the real
    image from noise alone (no cosmic ray), for the noise model, flux factors
    and offsets used in the simulations.
    """
    level = boundary.t_at(grid.u_centres)
    step = grid.t_edges[1] - grid.t_edges[0]
    pos = np.clip(level / step, 0, hist.shape[1])
    j = np.minimum(pos.astype(int), hist.shape[1] - 1)
    above = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]  # counts in bins >= j
    rows = np.arange(hist.shape[0])
    partial = above[rows, j] - hist[rows, j] * (pos - j)
    partial = np.where(pos >= hist.shape[1], 0.0, partial)
    return float(partial.sum() / max(nsim, 1))
