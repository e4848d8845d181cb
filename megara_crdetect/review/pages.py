"""Multi-page cut-out figures: ``mediancr_identified_cr.pdf`` and ``problematic_pixels.pdf``.

The reference spends about 0.8 s per page (84 % of its run time) because it
builds a new figure, runs ``tight_layout`` and a tight bounding box for every
cosmic ray.  Here what a page shows is computed once per event
(:class:`CRContent`, :func:`problematic_groups`) and drawn in two ways:

* into the PDF files by :mod:`~megara_crdetect.review.lightpdf`, which writes
  the images, frames, boxes, diagram and texts as PDF operators (~1-2 ms a
  page; matplotlib's PDF backend walks ~200 artists a page and took ~25 ms);
* into a matplotlib figure by :class:`CRPage` (one figure built once, only
  image data, limits, markers and texts replaced per event), which draws the
  ``verify_cr`` window of the interactive review.

Both show the same panels at the same places (the layout of the file pages
is computed from the same margins as the figure's subplots).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib import colors as mcolors
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FormatStrFormatter, MaxNLocator, NullLocator
from scipy import ndimage

from . import lightpdf
from ._plot import CODE_CMAP, CODE_NORM, MARKERS, fits_extent, limits
from .events import ReviewData, cutout, label_events

__all__ = ["DEFAULT_PAGES", "MAX_TOP", "CRContent", "EventView", "CRPage", "n_pages", "write_cr_pdf",
           "write_problematic_pdf", "warm_up"]

_log = logging.getLogger(__name__)

#: At most this many exposures in the top row of a page.
MAX_TOP = 8
Progress = Callable[[str, int, int], None]

#: Pages drawn with ``maxplots: -1`` (the reference draws at most 1000; the first few hundred events of
#: raster order tell as much, and every event is listed in the candidates CSV and the region file).
DEFAULT_PAGES = 100
#: Title of the detection-code panel.
CODES_TITLE = "MEDIANCR: LA red, MM blue, both yellow,\npair cyan, user magenta, dilation grey"
#: Ticks of the symmetric-log t axis of the per-event MM diagram.
MM_T_TICKS = (-10, 0, 5, 10, 30, 100, 300, 1000, 3000, 10000)
#: Margins of the pages (figure fractions), as matplotlib's ``subplots_adjust``.
CR_MARGINS = dict(left=0.04, right=0.99, bottom=0.07, top=0.86, wspace=0.3, hspace=0.3)
PROBLEMATIC_MARGINS = dict(left=0.05, right=0.99, bottom=0.07, top=0.88, wspace=0.3, hspace=0.3)
#: Line width of frames and boxes, tick length and label pad (points), as matplotlib's defaults.
FRAME_LW, TICK_LEN, TICK_PAD = 0.8, 3.5, 3.5


def n_pages(n_events: int, maxplots: int) -> int:
    """Pages to draw: the first :data:`DEFAULT_PAGES` events for ``maxplots = -1``, none for 0, else at most
    ``maxplots``."""
    return min(DEFAULT_PAGES if maxplots < 0 else maxplots, n_events)


def warm_up() -> None:
    """Load what the file pages need (the font metrics, astropy's zscale) before the figure processes fork."""
    lightpdf.text_width("x", 8.0)


def _grid_shape(n_images: int) -> int:
    return max(min(n_images, MAX_TOP), 4)


# ---------------------------------------------------------------------------
# what a page shows
# ---------------------------------------------------------------------------


@dataclass
class EventView:
    """Everything the page of one CR event shows.

    ``panels``: (cut-out, title, kind) of the image panels in page order
    (exposures, median2d, codes, corrected); kind ``gray`` (shown with
    ``clim``) or ``codes`` (MEDIANCR codes).  ``mm_points``: code ->
    ``(u, t)`` of the event's pixels; ``mm_boundary``: ``(u, t_B(u))`` or None.
    """

    window: tuple[int, int, int, int]
    extent: tuple[float, float, float, float]
    box: tuple[int, int, int, int]
    clim: tuple[float, float]
    panels: list
    info: str
    title: str
    mm_points: dict
    mm_boundary: tuple | None
    mm_xlim: tuple[float, float]
    mm_ylim: tuple[float, float]


class CRContent:
    """The content of the CR pages (shared by the PDF file and the interactive window)."""

    def __init__(self, data: ReviewData, *, semiwindow: int = 15, color_scale: str = "zscale",
                 use_lamedian: bool = False):
        self.data = data
        self.semiwindow, self.color_scale = int(semiwindow), color_scale
        self.n_top = min(0 if data.stack is None else data.stack.shape[0], MAX_TOP)
        self.corrected = data.corrected(use_lamedian)

    def _mm(self, i: int):
        rows, cols, codes = self.data.events.pixels(i)
        u = self.data.u[rows, cols]
        t = self.data.t[rows, cols]
        points = {code: (u[codes == code], t[codes == code]) for code in (*MARKERS, 1)}
        lo, hi = max(float(u.min()) * 0.8, self.data.rnoise_e * 0.95), float(u.max()) * 1.25 + 1.0
        boundary = None
        top = float(t.max())
        if self.data.boundary is not None:
            uu = np.linspace(lo, hi, 50)
            tb = self.data.boundary.t_at(uu)
            boundary = (uu, tb)
            top = max(top, float(tb.max()))
        return points, boundary, (lo, hi), (min(float(t.min()), 0.0) - 0.5, max(top * 1.3, 12.0))

    def _info(self, i: int, window) -> str:
        ev, d = self.data.events, self.data
        r, c = ev.y_peak[i] - 1, ev.x_peak[i] - 1
        lines = [f"peak pixel [X, Y] = [{ev.x_peak[i]}, {ev.y_peak[i]}]",
                 f"pixels: {ev.npix[i]}  (MM {ev.n_mm[i]}, LA {ev.n_la[i]}, both {ev.n_both[i]},",
                 f"  pair {ev.n_pair[i]}, user {ev.n_user[i]}, dilation {ev.n_dilation[i]})",
                 f"t = (median2d - min2d)/u: max {ev.t_max[i]:.1f}"]
        if np.isfinite(ev.margin_max[i]):
            lines.append(f"max t - t_boundary = {ev.margin_max[i]:+.1f}")
        lines += [f"at peak: median2d {d.stats.median2d[r, c]:.1f} e-",
                  f"         min2d    {d.stats.min2d[r, c]:.1f} e-",
                  f"         u        {d.u[r, c]:.1f} e-"]
        if d.stack is not None:
            vals = ", ".join(f"{v:.0f}" for v in d.stack[:, r, c])
            lines.append(f"exposures: {vals} e-")
        lines.append(f"window X {window[2] + 1}-{window[3]}, Y {window[0] + 1}-{window[1]}")
        return "\n".join(lines)

    def view(self, i: int, *, prompt: str = "") -> EventView:
        """What the page of event ``i`` (0-based) shows."""
        ev, d = self.data.events, self.data
        r0, r1, c0, c1 = win = ev.window(i, self.semiwindow, d.shape)
        med = d.stats.median2d[r0:r1, c0:c1]
        panels = [(d.stack[k, r0:r1, c0:c1], f"exposure {k + 1}", "gray") for k in range(self.n_top)]
        panels += [(med, f"median2d ({self.color_scale})", "gray"),
                   (d.result.mediancr_codes[r0:r1, c0:c1], CODES_TITLE, "codes"),
                   (self.corrected[r0:r1, c0:c1], "corrected (mediancr)", "gray")]
        points, boundary, xlim, ylim = self._mm(i)
        title = (f"CR#{i + 1}/{len(ev)}: {ev.method(i)}, {ev.npix[i]} px, centre "
                 f"[{ev.x_centre[i]:.1f}, {ev.y_centre[i]:.1f}]" + (f"\n{prompt}" if prompt else ""))
        return EventView(win, fits_extent(r0, r1, c0, c1), (ev.xmin[i], ev.xmax[i], ev.ymin[i], ev.ymax[i]),
                         limits(med, self.color_scale), panels, self._info(i, win), title, points, boundary,
                         xlim, ylim)


# ---------------------------------------------------------------------------
# the interactive window (matplotlib)
# ---------------------------------------------------------------------------


class _Slot:
    """One image panel whose data, extent and colour limits change from page to page."""

    def __init__(self, ax, *, cmap="gray", norm=None, ticks: bool = False):
        self.ax = ax
        self.image = ax.imshow(np.zeros((1, 1)), origin="lower", interpolation="none", cmap=cmap,
                               norm=norm, aspect="equal")
        self.rect = Rectangle((0, 0), 1, 1, fill=False, ec="cyan", lw=FRAME_LW)
        ax.add_patch(self.rect)
        ax.patch.set_visible(False)  # the cut-out covers the whole panel
        _few_ticks(ax, ticks)

    def show(self, cut: np.ndarray, extent, *, clim=None, title: str | None = None, box=None) -> None:
        self.image.set_data(cut)
        self.image.set_extent(extent)
        if clim is not None:
            self.image.set_clim(*clim)
        self.ax.set_xlim(extent[0], extent[1])
        self.ax.set_ylim(extent[2], extent[3])
        if title is not None:
            _title(self.ax, title)
        if box is not None:  # FITS xmin, xmax, ymin, ymax
            self.rect.set_bounds(box[0] - 0.5, box[2] - 0.5, box[1] - box[0] + 1, box[3] - box[2] + 1)
        self.rect.set_visible(box is not None)


def _few_ticks(ax, ticks: bool) -> None:
    """Tick labels cost most of the drawing time: none, or three integer ticks per axis."""
    if ticks:
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.tick_params(labelsize=6)
    else:  # an invisible axis is not drawn at all (empty ticks still cost layout work)
        ax.xaxis.set_visible(False)
        ax.yaxis.set_visible(False)


def _title(ax, text: str, size: float = 8) -> None:
    """Title at a fixed position (``y`` given: matplotlib skips the costly automatic placement)."""
    ax.set_title(text, fontsize=size, y=1.0, pad=3)


class CRPage:
    """The page of one CR event in a matplotlib figure (the interactive review's ``verify_cr`` window).

    Exposures (top), median, detections, corrected, MM diagram (bottom), the
    same panels as the pages of ``mediancr_identified_cr.pdf``.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Empty figure to fill.
    data : ReviewData
        Result, exposures and derived quantities.
    semiwindow : int
        Half size of the cut-outs (pixels).
    color_scale : str
        ``minmax`` or ``zscale`` (astropy ZScaleInterval), from the median cut-out.
    use_lamedian : bool
        Repair with the L.A.Cosmic median instead of min2d in the corrected panel.
    """

    def __init__(self, fig, data: ReviewData, *, semiwindow: int = 15, color_scale: str = "zscale",
                 use_lamedian: bool = False):
        self.fig, self.data = fig, data
        self.content = CRContent(data, semiwindow=semiwindow, color_scale=color_scale, use_lamedian=use_lamedian)
        self.n_top = self.content.n_top
        ncols = _grid_shape(self.n_top)
        axes = fig.subplots(2, ncols, squeeze=False)
        fig.subplots_adjust(**CR_MARGINS)
        self.top = [_Slot(axes[0, k]) for k in range(self.n_top)]
        spare = [axes[0, k] for k in range(self.n_top, ncols)]
        for ax in spare:
            ax.set_axis_off()
        self.info = spare[0].text(-0.12, 1.0, "", va="top", ha="left", fontsize=6.5, family="monospace",
                                  transform=spare[0].transAxes) if spare else None
        self.median = _Slot(axes[1, 0], ticks=True)
        self.codes = _Slot(axes[1, 1], cmap=CODE_CMAP, norm=CODE_NORM)
        self.fixed = _Slot(axes[1, 2])
        self.mm_ax = axes[1, 3]
        for ax in axes[1, 4:]:
            ax.set_axis_off()
        self._setup_mm_panel()
        self.title = fig.suptitle("", fontsize=10)

    def _setup_mm_panel(self) -> None:
        ax = self.mm_ax
        ax.set_yscale("symlog", linthresh=10.0)
        ax.yaxis.set_major_locator(FixedLocator(MM_T_TICKS))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.tick_params(labelsize=6)
        b = self.data.boundary
        self.mm_boundary = ax.plot([], [], color="black", lw=1)[0] if b is not None else None
        self.mm_lines = {code: ax.plot([], [], ls="none", ms=5, **{k: v for k, v in MARKERS[code].items()
                                                                   if k != "label"})[0] for code in MARKERS}
        self.mm_lines[1] = ax.plot([], [], ls="none", marker=".", ms=4, color="0.3")[0]
        ax.set_xlabel("noise scale u [e-]", fontsize=7)
        ax.set_ylabel("(median2d - min2d) / u", fontsize=7)
        # fixed label positions: placing them beside the tick labels lays out every tick label once more
        ax.xaxis.set_label_coords(0.5, -0.12)
        ax.yaxis.set_label_coords(-0.16, 0.5)
        _title(ax, "MM diagram of this event")

    def draw_event(self, i: int, *, prompt: str = "") -> EventView:
        """Put event ``i`` (0-based) on the page; returns what it shows."""
        v = self.content.view(i, prompt=prompt)
        slots = [*self.top, self.median, self.codes, self.fixed]
        for slot, (cut, title, kind) in zip(slots, v.panels):
            slot.show(cut, v.extent, clim=v.clim if kind == "gray" else None, title=title, box=v.box)
        self.codes.ax.title.set_fontsize(6)
        for code, line in self.mm_lines.items():
            u, t = v.mm_points[code]
            line.set_data(u, t)
            line.set_visible(bool(u.size))  # an empty line still costs a draw
        if self.mm_boundary is not None and v.mm_boundary is not None:
            self.mm_boundary.set_data(*v.mm_boundary)
        self.mm_ax.set_xlim(*v.mm_xlim)
        self.mm_ax.set_ylim(*v.mm_ylim)
        if self.info is not None:
            self.info.set_text(v.info)
        self.title.set_text(v.title)
        return v


# ---------------------------------------------------------------------------
# the PDF files
# ---------------------------------------------------------------------------

_GRAY = colormaps["gray"]
_GREYS = colormaps["Greys"]


def _grid(width: float, height: float, nrows: int, ncols: int, m: dict) -> list[list[tuple]]:
    """Boxes ``(x, y, w, h)`` in points of a ``nrows x ncols`` grid with matplotlib's subplot margins."""
    cw = (m["right"] - m["left"]) * width / (ncols + m["wspace"] * (ncols - 1))
    ch = (m["top"] - m["bottom"]) * height / (nrows + m["hspace"] * (nrows - 1))
    return [[(m["left"] * width + c * cw * (1 + m["wspace"]), m["top"] * height - ch - r * ch * (1 + m["hspace"]),
              cw, ch) for c in range(ncols)] for r in range(nrows)]


def _fit(box, extent) -> tuple[float, float, float, float]:
    """The centred part of ``box`` with the aspect of ``extent`` (square pixels, as ``aspect='equal'``)."""
    x, y, w, h = box
    aspect = (extent[3] - extent[2]) / max(extent[1] - extent[0], 1e-9)
    if h / w > aspect:
        return x, y + (h - w * aspect) / 2, w, w * aspect
    return x + (w - h / aspect) / 2, y, h / aspect, h


class _Panel:
    """Data coordinates -> page points inside a box (linear, or symmetric-log along y)."""

    def __init__(self, box, xlim, ylim, *, symlog: float | None = None):
        self.box, self.xlim, self.symlog = box, xlim, symlog
        self.ylim = tuple(self._fy(v) for v in ylim)

    def _fy(self, y):
        if self.symlog is None:
            return np.asarray(y, float)
        a = np.abs(np.asarray(y, float))
        lin = 1.0 / (1.0 - 0.1)
        out = np.where(a <= self.symlog, a * lin,
                       self.symlog * (lin + np.log10(np.maximum(a, self.symlog) / self.symlog)))
        return np.copysign(out, y)

    def x(self, v):
        x, _, w, _ = self.box
        return x + (np.asarray(v, float) - self.xlim[0]) * w / (self.xlim[1] - self.xlim[0])

    def y(self, v):
        _, y, _, h = self.box
        return y + (self._fy(v) - self.ylim[0]) * h / (self.ylim[1] - self.ylim[0])


def _ticks(page: lightpdf.Page, panel: _Panel, xticks, yticks, *, size: float = 6.0, fmt: str = "{:g}") -> None:
    """Outward tick marks and labels along the bottom and left edges (those inside the limits)."""
    x0, y0, _, _ = panel.box
    lo, hi = sorted(panel.xlim)
    xs = [v for v in xticks if lo <= v <= hi]
    ylo, yhi = sorted(panel.ylim)
    ys = [v for v in yticks if ylo <= float(panel._fy(v)) <= yhi]
    segs = [(float(panel.x(v)), y0, float(panel.x(v)), y0 - TICK_LEN) for v in xs]
    segs += [(x0, float(panel.y(v)), x0 - TICK_LEN, float(panel.y(v))) for v in ys]
    page.segments(segs, lw=FRAME_LW)
    for v in xs:
        page.text(float(panel.x(v)), y0 - TICK_LEN - TICK_PAD, fmt.format(v), size=size, ha="center", va="top")
    for v in ys:
        page.text(x0 - TICK_LEN - TICK_PAD, float(panel.y(v)), fmt.format(v), size=size, ha="right", va="center")


def _title_at(page: lightpdf.Page, box, text: str, size: float = 8.0) -> None:
    """A panel title centred 3 points above its box (as :func:`_title`)."""
    x, y, w, h = box
    page.text(x + w / 2, y + h + 3.0, text, size=size, ha="center")


def _image_panel(page: lightpdf.Page, cell, cut: np.ndarray, extent, *, cmap, norm, title: str,
                 box=None, title_size: float = 8.0) -> _Panel:
    """A cut-out with its frame, title and (FITS ``xmin, xmax, ymin, ymax``) box; returns its mapping."""
    area = _fit(cell, extent)
    panel = _Panel(area, extent[:2], extent[2:])
    page.image(lightpdf.rgb_image(cut, cmap, norm), *area)
    if box is not None:
        page.clip(*area)
        x0, x1 = panel.x([box[0] - 0.5, box[1] + 0.5])
        y0, y1 = panel.y([box[2] - 0.5, box[3] + 0.5])
        page.rect(float(x0), float(y0), float(x1 - x0), float(y1 - y0), color="cyan", lw=FRAME_LW)
        page.unclip()
    page.rect(*area, lw=FRAME_LW)
    _title_at(page, area, title, title_size)
    return panel


def _mm_panel(page: lightpdf.Page, cell, v: EventView) -> None:
    """The per-event MM diagram: the boundary and the event's pixels by category, symmetric-log t."""
    panel = _Panel(cell, v.mm_xlim, v.mm_ylim, symlog=10.0)
    page.clip(*cell)
    if v.mm_boundary is not None:
        page.polyline(panel.x(v.mm_boundary[0]), panel.y(v.mm_boundary[1]), lw=1.0)
    for code, (u, t) in v.mm_points.items():
        if u.size:
            style = MARKERS.get(code, dict(marker=".", color="0.3"))
            page.markers(panel.x(u), panel.y(t), marker=style["marker"], color=style["color"],
                         size=4.0 if code == 1 else 5.0)
    page.unclip()
    page.rect(*cell, lw=FRAME_LW)
    _ticks(page, panel, MaxNLocator(4).tick_values(*v.mm_xlim), MM_T_TICKS)
    x, y, w, h = cell
    page.text(x + 0.5 * w, y - 0.12 * h, "noise scale u [e-]", size=7, ha="center", va="top")
    page.text(x - 0.16 * w, y + 0.5 * h, "(median2d - min2d) / u", size=7, ha="center", va="bottom", rotation=90)
    _title_at(page, cell, "MM diagram of this event")


def _cr_page(content: CRContent, i: int, size: tuple[float, float], ncols: int) -> lightpdf.Page:
    """The PDF page of event ``i``."""
    v = content.view(i)
    page = lightpdf.PdfWriter.page(*size)
    cells = _grid(*size, 2, ncols, CR_MARGINS)
    n = content.n_top
    gray = mcolors.Normalize(*v.clim)
    places = [cells[0][k] for k in range(n)] + cells[1][:3]
    for k, (cell, (cut, title, kind)) in enumerate(zip(places, v.panels)):
        codes = kind == "codes"
        panel = _image_panel(page, cell, cut, v.extent, cmap=CODE_CMAP if codes else _GRAY,
                             norm=CODE_NORM if codes else gray, title=title, box=v.box,
                             title_size=6.0 if codes else 8.0)
        if k == n:  # median2d: pixel coordinates
            locator = MaxNLocator(3, integer=True)
            _ticks(page, panel, locator.tick_values(*v.extent[:2]), locator.tick_values(*v.extent[2:]))
    _mm_panel(page, cells[1][3], v)
    if n < ncols:
        x, y, w, h = cells[0][n]
        page.text(x - 0.12 * w, y + h, v.info, size=6.5, font="mono", va="top")
    page.text(size[0] / 2, 0.98 * size[1], v.title, size=10, ha="center", va="top")
    return page


def write_cr_pdf(path: str | Path, data: ReviewData, *, maxplots: int = -1, semiwindow: int = 15,
                 color_scale: str = "zscale", use_lamedian: bool = False,
                 progress: Progress | None = None) -> tuple[int, float]:
    """Write ``mediancr_identified_cr.pdf``: one page per CR event (at most ``maxplots``).

    Returns
    -------
    pages : int
        Pages written (0: no file).
    seconds : float
        Time spent.
    """
    t0 = time.perf_counter()
    total = n_pages(len(data.events), maxplots)
    if total == 0:
        return 0, 0.0
    content = CRContent(data, semiwindow=semiwindow, color_scale=color_scale, use_lamedian=use_lamedian)
    ncols = _grid_shape(content.n_top)
    size = (2.6 * ncols * 72.0, 6.0 * 72.0)
    _save_pages(path, lambda i: _cr_page(content, i, size, ncols), total, progress, "CR pages")
    return total, time.perf_counter() - t0


def _save_pages(path, draw: Callable[[int], lightpdf.Page], total: int, progress: Progress | None,
                step: str) -> None:
    """Append page ``draw(i)`` for ``i < total`` to the PDF ``path``."""
    with lightpdf.PdfWriter(path) as pdf:
        for i in range(total):
            pdf.add(draw(i))
            if progress is not None:
                progress(step, i + 1, total)


def problematic_groups(data: ReviewData) -> tuple[np.ndarray, list]:
    """8-connected groups of problematic pixels (labels, slices), numbered in raster order."""
    labels, _ = label_events(data.result.problematic)
    return labels, ndimage.find_objects(labels)


def _problematic_page(data: ReviewData, labels, objects, i: int, *, semiwindow: int, color_scale: str,
                      size: tuple[float, float], ncols: int) -> lightpdf.Page:
    """Page of group ``i``: the exposures (top) and their CRMASKk (bottom), the group's pixels crossed."""
    sl = objects[i]
    rows, cols = np.nonzero(labels[sl] == i + 1)
    rows, cols = rows + sl[0].start, cols + sl[1].start
    rc, cc = int(round(rows.mean())), int(round(cols.mean()))
    r0, r1, c0, c1 = cutout(rc, cc, semiwindow, data.shape)
    ext = fits_extent(r0, r1, c0, c1)
    box = (cols.min() + 1, cols.max() + 1, rows.min() + 1, rows.max() + 1)
    gray = mcolors.Normalize(*limits(data.stats.median2d[r0:r1, c0:c1], color_scale))
    crm = data.result.crmasks
    page = lightpdf.PdfWriter.page(*size)
    cells = _grid(*size, 2, ncols, PROBLEMATIC_MARGINS)
    for k in range(min(crm.shape[0], MAX_TOP)):
        cut = data.stack[k, r0:r1, c0:c1] if data.stack is not None else data.stats.median2d[r0:r1, c0:c1]
        _image_panel(page, cells[0][k], cut, ext, cmap=_GRAY, norm=gray, title=f"exposure {k + 1}", box=box)
        panel = _image_panel(page, cells[1][k], crm[k, r0:r1, c0:c1].astype(np.uint8), ext, cmap=_GREYS,
                             norm=mcolors.Normalize(0, 1.5), title=f"CRMASK{k + 1}")
        page.clip(*panel.box)
        page.markers(panel.x(cols + 1), panel.y(rows + 1), marker="x", size=5.0, color="red")
        page.unclip()
    page.text(size[0] / 2, 0.98 * size[1], f"Problematic pixels (masked in every exposure), region #{i + 1}/"
              f"{len(objects)}: {len(rows)} px around [{cc + 1}, {rc + 1}]", size=10, ha="center", va="top")
    return page


def write_problematic_pdf(path: str | Path, data: ReviewData, *, maxplots: int = -1, semiwindow: int = 15,
                          color_scale: str = "zscale", progress: Progress | None = None) -> int:
    """Write ``problematic_pixels.pdf`` (only when there are problematic pixels); returns the pages."""
    if not data.result.problematic.any():
        return 0
    labels, objects = problematic_groups(data)
    total = n_pages(len(objects), maxplots)
    if total == 0:
        return 0
    n = min(data.result.crmasks.shape[0], MAX_TOP)
    size = (2.6 * max(n, 3) * 72.0, 5.6 * 72.0)
    _save_pages(path, lambda i: _problematic_page(data, labels, objects, i, semiwindow=int(semiwindow),
                                                  color_scale=color_scale, size=size, ncols=max(n, 1)),
                total, progress, "problematic pages")
    return total
