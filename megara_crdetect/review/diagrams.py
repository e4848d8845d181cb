"""The MM-diagram figures: ``diagnostic_histogram2d``, ``diagnostic_mediancr`` and per-target diagrams.

Our MM diagram is normalised: columns are the noise scale ``u`` of every
pixel (electrons; ``sigma`` of one exposure at the pixel's reference signal,
``result.noise``), rows ``t = (target - min2d) / u``.  The figures show it in
those coordinates (where the boundary and the noise are easy to read at every
signal level) and, in the second row of ``diagnostic_histogram2d``, in the
classic axes of the numina guide (signal against ``median2d - min2d``,
electrons), the boundary mapped with
:meth:`~megara_crdetect.core.boundary.Boundary.__call__`.

Every builder fills a :class:`~matplotlib.figure.Figure` it is given, so the
same code draws the PNG files (Agg canvas) and the interactive windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib import colors
from matplotlib.scale import SymmetricalLogTransform
from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter, NullLocator, ScalarFormatter

from ..core import mmdiagram as mm
from ..core.masks import coordinates
from ._plot import (HIST_CHUNK, MARKERS, block_mean, column_hist2d, count_cmap, display_image, limits, log_norm,
                    maxpool, uniform_hist2d)
from .events import ReviewData

__all__ = ["diagram_grid", "histogram_figure", "MediancrPanels", "mediancr_figure", "target_figure",
           "LINTHRESH", "MAX_LABELS", "MAX_MARKERS", "U_LABEL", "t_label"]

_RED = colors.ListedColormap(["red"]).with_extremes(bad=(0, 0, 0, 0))
#: Axis labels of the normalised diagrams.
U_LABEL = "noise scale u = sigma(reference signal) [e-]"


def t_label(target: str = "median2d") -> str:
    """Label of the normalised height axis."""
    return f"({target} - min2d) / u"


#: Linear part (in sigma) of the symmetric-log t axis of the detection diagrams.
LINTHRESH = 10.0
#: At most this many event numbers in panel (b) of diagnostic_mediancr.png (fewer when they would overlap).
MAX_LABELS = 60
#: At most this many markers per category in a diagram (a regular subsample beyond).
MAX_MARKERS = 20000


def diagram_grid(data: ReviewData) -> mm.DiagramGrid:
    """The grid of the simulated diagrams, or one built from min2d without MM."""
    return data.grid


def _t_top(boundary, grid: mm.DiagramGrid, points: tuple) -> float:
    """Upper t limit of the histogram figure: comfortably above the boundary."""
    top = 8.0
    if boundary is not None:
        top = max(top, 1.6 * float(np.max(boundary.t_at(grid.u_centres))))
    if len(points[1]):
        top = max(top, 1.3 * float(np.max(points[1])))
    return float(min(top, grid.t_edges[-1]))


def _boundary_points(boundary, hist, grid) -> tuple[np.ndarray, np.ndarray]:
    u, t = boundary.points if boundary is not None else (np.zeros(0), np.zeros(0))
    if len(u) == 0 and hist is not None:  # piecewise: the points are shown all the same
        u, t = mm.boundary_points(hist, grid)
    return np.asarray(u, float), np.asarray(t, float)


def _fixed_normalised(boundary, rnoise_e: float) -> tuple[np.ndarray, np.ndarray]:
    if boundary is None or len(boundary.fixed) == 0:
        return np.zeros(0), np.zeros(0)
    x, y = boundary.fixed[:, 0], boundary.fixed[:, 1]
    u = np.sqrt(np.maximum(x, 0) + rnoise_e**2)
    return u, y / u


def _plot_fits(ax, boundary, u: np.ndarray, rnoise_e: float, *, classic: bool, final_only: bool = False) -> None:
    """Every spline iteration (first fit, extensions) and the final boundary, sampled at ``u``.

    ``u`` must sample the panel densely (log-spaced for a log axis, uniform
    in signal for the classic axes): every curve is evaluated at the same
    points, so the final boundary (the last extension; extensions only move
    it up) is never drawn below an earlier fit by a coarse straight segment.
    """
    if boundary is None:
        return
    r2 = rnoise_e**2
    iters = [] if final_only else list(boundary.iterations[:-1])
    cmap = count_cmap("autumn")
    x = u**2 - r2
    for k, (ut, tt) in enumerate(iters):
        label = "first fit" if k == 0 else f"extension {k}"
        t = np.interp(u, ut, tt)
        ax.plot(x if classic else u, t * u if classic else t, lw=1.0, ls="--",
                color=cmap(k / max(len(iters), 1)), label=label)
    t = boundary.t_at(u)
    ax.plot(x if classic else u, t * u if classic else t, color="black", lw=2.0,
            label=f"final boundary ({boundary.kind})")


def _u_samples(lo: float, hi: float, n: int = 600) -> np.ndarray:
    """Noise scales for drawing curves on a log u axis (uniform in log u)."""
    lo = max(float(lo), 1e-3)
    return np.geomspace(lo, max(float(hi), lo * 1.01), n)


def _signal_samples(x_max: float, rnoise_e: float, n: int = 600) -> np.ndarray:
    """Noise scales ``u = sqrt(x + rnoise^2)`` of signals ``x`` uniform in ``[0, x_max]`` (classic axes)."""
    return np.sqrt(np.linspace(0.0, max(float(x_max), 1.0), n) + rnoise_e**2)


def _u_top(grid: mm.DiagramGrid, *counts: np.ndarray) -> float:
    """Upper u limit of a diagram: the last column holding any pixel (the grid may reach far beyond)."""
    used = np.zeros(grid.shape[0], dtype=bool)
    for c in counts:
        if c is not None:
            used |= np.asarray(c).reshape(grid.shape[0], -1).sum(axis=1) > 0
    idx = np.flatnonzero(used)
    last = int(idx[-1]) + 1 if idx.size else grid.shape[0]
    return float(grid.u_edges[min(last, grid.shape[0])]) * 1.05


def _mesh(ax, grid: mm.DiagramGrid, counts: np.ndarray, nrows: int, norm):
    c = np.ma.masked_less_equal(counts[:, :nrows].T, 0)
    return ax.pcolormesh(grid.u_edges, grid.t_edges[:nrows + 1], c, norm=norm, cmap=count_cmap(), rasterized=True)


@dataclass
class _HistogramInputs:
    grid: mm.DiagramGrid
    sim: np.ndarray | None
    real: np.ndarray
    boundary: object
    points: tuple
    fixed: tuple
    nrows: int
    above: int
    flagged: int
    expected: float
    nsim: int = 0
    u_top: float = np.inf


def _histogram_inputs(data: ReviewData) -> _HistogramInputs:
    grid = diagram_grid(data)
    sims = data.result.diagrams
    sim_hist = None if sims is None else sims.hist["median"] / max(sims.nsim, 1)
    boundary = data.boundary
    points = _boundary_points(boundary, None if sims is None else sims.hist["median"], grid)
    real = column_hist2d(data.columns, grid.shape[0], data.t, grid.t_edges)
    top = _t_top(boundary, grid, points)
    nrows = int(np.searchsorted(grid.t_edges, top))
    above = int(np.count_nonzero(data.margin > 0)) if data.margin is not None else 0
    codes = data.result.mediancr_codes
    flagged = int(np.count_nonzero((codes == 2) | (codes == 4)))
    expected = float((data.result.expected_false or {}).get("median", np.nan))
    return _HistogramInputs(grid, sim_hist, real, boundary, points, _fixed_normalised(boundary, data.rnoise_e),
                            nrows, above, flagged, expected, 0 if sims is None else sims.nsim,
                            _u_top(grid, real, sim_hist))


def _classic_edges(h, xy: "_ClassicPoints", x_max: float) -> tuple[np.ndarray, np.ndarray]:
    """Uniform bins of the classic diagram: signal 0..x_max, y up to the data and the boundary there.

    The y range covers the 99.99th percentile of the pixels of that signal
    range and 1.3 times the boundary at its high end (not beyond: a far
    boundary would squash the data at the origin).
    """
    count = sum(int(np.count_nonzero(x <= x_max)) for x, _ in xy.chunks())
    ys = xy.every_selected(x_max, max(1, count // 500_000))
    ytop = float(np.percentile(ys, 99.99)) if ys.size else 1.0
    if h.boundary is not None:
        yb = h.boundary(np.linspace(0, x_max, 200))
        ytop = max(ytop, 1.3 * float(np.max(yb)))
    return np.linspace(0, max(x_max, 1.0), 201), np.linspace(0, max(ytop, 1.0), 151)


class _ClassicPoints:
    """The real pixels in the guide's axes, read a chunk at a time.

    ``x = u^2 - rnoise^2`` and ``y = median2d - min2d`` (flat) are computed
    ``chunk`` pixels at a time whenever they are read: two float32 frames are
    never held.
    """

    def __init__(self, data: ReviewData, chunk: int = HIST_CHUNK):
        self.u, self.chunk = data.u.reshape(-1), chunk
        self.median, self.min = data.stats.median2d.reshape(-1), data.stats.min2d.reshape(-1)
        self.r2 = np.float32(data.rnoise_e**2)

    def x_of(self, u: np.ndarray) -> np.ndarray:
        """``u^2 - rnoise^2`` in the dtype of ``u``."""
        x = np.square(u)
        x -= self.r2
        return x

    def chunks(self):
        """``(x, y)`` of consecutive chunks."""
        for s in range(0, self.u.size, self.chunk):
            e = s + self.chunk
            yield self.x_of(self.u[s:e]), np.subtract(self.median[s:e], self.min[s:e])

    def every_selected(self, x_max: float, step: int) -> np.ndarray:
        """``y[x <= x_max][::step]``."""
        parts, seen = [], 0
        for x, y in self.chunks():
            picked = y[x <= x_max]
            parts.append(picked[(-seen) % step::step])
            seen += picked.size
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def _overlays(ax, h, u: np.ndarray, *, classic: bool, simulated: bool) -> None:
    """Boundary points, fits (sampled at ``u``), fixed points and the legend of one histogram panel."""
    r2 = h.grid.rnoise_e**2
    pu, pt = h.points
    if simulated and len(pu):
        x, y = (pu**2 - r2, pt * pu) if classic else (pu, pt)
        ax.plot(x, y, "x", color="red", ms=4, label=f"boundary points ({len(pu)})")
    _plot_fits(ax, h.boundary, u, h.grid.rnoise_e, classic=classic, final_only=not simulated)
    fu, ft = h.fixed
    if len(fu):
        x, y = (fu**2 - r2, ft * fu) if classic else (fu, ft)
        ax.plot(x, y, "s", color="magenta", mfc="none", ms=7, label=f"fixed points ({len(fu)})")
    if not simulated:
        ax.plot([], [], " ", label=f"real pixels above the boundary: {h.above}")
        ax.plot([], [], " ", label=f"MM detections (after thresholds): {h.flagged}")
        ax.plot([], [], " ", label=f"expected false detections (noise): {h.expected:.2f}")
    ax.legend(loc="upper left" if classic else "upper right", fontsize=7, framealpha=0.8)


def _normalised_row(fig, axes, h) -> None:
    sim = h.sim if h.sim is not None else np.zeros_like(h.real, dtype=float)
    norm = log_norm(sim[:, :h.nrows], h.real[:, :h.nrows].astype(float))
    u = _u_samples(h.grid.u_edges[0], min(h.u_top, h.grid.u_edges[-1]))
    for ax, counts, simulated in ((axes[0], sim, True), (axes[1], h.real, False)):
        mesh = _mesh(ax, h.grid, counts, h.nrows, norm)
        _overlays(ax, h, u, classic=False, simulated=simulated)
        _log_u_axis(ax, h.grid, h.u_top)
        ax.set_xlabel(U_LABEL + "  (log)")
        ax.set_ylabel(t_label())
        ax.set_ylim(0, h.grid.t_edges[h.nrows])
    fig.colorbar(mesh, ax=list(axes), label="pixels per cell (per image)", pad=0.01)


def _classic_row(fig, axes, h, data: ReviewData) -> None:
    """Real pixels in the guide's axes (signal, median2d - min2d), whole range and faint end.

    Only the real pixels: the simulated histogram exists per (column, t) cell,
    and a wide bright column cannot be drawn in these axes without smearing it
    over the whole signal range.
    """
    xy = _ClassicPoints(data)
    x_full = max(float(np.max(x)) for x, _ in xy.chunks()) * 1.02  # the data, not the grid (also inflated u)
    x_faint = float(np.percentile(xy.x_of(xy.u[:: max(1, xy.u.size // 200_000)]), 90))
    limits_x = (x_full, max(x_faint, 10 * data.rnoise_e**2))
    edges = [_classic_edges(h, xy, xm) for xm in limits_x]
    counts = [sum(uniform_hist2d(x, y, *e) for x, y in xy.chunks()) for e in edges]
    norm = log_norm(*[c.astype(float) for c in counts])
    for ax, (x_edges, y_edges), c, what, xm in zip(axes, edges, counts,
                                                  ("all signals", "faint end (90 % of the pixels)"), limits_x):
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_less_equal(c.T, 0), norm=norm, cmap=count_cmap(),
                             rasterized=True)
        _overlays(ax, h, _signal_samples(xm, data.rnoise_e), classic=True, simulated=True)
        ax.set_xlim(x_edges[0], x_edges[-1])
        ax.set_ylim(y_edges[0], y_edges[-1])
        ax.set_xlabel("reference signal u^2 - rnoise^2 (~ min2d) [e-]")
        ax.set_ylabel("median2d - min2d [e-]")
        ax.set_title(f"real median2d in the guide's axes: {what}", fontsize=10)
    fig.colorbar(mesh, ax=list(axes), label="pixels per bin", pad=0.01)


def histogram_figure(fig, data: ReviewData) -> None:
    """``diagnostic_histogram2d``: simulated (left) and real (right) MM diagrams of the median.

    Top row: normalised axes (the diagram the boundary is fitted in), both
    panels on one logarithmic colour scale (pixels per cell and per image: the
    simulated counts are divided by ``mm_nsimulations``).  Bottom row: the
    real pixels in the classic axes of the guide, whole range and faint end,
    with the boundary points, fits and boundary mapped to electrons.
    """
    h = _histogram_inputs(data)
    axes = fig.subplots(2, 2)
    _normalised_row(fig, axes[0], h)
    _classic_row(fig, axes[1], h, data)
    axes[0, 0].set_title(f"simulated median, {h.nsim} simulated sets" if h.sim is not None
                         else "no simulation (crmethod without MM)")
    axes[0, 1].set_title(f"real median2d ({data.shape[1]} x {data.shape[0]} pixels)")
    fig.suptitle("MM diagnostic diagram of the median: simulated and real, normalised (top); "
                 "real in the guide's axes (bottom)")


def _log_u_axis(ax, grid: mm.DiagramGrid, u_top: float = np.inf) -> None:
    """Logarithmic u axis (the columns are narrow at low signal), linear if u can be 0; up to ``u_top``."""
    if grid.u_edges[0] > 0:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(grid.u_edges[0], min(float(grid.u_edges[-1]), u_top))


# ---------------------------------------------------------------------------
# detection diagrams (symmetric-log t axis)
# ---------------------------------------------------------------------------


def _symlog(t: np.ndarray) -> np.ndarray:
    """matplotlib's symlog transform (base 10, linscale 1, :data:`LINTHRESH`) in float32, vectorised.

    The logarithm is taken only where ``|t| > LINTHRESH`` (few pixels of a
    frame: the linear part alone costs a tenth of the whole on 3 Mpixels).
    """
    t = np.asarray(t, dtype=np.float32)
    lin = np.float32(1.0 / (1.0 - 0.1))  # linscale / (1 - 1/base)
    tf = t.reshape(-1)
    out = np.multiply(tf, lin, dtype=np.float32)
    idx = np.flatnonzero(np.abs(tf) > LINTHRESH)
    if idx.size:
        v = tf[idx]
        out[idx] = np.copysign(np.float32(LINTHRESH) * (lin + np.log10(np.abs(v) / np.float32(LINTHRESH))), v)
    return out.reshape(t.shape)


def _detection_counts(grid: mm.DiagramGrid, columns: np.ndarray, t: np.ndarray, nrows: int = 300):
    """Histogram of every pixel (column, t) in rows uniform on the symmetric-log t axis."""
    lo = min(float(np.min(t)), 0.0) * 1.1
    hi = max(float(np.max(t)), 2 * LINTHRESH) * 1.2
    tr = SymmetricalLogTransform(10, LINTHRESH, 1)
    a, b = tr.transform(np.array([lo, hi], dtype=float))
    disp_edges = np.linspace(a, b, nrows + 1)
    counts = column_hist2d(columns, grid.shape[0], t, disp_edges, transform=_symlog)
    return tr.inverted().transform(disp_edges), counts, lo, hi


def _symlog_t_axis(ax) -> None:
    """Symmetric-log t axis with plain tick labels at 1-2-5 steps."""
    ax.set_yscale("symlog", linthresh=LINTHRESH)
    steps = [0, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
    ax.yaxis.set_major_locator(FixedLocator(sorted({-v for v in steps} | set(steps))))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_locator(NullLocator())


def _draw_detection_hist(ax, grid: mm.DiagramGrid, hist) -> None:
    edges, counts, lo, hi = hist
    c = np.ma.masked_less_equal(counts.T, 0)
    ax.pcolormesh(grid.u_edges, edges, c, norm=log_norm(counts.astype(float)), cmap=count_cmap("Greys"),
                  rasterized=True)
    _symlog_t_axis(ax)
    _log_u_axis(ax, grid, _u_top(grid, counts))
    ax.set_ylim(lo, hi)


def _subsample(n: int, limit: int = MAX_MARKERS) -> slice:
    return slice(None, None, max(1, -(-n // limit)))


def _boundary_line(ax, boundary, grid: mm.DiagramGrid, *, threshold_t=None) -> None:
    if boundary is None:
        return
    u = _u_samples(grid.u_edges[0], grid.u_edges[-1])
    ax.plot(u, boundary.t_at(u), color="black", lw=1.5, label="boundary")
    if threshold_t is not None:
        ax.plot(u, threshold_t(u), color="black", lw=1, ls=":", label="mm_threshold")


@dataclass
class MediancrPanels:
    """Handles of the four panels of ``diagnostic_mediancr`` (used by the interactive review)."""

    fig: object
    ax: dict
    image_d: object
    markers_c: dict
    positions: dict
    data: ReviewData

    def detected_in_view(self, code: int) -> np.ndarray:
        """Which detected pixels of ``code`` lie inside the current view of panel (a)."""
        u, t, _, _ = self.positions[code]
        x0, x1 = sorted(self.ax["a"].get_xlim())
        y0, y1 = sorted(self.ax["a"].get_ylim())
        return (u >= x0) & (u <= x1) & (t >= y0) & (t <= y1)

    def filter_c_to_view(self, *_args) -> None:
        """Show in panel (c) only the detections inside the view of panel (a)."""
        for code, line in self.markers_c.items():
            _, _, x, y = self.positions[code]
            keep = self.detected_in_view(code)
            line.set_data(x[keep], y[keep])

    def show_d(self, k: int) -> bool:
        """Panel (d): mean2d (``k = 0``) or exposure ``k`` (1-based); False if not available."""
        stack = self.data.stack
        if k == 0:
            img, title = self.data.stats.mean2d, "(d) mean2d (same scale as c)"
        elif stack is not None and 1 <= k <= stack.shape[0]:
            img, title = stack[k - 1], f"(d) exposure {k} (same scale as c)"
        else:
            return False
        self.image_d.set_data(block_mean(img, getattr(self.image_d, "block", 1)))
        self.ax["d"].set_title(title)
        return True


def _detected(data: ReviewData) -> dict:
    """(u, t, X, Y) of the detected pixels of every category (code)."""
    codes = data.result.mediancr_codes
    out = {}
    flagged_rows, flagged_cols = coordinates(codes)
    flagged = codes[flagged_rows, flagged_cols]
    for code in MARKERS:
        rows, cols = flagged_rows[flagged == code], flagged_cols[flagged == code]
        out[code] = (data.u[rows, cols], data.t[rows, cols], cols + 1.0, rows + 1.0)
    return out


def _label_events(ax, data: ReviewData) -> None:
    """Event numbers at the peak pixel of the highest events, at most one per patch of the panel.

    Labels are taken by decreasing height ``t`` and skipped when they would
    overlap one already placed (a patch of ~1/25 of the axis width and
    ~1/40 of its height, in display coordinates), at most :data:`MAX_LABELS`.
    """
    ev = data.events
    order = np.argsort(-ev.t_max, kind="stable")
    r, c = ev.y_peak[order] - 1, ev.x_peak[order] - 1
    u, t = data.u[r, c].astype(float), data.t[r, c].astype(float)
    x_lo, x_hi = (np.log10(v) for v in ax.get_xlim())
    y_lo, y_hi = (float(_symlog(np.array(v))) for v in ax.get_ylim())
    px = (np.log10(np.maximum(u, 1e-6)) - x_lo) / max(x_hi - x_lo, 1e-9)
    py = (_symlog(t) - y_lo) / max(y_hi - y_lo, 1e-9)
    placed: list[tuple[float, float]] = []
    for k in range(len(order)):
        if len(placed) >= MAX_LABELS:
            break
        if not (0 <= px[k] <= 1 and 0 <= py[k] <= 1):
            continue
        if any(abs(px[k] - a) < 0.04 and abs(py[k] - b) < 0.025 for a, b in placed):
            continue
        placed.append((px[k], py[k]))
        ax.text(u[k], t[k], str(order[k] + 1), fontsize=6, color="darkred", clip_on=True, ha="left",
                va="bottom")
    ax.set_title(f"(b) event numbers (CR#) at the peak pixel: {len(placed)} of {len(ev)} "
                 "(highest first, no overlaps)", fontsize=10)


def mediancr_figure(fig, data: ReviewData, *, threshold_e: float = 0.0, max_pixels: int | None = None
                    ) -> MediancrPanels:
    """``diagnostic_mediancr``: detections in the MM diagram (a, b) and on the images (c, d)."""
    grid = diagram_grid(data)
    ax_a = fig.add_subplot(2, 2, 1)
    ax_b = fig.add_subplot(2, 2, 2, sharex=ax_a, sharey=ax_a)
    ax_c = fig.add_subplot(2, 2, 3)
    ax_d = fig.add_subplot(2, 2, 4, sharex=ax_c, sharey=ax_c)
    pos = _detected(data)
    thr = (lambda u: threshold_e / u) if threshold_e > 0 else None
    hist = _detection_counts(grid, data.columns, data.t)
    for ax in (ax_a, ax_b):
        _draw_detection_hist(ax, grid, hist)
        _boundary_line(ax, data.boundary, grid, threshold_t=thr)
        ax.set_xlabel(U_LABEL + "  (log)")
        ax.set_ylabel(t_label() + "  (symlog)")
    for code, (u, t, _, _) in pos.items():
        sl = _subsample(len(u))
        style = MARKERS[code]
        label = f"{style['label']} ({len(u)})" if len(u) else "_empty"
        ax_a.plot(u[sl], t[sl], ls="none", ms=5, **{**style, "label": label})
        ax_b.plot(u[sl], t[sl], ls="none", marker=".", ms=2, color="0.4")
    ax_a.legend(loc="upper right", fontsize=7, framealpha=0.8)
    ax_a.set_title(f"(a) MM diagram of median2d: {int(data.result.mediancr.sum())} MEDIANCR pixels")
    _label_events(ax_b, data)
    vmin, vmax = limits(data.stats.median2d, "zscale")
    display_image(ax_c, data.stats.median2d, vmin=vmin, vmax=vmax, max_pixels=max_pixels)
    markers_c = {}
    for code, (_, _, x, y) in pos.items():
        style = {k: v for k, v in MARKERS[code].items() if k != "label"}
        (markers_c[code],) = ax_c.plot(x, y, ls="none", ms=5, **style)
    ax_c.set_title("(c) median2d (zscale) with the detections")
    image_d = display_image(ax_d, data.stats.mean2d, vmin=vmin, vmax=vmax, max_pixels=max_pixels)
    ax_d.set_title("(d) mean2d (same scale as c)")
    for ax in (ax_c, ax_d):
        ax.set_xlabel("X [pixel]")
        ax.set_ylabel("Y [pixel]")
    fig.suptitle("MEDIANCR detections: LA only x, MM only +, both o, pairs (second hit of a coincidence) squares"
                 + (f" (expected false MM detections: {data.result.expected_false['median']:.2f})"
                    if "median" in (data.result.expected_false or {}) else ""))
    return MediancrPanels(fig, {"a": ax_a, "b": ax_b, "c": ax_c, "d": ax_d}, image_d, markers_c, pos, data)


def target_figure(fig, data: ReviewData, *, target: np.ndarray, mask: np.ndarray, boundary, title: str,
                  ylabel: str, image_title: str = "image", max_pixels: int | None = None) -> None:
    """Diagram of ``target - min2d`` with its boundary and a mask (MEANCRT, CRMASKk), and the image.

    Masked pixels above the boundary are red, the others (found by
    L.A.Cosmic, added by dilation or inherited from MEDIANCR) orange.
    """
    grid = diagram_grid(data)
    ax_a, ax_b = fig.subplots(1, 2)
    t = data.t_of(target)
    _draw_detection_hist(ax_a, grid, _detection_counts(grid, data.columns, t))
    _boundary_line(ax_a, boundary, grid)
    rows, cols = coordinates(mask)
    u_m, t_m = data.u[rows, cols], t[rows, cols]
    above = t_m > boundary.t_at(u_m) if boundary is not None else np.zeros(t_m.shape, bool)
    for sel, colour, what in ((~above, "orange", "below the boundary"), (above, "red", "above the boundary")):
        sl = _subsample(int(sel.sum()))
        ax_a.plot(u_m[sel][sl], t_m[sel][sl], ls="none", marker=".", ms=1.5, color=colour,
                  label=f"masked, {what}: {int(sel.sum())}" + (" (subsampled)" if sl.step > 1 else ""))
    ax_a.set_xlabel(U_LABEL + "  (log)")
    ax_a.set_ylabel(ylabel + "  (symlog)")
    ax_a.legend(loc="upper right", fontsize=7, markerscale=4)
    vmin, vmax = limits(target, "zscale")
    display_image(ax_b, target, vmin=vmin, vmax=vmax, max_pixels=max_pixels)
    f = max(1, -(-max(mask.shape) // (max_pixels or 1000)))
    pooled = maxpool(mask, f)
    ny, nx = mask.shape
    overlay = np.ma.masked_where(~pooled, pooled.astype(float))
    ax_b.imshow(overlay, origin="lower", extent=(0.5, pooled.shape[1] * f + 0.5, 0.5, pooled.shape[0] * f + 0.5),
                cmap=_RED, vmin=0, vmax=1, alpha=0.9, interpolation="nearest", aspect="auto")
    ax_b.set_xlim(0.5, nx + 0.5)
    ax_b.set_ylim(0.5, ny + 0.5)
    ax_b.set_xlabel("X [pixel]")
    ax_b.set_ylabel("Y [pixel]")
    ax_b.set_title(f"{image_title} (zscale), masked pixels in red" + (f" ({f}x{f} blocks)" if f > 1 else ""))
    fig.suptitle(title)
