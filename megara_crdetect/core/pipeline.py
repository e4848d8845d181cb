"""Cosmic-ray detection on a stack of exposures: the pure core of the program.

:func:`compute_crmasks` takes the exposures (electrons) and the validated
:class:`~megara_crdetect.config.CRMaskConfig` and returns every mask, the
flux factors, offsets, diagrams and boundaries as a :class:`CRMaskResult`; no
file is read or written and nothing is drawn.  :func:`apply_crmasks` builds
the repaired combinations from a result (or from masks read back from a
``crmasks.fits``).

Order of operations
-------------------
1. Flux factors (none, given, or estimated) and the cleanable map (regions to
   skip, pixels to flag or ignore).
2. Stack statistics min2d, max2d, median2d, mean2d.
3. L.A.Cosmic on median2d (and, for ``lacosmic`` or ``la_everywhere``, on
   mean2d, every exposure and meancr too, in parallel).  A detection is
   *confirmed* only if the exposures disagree there: the brightest pixel of
   its group has ``(target - min2d) / u`` above ``la_confirm_sigma`` and above
   what the simulations put in its column 1/10 000 of the time.  Hot pixels and other
   sharp features identical in every exposure are therefore not reported
   (the reference flags them).  A detector alone on exposures declared
   shifted is confirmed by the exposures less the common scene shifted to
   each of them (:func:`_aux_alone_stage`).
4. MMcosmic: simulated exposures from the median (noise model, flux factors
   -- drawn raw and normalised like the data when divided out of the
   originals --, offsets), one normalised diagram and one boundary per target (median,
   mean, each exposure), flags above the boundary.  With offsets the
   simulated exposures are the common scene (median of the exposures
   shifted back with cubic splines, cleaned where they disagree) shifted to
   each offset, and each real exposure is also compared with its own
   expected image (residual above ``MODEL_SIGMA``), away from detector
   features that do not move.
5. Per-exposure detections (MM on exposure k - min2d, and LA there for
   ``la_everywhere``).  MEDIANCR = confirmed LA flags | MM flags | pairs |
   pixels_to_be_flagged_as_cr, dilated, where a *pair* is a pixel in some
   exposure's detections whose median2d - min2d exceeds ``mm_pair_sigma`` (the
   second hit of a coincidence; see :func:`_pairs`) or, for aligned
   exposures, a pixel in some CRMASKk whose median2d stands above the clean
   level of its neighbours
   (:func:`~megara_crdetect.core.locallevel.raised_medians`), less isolated MM or
   pair pixels where min2d dipped rather than median2d rose
   (:func:`~megara_crdetect.core.locallevel.noise_dips`); an optional review
   callback may remove cosmic-ray groups.  With flux factors divided out of
   the originals, a detection needs raw exposures that disagree, but a pair
   and the dilation do not.
6. CRMASKk = the dilated detections on exposure k; MEANCRT = dilated detections
   on mean2d and on every exposure, plus MEDIANCR (so CRMASKk stays inside
   MEANCRT without the guide's restriction hiding faint single hits);
   MEANCR = undilated detections on the meancr combination (used by
   meancr2).  Problematic pixels: masked in every exposure.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..config import CRMaskConfig, check_against_data
from . import boundary as bd
from . import faintgroups as fg
from . import mmdiagram as mm
from . import shiftmodel as sm
from .combine import combine_in_bands, problematic_pixels
from .fluxfactor import TooFewSignificantPixels, fit_flux_factors
from .locallevel import neighbour_index, noise_dips, raised_medians, spoiled_minima, typical_spread
from .masks import cleanable_map, coordinates, dilate, keep_groups_with, pixel_groups
from .noise import sigma
from .offsets import measure_offsets
from .stack import AGREEMENT_SIGMA, HOT_PIXEL_SIGMA, StackStats, median_of_stack, spread_sigmas, stack_statistics
from .variation import VariationFit, fit_variations

__all__ = ["Detector", "CRMaskResult", "compute_crmasks", "apply_crmasks", "COMBINATIONS", "CODES"]

_log = logging.getLogger(__name__)

COMBINATIONS = ("mean", "median", "min", "mediancr", "meancrt", "meancr", "meancr2")
#: Meaning of the values of :attr:`CRMaskResult.mediancr_codes`.
CODES = {0: "none", 1: "dilation", 2: "MM", 3: "LA", 4: "MM+LA", 5: "user", 6: "pair"}
Progress = Callable[[str, int, int], None]
#: With ``apply_flux_factor_to: original``, pixels whose raw exposures span less than this many noise
#: sigmas cannot be flagged (a feature identical in every raw exposure is not a cosmic ray).
RAW_AGREEMENT_SIGMA = AGREEMENT_SIGMA
#: An L.A.Cosmic detection is confirmed where its disagreement exceeds what this fraction of the simulated
#: pixels of its column reach (and ``la_confirm_sigma``).
CONFIRM_FRACTION = 1e-4
#: A pair (second hit of a coincidence) also needs max2d - median2d above this many noise sigmas ...
PAIR_TOP_SIGMA = 4.0
#: ... unless median2d - min2d exceeds this many (noise alone: 1.3e-5 of the pixels, measured on
#: the simulated sets; together with an exposure's detection, well below 1e-6).
PAIR_SURE_SIGMA = 5.0
#: A row or column with more than this fraction (and BAD_LINE_MIN) of its pixels disagreeing beyond
#: 10 noise sigmas is a defective detector line, not cosmic rays.
BAD_LINE_FRACTION = 0.2
BAD_LINE_MIN = 50
#: chi^2 per degree of freedom of a neighbour that rules out a hot pixel (5 sigma off f_k * S + H)
STATIC_BUSY_CHI2 = 25.0
#: Issue 17: at a MEDIANCR pixel (the median is spoiled, so at least ``mm_cr_coincidences`` exposures are
#: hit) an exposure standing this many noise sigmas above the clean reference (min2d; with offsets its own
#: model, in model sigmas) is one of the hit exposures, and its CRMASKk says so.
HIT_SIGMA = 3.0
#: A pixel whose min2d stands above the clean level of its neighbours is hit in every exposure when its
#: exposures also differ (max2d - min2d) by this many times the level that confirms a detection: a sharp
#: feature that every exposure shares (a hot pixel) gives the same value in each.  See
#: :meth:`_Detections.hit_everywhere`.
EVERY_HIT_FACTOR = 2.0
#: Any pixel of a group of the auxiliary detector whose disagreement exceeds this many times the
#: confirmation level confirms the group (see :func:`_confirm`).
SURE_FACTOR = 2.0
#: Measured offsets (``mm_crosscorr_region``) all within this many pixels of zero are zero within their
#: error (the fit's accuracy: 0.01 px on simulated sets; aligned sets measure <= 0.002 px), and the
#: exposures are treated as aligned: shifted models of aligned exposures only add interpolation noise.
OFFSET_ZERO_PX = 0.01


@dataclass(frozen=True)
class Detector:
    """Detector noise model: gain (e-/ADU), readout noise and bias (ADU)."""

    gain: float = 1.0
    rnoise: float = 3.4
    bias: float = 0.0

    @property
    def rnoise_e(self) -> float:
        """Readout noise in electrons."""
        return self.rnoise * self.gain

    def level_e(self, adu: float) -> float:
        """A raw level in ADU (e.g. saturation) in bias-subtracted electrons."""
        return (adu - self.bias) * self.gain


@dataclass(kw_only=True)
class CRMaskResult:
    """Everything :func:`compute_crmasks` found.

    Masks are boolean ``(ny, nx)`` arrays (``crmasks`` is ``(N, ny, nx)``).
    ``mediancr_codes`` tells how each MEDIANCR pixel was found (see
    :data:`CODES`).  ``noise`` is the noise scale ``u`` of every pixel that
    normalises the MM diagrams (:func:`~megara_crdetect.core.mmdiagram.noise_scale`).
    ``boundaries`` and ``expected_false`` are keyed by diagram name
    (``median``, ``mean``, ``exposure1``...).  ``bad_rows`` and
    ``bad_columns`` (0-based) are detector lines left out of the detection
    (see :func:`_bad_lines`).  ``repair_min`` is
    the value that repairs MEDIANCR instead of min2d: the minimum of the
    exposures with their CRMASKk pixels replaced by their own models; for
    aligned exposures with ``mm_variation_model``, the minimum of the
    exposures brought onto one scene; for aligned exposures, also where a
    MEDIANCR pixel is hit in every exposure (min2d is spoiled there), the
    clean level of its neighbours (see :func:`_repair_every_hit`); None:
    min2d.  ``variation`` is that model's fit
    (:func:`~megara_crdetect.core.variation.fit_variations`: ``used`` and
    ``chi2``; its ``model`` is released once subtracted, to save memory).
    """

    stats: StackStats
    mediancr: np.ndarray
    mediancr_codes: np.ndarray
    meancrt: np.ndarray
    crmasks: np.ndarray
    meancr: np.ndarray
    problematic: np.ndarray
    flux_factors: np.ndarray
    offsets: np.ndarray
    lamedian: np.ndarray | None = None
    boundaries: dict = field(default_factory=dict)
    expected_false: dict = field(default_factory=dict)
    diagrams: mm.SimulatedDiagrams | None = None
    flux_details: object | None = None
    counts: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    noise: np.ndarray | None = None
    bad_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    bad_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    repair_min: np.ndarray | None = None
    variation: VariationFit | None = None


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _fits_to_numpy(params: CRMaskConfig, shape: tuple[int, int]) -> np.ndarray:
    """The cleanable map from the FITS-convention parameters."""
    return cleanable_map(
        shape,
        skip_regions=[(y0 - 1, y1, x0 - 1, x1) for x0, x1, y0, y1 in params.regions_to_be_skipped],
        flag_pixels=[(y - 1, x - 1) for x, y in params.pixels_to_be_flagged_as_cr],
        ignore_pixels=[(y - 1, x - 1) for x, y in params.pixels_to_be_ignored_as_cr],
        replace_pixels=[(y - 1, x - 1, yw, xw) for x, y, xw, yw in params.pixels_to_be_replaced_by_local_median],
    )


def _region_mask(regions, shape: tuple[int, int]) -> np.ndarray | None:
    if not regions:
        return None
    mask = np.zeros(shape, dtype=bool)
    for x0, x1, y0, y1 in regions:
        mask[y0 - 1:y1, x0 - 1:x1] = True
    return mask


def _flux_factors(stack: np.ndarray, params: CRMaskConfig, rnoise_e: float):
    n = stack.shape[0]
    if params.flux_factor is None:
        return np.ones(n), None
    if params.flux_factor == "auto":
        try:
            details = fit_flux_factors(stack, median_of_stack(stack),
                                       region_mask=_region_mask(params.flux_factor_regions, stack.shape[1:]),
                                       rnoise_e=rnoise_e)
        except TooFewSignificantPixels as exc:  # faint frames: nothing to measure the ratios on
            _log.warning("flux_factor: auto: %s; the exposures are taken as equivalent (flux factors 1)", exc)
            return np.ones(n), None
        return np.asarray(details.factors, dtype=float), details
    factors = np.asarray(params.flux_factor, dtype=float)
    return (np.repeat(factors, n) if factors.size == 1 else factors), None


def _targets(stats: StackStats, stack: np.ndarray) -> dict[str, np.ndarray]:
    out = {"median": stats.median2d, "mean": stats.mean2d}
    out.update({f"exposure{k}": stack[k - 1] for k in range(1, stack.shape[0] + 1)})
    return out


def _normalised(target: np.ndarray, stats: StackStats, noise: np.ndarray) -> np.ndarray:
    t = target - stats.min2d
    t /= noise
    return t


# ---------------------------------------------------------------------------
# L.A.Cosmic and MM detections
# ---------------------------------------------------------------------------


def _la_detections(targets: dict[str, np.ndarray], params: CRMaskConfig, detector: Detector,
                   workers: int | None, candidates: Callable[[np.ndarray], np.ndarray] | None = None
                   ) -> tuple[dict, np.ndarray | None]:
    """Raw flags of the auxiliary detector (L.A.Cosmic, PyCosmic, deepCR, Cosmic-CoNN; #16) on every
    target and its cleaned median (None for Cosmic-CoNN).

    ``candidates(target)``: the pixels that may seed a confirmed group (see
    :func:`_la_candidates`).  For L.A.Cosmic with single thresholds the flags
    are then the groups that contain one, found on windows around them or on
    tiles (:func:`~megara_crdetect.core.windows.lacosmic_where_needed`,
    identical to one whole-frame run); the other detectors run on the whole image.
    """
    from .auxdetect import lacosmic_arguments, make_detector, run_many

    names = list(targets)
    satlevel_e = detector.level_e(params.la_satlevel)
    if params.aux_method == "lacosmic" and not _two_pass(params):
        done = dict(_lacosmic_targets(targets, candidates, workers,
                                      lacosmic_arguments(params, detector.rnoise_e, satlevel_e)))
        results = [done[n] for n in names]
    else:
        aux = make_detector(params, rnoise_e=detector.rnoise_e, satlevel_e=satlevel_e)
        results = run_many(aux, [targets[n] for n in names], workers=workers)
    flags = {n: r[0] for n, r in zip(names, results)}
    return flags, results[names.index("median")][1] if "median" in names else None


def _lacosmic_targets(targets: dict[str, np.ndarray], candidates, workers: int | None, kwargs: dict):
    """``(name, L.A.Cosmic result)`` of every target: several at once, one thread each, then the rest.

    With ``w`` workers, the first targets run ``w`` at a time in one thread
    each (fewer, larger tasks than one target's bands and windows); the
    remainder (fewer than ``w``: the median last, the cheapest with its few
    cosmic rays) runs one target at a time on every worker, so that no
    worker waits for the last target of the others.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .windows import lacosmic_where_needed

    threads = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    names = sorted(targets, key=lambda n: n == "median")  # the median last
    together = len(names) - len(names) % threads if threads > 1 else 0

    def one(name: str, n_workers: int):
        return name, lacosmic_where_needed(targets[name], candidates and candidates(targets[name]),
                                           workers=n_workers, **kwargs)

    if together:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield from pool.map(one, names[:together], [1] * together)
    for name in names[together:]:
        yield one(name, threads)


def _la_candidates(params: CRMaskConfig, stats: StackStats, noise: np.ndarray,
                   median_spread: np.ndarray | None = None):
    """Pixels that may seed a confirmed L.A.Cosmic group, or None when every flag counts.

    :func:`_confirm` keeps a group only if its brightest pixel has ``(target - min2d) / u``
    above a level that is never below ``la_confirm_sigma``, with ``u`` never below
    ``noise`` (the inflated scale of the other diagrams is larger); groups without
    such a pixel are dropped whatever L.A.Cosmic found around them.  The cleaned median
    (LAMEDIAN) is then exact only on the kept groups, so ``use_lamedian`` needs the whole frame.
    ``median_spread`` (an auxiliary detector alone on shifted exposures, see
    :func:`_aux_alone_stage`) confirms detections on the median instead: where it
    exceeds the level, every target may seed a group too.
    """
    if params.la_confirm_sigma <= 0 or params.use_lamedian:
        return None
    level = params.la_confirm_sigma
    if median_spread is None:
        return lambda target: _normalised(target, stats, noise) > level
    shifted = median_spread / noise > level
    return lambda target: (_normalised(target, stats, noise) > level) | shifted


def _two_pass(params: CRMaskConfig) -> bool:
    """Whether an L.A.Cosmic threshold is a (peak, tail) pair (the windows' reach is proven for one pass)."""
    return any(isinstance(v, tuple) for v in (params.la_sigclip, params.la_sigfrac, params.la_objlim))


#: Of a confirmed L.A.Cosmic group, pixels whose exposures disagree by less than this fraction of the
#: confirmation level (and the pixels beyond them) are not confirmed with it.
GROW_FRACTION = 0.5


def _confirm(flags: np.ndarray, t: np.ndarray, level, target: np.ndarray,
             hit_everywhere: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """Keep the groups of LA flags where the exposures disagree at the group's brightest pixel.

    ``level`` is a number or a per-pixel map, read at the flagged pixels and their neighbours only
    (see :meth:`_Detections.confirm_level`).
    Testing only the brightest pixel of ``target`` in each group (the core of
    a cosmic ray, or the hot pixel itself) keeps one noisy neighbour that L.A.Cosmic
    added to a hot pixel from confirming it.

    Any pixel of the group that disagrees beyond ``SURE_FACTOR`` times ``level``
    confirms it as well: no noisy neighbour of a hot pixel goes that far, but
    a cosmic ray that the detector's group joins to a brighter real feature
    next to it (a fibre peak, a sky line) does.

    Where that brightest pixel is hit in every exposure
    (``hit_everywhere(pixels) -> pixels``, see :meth:`_Detections.hit_everywhere`),
    min2d is hit as well and ``target - min2d`` is only the difference of two
    deposits, which may be small: the group is then kept when, besides, one of
    the eight neighbours of that pixel disagrees beyond ``level`` (its median
    is spoiled: two of its exposures are hit).  A hot pixel passes
    ``hit_everywhere`` only with a cosmic ray in some exposure, and its
    neighbours then disagree beyond ``level`` only where a cosmic ray hits
    two exposures of them: a spoiled median that is to be flagged anyway.

    Of a confirmed group, only the pixels joined to its seeds through pixels
    where the exposures disagree by at least ``GROW_FRACTION`` of ``level``
    are kept (the dilation adds the rim later): L.A.Cosmic joins a cosmic ray
    on an arc line or a trace with the whole sharp feature, which one hit must
    not confirm along all its length (2 320 pixels of one arc line in
    ``wht_arc_hybrid``).
    """
    if not flags.any() or (np.isscalar(level) and level <= 0):
        return flags
    # everything is decided at the flagged pixels (few): gathered there, not computed over the frame
    ys, xs, group, n = pixel_groups(flags)
    value, tf = target[ys, xs], t[ys, xs]
    lev = level if np.isscalar(level) else level[ys, xs]
    peak = np.full(n + 1, -np.inf, dtype=target.dtype)
    np.maximum.at(peak, group, value)  # each group's brightest value
    brightest = value >= peak[group]
    above = tf > lev
    seed = (above & brightest) | (tf > SURE_FACTOR * lev)
    if hit_everywhere is not None:
        seed |= _hit_cores(_pixels(flags.shape, ys, xs, brightest & ~above), t, level, hit_everywhere)[ys, xs]
    if not seed.any():
        return np.zeros_like(flags)
    kept = np.zeros(n + 1, dtype=bool)
    kept[group[seed]] = True  # the groups with a seed
    core = kept[group] & ((tf > np.float32(GROW_FRACTION) * lev) | seed)
    return keep_groups_with(_pixels(flags.shape, ys, xs, core), _pixels(flags.shape, ys, xs, seed))


def _pixels(shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, which: np.ndarray) -> np.ndarray:
    """A map of ``shape`` True at the pixels ``(ys, xs)[which]``."""
    out = np.zeros(shape, dtype=bool)
    out[ys[which], xs[which]] = True
    return out


def _hit_cores(cores: np.ndarray, t: np.ndarray, level, hit_everywhere) -> np.ndarray:
    """Pixels of ``cores`` hit in every exposure with a neighbour that disagrees beyond ``level``."""
    cores = hit_everywhere(cores)
    ys, xs = coordinates(cores)
    if ys.size == 0:
        return cores
    yy, xx = neighbour_index(ys, xs, cores.shape)
    lev = level if np.isscalar(level) else level[yy, xx]
    ok = (t[yy, xx] > lev).any(axis=1)
    cores[ys[~ok], xs[~ok]] = False
    return cores


def _expected_images(stats: StackStats, stack: np.ndarray, params: CRMaskConfig,
                     la_median: np.ndarray | None, factors: np.ndarray, offsets: np.ndarray,
                     noise: np.ndarray, static: np.ndarray | None = None) -> np.ndarray:
    """Expected signal of each simulated exposure: the common scene, shifted and scaled.

    For aligned exposures the scene is median2d.  With offsets it is the
    median of the exposures shifted back onto a common grid, and each expected
    image is that scene shifted to the exposure's offset, both with cubic
    splines: median2d of unaligned exposures mixes their offsets, and linear
    interpolation blurs line flanks; on simulated sets with half-pixel offsets
    the model error exceeds 1 sigma at 0.2 % of the pixels instead of 10 %.
    Only pixels confirmed by L.A.Cosmic are replaced by min2d (aligned
    exposures): a threshold on ``median2d - min2d`` would also "clean" every
    bright pixel whose exposures legitimately differ (flux factors applied
    to the simulations, offsets) and the simulations would then
    underestimate exactly the spread they are meant to reproduce.  Shifted
    back onto a common grid, the exposures no longer differ that way, and
    there the threshold is used as well (see :func:`~megara_crdetect.core.shiftmodel.scene`).
    ``static``: detector features left out of the scene (shifted exposures).
    """
    phi = _model_factors(factors, params)
    return sm.shifted_models(sm.scene(stats, stack, la_median, offsets, noise, phi, static), offsets, phi)


def _model_factors(factors: np.ndarray, params: CRMaskConfig) -> np.ndarray:
    """Factors applied to the modelled exposures: the flux factors only when applied to the simulations."""
    return factors if params.apply_flux_factor_to == "simulated" else np.ones(len(factors))


def _static_offsets(raw: np.ndarray, factors: np.ndarray, rnoise_e: float) -> np.ndarray:
    """Hot pixels under a scaled scene: sharp in every raw exposure and fitting ``f_k * S + H``.

    With flux factors a hot pixel on a bright scene no longer agrees in the
    raw exposures (the scene under it scales) nor in the normalised ones (its
    excess does not).  It is sharp in the raw min2d (``HOT_PIXEL_SIGMA``
    noise sigmas above the median of its 8 neighbours; a cosmic ray that
    misses one exposure is not) and its raw values fit a scaled scene plus a
    static offset (least squares per pixel, chi per degree of freedom < 4);
    a cosmic ray leaves a large residual, on its core (where the deposits of a
    cosmic ray hitting every exposure may be about equal) or on a neighbour
    (``STATIC_BUSY_CHI2``; the core is then not static).  Returned dilated
    by one pixel.
    """
    f = factors.astype(np.float32)
    fc = f - f.mean()
    xbar = raw.mean(axis=0, dtype=np.float32)
    slope = np.zeros_like(xbar)
    for k in range(raw.shape[0]):
        slope += fc[k] * (raw[k] - xbar)
    slope /= np.float32(np.sum(fc * fc))
    offset = xbar - slope * f.mean()
    chi2 = np.zeros_like(xbar)
    for k in range(raw.shape[0]):
        res = raw[k] - slope * f[k] - offset
        chi2 += res * res
    noise = sigma(xbar, rnoise_e)
    chi2 /= np.float32(max(raw.shape[0] - 2, 1)) * noise * noise
    low = raw.min(axis=0)
    sharp = (low - mm.local_reference(low)) > HOT_PIXEL_SIGMA * noise
    # the scene around a hot pixel scales too; a neighbour far off the model is a cosmic ray that hit
    # this place in every exposure, with about equal deposits at its core
    busy = dilate(chi2 > STATIC_BUSY_CHI2, 1)
    return dilate(sharp & (chi2 < 16) & ~busy, 1)


def _bad_lines(stats: StackStats, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (0-based) whose exposures disagree wildly along most of their length.

    A pixel disagrees wildly when ``max2d - min2d`` exceeds 10 noise sigmas
    (inflated by the expected spread of unequal exposures).
    Cosmic rays do that on a few per cent of the pixels of a line at most; a
    defective column (a bad edge column, a charge trap that changes from
    frame to frame) on more than ``BAD_LINE_FRACTION`` of them (and on at
    least ``BAD_LINE_MIN`` pixels).  Flagging such a line would report it as
    thousands of cosmic rays and "repair" it with another exposure's wrong
    values.
    """
    wild = spread_sigmas(stats, noise) > 10
    found = []
    for axis in (1, 0):  # rows (count along x), then columns (count along y)
        count = wild.sum(axis=axis)
        length = wild.shape[axis]
        found.append(np.flatnonzero(count > max(BAD_LINE_FRACTION * length, BAD_LINE_MIN)))
    return found[0], found[1]


def _fits_list(index: np.ndarray, limit: int = 20) -> str:
    """1-based numbers of 0-based indices, shortened after ``limit``."""
    items = [str(int(i) + 1) for i in index[:limit]]
    return "[" + ", ".join(items) + (", ..." if len(index) > limit else "") + "]"


def _unequal(factors: np.ndarray, offsets: np.ndarray, params: CRMaskConfig) -> bool:
    """Whether the simulated exposures differ (offsets, or flux factors applied to them)."""
    scaled = params.apply_flux_factor_to == "simulated" and np.any(factors != 1)
    return bool(np.any(offsets != 0) or scaled)


def _offsets(median2d: np.ndarray, stack: np.ndarray, params: CRMaskConfig, rnoise_e: float) -> np.ndarray:
    n = stack.shape[0]
    if params.mm_xy_offsets is not None:
        return np.asarray(params.mm_xy_offsets, dtype=float)
    if params.mm_crosscorr_region is None:
        return np.zeros((n, 2))
    x0, x1, y0, y1 = params.mm_crosscorr_region
    region = (slice(y0 - 1, y1), slice(x0 - 1, x1))
    measured = np.asarray(measure_offsets(median2d, stack, region=region, rnoise_e=rnoise_e), dtype=float)
    if np.all(np.abs(measured) <= OFFSET_ZERO_PX):
        _log.info("measured offsets (largest %.4f px) are zero within their error (%.2f px): the exposures are "
                  "treated as aligned", float(np.abs(measured).max()), OFFSET_ZERO_PX)
        return np.zeros((n, 2))
    return measured


def _mm_boundaries(sims: mm.SimulatedDiagrams, params: CRMaskConfig, rnoise_e: float,
                   gain: float = 1.0) -> tuple[dict, dict]:
    boundaries, expected = {}, {}
    for name, hist in sims.hist.items():
        if name == "median" and params.mm_boundary_fit == "piecewise":
            b = bd.piecewise_boundary(params.mm_fixed_points_in_boundary, rnoise_e=rnoise_e)
        else:
            hist = mm.trim_histogram(hist, sims.grid, min_neighbors=params.mm_hist2d_min_neighbors,
                                     y_max_e=params.mm_ydiag_max * gain)  # #16
            u, t = mm.boundary_points(hist, sims.grid)
            fixed = params.mm_fixed_points_in_boundary if name == "median" else ()
            b = bd.fit_spline_boundary(u, t, rnoise_e=rnoise_e, knots=params.mm_knots_splfit,
                                       niter=params.mm_niter_boundary_extension,
                                       weight=params.mm_weight_boundary_extension, fixed_points=fixed,
                                       u_edges=sims.grid.u_edges)
        boundaries[name] = b
        expected[name] = bd.expected_false_positives(sims.check[name], sims.grid, b, sims.n_check)
    return boundaries, expected


#: Pixels per block of rows of the element-wise MM test (its temporaries stay in the cache).
MM_FLAGS_CHUNK = 1 << 18


def _mm_flags(target: np.ndarray, stats: StackStats, noise: np.ndarray, b: bd.Boundary, *, threshold_e: float,
              max2d_e: float) -> np.ndarray:
    """Pixels above the boundary (and the thresholds), a block of rows at a time (element-wise)."""
    flags = np.empty(target.shape, dtype=bool)
    step = max(1, MM_FLAGS_CHUNK // max(target.shape[-1], 1))
    for a in range(0, target.shape[0], step):
        rows = slice(a, a + step)
        y = target[rows] - stats.min2d[rows]
        part = flags[rows]
        np.greater(y, b.y_at(noise[rows]), out=part)
        if threshold_e > 0:
            part &= y > threshold_e
        part &= stats.max2d[rows] > max2d_e
    return flags


# ---------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ColumnLevels:
    """A per-pixel map ``levels[column of scale]``, evaluated only at the pixels asked for (``map[ys, xs]``):
    the detections that read it are few."""

    levels: np.ndarray  # one value per column of the grid
    grid: mm.DiagramGrid
    scale: np.ndarray  # (ny, nx) noise scale of the pixels

    def __getitem__(self, index) -> np.ndarray:
        return self.levels[self.grid.column_index(self.scale[index])]


class _Detections:
    """Per-target detections (LA confirmed, MM) shared by the mask builders."""

    def __init__(self, stats, noise, params, detector, la_flags, boundaries, cleanable, sims=None,
                 inflated=None, *, model_flags=None, static=None, dilatable=None, untrusted_model=None,
                 untrusted_moved=None, static_px=None, median_spread=None):
        self.stats, self.noise, self.params, self.detector = stats, noise, params, detector
        self.la_flags, self.boundaries, self.cleanable, self.sims = la_flags, boundaries, cleanable, sims
        self.dilatable = cleanable if dilatable is None else dilatable  # where dilation may reach
        self.inflated = noise if inflated is None else inflated
        self.model_flags = model_flags  # (N, ny, nx) residual detections of shifted exposures
        self.static = static  # hot pixels under a scene scaled by flux factors: never MEDIANCR
        self.untrusted_model = untrusted_model  # shifted exposures: where the shifted model is not trusted
        self.untrusted_moved = untrusted_moved  # ... and where the moved-median rule is not trusted either
        self.static_px = static_px  # shifted exposures: hot pixels, left out of the scene
        self.median_spread = median_spread  # auxiliary detector alone, shifted: see _aux_alone_stage
        self.moved = None  # shifted exposures: where the masked hits move the median (_moved_medians)
        self.confirmed = None  # shifted exposures: residual detections against the other exposures too
        self.moved_border = None  # shifted exposures: moved medians on the border frame
        self.above_model = None  # shifted exposures: (N, ny, nx) HIT_SIGMA model sigmas above their model
        self.threshold_e = params.threshold_e(detector.gain, detector.rnoise_e)
        self.max2d_e = params.mm_minimum_max2d_rnoise * detector.rnoise_e

    def scale(self, diagram: str) -> np.ndarray:
        """Noise scale of a diagram: plain for the median, inflated by the spread for the others."""
        return self.noise if diagram == "median" else self.inflated

    def confirm_level(self, diagram: str):
        """Disagreement needed to confirm an L.A.Cosmic detection on a diagram.

        ``la_confirm_sigma``, raised where the simulations (noise, flux factors,
        offsets) put more than ``CONFIRM_FRACTION`` of the pixels of a column above it: a
        sharp feature whose exposures differ only as much as the simulated ones
        is not a cosmic ray.
        """
        base = self.params.la_confirm_sigma
        sims = self.sims
        if sims is None or diagram not in sims.hist or base <= 0:
            return base
        q = mm.column_quantile(sims.hist[diagram], sims.grid, CONFIRM_FRACTION).astype(np.float32)
        return _ColumnLevels(np.maximum(np.float32(base), q), sims.grid, self.scale(diagram))

    def hit_everywhere(self, where: np.ndarray) -> np.ndarray:
        """Pixels of ``where`` hit in every exposure: min2d is spoiled as well.

        Their min2d stands ``RAISED_SIGMA`` noise sigmas above the clean level
        of its neighbours (:func:`~megara_crdetect.core.locallevel.spoiled_minima`)
        and the exposures differ (max2d - min2d) by ``EVERY_HIT_FACTOR`` times
        the level that confirms a detection on the median: far beyond the
        noise, which a sharp feature that every exposure shares (a hot
        pixel) does not do.
        """
        spoiled, _ = spoiled_minima(where, self.stats, self.noise)
        ys, xs = coordinates(spoiled)
        level = self.confirm_level("median")
        level = level if np.isscalar(level) else level[ys, xs]
        spread = (self.stats.max2d[ys, xs] - self.stats.min2d[ys, xs]) / self.noise[ys, xs]
        keep = spread > EVERY_HIT_FACTOR * level
        spoiled[ys[~keep], xs[~keep]] = False
        return spoiled

    def of(self, name: str, target: np.ndarray, boundary_name: str | None = None) -> tuple:
        """(LA confirmed flags or None, MM flags or None) of a target, within the cleanable map."""
        la = mmf = None
        diagram = boundary_name or name
        if name in self.la_flags:
            t = _normalised(target, self.stats, self.scale(diagram))
            if name == "median" and self.median_spread is not None:  # shifted: the exposures less their models
                t = self.median_spread / self.scale(diagram)
            level = self.confirm_level(diagram)
            # pixels that cannot be flagged (skipped regions, bad lines) cannot confirm a group either
            la = _confirm(self.la_flags[name] & self.cleanable, t, level, target, self.hit_everywhere)
        b = self.boundaries.get(diagram)
        if b is not None:
            mmf = _mm_flags(target, self.stats, self.scale(diagram), b, threshold_e=self.threshold_e,
                            max2d_e=self.max2d_e)
            mmf = dilate(mmf, self.params.mm_dilation) & self.cleanable  # mm_dilation (#16)
        return la, mmf

    def union(self, name: str, target: np.ndarray, boundary_name: str | None = None) -> np.ndarray:
        la, mmf = self.of(name, target, boundary_name)
        out = np.zeros(target.shape, dtype=bool)
        for f in (la, mmf):
            if f is not None:
                out |= f
        return out


def _pairs(det: _Detections, params: CRMaskConfig, exposure_flags: np.ndarray | None,
           exposure_masks: np.ndarray | None) -> np.ndarray | None:
    """Second hits of coincidences: a cosmic ray of one exposure where the median is raised too.

    Where exposure k is known to be hit, median2d - min2d is the difference of
    two other exposures; above ``mm_pair_sigma`` noise sigmas (inflated by the
    expected spread for unequal exposures) another exposure is hit as well
    and the median is spoiled, even if the pixel stays below the boundary
    drawn for pixels without that prior knowledge.  One of these must hold too:

    * the pixel lies in the detections of two exposures, dilated by
      ``dilation`` (i.e. in two CRMASKk): both hits are seen;
    * it is detected in exposure k and the highest exposure exceeds median2d
      by ``PAIR_TOP_SIGMA``: otherwise the "detection" of exposure k may
      have been made by a low min2d (a noise dip), not by a cosmic ray;
    * it lies in one CRMASKk and median2d - min2d exceeds
      ``PAIR_SURE_SIGMA``, beyond what a noise dip does next to a cosmic ray.

    The first and third are not used for shifted exposures (next to line
    flanks the masks of two exposures overlap without any cosmic ray), which
    pass no ``exposure_masks`` (the CRMASKk, see :func:`_exposure_masks`);
    nor is the raised-median test, which adds, for aligned exposures, the
    pixels of CRMASKk whose median2d stands above the clean level of their
    neighbours (:func:`~megara_crdetect.core.locallevel.raised_medians`).

    With offsets, a residual detection of exposure k (its own model) is a
    pair wherever the exposures' expected spread exceeds ``mm_pair_sigma``,
    and so is every pixel where the masked hits move the median
    (``det.moved``, see :func:`~megara_crdetect.core.shiftmodel.moved_medians`); nothing is a pair where the
    shifted model is not trusted (``det.untrusted_model``), except a moved
    median away from sharp static features and the border (``det.untrusted_moved``)
    and a moved median on the border judged without extrapolation (``det.moved_border``).

    With flux factors divided out of the originals a pair needs no raw
    disagreement of its own (unlike a detection): the evidence above already
    says that an exposure is hit there.
    """
    if exposure_flags is None or params.mm_pair_sigma <= 0 or not params.uses_mm:
        return None
    flagged = exposure_flags.any(axis=0)
    masked = None if exposure_masks is None else exposure_masks.any(axis=0)
    pairs = _pair_evidence(det, params, exposure_masks, flagged, masked)
    if masked is not None:  # aligned exposures: the neighbours' min2d gives the clean level
        offset = typical_spread(det.stats, det.noise)
        pairs |= raised_medians(masked, det.stats, det.noise, offset)
    if det.model_flags is not None:
        pairs |= _spread_pairs(det, params)
    if det.untrusted_model is not None:
        pairs &= ~det.untrusted_model
    if det.moved is not None:  # shifted exposures, second pass: det.moved_border is set as well
        pairs |= det.moved & ~det.untrusted_moved | det.moved_border
    return pairs & det.dilatable


def _pair_evidence(det: _Detections, params: CRMaskConfig, exposure_masks: np.ndarray | None,
                   flagged: np.ndarray, masked: np.ndarray | None) -> np.ndarray:
    """Where median2d - min2d (``t``) exceeds ``mm_pair_sigma`` and another exposure than the one setting it is
    known to be hit (judged at the flagged or masked pixels only: nowhere else is there evidence)."""
    ys, xs = coordinates(flagged if masked is None else flagged | masked)
    stats, u = det.stats, det.inflated[ys, xs]
    low = stats.min2d[ys, xs]
    t = stats.median2d[ys, xs] - low
    t /= u
    top = stats.max2d[ys, xs] - low
    top /= u
    top -= t  # (max2d - median2d) / u: the exposure that is hit must stand out too
    evidence = flagged[ys, xs] & (top > PAIR_TOP_SIGMA)
    if exposure_masks is not None:
        # aligned exposures only: next to a line flank of shifted exposures the masks of two exposures
        # overlap and median2d - min2d is large without any cosmic ray
        seen = exposure_masks[:, ys, xs].sum(axis=0, dtype=np.uint8)
        evidence |= (seen >= 2) | (seen >= 1) & (t > PAIR_SURE_SIGMA)
    return _pixels(flagged.shape, ys, xs, evidence & (t > params.mm_pair_sigma))


def _expected_spread(det: _Detections) -> np.ndarray:
    """The exposures' expected spread (electrons), from the inflated noise scale."""
    spread = np.square(det.inflated) - np.square(det.noise)
    np.maximum(spread, 0, out=spread)
    return np.sqrt(spread, out=spread)


def _spread_pairs(det: _Detections, params: CRMaskConfig) -> np.ndarray:
    """Residual detections of shifted exposures where one hit can move the median.

    Shifted exposures differ systematically: one hit can move the median to
    the next exposure's value, i.e. by up to their expected spread (in noise
    sigmas).  After the second pass a detection must also stand above the
    mean of the other exposures (``det.confirmed``): on the full-frame
    offsets set the unconfirmed ones gave about half the far false flags.
    """
    spread = _expected_spread(det)
    spread /= det.noise
    flags = det.model_flags if det.confirmed is None else det.model_flags & det.confirmed
    return flags.any(axis=0) & (spread > params.mm_pair_sigma)


def _exposure_masks(exposure_flags: np.ndarray, det: _Detections, dilation: int) -> np.ndarray:
    """CRMASKk: the detections of every exposure, dilated."""
    return np.stack([dilate(flags, dilation) & det.dilatable for flags in exposure_flags])


def _seen_in_exposures(det: _Detections, params: CRMaskConfig, exposure_flags: np.ndarray | None
                       ) -> np.ndarray | None:
    """A detector alone: pixels its confirmed flags on the exposures show to be spoiled medians (#16).

    With ``lacosmic``, ``pycosmic``, ``deepcr`` or ``conn`` alone the
    detector runs on every exposure too, and each of its flags there is
    confirmed by that exposure standing above min2d (:meth:`_Detections.of`).
    On the median it misses most coincidences (L.A.Cosmic with the guide's
    PSF-convolved fine structure flags compact deposits only; the median
    keeps the lower of two deposits).  A pixel is a pair (code 6) when

    * the detector flags it in at least ``coincidences(N)`` exposures (2 of
      3): as many are hit, and their median takes a hit value; or
    * aligned exposures only: it flags it in one exposure and median2d -
      min2d exceeds ``PAIR_SURE_SIGMA`` noise sigmas (one exposure is known
      to be hit, and a median that far above the minimum says another one is:
      the third clause of :func:`_pairs`).  With offsets this added far false
      flags along the shifted lines (offsets set, 798 x 1008: ``lacosmic`` 84
      -> 104, ``pycosmic`` 54 -> 78).

    numina 0.40 looks at the median alone.  None with an MM method (its
    diagrams and :func:`_pairs` cover this).
    """
    if params.uses_mm or exposure_flags is None:
        return None
    count = exposure_flags.sum(axis=0, dtype=np.uint8)
    seen = count >= params.coincidences(exposure_flags.shape[0])
    if det.median_spread is None:
        t = _normalised(det.stats.median2d, det.stats, det.noise)
        seen |= (count > 0) & (t > PAIR_SURE_SIGMA)
    return seen & det.dilatable


def _mediancr(det: _Detections, params: CRMaskConfig, shape, exposure_flags: np.ndarray,
              exposure_masks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict]:
    la, mmf = det.of("median", det.stats.median2d)
    if mmf is not None and det.confirmed is not None:
        # shifted exposures: on the steepest flanks the simulated diagram is sparse and the boundary
        # extrapolated; a median spoiled there has a hit exposure that the residual tests see
        mmf = mmf & dilate((det.model_flags | det.confirmed).any(axis=0), 1)
    codes = np.zeros(shape, dtype=np.int8)
    pairs = _pairs(det, params, exposure_flags, exposure_masks)
    if pairs is None:  # a detector alone: its flags on the exposures where they spoil the median (#16)
        pairs = _seen_in_exposures(det, params, exposure_flags)
    if pairs is not None:
        codes[pairs] = 6
    if mmf is not None:
        codes[mmf] = 2
    if la is not None:
        codes[la] = np.where(codes[la] == 2, 4, 3)
    if det.static is not None:
        codes[det.static] = 0
    codes[noise_dips(codes > 0, det.stats, det.noise) & ((codes == 2) | (codes == 6))] = 0
    for x, y in params.pixels_to_be_flagged_as_cr:
        codes[y - 1, x - 1] = 5
    flagged = codes > 0
    mask = dilate(flagged, params.dilation) & det.dilatable | flagged
    codes[mask & ~flagged] = 1
    found = np.bincount(codes[mask], minlength=max(CODES) + 1)  # every code but 0 lies in the mask
    counts = {"mediancr_" + CODES[c].lower().replace("+", "_"): int(found[c]) for c in CODES if c}
    return mask, codes, counts


@dataclass
class _MMStage:
    """What the MMcosmic stage hands on (defaults: MMcosmic not run)."""

    inflated: np.ndarray  # noise inflated by the expected spread of unequal exposures
    boundaries: dict = field(default_factory=dict)
    expected: dict = field(default_factory=dict)  # false MM detections expected from noise, per diagram
    sims: mm.SimulatedDiagrams | None = None
    la_med: np.ndarray | None = None  # L.A.Cosmic detections on median2d, confirmed
    model_flags: np.ndarray | None = None  # shifted exposures: residuals against their own model
    static_model: np.ndarray | None = None  # shifted exposures: where the shifted model is not trusted
    static_moved: np.ndarray | None = None  # ... and where the moved-median rule is not trusted either
    static_px: np.ndarray | None = None  # shifted exposures: hot pixels, left out of the scene
    median_spread: np.ndarray | None = None  # auxiliary detector alone, shifted: see _aux_alone_stage


def _mm_stage(stack, stats, floor, noise, params, la_flags, factors, offsets, normalised, rnoise_e,
              workers, progress, gain=1.0) -> _MMStage:
    """Simulated diagrams, boundaries and (with offsets) the residual detections of every exposure."""
    n = stack.shape[0]
    la_med = None
    if "median" in la_flags:
        la_med = _confirm(la_flags["median"], _normalised(stats.median2d, stats, noise),
                          params.la_confirm_sigma, stats.median2d)
    expected_img = _expected_images(stats, stack, params, la_med, factors, offsets, noise)
    if params.mm_synthetic == "single":  # #16: each simulated exposure from itself, cleaned
        expected_img = mm.single_expectations(stack, stats, noise, la_med)
    spread = expected_img.max(axis=0) - expected_img.min(axis=0) if _unequal(factors, offsets, params) else None
    shifted = bool(np.any(offsets != 0))
    static_px = flags = above = None
    if shifted:
        flags, above = sm.model_flags(stack, expected_img, rnoise_e, with_above=True)
        static_px = sm.static_pixels(stats, floor, noise, stack, spread, above)
        if static_px.any():  # hot pixels found: models without them (the spline spreads them around)
            expected_img = _expected_images(stats, stack, params, la_med, factors, offsets, noise, static_px)
            spread = expected_img.max(axis=0) - expected_img.min(axis=0)
            flags, above = sm.model_flags(stack, expected_img, rnoise_e, with_above=True)
            static_px = sm.static_pixels(stats, floor, noise, stack, spread, above)
    inflated = mm.inflate(noise.copy(), spread) if spread is not None else noise
    grid = mm.make_grid(noise if spread is None else np.stack([noise, inflated]), rnoise_e)
    report = (lambda d, t: progress("simulations", d, t)) if progress else None
    sims = mm.simulate_diagrams(expected_img, floor, rnoise_e=rnoise_e, n_coincidences=params.coincidences(n),
                                nsim=params.mm_nsimulations, grid=grid, seed=params.mm_seed,
                                workers=workers, progress=report, spread=spread,
                                raw_factors=factors if normalised else None,
                                nbinom_shape=params.mm_nbinom_shape if params.mm_photon_distribution == "nbinom"
                                else None)
    out = _MMStage(inflated=inflated, sims=sims, la_med=la_med, static_px=static_px)
    if shifted:
        out.static_model, out.static_moved = sm.static_features(stats, noise, static_px)
        out.model_flags = flags & ~out.static_model
    del expected_img, spread
    out.boundaries, out.expected = _mm_boundaries(sims, params, rnoise_e, gain)
    _log.info("expected false MM detections from noise alone: %s",
              ", ".join(f"{k} {v:.2f}" for k, v in out.expected.items()))
    return out


def _detection_map(cleanable: np.ndarray, bad_rows: np.ndarray, bad_cols: np.ndarray,
                   raw_range: np.ndarray | None, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where detections may be made and where dilation may reach (both without defective lines).

    With flux factors divided out of the originals (``raw_range`` given, the
    raw max - min): detector features (hot pixels, bias structure) do not
    scale with the transparency, so where the raw exposures agree within
    ``RAW_AGREEMENT_SIGMA`` the normalised ones disagree only because of the
    factors.  Such pixels are not detections, but the dilation around a
    cosmic ray still covers them (the edge of an event hit in every exposure
    agrees in the raw exposures as well).
    """
    if bad_rows.size or bad_cols.size:
        cleanable[bad_rows, :] = False
        cleanable[:, bad_cols] = False
        _log.warning("left out of the detection as defective detector lines (exposures disagree far beyond "
                     "the noise model along most of them): columns %s, rows %s (FITS)",
                     _fits_list(bad_cols), _fits_list(bad_rows))
    if raw_range is None:
        return cleanable, cleanable
    raw_range /= noise
    return cleanable & (raw_range > RAW_AGREEMENT_SIGMA), cleanable


def _shifted_second_pass(det: _Detections, stack: np.ndarray, suspect: np.ndarray, exposure_flags: np.ndarray,
                         factors: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shifted exposures, once MEDIANCR is known: compare with cleaner models, find moved medians.

    A coincidence that survived the scene's cleaning is in ``suspect``
    (MEDIANCR and confirmed L.A.Cosmic detections): the scene is rebuilt
    with those cleaned too, every exposure is compared with its model again
    (``exposure_flags`` and ``det.model_flags`` grow in place), faint tracks
    found against the other exposures join the CRMASKk, ``det.confirmed``
    holds the pixels confirmed against them
    (:func:`~megara_crdetect.core.shiftmodel.leave_one_out`) and
    ``det.moved`` and ``det.moved_border`` are set (see
    :func:`~megara_crdetect.core.shiftmodel.moved_medians` and
    :func:`~megara_crdetect.core.shiftmodel.border_moved`).  Returns the
    CRMASKk and the repair value of MEDIANCR: the minimum of the exposures
    with their CRMASKk pixels replaced by their own models
    (:func:`~megara_crdetect.core.shiftmodel.without_hits`).
    """
    params, stats, noise, rnoise_e = det.params, det.stats, det.noise, det.detector.rnoise_e
    phi = _model_factors(factors, params)
    models = sm.shifted_models(sm.scene(stats, stack, suspect, offsets, noise, phi, det.static_px), offsets, phi)
    det.model_flags |= sm.model_flags(stack, models, rnoise_e) & ~det.untrusted_model
    exposure_flags |= det.model_flags & det.cleanable
    crmasks = _exposure_masks(exposure_flags, det, params.dilation)
    loo = sm.leave_one_out(stack, models, crmasks, offsets, phi, rnoise_e)
    det.confirmed = loo.strong
    crmasks |= _exposure_masks(loo.tracks & ~det.untrusted_model & det.cleanable, det, params.dilation)
    det.above_model = _above_models(stack, models, rnoise_e)
    cleaned = sm.without_hits(stack, models, crmasks)
    det.moved = sm.moved_medians(cleaned, stats, noise)
    if np.any(np.asarray(phi) != 1):  # the combinations use the normalised exposures
        cleaned /= np.asarray(phi, dtype=np.float32)[:, None, None]
    repair_min = cleaned.min(axis=0)
    del cleaned, models
    det.moved_border = sm.border_moved(stack, loo, stats, noise)
    # one search for hot pixels within 2 pixels of either kind of moved median
    static = sm.static_cores(stack, noise, dilate(det.moved | det.moved_border, 2), stats, _expected_spread(det))
    det.moved &= ~static
    det.moved_border &= ~static
    return crmasks, repair_min


class _Restore:
    """The values of a stack that were changed in place, kept to put them back bit for bit."""

    def __init__(self):
        self.stack, self.saved = None, []

    def subtract(self, stack: np.ndarray, model: np.ndarray) -> None:
        """``stack -= model`` in place, keeping the values where the model is not zero (elsewhere unchanged)."""
        self.stack = stack
        for k in range(stack.shape[0]):
            where = model[k] != 0
            self.saved.append((np.packbits(where), stack[k][where]))
            np.subtract(stack[k], model[k], out=stack[k])

    def __call__(self) -> None:
        for k, (bits, values) in enumerate(self.saved):
            where = np.unpackbits(bits, count=self.stack[k].size).view(bool).reshape(self.stack[k].shape)
            self.stack[k][where] = values
        self.stack, self.saved = None, []


def compute_crmasks(stack: np.ndarray, params: CRMaskConfig, *, detector: Detector = Detector(),
                    workers: int | None = None, progress: Progress | None = None,
                    review: Callable[[CRMaskResult], np.ndarray] | None = None,
                    ignore: np.ndarray | None = None, work_in_place: bool = False) -> CRMaskResult:
    """Detect the cosmic rays of a stack of exposures.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Exposures in electrons (bias subtracted, times the gain); not
        modified (with flux factors applied to the originals, a normalised
        copy is used).  With ``work_in_place`` it is the detection's work
        space (the exposures brought onto one scene, without a copy of the
        frames) and its values are put back bit for bit before the function
        returns or raises.
    params : CRMaskConfig
        Validated parameters.
    detector : Detector
        Gain, readout noise and bias (ADU) of the raw data.
    workers : int, optional
        Parallel workers for L.A.Cosmic and the simulations (default: cores).
    progress : callable, optional
        ``progress(step, done, total)`` for long steps.
    review : callable, optional
        Called with the partial result once MEDIANCR is known; returns the
        MEDIANCR mask to keep (e.g. after the user rejected some cosmic rays).
    ignore : ndarray of bool, shape (ny, nx), optional
        Pixels never flagged, like ``pixels_to_be_ignored_as_cr`` (bad or
        saturated input; see :mod:`megara_crdetect.badpixels`).
    work_in_place : bool
        Use ``stack`` as work space (see above): the memory of N frames less.

    Returns
    -------
    CRMaskResult
    """
    restore = _Restore() if work_in_place else None
    try:
        return _compute_crmasks(stack, params, detector=detector, workers=workers, progress=progress,
                                review=review, ignore=ignore, restore=restore)
    finally:
        if restore is not None:
            restore()


def _compute_crmasks(stack: np.ndarray, params: CRMaskConfig, *, detector: Detector, workers: int | None,
                     progress: Progress | None, review: Callable[[CRMaskResult], np.ndarray] | None,
                     ignore: np.ndarray | None, restore: _Restore | None) -> CRMaskResult:
    """:func:`compute_crmasks`; ``restore`` (not None) lets the model be subtracted in the caller's stack."""
    n, ny, nx = stack.shape
    check_against_data(params, (ny, nx), n)
    timings, t0 = {}, time.perf_counter()
    rnoise_e = detector.rnoise_e
    factors, flux_details = _flux_factors(stack, params, rnoise_e)
    raw_range = static = None
    normalised = params.apply_flux_factor_to == "original" and bool(np.any(factors != 1))
    if normalised:
        raw_range = stack.max(axis=0) - stack.min(axis=0)
        static = _static_offsets(stack, factors, rnoise_e)
        stack = stack / factors.astype(np.float32)[:, None, None]
    # the median: for measuring offsets and for the exposure-difference model, only when one of them runs
    median = (median_of_stack(stack)
              if params.uses_mm and (params.mm_crosscorr_region is not None or params.mm_variation_model) else None)
    offsets = _offsets(median, stack, params, rnoise_e) if params.uses_mm else np.zeros((n, 2))
    variation, modelled = None, False
    if _models_variation(params, offsets):  # exposures brought onto one scene: they differ by noise and CRs
        t1 = time.perf_counter()
        with _reported(progress, "exposure-difference model"):
            variation = fit_variations(stack, median, rnoise_e, window=params.mm_variation_window,
                                       workers=workers)
        modelled = bool(variation.model.any())
        if restore is not None and not normalised:  # the caller's stack is the work space, put back at the end
            restore.subtract(stack, variation.model)
        else:  # the exposures brought onto one scene take the model's memory: the model itself is not kept
            stack = np.subtract(stack, variation.model, out=variation.model)
        variation.model = None
        timings["variation"] = time.perf_counter() - t1
    del median
    cleanable = _fits_to_numpy(params, (ny, nx))
    if ignore is not None:
        cleanable &= ~ignore
    stats = stack_statistics(stack, n_coincidences=params.coincidences(n))
    floor = mm.noise_floor(stats.median2d, workers=workers)
    noise = mm.noise_scale(stats.min2d, floor, rnoise_e)
    if variation is not None:  # aligned exposures brought onto one scene: what is left is noise and CRs
        _warn_heavy_tails(stack, stats.median2d, noise)
    targets = _targets(stats, stack)
    timings["statistics"] = time.perf_counter() - t0 - timings.get("variation", 0.0)

    mms = _MMStage(inflated=noise) if params.uses_mm else _aux_alone_stage(stats, stack, params, factors, floor,
                                                                           noise, rnoise_e)
    la_flags, lamedian = {}, None
    if params.uses_aux:
        t1 = time.perf_counter()
        la_targets = targets if _la_everywhere(params) else {"median": targets["median"]}
        with _reported(progress, "L.A.Cosmic"):
            la_flags, lamedian = _la_detections(la_targets, params, detector, workers,
                                                _la_candidates(params, stats, noise, mms.median_spread))
        timings["lacosmic"] = time.perf_counter() - t1

    if params.uses_mm:
        t1 = time.perf_counter()
        mms = _mm_stage(stack, stats, floor, noise, params, la_flags, factors, offsets, normalised, rnoise_e,
                        workers, progress, detector.gain)
        timings["mmcosmic"] = time.perf_counter() - t1

    if progress is not None:  # MEDIANCR, then (after any interactive review) the other masks
        progress("masks", 0, 2)
    bad_rows, bad_cols = _bad_lines(stats, mms.inflated)
    cleanable, dilatable = _detection_map(cleanable, bad_rows, bad_cols, raw_range, noise)
    del raw_range
    det = _Detections(stats, noise, params, detector, la_flags, mms.boundaries, cleanable, mms.sims, mms.inflated,
                      model_flags=mms.model_flags, static=static, dilatable=dilatable,
                      untrusted_model=mms.static_model, untrusted_moved=mms.static_moved,
                      static_px=mms.static_px, median_spread=mms.median_spread)
    t1 = time.perf_counter()
    exposure_flags = np.stack([det.union(f"exposure{k + 1}", stack[k]) for k in range(n)])
    # aligned exposures brought onto one scene: the lowest of them, not of the raw exposures, repairs MEDIANCR
    repair_min = stats.min2d if modelled else None
    shifted = mms.model_flags is not None
    if shifted:  # residuals against their own model count as detections
        exposure_flags |= mms.model_flags & cleanable
    # aligned exposures: the detections are final, and their masks are evidence of pairs
    crmasks = None if shifted else _exposure_masks(exposure_flags, det, params.dilation)
    mediancr, codes, counts = _mediancr(det, params, (ny, nx), exposure_flags, crmasks)
    if shifted:
        suspect = mediancr if mms.la_med is None else mediancr | mms.la_med
        crmasks, repair_min = _shifted_second_pass(det, stack, suspect, exposure_flags, factors, offsets)
        mediancr, codes, counts = _mediancr(det, params, (ny, nx), exposure_flags, None)
    timings["mediancr"] = time.perf_counter() - t1
    result = CRMaskResult(stats=stats, mediancr=mediancr, mediancr_codes=codes, meancrt=mediancr,
                          crmasks=crmasks, meancr=np.zeros((ny, nx), bool), problematic=np.zeros((ny, nx), bool),
                          flux_factors=factors, offsets=offsets, lamedian=lamedian, boundaries=mms.boundaries,
                          expected_false=mms.expected, diagrams=mms.sims, flux_details=flux_details,
                          counts=counts, timings=timings, noise=noise, bad_rows=bad_rows, bad_columns=bad_cols,
                          repair_min=repair_min, variation=variation)
    if progress is not None:
        progress("masks", 1, 2)
    if review is not None:
        result.mediancr = review(result) & result.mediancr
        result.mediancr_codes[~result.mediancr] = 0
    t1 = time.perf_counter()
    result.crmasks |= _hit_exposures(result.mediancr, det, stack)
    if not shifted:
        if mms.median_spread is None:  # not a detector alone on shifted exposures: every line flank would pass
            _add_faint_groups(result, det, stack, floor, factors if normalised else None, workers)
        _repair_every_hit(result, det)
    del floor
    _finish_masks(result, det, params, stack, exposure_flags, workers)
    timings["other masks"] = time.perf_counter() - t1
    timings["total"] = time.perf_counter() - t0
    if progress is not None:
        progress("masks", 2, 2)
    return result


@contextmanager
def _reported(progress: Progress | None, step: str) -> Iterator[None]:
    """``progress(step, 0, 1)`` before the block and ``progress(step, 1, 1)`` after it."""
    if progress is not None:
        progress(step, 0, 1)
    yield
    if progress is not None:
        progress(step, 1, 1)


def _aux_alone_stage(stats: StackStats, stack: np.ndarray, params: CRMaskConfig, factors: np.ndarray,
                     floor: np.ndarray, noise: np.ndarray, rnoise_e: float) -> _MMStage:
    """An auxiliary detector alone on exposures declared shifted: their disagreement without the shifts.

    Without the MM stage nothing models the offsets, yet where the exposures
    are declared shifted (``mm_xy_offsets`` or ``mm_crosscorr_region``) they
    differ along every fibre trace and sky line by the shift alone.  Judged
    against the plain noise, those lines looked like defective detector
    lines (:func:`_bad_lines`) and were left out of the detection, cosmic
    rays on them included (``lacosmic``, offsets set 798 x 1008, seed 2025:
    45 rows and 90 columns; recall of the spoiled median pixels 0.055
    against numina 0.40's 0.073); let in but confirmed by ``median2d -
    min2d``, the shifted flanks confirmed the detector's flags there (far
    false flags 2 -> 226, seed 7).  So the offsets are measured (or taken)
    as for MM and the common scene is shifted to each exposure
    (:func:`_expected_images`).  The noise is inflated by the spread of
    those models, as the MM stage does (the defective-line test and the
    confirmation on the exposures, the mean and meancr), and a detection on
    the median is confirmed by the exposures less their own models
    (``median_spread``: median minus minimum of ``exposure_k - model_k``),
    where a coincidence stands out whichever exposure the shift raised.
    No offsets declared, or offsets zero: the plain noise and min2d.
    """
    out = _MMStage(inflated=noise)
    if params.mm_xy_offsets is None and params.mm_crosscorr_region is None:
        return out
    offsets = _offsets(stats.median2d, stack, params, rnoise_e)
    if not np.any(offsets):
        return out
    models = _expected_images(stats, stack, params, None, factors, offsets, noise)
    # hot pixels do not move: left out of the scene, as in the MM stage, each exposure keeps them above its model
    _, above = sm.model_flags(stack, models, rnoise_e, with_above=True)
    static_px = sm.static_pixels(stats, floor, noise, stack, models.max(axis=0) - models.min(axis=0), above)
    if static_px.any():
        models = _expected_images(stats, stack, params, None, factors, offsets, noise, static_px)
    low = models.min(axis=0)
    out.inflated = mm.inflate(noise.copy(), models.max(axis=0) - low)
    spread = stats.median2d - stats.min2d
    spread -= median_of_stack(models)
    spread += low  # median2d - min2d less that of the models
    np.subtract(stack, models, out=models)  # each exposure less its model
    out.median_spread = np.maximum(spread, median_of_stack(models) - models.min(axis=0))
    return out


def _above_models(stack: np.ndarray, models: np.ndarray, rnoise_e: float) -> np.ndarray:
    """Shifted exposures: pixels ``HIT_SIGMA`` model sigmas above their own model (see :func:`_hit_exposures`)."""
    out = np.empty(stack.shape, dtype=bool)
    for k in range(stack.shape[0]):
        level = sigma(models[k], rnoise_e)
        level *= np.float32(HIT_SIGMA * sm.MODEL_NOISE_FACTOR)
        level += models[k]
        np.greater(stack[k], level, out=out[k])
    return out


def _hit_exposures(mediancr: np.ndarray, det: _Detections, stack: np.ndarray) -> np.ndarray:
    """The exposures hit at each MEDIANCR pixel, for their CRMASKk (issue 17).

    MEDIANCR says the median is spoiled: at least ``mm_cr_coincidences``
    exposures are hit there, and each of them must be masked, or meancr and
    meancr2 keep its deposit.  The per-exposure detections alone miss many
    of them (their boundary holds for pixels about which nothing is known;
    on a flux set with coincidences 10 % of the > 5 sigma pixels of each hit
    exposure).  An exposure is taken as hit where it stands ``HIT_SIGMA``
    noise sigmas above min2d (aligned; min2d is the clean value the
    repair uses) or above its own model (shifted, ``det.above_model``; there
    the lowest exposure may be the hit one).  An unhit exposure masked by
    noise costs a little noise in meancr, never a bias.  (Where every exposure
    is hit, min2d is spoiled too; a test of min2d against its neighbours alone
    found a quarter of such pixels on a flux set and as many false ones.
    :func:`_repair_every_hit` adds, besides, exposures that differ far beyond
    the noise, and masks such pixels in every CRMASKk.)
    """
    out = np.zeros(stack.shape, dtype=bool)
    ys, xs = coordinates(mediancr)
    if ys.size == 0:
        return out
    if det.above_model is not None:
        out[:, ys, xs] = det.above_model[:, ys, xs]
        return out
    excess = stack[:, ys, xs] - det.stats.min2d[ys, xs]
    out[:, ys, xs] = excess > np.float32(HIT_SIGMA) * det.noise[ys, xs]
    return out


def _add_faint_groups(result: CRMaskResult, det: _Detections, stack: np.ndarray, floor: np.ndarray,
                      raw_factors: np.ndarray | None, workers: int | None = None) -> None:
    """Aligned exposures: faint events found as groups join the CRMASKk (issue 17; in place).

    Events faint in every pixel of both exposures they hit escape the
    per-pixel tests; groups of neighbouring pixels a few sigma above min2d
    (in an exposure, or in the median where two exposures are hit) whose
    summed excess exceeds what noise-only stacks of the same noise model
    reach at :data:`~megara_crdetect.core.faintgroups.FALSE_GROUP_RATE` are
    added (:mod:`~megara_crdetect.core.faintgroups`), except where every
    other exposure is masked already (the pixel would be left without a
    value for meancr on such weak evidence).  Three exposures or more; the
    CRMASKk only (MEDIANCR is not changed).
    """
    n = stack.shape[0]
    if n < 3:
        return
    t0 = time.perf_counter()
    params, stats = det.params, det.stats
    nbinom = params.mm_nbinom_shape if params.mm_photon_distribution == "nbinom" else None
    thresholds = fg.calibrate(stats.median2d, floor, det.detector.rnoise_e, n_low=n - params.coincidences(n),
                              n_exposures=n, raw_factors=raw_factors, seed=params.mm_seed, nbinom_shape=nbinom)
    where = det.dilatable.copy()
    # next to a defective detector line a column or row often shares part of its defect: weak evidence there is not used
    for lines, axis in ((result.bad_rows, 0), (result.bad_columns, 1)):
        for line in lines:
            for near in (line - 1, line + 1):
                if 0 <= near < where.shape[axis]:
                    if axis == 0:
                        where[near, :] = False
                    else:
                        where[:, near] = False
    added = fg.faint_groups(stack, stats.min2d, stats.median2d, det.noise, thresholds, where, workers=workers)
    added &= ~result.crmasks
    # weak evidence never leaves a pixel without an exposure to average (a problematic pixel)
    added &= ~np.stack([np.delete(result.crmasks, k, axis=0).all(axis=0) for k in range(n)])
    result.counts["faint_group_pixels"] = int(added.sum())
    result.crmasks |= added
    result.timings["faint groups"] = time.perf_counter() - t0
    _log.info("faint groups (summed excess above %.2f in an exposure, %.2f in the median): %d pixels added to "
              "the CRMASKk", thresholds.exposure, thresholds.median, int(added.sum()))


def _repair_every_hit(result: CRMaskResult, det: _Detections) -> None:
    """MEDIANCR pixels hit in every exposure: repaired from their neighbours, masked in every CRMASKk (in place).

    Where every exposure is hit (:meth:`_Detections.hit_everywhere`), min2d
    is a cosmic ray too: the repair value (``repair_min``, written as
    ``CLEANMIN``) takes the clean level of the neighbours
    (:func:`~megara_crdetect.core.locallevel.spoiled_minima`), and every
    CRMASKk masks the pixel (no exposure is clean there: meancr takes the
    repair value, and the DQ plane says ``CR_ALL_EXPOSURES``).  Aligned
    exposures only.
    """
    every = det.hit_everywhere(result.mediancr)
    count = int(every.sum())
    result.counts["mediancr_every_exposure"] = count
    if count == 0:
        return
    _, values = spoiled_minima(every, det.stats, det.noise)
    repair = (det.stats.min2d if result.repair_min is None else result.repair_min).copy()
    repair[every] = values
    result.repair_min = repair
    result.crmasks[:, every] = True
    _log.info("%d MEDIANCR pixels hit in every exposure: repaired from their neighbours", count)


#: Values this many noise sigmas below the median of their pixel ...
TAIL_SIGMA = 5.0
#: ... in more than this fraction of the values: the noise model does not describe the exposures.  Measured
#: (after the exposure-difference model): real WHT star triplet and arc hybrid, LT/SPRAT, the simulated
#: quality sets, a set with 1 % of the pixels hit and the simulated MEGARA OB 1e-6 to 3e-4 (cosmic-ray
#: coincidences included); the M13 frames of an amateur CCD (heavy-tailed noise) 5.5e-3.
TAIL_FRACTION = 1e-3


def _warn_heavy_tails(stack: np.ndarray, median2d: np.ndarray, noise: np.ndarray) -> float:
    """Warn when far more values lie ``TAIL_SIGMA`` below their pixel's median than noise and coincidences give.

    Cosmic rays only raise values; below the median only the noise (and the
    clean exposure of a coincidence) reaches.  Returns the fraction.
    """
    limit = median2d - np.float32(TAIL_SIGMA) * noise
    low = sum(int(np.count_nonzero(exposure < limit)) for exposure in stack)
    fraction = low / stack.size
    if fraction > TAIL_FRACTION:
        _log.warning("the noise has heavier tails than the noise model: %.2f %% of the values lie %g sigma below "
                     "the median of their pixel (noise and coincidences give < %.2f %%); check gain and rnoise: "
                     "faint groups and MM boundaries calibrated on the model will flag noise",
                     100 * fraction, TAIL_SIGMA, 100 * TAIL_FRACTION)
    return fraction


def _models_variation(params: CRMaskConfig, offsets: np.ndarray) -> bool:
    """Whether the exposure-difference model runs: ``mm_variation_model``, an MM method and aligned exposures.

    Aligned: no offsets given, or offsets given or measured as zero (within
    their error).  Shifted exposures have their own models
    (:mod:`~megara_crdetect.core.shiftmodel`).
    """
    return bool(params.mm_variation_model) and params.uses_mm and not np.any(offsets)


def _la_everywhere(params: CRMaskConfig) -> bool:
    """The auxiliary detector on every target (always when it runs alone, on request with MM)."""
    return not params.uses_mm or params.la_everywhere


def _finish_masks(result: CRMaskResult, det: _Detections, params: CRMaskConfig, stack: np.ndarray,
                  exposure_flags: np.ndarray, workers: int | None = None) -> None:
    """MEANCRT, MEANCR and the problematic pixels (in place; CRMASKk are already in ``result``).

    CRMASKk are the dilated detections on exposure k.  The guide restricts
    them to MEANCRT; here MEANCRT instead contains every per-exposure detection
    (a cosmic ray of one exposure is one of the mean), so CRMASKk is still a
    subset of MEANCRT without losing the faint single hits that the mean
    dilutes N times.
    """
    mean_flags = det.union("mean", result.stats.mean2d) | exposure_flags.any(axis=0)
    result.meancrt = dilate(mean_flags, params.dilation) & det.dilatable | result.mediancr
    meancr_img = combine_in_bands(stack, "meancr", workers=workers or os.cpu_count() or 1,
                                  rnoise_e=det.detector.rnoise_e, crmasks=result.crmasks,
                                  replacement=result.repair_min).value  # the image apply_crmasks will write
    if params.uses_aux and _la_everywhere(params):
        la, _ = _la_detections({"meancr": meancr_img}, params, det.detector, 1,
                               _la_candidates(params, det.stats, det.noise, det.median_spread))
        det.la_flags["meancr"] = la["meancr"]
    result.meancr = det.union("meancr", meancr_img, boundary_name="mean")
    result.problematic = problematic_pixels(result.crmasks)
    result.counts.update(mediancr=int(result.mediancr.sum()), meancrt=int(result.meancrt.sum()),
                         meancr=int(result.meancr.sum()), problematic=int(result.problematic.sum()),
                         **{f"crmask{k + 1}": int(m.sum()) for k, m in enumerate(result.crmasks)})


def apply_crmasks(stack: np.ndarray, masks: CRMaskResult, combination: str, *, rnoise_e: float,
                  use_lamedian: bool = False, local_median=(), exclude: np.ndarray | None = None,
                  workers: int = 1):
    """Build one combination from the masks (see :mod:`megara_crdetect.core.combine`).

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx)
        Exposures in electrons, divided by the flux factors.
    masks : CRMaskResult
        Masks (``mediancr``, ``meancrt``, ``crmasks``, ``meancr``), ``repair_min``
        (None: min2d) and, for ``use_lamedian``, ``lamedian``.
    combination : str
        One of :data:`COMBINATIONS`.
    rnoise_e : float
        Readout noise in electrons (variance model).
    use_lamedian : bool
        Repair with the L.A.Cosmic-cleaned median instead of min2d (or,
        for shifted exposures, ``masks.repair_min``).
    local_median : sequence of (X, Y, X_width, Y_width)
        ``pixels_to_be_replaced_by_local_median`` (FITS).
    exclude : ndarray of bool, shape (N, ny, nx), optional
        Bad input values left out of their exposure (see :func:`~megara_crdetect.core.combine.combine`).
    workers : int
        Threads, each on a band of rows (:func:`~megara_crdetect.core.combine.combine_in_bands`; the same
        bits as one thread).
    """
    if combination not in COMBINATIONS:
        raise ValueError(f"combination must be one of {', '.join(COMBINATIONS)}, got {combination!r}")
    # the plain minimum of the (flux-normalised) stack, or that of the exposures without their hits
    replacement = masks.repair_min
    if use_lamedian:
        if masks.lamedian is None:
            raise ValueError("use_lamedian needs the median cleaned by the auxiliary detector (AUXCLEAN)")
        replacement = masks.lamedian
    return combine_in_bands(stack, combination, workers=workers, rnoise_e=rnoise_e, mediancr=masks.mediancr,
                            meancrt=masks.meancrt, crmasks=masks.crmasks, meancr_mask=masks.meancr,
                            replacement=replacement,
                            local_median_pixels=[(y - 1, x - 1, yw, xw) for x, y, xw, yw in local_median],
                            exclude=exclude)
