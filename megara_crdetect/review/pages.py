"""Multi-page cut-out figures: ``mediancr_identified_cr.pdf`` and ``problematic_pixels.pdf``.

The reference spends about 0.8 s per page (84 % of its run time) because it
builds a new figure, runs ``tight_layout`` and a tight bounding box for every
cosmic ray.  Here one figure is built once; every page only replaces the image
data, extents, colour limits, markers and titles of the existing artists and
is appended to a :class:`~matplotlib.backends.backend_pdf.PdfPages` (no tight
layout, no tight bounding box).  The same page object draws the
``verify_cr`` window of the interactive review.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from matplotlib import rc_context
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.patches import Rectangle
from matplotlib.ticker import FixedLocator, FormatStrFormatter, MaxNLocator, NullLocator
from scipy import ndimage

from ._plot import CODE_CMAP, CODE_NORM, MARKERS, agg_figure, fits_extent, limits
from .events import ReviewData, cutout, label_events

__all__ = ["DEFAULT_PAGES", "MAX_TOP", "CRPage", "ProblematicPage", "n_pages", "write_cr_pdf", "write_problematic_pdf",
           "warm_up"]

_log = logging.getLogger(__name__)

#: PDF settings of the multi-page files: the 14 standard PDF fonts need no font
#: file and no glyph layout by FreeType (text costs a third of a page otherwise).
PDF_RC = {"pdf.use14corefonts": True, "font.family": "sans-serif", "font.sans-serif": ["Helvetica"],
          "font.monospace": ["Courier"], "axes.unicode_minus": False, "pdf.compression": 1}
#: At most this many exposures in the top row of a page.
MAX_TOP = 8
Progress = Callable[[str, int, int], None]


@contextmanager
def _pdf_context():
    """:data:`PDF_RC`, without the font manager's notes that Helvetica is 'medium', not 'normal'."""
    fm_log = logging.getLogger("matplotlib.font_manager")
    level = fm_log.level
    fm_log.setLevel(logging.ERROR)
    try:
        with rc_context(PDF_RC):
            yield
    finally:
        fm_log.setLevel(level)


#: Pages drawn with ``maxplots: -1`` (the reference draws at most 1000; the first few hundred events of
#: raster order tell as much, and every event is listed in the candidates CSV and the region file).
DEFAULT_PAGES = 100


def n_pages(n_events: int, maxplots: int) -> int:
    """Pages to draw: the first :data:`DEFAULT_PAGES` events for ``maxplots = -1``, none for 0, else at most
    ``maxplots``."""
    return min(DEFAULT_PAGES if maxplots < 0 else maxplots, n_events)


def warm_up() -> None:
    """Draw a small page into memory (loads the PDF backend and the metrics of its fonts)."""
    import io

    with _pdf_context():
        fig = agg_figure((2, 2))
        ax = fig.add_subplot()
        ax.imshow(np.zeros((2, 2)))
        _title(ax, "x")
        ax.text(0, 0, "x", family="monospace")
        with PdfPages(io.BytesIO()) as pdf:
            pdf.savefig(fig)


class _Slot:
    """One image panel whose data, extent and colour limits change from page to page."""

    def __init__(self, ax, *, cmap="gray", norm=None, ticks: bool = False):
        self.ax = ax
        self.image = ax.imshow(np.zeros((1, 1)), origin="lower", interpolation="none", cmap=cmap,
                               norm=norm, aspect="equal")
        self.rect = Rectangle((0, 0), 1, 1, fill=False, ec="cyan", lw=0.8)
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


def _grid_shape(n_images: int) -> int:
    return max(min(n_images, MAX_TOP), 4)


class CRPage:
    """The page of one CR event: exposures (top), median, detections, corrected, MM diagram (bottom).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Empty figure to fill (Agg for files, pyplot for the interactive review).
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
        self.semiwindow, self.color_scale = int(semiwindow), color_scale
        n = 0 if data.stack is None else data.stack.shape[0]
        self.n_top = min(n, MAX_TOP)
        ncols = _grid_shape(n)
        axes = fig.subplots(2, ncols, squeeze=False)
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.07, top=0.86, wspace=0.3, hspace=0.3)
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
        self.corrected = data.corrected(use_lamedian)
        self.title = fig.suptitle("", fontsize=10)

    def _setup_mm_panel(self) -> None:
        ax = self.mm_ax
        ax.set_yscale("symlog", linthresh=10.0)
        ax.yaxis.set_major_locator(FixedLocator([-10, 0, 5, 10, 30, 100, 300, 1000, 3000, 10000]))
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

    def _update_mm(self, i: int) -> None:
        rows, cols, codes = self.data.events.pixels(i)
        u = self.data.u[rows, cols]
        t = self.data.t[rows, cols]
        for code, line in self.mm_lines.items():
            sel = codes == code
            line.set_data(u[sel], t[sel])
            line.set_visible(bool(sel.any()))  # an empty line still costs a draw
        lo, hi = max(float(u.min()) * 0.8, self.data.rnoise_e * 0.95), float(u.max()) * 1.25 + 1.0
        if self.mm_boundary is not None:
            uu = np.linspace(lo, hi, 50)
            tb = self.data.boundary.t_at(uu)
            self.mm_boundary.set_data(uu, tb)
            top = max(float(t.max()), float(tb.max()))
        else:
            top = float(t.max())
        self.mm_ax.set_xlim(lo, hi)
        self.mm_ax.set_ylim(min(float(t.min()), 0.0) - 0.5, max(top * 1.3, 12.0))

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

    def draw_event(self, i: int, *, prompt: str = "") -> None:
        """Put event ``i`` (0-based) on the page."""
        ev, d = self.data.events, self.data
        r0, r1, c0, c1 = win = ev.window(i, self.semiwindow, d.shape)
        ext = fits_extent(r0, r1, c0, c1)
        box = (ev.xmin[i], ev.xmax[i], ev.ymin[i], ev.ymax[i])
        med = d.stats.median2d[r0:r1, c0:c1]
        clim = limits(med, self.color_scale)
        for k, slot in enumerate(self.top):
            slot.show(d.stack[k, r0:r1, c0:c1], ext, clim=clim, title=f"exposure {k + 1}", box=box)
        self.median.show(med, ext, clim=clim, title=f"median2d ({self.color_scale})", box=box)
        self.codes.show(d.result.mediancr_codes[r0:r1, c0:c1], ext,
                        title="MEDIANCR: LA red, MM blue, both yellow,\npair cyan, user magenta, dilation grey",
                        box=box)
        self.codes.ax.title.set_fontsize(6)
        self.fixed.show(self.corrected[r0:r1, c0:c1], ext, clim=clim, title="corrected (mediancr)", box=box)
        self._update_mm(i)
        if self.info is not None:
            self.info.set_text(self._info(i, win))
        self.title.set_text(f"CR#{i + 1}/{len(ev)}: {ev.method(i)}, {ev.npix[i]} px, centre "
                            f"[{ev.x_centre[i]:.1f}, {ev.y_centre[i]:.1f}]" + (f"\n{prompt}" if prompt else ""))


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
    n = _grid_shape(0 if data.stack is None else data.stack.shape[0])
    with _pdf_context():
        fig = agg_figure((2.6 * n, 6.0))
        page = CRPage(fig, data, semiwindow=semiwindow, color_scale=color_scale, use_lamedian=use_lamedian)
        _save_pages(path, fig, page.draw_event, total, progress, "CR pages")
    return total, time.perf_counter() - t0


def _save_pages(path, fig, draw: Callable[[int], object], total: int, progress: Progress | None,
                step: str) -> None:
    """Draw page ``i`` of ``total`` into ``fig`` with ``draw(i)`` and append it to the PDF ``path``."""
    with PdfPages(path) as pdf:
        for i in range(total):
            draw(i)
            pdf.savefig(fig)
            if progress is not None:
                progress(step, i + 1, total)


class ProblematicPage:
    """Page of one group of problematic pixels: exposures (top), CRMASKk cut-outs (bottom)."""

    def __init__(self, fig, data: ReviewData, *, semiwindow: int = 15, color_scale: str = "zscale"):
        self.fig, self.data = fig, data
        self.semiwindow, self.color_scale = int(semiwindow), color_scale
        n = min(data.result.crmasks.shape[0], MAX_TOP)
        axes = fig.subplots(2, max(n, 1), squeeze=False)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.07, top=0.88, wspace=0.3, hspace=0.3)
        self.top = [_Slot(axes[0, k]) for k in range(n)]
        self.masks = [_Slot(axes[1, k], cmap="Greys", norm=None) for k in range(n)]
        self.crosses = [ax.plot([], [], "x", color="red", ms=5)[0] for ax in axes[1, :n]]
        self.labels, self.count = label_events(data.result.problematic)
        self.objects = ndimage.find_objects(self.labels)
        self.title = fig.suptitle("", fontsize=10)

    def draw_group(self, i: int) -> None:
        """Put group ``i`` (0-based) on the page."""
        sl = self.objects[i]
        rows, cols = np.nonzero(self.labels[sl] == i + 1)
        rows, cols = rows + sl[0].start, cols + sl[1].start
        ny, nx = self.data.shape
        rc, cc = int(round(rows.mean())), int(round(cols.mean()))
        r0, r1, c0, c1 = cutout(rc, cc, self.semiwindow, (ny, nx))
        ext = fits_extent(r0, r1, c0, c1)
        box = (cols.min() + 1, cols.max() + 1, rows.min() + 1, rows.max() + 1)
        clim = limits(self.data.stats.median2d[r0:r1, c0:c1], self.color_scale)
        crm = self.data.result.crmasks
        for k, slot in enumerate(self.top):
            cut = self.data.stack[k, r0:r1, c0:c1] if self.data.stack is not None else \
                self.data.stats.median2d[r0:r1, c0:c1]
            slot.show(cut, ext, clim=clim, title=f"exposure {k + 1}", box=box)
        for k, slot in enumerate(self.masks):
            slot.show(crm[k, r0:r1, c0:c1].astype(np.uint8), ext, clim=(0, 1.5), title=f"CRMASK{k + 1}")
            self.crosses[k].set_data(cols + 1, rows + 1)
        self.title.set_text(f"Problematic pixels (masked in every exposure), region #{i + 1}/{self.count}: "
                            f"{len(rows)} px around [{cc + 1}, {rc + 1}]")


def write_problematic_pdf(path: str | Path, data: ReviewData, *, maxplots: int = -1, semiwindow: int = 15,
                          color_scale: str = "zscale", progress: Progress | None = None) -> int:
    """Write ``problematic_pixels.pdf`` (only when there are problematic pixels); returns the pages."""
    if not data.result.problematic.any():
        return 0
    n = min(data.result.crmasks.shape[0], MAX_TOP)
    with _pdf_context():
        fig = agg_figure((2.6 * max(n, 3), 5.6))
        page = ProblematicPage(fig, data, semiwindow=semiwindow, color_scale=color_scale)
        total = n_pages(page.count, maxplots)
        if total == 0:
            return 0
        _save_pages(path, fig, page.draw_group, total, progress, "problematic pages")
    return total
