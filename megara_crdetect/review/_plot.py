"""Small matplotlib helpers shared by the review figures (object API only, no pyplot)."""

from __future__ import annotations

import numpy as np
from matplotlib import colors
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["CODE_COLOURS", "CODE_CMAP", "CODE_NORM", "MARKERS", "DPI", "agg_figure", "limits",
           "fits_extent", "block_mean", "display_image", "column_hist2d", "uniform_hist2d", "log_norm",
           "count_cmap", "maxpool"]

#: Resolution of the PNG figures: a 13 x 10 inch figure is 1560 x 1200 pixels (150 dpi drew 56 % more
#: pixels for 13 % more CPU, no more legible on a screen).
DPI = 120
#: Colours of the MEDIANCR codes in detection maps: none, dilation, MM, LA, both, user, pair.
CODE_COLOURS = ("black", "0.6", "tab:blue", "red", "yellow", "magenta", "cyan")
CODE_CMAP = colors.ListedColormap(CODE_COLOURS, name="mediancr_codes")
CODE_NORM = colors.BoundaryNorm(np.arange(-0.5, 7.5), CODE_CMAP.N)
#: Marker style of each detection category (code): LA only x, MM only +, both o, user diamond, pair square.
#: Pairs come first, so that the rarer categories are drawn over them.
MARKERS = {
    6: dict(marker="s", color="c", mfc="none", label="pair"),
    3: dict(marker="x", color="red", label="LA only"),
    2: dict(marker="+", color="tab:blue", label="MM only"),
    4: dict(marker="o", color="magenta", mfc="none", label="LA+MM"),
    5: dict(marker="D", color="lime", mfc="none", label="user"),
}


def agg_figure(figsize: tuple[float, float], *, dpi: int = DPI) -> Figure:
    """A figure drawn by the Agg canvas (no pyplot, no display)."""
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def limits(data: np.ndarray, scale: str = "zscale") -> tuple[float, float]:
    """Display limits of an image: ``zscale`` (astropy) or ``minmax``."""
    finite = np.asarray(data)
    if finite.size == 0:
        return 0.0, 1.0
    if scale == "minmax":
        lo, hi = float(np.nanmin(finite)), float(np.nanmax(finite))
    else:
        from astropy.visualization import ZScaleInterval

        interval, flat = ZScaleInterval(), finite.reshape(-1)
        if flat.size > interval.n_samples and np.isfinite(flat).all():
            # astropy's own sample (every stride-th value), taken without its copy of a whole frame
            flat = flat[::int(max(1.0, flat.size / interval.n_samples))][:interval.n_samples].copy()
        lo, hi = (float(v) for v in interval.get_limits(flat))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def fits_extent(r0: int, r1: int, c0: int, c1: int) -> tuple[float, float, float, float]:
    """imshow extent putting FITS pixel centres at integer coordinates (0-based half-open input)."""
    return (c0 + 0.5, c1 + 0.5, r0 + 0.5, r1 + 0.5)


def maxpool(mask: np.ndarray, factor: int) -> np.ndarray:
    """Block maximum of a boolean image (so that single pixels stay visible when shrunk)."""
    if factor <= 1:
        return mask
    ny, nx = mask.shape
    py, px = -ny % factor, -nx % factor
    m = np.pad(mask, ((0, py), (0, px)))
    return m.reshape(m.shape[0] // factor, factor, m.shape[1] // factor, factor).any(axis=(1, 3))


def block_mean(data: np.ndarray, factor: int) -> np.ndarray:
    """Mean of ``factor x factor`` blocks (edge blocks padded by repetition)."""
    if factor <= 1:
        return data
    ny, nx = data.shape
    d = np.pad(data, ((0, -ny % factor), (0, -nx % factor)), mode="edge")
    return d.reshape(d.shape[0] // factor, factor, d.shape[1] // factor, factor).mean(axis=(1, 3),
                                                                                     dtype=np.float32)


def display_image(ax, data: np.ndarray, *, vmin: float, vmax: float, cmap: str = "gray",
                  max_pixels: int | None = None, **kwargs):
    """Show a full image in FITS coordinates (origin lower left, pixel X at x = X).

    With ``max_pixels``, images larger than that along an axis are shown as
    block means (a 2016 x 1596 frame in a 13-inch figure needs no more than
    ~1000 pixels; the full frame would make every PNG several times slower).
    """
    ny, nx = data.shape
    f = 1 if max_pixels is None else max(1, -(-max(ny, nx) // max_pixels))
    shown = block_mean(data, f)
    im = ax.imshow(shown, origin="lower", extent=(0.5, shown.shape[1] * f + 0.5, 0.5, shown.shape[0] * f + 0.5),
                   vmin=vmin, vmax=vmax, cmap=cmap, interpolation="nearest", aspect="auto", **kwargs)
    im.block = f
    ax.set_xlim(0.5, nx + 0.5)
    ax.set_ylim(0.5, ny + 0.5)
    return im


#: Points counted at a time by the 2-D histograms: their temporaries (bin indices in int64) stay a few
#: megabytes, not several frames (a full MEGARA frame is 17 million points).
HIST_CHUNK = 1 << 20


def _bin_counts(col: np.ndarray, y: np.ndarray, y0: np.float32, scale: np.float32, ny: int, size: int) -> np.ndarray:
    """Counts of one chunk of points per (column, uniform y bin), flat; y outside dropped."""
    fy = (np.asarray(y, dtype=np.float32) - y0) * scale
    ok = (fy >= 0) & (fy < ny)
    idx = col[ok].astype(np.int64) * ny + fy[ok].astype(np.int64)
    return np.bincount(idx, minlength=size)


def column_hist2d(col: np.ndarray, ncols: int, y: np.ndarray, y_edges: np.ndarray, transform=None) -> np.ndarray:
    """Counts per (column, uniform y bin), shape ``(ncols, len(y_edges) - 1)``; y outside dropped.

    ``col`` is the (already computed, in-range) column index of every point;
    ``transform`` (element-wise) is applied to ``y`` a chunk at a time.
    """
    ny = len(y_edges) - 1
    col, y = np.asarray(col).ravel(), np.asarray(y).ravel()
    y0, scale = np.float32(y_edges[0]), np.float32(ny / (y_edges[-1] - y_edges[0]))
    counts = np.zeros(ncols * ny, dtype=np.int64)
    for s in range(0, y.size, HIST_CHUNK):
        part = y[s:s + HIST_CHUNK] if transform is None else transform(y[s:s + HIST_CHUNK])
        counts += _bin_counts(col[s:s + HIST_CHUNK], part, y0, scale, ny, ncols * ny)
    return counts.reshape(ncols, ny)


def uniform_hist2d(x: np.ndarray, y: np.ndarray, x_edges: np.ndarray, y_edges: np.ndarray) -> np.ndarray:
    """Counts of points in uniform bins, shape ``(len(x_edges) - 1, len(y_edges) - 1)``; outside dropped."""
    nx, ny = len(x_edges) - 1, len(y_edges) - 1
    x, y = np.asarray(x).ravel(), np.asarray(y).ravel()
    x0, x_scale = np.float32(x_edges[0]), np.float32(nx / (x_edges[-1] - x_edges[0]))
    y0, y_scale = np.float32(y_edges[0]), np.float32(ny / (y_edges[-1] - y_edges[0]))
    counts = np.zeros(nx * ny, dtype=np.int64)
    for s in range(0, x.size, HIST_CHUNK):
        fx = (np.asarray(x[s:s + HIST_CHUNK], dtype=np.float32) - x0) * x_scale
        ok = (fx >= 0) & (fx < nx)
        counts += _bin_counts(fx[ok].astype(np.int64), y[s:s + HIST_CHUNK][ok], y0, y_scale, ny, nx * ny)
    return counts.reshape(nx, ny)


def log_norm(*arrays: np.ndarray) -> colors.LogNorm:
    """One logarithmic colour scale covering the positive values of all arrays."""
    pos = [a[a > 0] for a in arrays if np.any(a > 0)]
    if not pos:
        return colors.LogNorm(1.0, 10.0)
    lo = min(float(p.min()) for p in pos)
    hi = max(float(p.max()) for p in pos)
    return colors.LogNorm(lo, max(hi, lo * 10))


def count_cmap(name: str = "viridis") -> colors.Colormap:
    """Colour map for counts: empty cells (masked) white."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="white", under="white")
