"""Test sets built from the real WHT/ISIS frames of ``../shared/data/real/wht_isis`` (issue 17).

Real exposures are not equivalent: the star's trace changes its profile and
strength from exposure to exposure (seeing, guiding, slit losses) and arc lines
change their relative strength line by line.  These sets measure what a
detector does there, with the truth known where it is needed:

* ``wht_real``: the G93-48 triplet r2701253/55/57 (3 x 100 s) as it is.  It has
  real single hits but no pixel hit in two of the three frames, so every MEDIANCR
  pixel is a false flag (reported on the star's trace and elsewhere), and the
  flux of ``combined_mediancr`` along the trace must equal that of
  ``combined_median`` where no cosmic ray is known.
* ``wht_hybrid``: the same triplet plus real cosmic-ray events cut from the two
  1800 s exposures r2701242/44, injected at known places: the same event and two
  different events at the same place in 2 of the 3 frames (on and off the
  trace) and single hits.  Truth = the frames before injection.
* ``wht_seeing``: as ``wht_hybrid`` after one exposure's trace was broadened
  (its smooth trace model convolved across the slit: a seeing change; the noise
  is the frame's own).
* ``wht_arc``: the arc triplet r2701247/48/49 (3 x 4 s) as it is (MEDIANCR on
  the arc lines, where the lines change strength from frame to frame) and the
  same frames with injected coincidences (recall).

Frames: bias = per-column median of rows 4110-4190, rows 1-4096 kept, the bad
first column dropped (4096 x 965), ADU; gain 0.98 e-/ADU, read noise 3.3 ADU.
Events: pixels of one 1800 s frame more than 10 sigma above the other and their
8-connected neighbourhood above 3 sigma; each event is that excess (clipped
at 0), at most 40 x 40 px and 300 px.

Figures (ADU; sigma = sqrt(max(truth median, 0) / gain + rnoise^2)):

* spoiled pixels = median of the injected frames - median of the clean frames
  > 5 sigma; recall = the fraction of them in MEDIANCR;
* far false flags = MEDIANCR pixels more than 2 px from any injected pixel
  above 1 sigma and from any real hit of the clean frames (a frame more than
  10 sigma above the median of the others, grown to 3 sigma);
* mask coverage = per exposure, the fraction of its injected pixels above
  5 sigma that its CRMASKk holds (all, and at coincidences only);
* residuals of a combination = pixels where it exceeds the same combination
  (same masks, same flux factors) of the clean frames by 5 sigma;
* flux along the trace = per row, the sum over the trace window of
  ``combined_mediancr`` and of ``combined_median``; rows with a known cosmic
  ray in the window (real or injected, dilated 2 px) are left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from scipy import ndimage

GAIN, RNOISE = 0.98, 3.3
TRIPLET = ("r2701253", "r2701255", "r2701257")
LONG = ("r2701242", "r2701244")
ARC = ("r2701247", "r2701248", "r2701249")
TRACE_HALFWIDTH = 8  # px either side of the trace centre
EDGE = 6  # px kept free of injections at the borders


def real_dir() -> Path:
    """The folder of the WHT/ISIS frames (``CRDETECT_REAL_DIR`` overrides it)."""
    env = os.environ.get("CRDETECT_REAL_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "wht_isis"


def reduce_frame(path: Path) -> np.ndarray:
    """Overscan-subtracted (per column, rows 4110-4190), trimmed (rows 1-4096), first column dropped; ADU."""
    with fits.open(path) as hdul:
        data = hdul[1].data.astype(np.float32)
    return (data[:4096] - np.median(data[4109:4190], axis=0))[:, 1:]


def load(names, folder: Path | None = None) -> np.ndarray:
    folder = folder or real_dir()
    return np.stack([reduce_frame(folder / f"{n}.fit.gz") for n in names])


def noise_adu(level: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(level, 0) / GAIN + RNOISE**2)


# ---------------------------------------------------------------------------
# what the frames contain
# ---------------------------------------------------------------------------


def trace_centre(median: np.ndarray, block: int = 64) -> np.ndarray:
    """Column of the star's trace in every row (flux-weighted centroids of row blocks, cubic fit)."""
    ny, nx = median.shape
    x0 = int(np.argmax(np.median(median, axis=0)))
    lo, hi = max(0, x0 - 15), min(nx, x0 + 16)
    ys, xs, ws = [], [], []
    for r in range(0, ny - block + 1, block):
        prof = np.median(median[r:r + block, lo:hi], axis=0)
        prof = prof - np.median(prof[[0, 1, 2, -3, -2, -1]])
        peak = int(np.argmax(prof))
        win = slice(max(0, peak - 4), peak + 5)
        w = np.clip(prof[win], 0, None)
        if w.sum() <= 20 * RNOISE:
            continue
        ys.append(r + block / 2)
        xs.append(lo + np.arange(prof.size)[win] @ w / w.sum())
        ws.append(np.sqrt(w.sum()))
    coef = np.polyfit(ys, xs, 3, w=ws)
    return np.polyval(coef, np.arange(ny))


def trace_mask(centre: np.ndarray, shape, halfwidth: int = TRACE_HALFWIDTH) -> np.ndarray:
    cols = np.arange(shape[1])[None, :]
    return np.abs(cols - centre[:, None]) <= halfwidth


def line_mask(median: np.ndarray, nsigma: float = 10.0) -> np.ndarray:
    """Arc (or sky) lines: pixels standing ``nsigma`` above the running median along the dispersion, grown 3 px."""
    back = ndimage.median_filter(median, size=(41, 1), mode="nearest")
    lines = median - back > nsigma * noise_adu(back)
    return ndimage.binary_dilation(lines, iterations=3)


def real_hits(frames: np.ndarray, ratio_axis: int = 0) -> np.ndarray:
    """Real single hits of each frame: 10 sigma above the others, grown to 3 sigma (N, ny, nx).

    "The others" is their median times the frame's local ratio to it (running
    median over 31 px along ``ratio_axis`` where the others stand 20 sigma
    above 0): a trace or a line brighter in one frame is not a hit.
    """
    out = np.zeros(frames.shape, bool)
    size = (31, 1) if ratio_axis == 0 else (1, 31)
    for k in range(frames.shape[0]):
        others = np.median(np.delete(frames, k, axis=0), axis=0)
        sig = noise_adu(others)
        bright = others > 20 * sig
        ratio = ndimage.median_filter(np.where(bright, frames[k] / np.where(bright, others, 1), 1.0), size=size,
                                      mode="nearest")
        z = (frames[k] - np.where(bright, ratio, 1.0) * others) / sig
        out[k] = _grow(z > 10, z > 3)
    out[:, :, 0] = False  # the detector's (second) edge column is noisy; not a cosmic ray
    return out


def _grow(seed: np.ndarray, grow: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(grow, structure=np.ones((3, 3), bool))
    keep = np.zeros(n + 1, bool)
    keep[np.unique(lab[seed & grow])] = True
    keep[0] = False
    return keep[lab]


# ---------------------------------------------------------------------------
# real cosmic-ray events
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """A cosmic-ray event: its excess (ADU, 0 outside it) and the position of its brightest pixel."""

    stamp: np.ndarray
    peak: tuple[int, int]


def find_events(a: np.ndarray, b: np.ndarray, *, max_size: int = 40, max_pixels: int = 300) -> list[Event]:
    """Events of ``a``: 10 sigma above ``b``, grown to 3 sigma (8-connected), cut as the excess over ``b``."""
    sd = np.sqrt(noise_adu(np.minimum(a, b)) ** 2 * 2)
    z = (a - b) / sd
    lab, _ = ndimage.label(z > 3, structure=np.ones((3, 3), bool))
    seeds = np.unique(lab[z > 10])
    objs = ndimage.find_objects(lab)
    ny, nx = a.shape
    events = []
    for i in seeds[seeds > 0]:
        sl = objs[i - 1]
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if h > max_size or w > max_size or sl[1].start < EDGE or sl[1].stop > nx - EDGE:
            continue
        inside = lab[sl] == i
        if inside.sum() > max_pixels:
            continue
        stamp = np.where(inside, np.clip(a[sl] - b[sl], 0, None), 0).astype(np.float32)
        events.append(Event(stamp, tuple(int(v) for v in np.unravel_index(np.argmax(stamp), stamp.shape))))
    return events


def event_library(folder: Path | None = None) -> list[Event]:
    """The events of both 1800 s frames (each against the other), in a fixed order."""
    long = load(LONG, folder)
    return find_events(long[0], long[1]) + find_events(long[1], long[0])


# ---------------------------------------------------------------------------
# injection at known places
# ---------------------------------------------------------------------------


@dataclass
class Injection:
    frames: np.ndarray  # injected frames (ADU)
    deposit: np.ndarray  # what was added (ADU), (N, ny, nx)
    placements: list = field(default_factory=list)  # (row, col, exposures, kind, region)


def _paste(deposit: np.ndarray, k: int, ev: Event, row: int, col: int) -> tuple[slice, slice]:
    """Add an event with its brightest pixel at (row, col); return the rows and columns it covers."""
    h, w = ev.stamp.shape
    r0, c0 = row - ev.peak[0], col - ev.peak[1]
    ny, nx = deposit.shape[1:]
    rs, cs = slice(max(r0, 0), min(r0 + h, ny)), slice(max(c0, 0), min(c0 + w, nx))
    sub = ev.stamp[rs.start - r0:rs.stop - r0, cs.start - c0:cs.stop - c0]
    deposit[k, rs, cs] += sub
    return rs, cs


def inject(frames: np.ndarray, events: list[Event], *, seed: int, region: np.ndarray, avoid: np.ndarray,
           n_same: int = 100, n_different: int = 100, n_single: int = 300, region_fraction: float = 1 / 3,
           ) -> Injection:
    """Inject real events at known places: coincidences in 2 of the frames and single hits.

    ``n_same`` coincidences put the same event in two frames, ``n_different``
    two different events with their brightest pixels on the same pixel;
    ``n_single`` events hit one frame.  ``region_fraction`` of each kind are
    centred inside ``region`` (the trace, the lines), the rest outside it.  Places
    keep 4 px from each other, from ``avoid`` (real hits) and from the border.
    """
    rng = np.random.default_rng(seed)
    n, ny, nx = frames.shape
    deposit = np.zeros(frames.shape, np.float32)
    taken = avoid.any(axis=0) if avoid.ndim == 3 else avoid.copy()
    taken = ndimage.binary_dilation(taken, iterations=4)
    inside = np.argwhere(region & ~taken)
    outside = np.argwhere(~region & ~taken)
    plan = [("same", n_same), ("different", n_different), ("single", n_single)]
    placements = []
    for kind, count in plan:
        n_in = int(round(region_fraction * count))
        for j in range(count):
            pool, where = (inside, "region") if j < n_in else (outside, "elsewhere")
            for _ in range(200):
                row, col = (int(v) for v in pool[rng.integers(len(pool))])
                if EDGE <= row < ny - EDGE and EDGE <= col < nx - EDGE and not taken[row, col]:
                    break
            else:
                continue
            if kind == "single":
                exps = (int(rng.integers(n)),)
                evs = [events[rng.integers(len(events))]]
            else:
                exps = tuple(int(k) for k in np.sort(rng.choice(n, 2, replace=False)))
                first = events[rng.integers(len(events))]
                evs = [first, first if kind == "same" else events[rng.integers(len(events))]]
            for k, ev in zip(exps, evs):
                rs, cs = _paste(deposit, k, ev, row, col)
                taken[max(rs.start - 4, 0):rs.stop + 4, max(cs.start - 4, 0):cs.stop + 4] = True
            placements.append((row, col, exps, kind, where))
    return Injection(frames + deposit, deposit, placements)


def broaden_trace(frame: np.ndarray, centre: np.ndarray, sigma_px: float = 0.8, halfwidth: int = 20,
                  smooth_rows: int = 15) -> np.ndarray:
    """One frame with its trace broadened across the slit (seeing change), its own noise kept.

    The trace model is the frame's running median along the dispersion
    (``smooth_rows``) within ``halfwidth`` px of the trace; the frame gets
    ``G_sigma * model - model`` added (a Gaussian of ``sigma_px`` across the
    slit conserves the flux of every row).
    """
    lo = max(0, int(np.floor(centre.min())) - halfwidth)
    hi = min(frame.shape[1], int(np.ceil(centre.max())) + halfwidth + 1)
    model = ndimage.median_filter(frame[:, lo:hi], size=(smooth_rows, 1), mode="nearest")
    wider = ndimage.gaussian_filter1d(model, sigma_px, axis=1, mode="nearest")
    out = frame.copy()
    out[:, lo:hi] += wider - model
    return out


# ---------------------------------------------------------------------------
# a set: frames, truth, regions
# ---------------------------------------------------------------------------


@dataclass
class RealSet:
    name: str
    frames: np.ndarray  # what both programs get (ADU)
    clean: np.ndarray  # the frames before injection (ADU)
    deposit: np.ndarray  # injected excess (ADU)
    known: np.ndarray  # real hits of the clean frames (N, ny, nx)
    region: np.ndarray  # the trace or the lines
    region_name: str
    centre: np.ndarray | None = None  # trace centre per row (star sets)
    placements: list = field(default_factory=list)
    info: dict = field(default_factory=dict)


def build(name: str, seed: int = 2025, folder: Path | None = None) -> RealSet:
    """Build one of the real sets: ``wht_real``, ``wht_hybrid``, ``wht_seeing``, ``wht_arc``, ``wht_arc_hybrid``."""
    arc = name.startswith("wht_arc")
    clean = load(ARC if arc else TRIPLET, folder)
    median = np.median(clean, axis=0)
    centre = None
    info = {}
    if arc:
        region, region_name = line_mask(median), "arc lines"
    else:
        centre = trace_centre(median)
        region, region_name = trace_mask(centre, median.shape), "trace"
        info["trace_columns"] = [float(centre.min()), float(centre.max())]
    if name == "wht_seeing":
        clean[2] = broaden_trace(clean[2], centre)
        info["seeing"] = "frame 3's trace convolved across the slit with a Gaussian of sigma 0.8 px"
    known = real_hits(clean, ratio_axis=1 if arc else 0)
    if name in ("wht_real", "wht_arc"):
        return RealSet(name, clean, clean, np.zeros_like(clean), known, region, region_name, centre, info=info)
    events = event_library(folder)
    info["library_events"] = len(events)
    if arc:  # not on saturated or nearly saturated line cores
        region = region & (clean.max(axis=0) < 30000)
        inj = inject(clean, events, seed=seed, region=region, avoid=known | (clean > 30000), region_fraction=0.5)
    else:
        core = trace_mask(centre, median.shape, 5)
        inj = inject(clean, events, seed=seed, region=core, avoid=known)
    return RealSet(name, inj.frames, clean, inj.deposit, known, region, region_name, centre, inj.placements, info)


REAL_SETS = ("wht_real", "wht_hybrid", "wht_seeing", "wht_arc", "wht_arc_hybrid")


def write_inputs(rs: RealSet, workdir: Path, common) -> tuple[Path, Path]:
    """The frames as FITS (ADU, float32) and the parameter files of both programs."""
    names = []
    for k, img in enumerate(rs.frames, 1):
        names.append(f"{rs.name}_{k}.fits")
        fits.PrimaryHDU(img.astype(np.float32)).writeto(workdir / names[-1], overwrite=True)
    top = {"images": names, "extnum": 0, "gain": GAIN, "rnoise": RNOISE, "bias": 0.0}
    extra = {"flux_factor": "auto"}
    ours, ref = workdir / "params_ours.yaml", workdir / "params_reference.yaml"
    ours.write_text(yaml.safe_dump({**top, "requirements": common.common_requirements(extra)}, sort_keys=False))
    ref.write_text(yaml.safe_dump({**top, "requirements": common.reference_requirements(extra)}, sort_keys=False))
    return ours, ref


# ---------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------

COMBOS = ("median", "mediancr", "meancrt", "meancr", "meancr2")


def _combined(outdir: Path, name: str) -> np.ndarray | None:
    path = outdir / f"combined_{name}.fits"
    if not path.exists():
        return None
    return fits.getdata(path).astype(np.float64)


def metrics(rs: RealSet, outdir: Path) -> dict:
    """The figures of one run (see the module docstring)."""
    from megara_crdetect.core.combine import combine
    from megara_crdetect.products import read_crmasks

    n, ny, nx = rs.frames.shape
    masks = read_crmasks(outdir / "crmasks.fits", n, (ny, nx))
    med = masks.mediancr
    clean_med = np.median(rs.clean, axis=0)
    sig = noise_adu(clean_med)
    out = {"mediancr_pixels": int(med.sum()), f"mediancr_on_{_key(rs.region_name)}": int((med & rs.region).sum()),
           f"mediancr_off_{_key(rs.region_name)}": int((med & ~rs.region).sum())}
    injected = rs.deposit > sig[None]
    near = ndimage.binary_dilation(injected.any(axis=0) | rs.known.any(axis=0), structure=np.ones((3, 3), bool),
                                   iterations=2)
    far = med & ~near
    out["far_false_flags"] = int(far.sum())
    out["far_false_fraction"] = out["far_false_flags"] / med.size
    out[f"far_false_on_{_key(rs.region_name)}"] = int((far & rs.region).sum())
    out["far_false_groups"] = int(ndimage.label(far, structure=np.ones((3, 3), bool))[1])
    if rs.deposit.any():
        spoiled = (np.median(rs.frames, axis=0) - clean_med) / sig > 5
        out["spoiled_pixels"] = int(spoiled.sum())
        out["recall_spoiled"] = float((med & spoiled).sum() / max(spoiled.sum(), 1))
        # spoiled by cosmic-ray signal: the median's value comes from an exposure with a deposit > 1 sigma.
        # Where the exposures truly differ (an arc line 25 % brighter in one frame), one hit changes which
        # clean exposure the median takes, by more than 5 sigma, without putting any CR signal in it.
        order = np.argsort(rs.frames, axis=0)[n // 2]
        median_hit = np.take_along_axis(rs.deposit, order[None], axis=0)[0] > sig
        cr_spoiled = spoiled & median_hit
        out["cr_spoiled_pixels"] = int(cr_spoiled.sum())
        out["recall_cr_spoiled"] = float((med & cr_spoiled).sum() / max(cr_spoiled.sum(), 1))
        out[f"recall_spoiled_{_key(rs.region_name)}"] = float(
            (med & spoiled & rs.region).sum() / max((spoiled & rs.region).sum(), 1))
        strong = rs.deposit > 5 * sig[None]
        coinc = (rs.deposit > sig[None]).sum(axis=0) >= 2
        for k in range(n):
            sel = strong[k]
            out[f"crmask{k + 1}_coverage"] = float((masks.crmasks[k] & sel).sum() / max(sel.sum(), 1))
            out[f"crmask{k + 1}_missed"] = int((sel & ~masks.crmasks[k]).sum())
            sel_c = sel & coinc
            out[f"crmask{k + 1}_coverage_coinc"] = float((masks.crmasks[k] & sel_c).sum() / max(sel_c.sum(), 1))
        out["crmask_coverage_min"] = min(out[f"crmask{k + 1}_coverage"] for k in range(n))
        out["crmask_coverage_coinc_min"] = min(out[f"crmask{k + 1}_coverage_coinc"] for k in range(n))
    factors = np.asarray(masks.flux_factors, dtype=np.float64)
    out["flux_factors"] = [round(float(f), 4) for f in factors]
    clean_norm = (rs.clean / factors[:, None, None]).astype(np.float32)
    for name in COMBOS:
        value = _combined(outdir, name)
        if value is None:
            continue
        ref = combine(clean_norm, name, rnoise_e=RNOISE * GAIN, mediancr=masks.mediancr, meancrt=masks.meancrt,
                      crmasks=masks.crmasks, meancr_mask=masks.meancr, replacement=masks.repair_min).value
        if rs.deposit.any():
            out[f"residuals_{name}"] = int(((value - ref) / sig > 5).sum())
    if rs.centre is not None:
        out.update(trace_flux(rs, outdir, near))
    return out


def trace_flux(rs: RealSet, outdir: Path, near_cr: np.ndarray) -> dict:
    """combined_mediancr against combined_median along the trace, rows without a known cosmic ray."""
    mcr, med = _combined(outdir, "mediancr"), _combined(outdir, "median")
    if mcr is None or med is None:
        return {}
    window = trace_mask(rs.centre, med.shape)
    rows_cr = (near_cr & window).any(axis=1)
    f_mcr = np.where(window, mcr, 0).sum(axis=1)
    f_med = np.where(window, med, 0).sum(axis=1)
    bright = f_med > 50 * RNOISE * np.sqrt(window.sum(axis=1))  # rows where the trace stands out
    use = ~rows_cr & bright
    rel = (f_mcr[use] - f_med[use]) / f_med[use]
    return {"trace_rows_used": int(use.sum()),
            "trace_flux_reldiff_total": float((f_mcr[use].sum() - f_med[use].sum()) / f_med[use].sum()),
            "trace_flux_reldiff_max_row": float(np.abs(rel).max()) if rel.size else 0.0,
            "trace_rows_off_0.1pct": int((np.abs(rel) > 1e-3).sum())}


def _key(text: str) -> str:
    return text.replace(" ", "_")


def check_bars(name: str, ours: dict, rs: RealSet) -> list[str]:
    """The must-show bars of issue 17 that apply to a real set."""
    rows = []
    key = _key(rs.region_name)
    npx = rs.frames.shape[1] * rs.frames.shape[2]
    if name == "wht_real":
        rows.append(("MEDIANCR pixels on the trace <= 20", ours[f"mediancr_on_{key}"] <= 20,
                     f"{ours[f'mediancr_on_{key}']}"))
        if "trace_flux_reldiff_max_row" in ours:
            rows.append(("flux along the trace of mediancr within 0.1 % of median (every clean row)",
                         ours["trace_flux_reldiff_max_row"] <= 1e-3,
                         f"max row {ours['trace_flux_reldiff_max_row']:.2e}, total "
                         f"{ours['trace_flux_reldiff_total']:.2e}"))
    if name == "wht_arc":
        rows.append(("MEDIANCR on arc lines <= 160", ours[f"mediancr_on_{key}"] <= 160, f"{ours[f'mediancr_on_{key}']}"))
    if name == "wht_arc_hybrid":  # the arc bar: few flags on the lines, no injected coincidence lost
        rows.append(("false MEDIANCR on arc lines <= 160", ours[f"far_false_on_{key}"] <= 160,
                     f"{ours[f'far_false_on_{key}']} (far false flags in all {ours['far_false_flags']})"))
        rows.append(("recall of the median pixels spoiled by injected cosmic rays >= 0.99",
                     ours["recall_cr_spoiled"] >= 0.99,
                     f"{ours['recall_cr_spoiled']:.4f} of {ours['cr_spoiled_pixels']} (of every spoiled pixel, "
                     f"arc-line changes included: {ours['recall_spoiled']:.4f})"))
    elif "recall_spoiled" in ours:
        rows.append(("recall of spoiled median pixels >= 0.99", ours["recall_spoiled"] >= 0.99,
                     f"{ours['recall_spoiled']:.4f} of {ours['spoiled_pixels']}"))
        rows.append(("far false flags <= 1e-5 of the pixels", ours["far_false_flags"] <= 1e-5 * npx,
                     f"{ours['far_false_flags']} px ({ours['far_false_groups']} groups, "
                     f"{ours[f'far_false_on_{key}']} on the {rs.region_name}), bar {1e-5 * npx:.0f}"))
    if "recall_spoiled" in ours:
        rows.append(("per-exposure masks hold >= 99 % of the injected pixels > 5 sigma",
                     ours["crmask_coverage_min"] >= 0.99,
                     f"min {ours['crmask_coverage_min']:.4f} (at coincidences {ours['crmask_coverage_coinc_min']:.4f})"))
    return [f"  [{'PASS' if ok else 'FAIL'}] {text}: {value}" for text, ok, value in rows]
