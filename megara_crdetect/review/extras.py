"""Figures of the optional steps: flux factors (``flux_factor: auto``) and offsets (cross-correlation).

* ``image_number_at_median_position.png``: the median and, for every pixel,
  which exposure supplies the median value (odd N).
* ``flux_factor<k>.png``: ratio exposure k / median against the median signal
  in the flux regions, the estimated factor and what the estimator reports.
* ``xyoffset_crosscorr_<k>.png``: median and exposure k in the
  cross-correlation region, their difference, and the difference after
  shifting the exposure back by the measured offset.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from matplotlib import colors

from ..core.fluxfactor import image_number_at_median
from ..core.shift import shift_image
from ..core.stack import median_of_stack
from ._plot import count_cmap, display_image, fits_extent, limits
from .events import ReviewData

__all__ = ["png_jobs", "median_source_figure", "flux_factor_figure", "offset_figure"]


def _region_mask(regions, shape) -> np.ndarray:
    if not regions:
        return np.ones(shape, dtype=bool)
    mask = np.zeros(shape, dtype=bool)
    for x0, x1, y0, y1 in regions:
        mask[y0 - 1:y1, x0 - 1:x1] = True
    return mask


def _outline_regions(ax, regions, **style) -> None:
    from matplotlib.patches import Rectangle

    for x0, x1, y0, y1 in regions or ():
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0 + 1, y1 - y0 + 1, fill=False, **style))


def median_source_figure(fig, data: ReviewData, regions, *, max_pixels: int | None = None) -> None:
    """Median (zscale) and the exposure that supplies it at every pixel, flux regions outlined."""
    stack = data.stack
    median = median_of_stack(stack)
    src = image_number_at_median(stack)
    n = stack.shape[0]
    ax_a, ax_b = fig.subplots(1, 2, sharex=True, sharey=True)
    vmin, vmax = limits(median, "zscale")
    display_image(ax_a, median, vmin=vmin, vmax=vmax, max_pixels=max_pixels)
    cmap = colors.ListedColormap([count_cmap("tab10")(k % 10) for k in range(n)])
    im = display_image(ax_b, src, vmin=0.5, vmax=n + 0.5, cmap=cmap)
    frac = [100.0 * np.count_nonzero(src == k + 1) / src.size for k in range(n)]
    cb = fig.colorbar(im, ax=ax_b, ticks=np.arange(1, n + 1))
    cb.ax.set_yticklabels([f"{k + 1} ({f:.0f}%)" for k, f in enumerate(frac)])
    cb.set_label("exposure supplying the median (share of pixels)")
    for ax in (ax_a, ax_b):
        _outline_regions(ax, regions, ec="red", lw=1.0)
        ax.set_xlabel("X [pixel]")
        ax.set_ylabel("Y [pixel]")
    ax_a.set_title("median of the exposures (zscale); flux_factor_regions in red")
    ax_b.set_title("image number at the median position")


def _flux_samples(data: ReviewData, k: int, regions, max_samples: int = 20000):
    """(signal, ratio, used) samples: from the estimator's details when it kept them, else computed."""
    det = data.result.flux_details
    if all(hasattr(det, a) for a in ("signal", "ratio", "used")):
        return np.asarray(det.signal), np.asarray(det.ratio[k]), np.asarray(det.used[k], dtype=bool)
    median = median_of_stack(data.stack)
    sel = _region_mask(regions, median.shape) & (median > 10 * np.sqrt(np.maximum(median, 0) + data.rnoise_e**2))
    idx = np.flatnonzero(sel)
    idx = idx[:: max(1, -(-idx.size // max_samples))]
    signal = median.ravel()[idx].astype(np.float64)
    ratio = data.stack[k].ravel()[idx] / signal
    return signal, ratio, np.ones(ratio.shape, dtype=bool)


def flux_factor_figure(fig, data: ReviewData, k: int, regions) -> None:
    """Ratio exposure k / median against the median signal, the estimated factor and its scatter."""
    signal, ratio, used = _flux_samples(data, k, regions)
    f = float(data.result.flux_factors[k])
    unc = getattr(data.result.flux_details, "uncertainties", None)
    ax = fig.subplots(1, 1)
    ax.plot(signal[used], ratio[used], ".", ms=1.5, color="0.35", alpha=0.5, rasterized=True,
            label=f"pixels used ({int(used.sum())} samples)")
    if (~used).any():
        ax.plot(signal[~used], ratio[~used], "x", ms=3, color="tab:orange", label=f"clipped ({int((~used).sum())})")
    _running_median(ax, signal[used], ratio[used])
    band = f"{f:.4f}" + (f" +/- {float(unc[k]):.4f}" if unc is not None else "")
    ax.axhline(f, color="red", lw=1.5, label=f"flux factor {band}")
    ax.axhline(1.0, color="0.4", lw=0.8, ls=":")
    finite = ratio[used & np.isfinite(ratio)]
    if finite.size:
        lo, hi = np.percentile(finite, [0.5, 99.5])
        pad = 0.1 * (hi - lo) + 0.01
        ax.set_ylim(min(lo, f) - pad, max(hi, f) + pad)
    ax.set_xscale("symlog", linthresh=100.0)
    if signal.size:
        ax.set_xlim(min(float(signal.min()), 0.0), float(signal.max()) * 1.3)
    ax.set_xlabel("median signal [e-]  (symlog, linear below 100 e-)")
    ax.set_ylabel(f"exposure {k + 1} / median")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"flux factor of exposure {k + 1}")


def _running_median(ax, signal: np.ndarray, ratio: np.ndarray, nbins: int = 20) -> None:
    keep = signal > 1.0
    signal, ratio = signal[keep], ratio[keep]
    if signal.size < 10 * nbins:
        return
    edges = np.geomspace(signal.min(), signal.max() * (1 + 1e-9), nbins + 1)
    idx = np.digitize(signal, edges) - 1
    xs, ys = [], []
    for b in range(nbins):
        sel = idx == b
        if sel.sum() >= 10:
            xs.append(float(np.sqrt(edges[b] * edges[b + 1])))
            ys.append(float(np.median(ratio[sel])))
    ax.plot(xs, ys, "o-", color="tab:blue", ms=4, lw=1, label="running median")


def offset_figure(fig, data: ReviewData, k: int, region) -> None:
    """Median and exposure k in the cross-correlation region, before and after undoing the offset."""
    x0, x1, y0, y1 = region
    r0, r1, c0, c1 = y0 - 1, y1, x0 - 1, x1
    m = 8  # margin for the shift
    ny, nx = data.shape
    R0, R1, C0, C1 = max(r0 - m, 0), min(r1 + m, ny), max(c0 - m, 0), min(c1 + m, nx)
    inner = (slice(r0 - R0, r1 - R0), slice(c0 - C0, c1 - C0))
    f = float(data.result.flux_factors[k]) or 1.0
    med = data.stats.median2d[R0:R1, C0:C1]
    exp = data.stack[k, R0:R1, C0:C1] / np.float32(f)
    dx, dy = (float(v) for v in data.result.offsets[k])
    back = shift_image(exp, -dx, -dy)
    panels = [(med[inner], "median2d"), (exp[inner], f"exposure {k + 1}" + (f" / {f:.3f}" if f != 1 else "")),
              (med[inner] - exp[inner], f"median2d - exposure {k + 1}"),
              (med[inner] - back[inner], f"median2d - exposure {k + 1} shifted back by ({-dx:+.3f}, {-dy:+.3f})")]
    axes = fig.subplots(2, 2, sharex=True, sharey=True).ravel()
    vmin, vmax = limits(med[inner], "zscale")
    d = np.abs(panels[2][0])
    dlim = float(np.percentile(d, 99)) if d.size else 1.0
    ext = fits_extent(r0, r1, c0, c1)
    for i, (ax, (img, title)) in enumerate(zip(axes, panels)):
        lim = (vmin, vmax) if i < 2 else (-dlim, dlim)
        im = ax.imshow(img, origin="lower", extent=ext, vmin=lim[0], vmax=lim[1], interpolation="nearest",
                       cmap="gray" if i < 2 else "RdBu_r", aspect="auto")
        fig.colorbar(im, ax=ax)
        ax.set_title(title, fontsize=9)
    for ax in axes[2:]:
        ax.set_xlabel("X [pixel]")
    for ax in axes[::2]:
        ax.set_ylabel("Y [pixel]")
    fig.suptitle(f"exposure {k + 1}: measured offset dx = {dx:+.3f}, dy = {dy:+.3f} pixels "
                 f"(region [{x0}:{x1}, {y0}:{y1}])")


#: Margins of the figures (fixed layout, see :mod:`megara_crdetect.review.figures`).
PAIR = dict(left=0.06, right=0.97, bottom=0.1, top=0.88, wspace=0.22)
SINGLE = dict(left=0.09, right=0.97, bottom=0.1, top=0.9)
QUAD = dict(left=0.08, right=0.97, bottom=0.07, top=0.9, wspace=0.25, hspace=0.2)


def png_jobs(data: ReviewData, cfg, *, max_pixels: int | None = None
             ) -> list[tuple[str, Callable, tuple[float, float], dict]]:
    """Flux-factor and offset figures due for this run: (name, builder, size, margins)."""
    p, jobs = cfg.params, []
    if data.stack is None:
        return jobs
    n = data.stack.shape[0]
    if p.flux_factor == "auto":
        if n % 2 == 1:
            jobs.append(("image_number_at_median_position.png",
                         lambda f: median_source_figure(f, data, p.flux_factor_regions, max_pixels=max_pixels),
                         (13, 5.5), PAIR))
        for k in range(n):
            jobs.append((f"flux_factor{k + 1}.png",
                         lambda f, k=k: flux_factor_figure(f, data, k, p.flux_factor_regions), (8, 5.5), SINGLE))
    if p.mm_crosscorr_region is not None:
        for k in range(n):
            jobs.append((f"xyoffset_crosscorr_{k + 1}.png",
                         lambda f, k=k: offset_figure(f, data, k, p.mm_crosscorr_region), (10, 8), QUAD))
    return jobs
