"""The model of shifted exposures: a common scene, shifted to each exposure, and what it tells.

With sub-pixel offsets the exposures differ systematically on every line
flank, so ``exposure - min2d`` is a weak statistic there.  Each exposure is
instead compared with its own expected image: the common scene (the median
of the exposures shifted back onto one grid with cubic splines, cleaned
where they disagree) shifted to the exposure's offset.  Pure functions on
arrays; :mod:`megara_crdetect.core.pipeline` decides where they are used.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .locallevel import neighbour_index
from .masks import dilate, label_groups
from .noise import sigma
from .shift import shift_image_spline, shift_spline_coefficients, spline_coefficients
from .stack import AGREEMENT_SIGMA, HOT_PIXEL_SIGMA, StackStats, median_of_stack, spread_sigmas

__all__ = ["BORDER", "BORDER_HIT_SIGMA", "MODEL_NOISE_FACTOR", "MODEL_SIGMA", "MOVED_SIGMA", "SCENE_PAIR_SIGMA",
           "STATIC_SIGMA", "TRACK_LOW", "TRACK_SIGMA", "WING_COUNT", "LeaveOneOut", "border_moved", "isolated",
           "leave_one_out", "model_flags", "moved_medians", "scene", "sharp_in_every_exposure",
           "shifted_models", "static_cores", "static_features", "static_pixels", "without_hits"]

#: Residual of a shifted exposure against its own model that flags a cosmic ray (model-noise sigmas) ...
MODEL_SIGMA = 5.0
#: ... where the model (median of three shifted exposures) adds this factor to the noise of one exposure.
MODEL_NOISE_FACTOR = 1.2
#: ... unless every exposure lies this far above its model (a static feature).
STATIC_SIGMA = 3.0
#: Back-shifted exposures whose median exceeds their minimum by this many noise sigmas hold a coincidence.
SCENE_PAIR_SIGMA = 5.0
#: Shifted exposures: the detected hits move the median by this many noise sigmas (see moved_medians).
MOVED_SIGMA = 3.0
#: A sharp pixel with at least this many neighbours that disagree (see isolated) is no hot pixel.
WING_COUNT = 2
#: Width of the border frame where shifted models extrapolate (see leave_one_out, border_moved).
BORDER = 2
#: ... where an exposure this far above the other exposures (model sigmas) is hit: near the edge the
#: edge padding enters the interpolation of a single exposure (5 flagged a bright flank on a test set).
BORDER_HIT_SIGMA = 7.0
#: Faint tracks: 8-connected pixels above their leave-one-out model by this many model-noise sigmas ...
TRACK_LOW = 2.0
#: ... whose residuals sum to this many sigmas of the sum (see leave_one_out).
TRACK_SIGMA = 7.5


def scene(stats: StackStats, stack: np.ndarray, suspect: np.ndarray | None, offsets: np.ndarray,
          noise: np.ndarray, phi, static: np.ndarray | None = None) -> np.ndarray:
    """The common scene of the exposures, cleaned where ``suspect``.

    Aligned exposures: median2d, min2d where ``suspect``.  Shifted exposures:
    the median of the exposures shifted back onto a common grid (and divided
    by ``phi``).  A coincidence survives that median and would sit in every
    model, hiding its own second hit and inflating the expected spread around
    it; so pixels where the median exceeds the lowest back-shifted value by
    ``SCENE_PAIR_SIGMA`` are suspect too.  Suspect pixels and their
    neighbours take the lowest value, raised to the median of the lowest
    values around it where it is lower: a noise dip of one exposure must not
    carve a hole into every model.  Detector features that do not move
    (``static``, see :func:`static_pixels`) are no part of the scene: in
    every exposure they take the median of their 8 neighbours before the
    exposures are shifted back (the spline would otherwise spread a hot
    pixel over the models of its neighbours, 3 and more pixels away).

    Parameters
    ----------
    stats : StackStats
        Statistics of the (unaligned) stack.
    stack : ndarray, shape (N, ny, nx)
        Exposures (electrons; flux-normalised when the factors were divided out).
    suspect : ndarray of bool or None
        Pixels known to hold cosmic rays (MEDIANCR, confirmed L.A.Cosmic).
    offsets : ndarray, shape (N, 2)
        (dx, dy) of every exposure, pixels.
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma.
    phi : sequence of float
        Factors of the modelled exposures (1 unless flux factors are applied to the simulations).
    static : ndarray of bool, shape (ny, nx), optional
        Detector features that do not move (shifted exposures only).

    Returns
    -------
    ndarray, shape (ny, nx), float32
        The scene, clipped at 0.
    """
    if not np.any(offsets != 0):
        clean = stats.median2d.copy() if suspect is None else np.where(suspect, stats.min2d, stats.median2d)
    else:
        back = np.stack([shift_image_spline(_without_static(stack[k], static), -dx, -dy) / np.float32(f)
                         for k, ((dx, dy), f) in enumerate(zip(offsets, phi))])
        clean = median_of_stack(back)
        low = back.min(axis=0)
        del back
        spoiled = (clean - low) > SCENE_PAIR_SIGMA * noise
        suspect = dilate(spoiled if suspect is None else spoiled | suspect, 1)
        ys, xs = np.nonzero(suspect)
        clean[ys, xs] = np.maximum(low[ys, xs], _local_median(low, ys, xs))
    np.maximum(clean, 0, out=clean)
    return clean


def _without_static(image: np.ndarray, static: np.ndarray | None) -> np.ndarray:
    """``image`` with the ``static`` pixels replaced by the median of their 8 neighbours (a copy if any)."""
    if static is None or not static.any():
        return image
    ys, xs = np.nonzero(static)
    yy, xx = neighbour_index(ys, xs, image.shape)
    out = image.copy()
    out[ys, xs] = np.median(image[yy, xx], axis=1)
    return out


def static_cores(stack: np.ndarray, noise: np.ndarray, where: np.ndarray, stats: StackStats,
                 spread: np.ndarray | None) -> np.ndarray:
    """Detector features that do not move (hot pixels) among ``where``, and the 2 pixels around them.

    Such a feature is :func:`sharp_in_every_exposure` and :func:`isolated`;
    a coincidence of cosmic rays misses an exposure or differs in its
    deposits, at its core or around it.  The cleaned scene
    (:func:`scene`) loses a hot pixel on a line flank, whose exposures
    differ there, and its models then put every exposure far above them:
    such places cannot tell whether the median moved.
    """
    ys, xs = np.nonzero(where)
    core = sharp_in_every_exposure(stack, noise, ys, xs)
    core[core] = isolated(stats, noise, spread, ys[core], xs[core])
    out = np.zeros(where.shape, dtype=bool)
    out[ys[core], xs[core]] = True
    return dilate(out, 2)


def sharp_in_every_exposure(stack: np.ndarray, noise: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Whether the pixels (ys, xs) stand alike above their neighbours in every exposure, as a hot pixel does.

    ``HOT_PIXEL_SIGMA`` noise sigmas above the median of the 8 neighbours
    in every (unaligned) exposure, by the same amount within
    ``AGREEMENT_SIGMA`` (readout and its own Poisson noise).  Each exposure
    against its own neighbours: on a line flank the exposures differ, but
    a hot pixel's excess over its surroundings does not.
    """
    yy, xx = neighbour_index(ys, xs, stack.shape[1:])
    excess = np.stack([stack[k][ys, xs] - np.median(stack[k][yy, xx], axis=1) for k in range(len(stack))])
    low, high = excess.min(axis=0), excess.max(axis=0)
    u = noise[ys, xs]
    return (low > HOT_PIXEL_SIGMA * u) & (high - low < AGREEMENT_SIGMA * np.sqrt(u * u + np.maximum(low, 0)))


def isolated(stats: StackStats, noise: np.ndarray, spread: np.ndarray | None, ys: np.ndarray,
             xs: np.ndarray) -> np.ndarray:
    """Whether the exposures agree on all 8 neighbours of the pixels (ys, xs), as a hot pixel's do.

    Agree: ``max2d - min2d`` exceeds the exposures' expected spread
    (``spread``, from offsets or flux factors; None: 0) by less than
    ``HOT_PIXEL_SIGMA`` noise sigmas.  The neighbours of a hot pixel (or
    of a cluster of them) are sky or more hot pixels; those of a cosmic
    ray that hit every exposure with about equal deposits at its core
    carry its wings, which differ (on the offsets benchmark sets such
    cores had vetoed whole 3-of-3 events as hot pixels).
    """
    yy, xx = neighbour_index(ys, xs, stats.median2d.shape)
    excess = stats.max2d[yy, xx] - stats.min2d[yy, xx]
    if spread is not None:
        excess -= spread[yy, xx]
    return (excess >= HOT_PIXEL_SIGMA * noise[yy, xx]).sum(axis=1) < WING_COUNT


def _local_median(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Median of the 3x3 box around each pixel (ys, xs), clipped at the image edges."""
    yy, xx = neighbour_index(ys, xs, image.shape, centre=True)
    return np.median(image[yy, xx], axis=1)


def shifted_models(clean: np.ndarray, offsets: np.ndarray, phi) -> np.ndarray:
    """The scene shifted to every exposure's offset and scaled by ``phi`` (one spline filter for all)."""
    out = np.empty((len(offsets),) + clean.shape, dtype=np.float32)
    coeffs = spline_coefficients(clean, float(np.abs(offsets).max())) if np.any(offsets != 0) else None
    for k, ((dx, dy), f) in enumerate(zip(offsets, phi)):
        out[k] = shift_spline_coefficients(coeffs, dx, dy, clean.shape) if (dx or dy) else clean
        out[k] *= np.float32(f)
    np.maximum(out, 0, out=out)
    return out


def model_flags(stack: np.ndarray, expected: np.ndarray, rnoise_e: float, *, with_above: bool = False):
    """Pixels of shifted exposures far above their own model (the common scene shifted to them).

    With sub-pixel offsets the exposures differ systematically on every line
    flank, so ``exposure - min2d`` hides cosmic rays there; the residual of
    each exposure against its expected image does not.  The model is built
    from noisy data (a median of three), so its residual has ~1.2 times the
    noise of one exposure; the level is ``MODEL_SIGMA`` such residual sigmas.
    Where every exposure lies ``STATIC_SIGMA`` above its model, and within 2
    pixels of such a place, nothing is flagged: a detector feature that does
    not move with the scene (hot pixel), which the shifted model smears.

    Parameters
    ----------
    stack, expected : ndarray, shape (N, ny, nx)
        Exposures and their models (electrons).
    rnoise_e : float
        Readout noise, electrons.
    with_above : bool
        Also return where every exposure stands ``STATIC_SIGMA`` above its
        model (see :func:`static_features`).

    Returns
    -------
    ndarray of bool, shape (N, ny, nx)
        The flags; with ``with_above``, a tuple (flags, above), ``above`` of shape (ny, nx).
    """
    r = np.empty(stack.shape, dtype=np.float32)
    for k in range(stack.shape[0]):
        np.subtract(stack[k], expected[k], out=r[k])
        r[k] /= sigma(expected[k], rnoise_e)
    out = r > np.float32(MODEL_SIGMA * MODEL_NOISE_FACTOR)
    # the spline shifts spread a static feature's error over 2 pixels
    above = r.min(axis=0) > np.float32(STATIC_SIGMA * MODEL_NOISE_FACTOR)
    out &= ~dilate(above, 2)[None]
    return (out, above) if with_above else out


class LeaveOneOut(NamedTuple):
    """Detections of shifted exposures against the mean of the other exposures (see :func:`leave_one_out`)."""

    tracks: np.ndarray  # (N, ny, nx) faint tracks: groups significant as a whole
    strong: np.ndarray  # (N, ny, nx) single pixels above MODEL_SIGMA
    border: tuple[np.ndarray, np.ndarray]  # rows and columns of the pixels of the border frame
    border_models: np.ndarray  # (N, m) their models from exposures that saw them (NaN: none did)


def leave_one_out(stack: np.ndarray, models: np.ndarray, masks: np.ndarray, offsets: np.ndarray, phi,
                  rnoise_e: float) -> LeaveOneOut:
    """Faint cosmic-ray tracks of shifted exposures, and single pixels, against a model without them.

    The common scene is a median of the exposures, so a faint single hit
    partly sits in its own model (the exposure at offset (0, 0) is often
    that median itself, and its residual is then 0).  Here each exposure is
    compared with the mean of the others, each shifted straight from its
    offset to the exposure's with one spline interpolation, after its masked
    pixels (``masks``) were replaced by their models.  That model holds none
    of the exposure's own hits and has ~``MODEL_NOISE_FACTOR`` times its noise
    (measured: 1.17 on flat sky, 1.24 on the steepest flanks).  A track is an
    8-connected group of pixels above ``TRACK_LOW`` such sigmas whose summed
    residual reaches ``TRACK_SIGMA`` sigmas of the sum, ``sum / sqrt(n)``:
    tracks of 4-8 sigma per pixel, which no single pixel reveals.  Places
    where every exposure holds a track (and 2 pixels around) are left out:
    a hot pixel on a bright, steep source, which the moving model misses.
    Single pixels above ``MODEL_SIGMA`` such sigmas confirm a residual
    detection against the common scene: the two models err in different
    places (median of back-shifted exposures shifted again, against one
    direct interpolation), so a model error rarely passes both.

    Parameters
    ----------
    stack, models : ndarray, shape (N, ny, nx)
        Exposures and their models (electrons).
    masks : ndarray of bool, shape (N, ny, nx)
        Pixels known to be hit (CRMASKk).
    offsets : ndarray, shape (N, 2)
        (dx, dy) of every exposure, pixels.
    phi : sequence of float
        Factors of the modelled exposures.
    rnoise_e : float
        Readout noise, electrons.

    Returns
    -------
    LeaveOneOut
        ``tracks`` and ``strong`` (bool, shape (N, ny, nx)), and the models of
        the border frame for :func:`border_moved`.
    """
    others, border, border_models = _mean_of_others(stack, models, masks, offsets, phi)
    edge = 2 + math.ceil(_reach(offsets))  # the spline's support: beyond the image, its edge values stand in
    tracks = np.empty(stack.shape, dtype=bool)
    strong = np.empty(stack.shape, dtype=bool)
    for k in range(stack.shape[0]):
        residual = np.subtract(stack[k], others[k])
        residual /= sigma(others[k], rnoise_e)
        residual /= np.float32(MODEL_NOISE_FACTOR)
        residual[:edge], residual[-edge:], residual[:, :edge], residual[:, -edge:] = 0, 0, 0, 0
        tracks[k] = _significant_groups(residual)
        np.greater(residual, np.float32(MODEL_SIGMA), out=strong[k])
    # found in every exposure at once: a feature that does not move (hot pixel) the model misses
    tracks &= ~dilate(tracks.all(axis=0), 2)[None]
    return LeaveOneOut(tracks, strong, border, border_models)


def _mean_of_others(stack: np.ndarray, models: np.ndarray, masks: np.ndarray, offsets: np.ndarray,
                    phi) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Each exposure's model from the others: their mean, each shifted straight to its offset.

    Masked pixels take their models, except within ``BORDER + 3`` pixels of
    the edge, where the models extrapolate.  On the ``BORDER`` frame a
    second mean counts only the exposures that saw the pixel's content
    (their source lies inside the image), NaN where none did.

    Returns
    -------
    others : ndarray, shape (N, ny, nx), float32
        Models from the other exposures, scaled by ``phi``, clipped at 0.
    border : tuple of ndarray
        Rows and columns of the frame pixels.
    border_models : ndarray, shape (N, m), float32
        Models of the frame pixels without extrapolation.
    """
    n, ny, nx = stack.shape
    reach = _reach(offsets)
    ys, xs = np.nonzero(_frame((ny, nx), BORDER))
    inner = ~_frame((ny, nx), BORDER + 3)
    others = np.zeros(stack.shape, dtype=np.float32)
    border_sum, border_count = np.zeros((n, ys.size)), np.zeros((n, ys.size))
    for j in range(n):
        coeffs = spline_coefficients(np.where(masks[j] & inner, models[j], stack[j]) / np.float32(phi[j]), reach)
        for k in range(n):
            if k != j:
                dx, dy = offsets[k] - offsets[j]
                shifted = shift_spline_coefficients(coeffs, dx, dy, (ny, nx))
                others[k] += shifted
                seen = (ys - dy >= 0) & (ys - dy <= ny - 1) & (xs - dx >= 0) & (xs - dx <= nx - 1)
                border_sum[k] += np.where(seen, shifted[ys, xs], 0.0)
                border_count[k] += seen
        del coeffs
    scale = np.asarray(phi, dtype=np.float64)
    for k in range(n):
        others[k] *= np.float32(scale[k] / (n - 1))
    np.maximum(others, 0, out=others)
    with np.errstate(invalid="ignore", divide="ignore"):
        border_models = (border_sum / border_count * scale[:, None]).astype(np.float32)
    return others, (ys, xs), border_models


def _reach(offsets: np.ndarray) -> float:
    """Largest offset between two exposures along either axis (pixels)."""
    return float(np.abs(offsets[:, None, :] - offsets[None, :, :]).max())


def _frame(shape: tuple[int, int], width: int) -> np.ndarray:
    """Boolean map of the ``width`` outermost rows and columns."""
    out = np.zeros(shape, dtype=bool)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = True, True, True, True
    return out


def border_moved(stack: np.ndarray, loo: LeaveOneOut, stats: StackStats, noise: np.ndarray) -> np.ndarray:
    """Moved medians on the border frame, judged with models that do not extrapolate.

    On the outermost ``BORDER`` rows and columns the common scene, shifted
    back and forth, extrapolates beyond the image: its models are not
    trusted there, nor are the exposure masks built with them.  There each
    exposure is compared with the mean of the other exposures that saw the
    pixel's content (``loo.border_models``, no extrapolation); one that
    stands ``BORDER_HIT_SIGMA`` model sigmas above it is replaced by it, and a
    pixel whose median2d exceeds the median of the result by ``MOVED_SIGMA``
    noise sigmas is a moved median as in :func:`moved_medians`.  An exposure
    that no other exposure saw there is left as it is.
    """
    ys, xs = loo.border
    values = stack[:, ys, xs]
    with np.errstate(invalid="ignore"):
        hit = values - loo.border_models > BORDER_HIT_SIGMA * MODEL_NOISE_FACTOR * noise[ys, xs]
    values = np.where(hit, loo.border_models, values)
    moved = (stats.median2d[ys, xs] - np.median(values, axis=0)) / noise[ys, xs] > MOVED_SIGMA
    out = np.zeros(stack.shape[1:], dtype=bool)
    out[ys[moved], xs[moved]] = True
    return out


def _significant_groups(residual: np.ndarray) -> np.ndarray:
    """8-connected groups above ``TRACK_LOW`` whose summed residual reaches ``TRACK_SIGMA`` sigmas."""
    labels, n = label_groups(residual > np.float32(TRACK_LOW))
    if n == 0:
        return np.zeros(residual.shape, dtype=bool)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    sums = np.bincount(labels.ravel(), weights=residual.ravel(), minlength=n + 1)
    keep = sums > TRACK_SIGMA * np.sqrt(counts)
    keep[0] = False
    return keep[labels]


def without_hits(stack: np.ndarray, models: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The exposures with their known hits (``masks``, CRMASKk) replaced by their own models.

    What the data would be without the cosmic rays they are known to hold:
    the base of :func:`moved_medians`, and its minimum repairs MEDIANCR
    (an exposure hit on a line flank may be the lowest one without its hit,
    which the plain minimum of the others cannot tell).  ``models`` is
    overwritten and returned.
    """
    np.copyto(models, stack, where=~masks)
    return models


def moved_medians(cleaned: np.ndarray, stats: StackStats, noise: np.ndarray) -> np.ndarray:
    """Shifted exposures: where the masked hits move the median by more than ``MOVED_SIGMA``.

    On a line flank the exposures differ systematically, and a single hit
    can move the median to the next exposure's value.  The median of the
    exposures without their known hits (:func:`without_hits`) is what the
    data would give without them; median2d minus that, in noise sigmas, is
    how far they moved it.  A masked exposure that is not hit moves it by
    its own noise at most.

    Parameters
    ----------
    cleaned : ndarray, shape (N, ny, nx)
        Exposures without their known hits (:func:`without_hits`).
    stats : StackStats
        Statistics of the stack (``median2d``).
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma.

    Returns
    -------
    ndarray of bool, shape (ny, nx)
    """
    moved = stats.median2d - median_of_stack(cleaned)
    moved /= noise
    return moved > MOVED_SIGMA


def static_features(stats: StackStats, noise: np.ndarray, static: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where a model that moves the scene cannot be trusted: detector features and their surroundings.

    Hot pixels and the like stay put while the scene moves, so the shifted
    model is wrong on them and, after the spline shifts, on their neighbours:
    every pixel whose raw exposures agree within ``AGREEMENT_SIGMA``, every
    pixel within 2 of a detector feature that does not move (``static``,
    see :func:`static_pixels`), and the ``BORDER`` frame at the image edges.

    Parameters
    ----------
    stats : StackStats
        Statistics of the (unaligned) stack.
    noise : ndarray, shape (ny, nx)
        Single-exposure noise sigma.
    static : ndarray of bool, shape (ny, nx)
        Detector features that do not move (:func:`static_pixels`).

    Returns
    -------
    untrusted : ndarray of bool
        All of these: no residual detection, track or pair there.
    surroundings : ndarray of bool
        The features' surroundings and the frame only, where the moved-median
        rule is not trusted either.  Elsewhere a pixel whose exposures agree is no
        hot pixel, and the hits known nearby may well have moved its median (a faint
        hit on a line flank makes the exposures agree by chance).
    """
    agree = spread_sigmas(stats, noise) <= AGREEMENT_SIGMA
    surroundings = dilate(static, 2)
    surroundings |= _frame(surroundings.shape, BORDER)
    return agree | surroundings, surroundings


def static_pixels(stats: StackStats, floor: np.ndarray, noise: np.ndarray, stack: np.ndarray,
                  spread: np.ndarray | None = None, above: np.ndarray | None = None) -> np.ndarray:
    """Detector features that do not move (hot pixels): the cores of :func:`static_features`.

    Sharp in median2d (``HOT_PIXEL_SIGMA`` above the median of its 8
    neighbours), :func:`sharp_in_every_exposure` (on a line flank too),
    :func:`isolated` and, when ``above`` is given, above their own models in
    every exposure (the peak of a bright line is sharp as well, but it
    moves with the scene and its models fit it).
    """
    sharp = (stats.median2d - floor) / noise > HOT_PIXEL_SIGMA
    ys, xs = np.nonzero(sharp)
    keep = sharp_in_every_exposure(stack, noise, ys, xs)
    keep[keep] = isolated(stats, noise, spread, ys[keep], xs[keep])
    if above is not None:
        keep &= above[ys, xs]
    sharp[ys, xs] = keep
    return sharp
