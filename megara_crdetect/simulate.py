"""Seeded simulator of MEGARA-like CCD exposures with known ground truth.

The simulator builds an analytic, noise-free scene (fibre traces along X,
stacked along Y, with sky continuum, sky emission lines, a few object fibres
and faint scattered light), evaluates it at the coordinates of every exposure
(content offsets and flux factors applied exactly, without interpolation),
adds fixed hot pixels, draws Poisson noise, deposits cosmic-ray (CR) tracks
(independent ones and events coincident in two or more exposures), adds read
noise and converts to ADU.

It feeds the package's ``--example`` runs, tests and benchmarks. Nothing here
does file I/O; all randomness derives from ``numpy.random.default_rng(seed)``.

Coordinates are 0-based numpy indices ``(row, col) = (y, x)``; the centre of
pixel ``(row, col)`` is at ``(y, x) = (row, col)``.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.special import erf

__all__ = ["SimulatedSet", "make_scene", "simulate_exposures"]

logger = logging.getLogger(__name__)

SeedLike = int | np.random.Generator | None

# --- scene ------------------------------------------------------------------
_FIBRE_PITCH = 6.6          # px between fibre traces along Y
_FIBRE_MARGIN = 40.0        # px of extra fibres beyond the image edges
_PROFILE_NSIGMA = 6.0       # half-width of the evaluated cross profile
_GUARANTEED_LINES_X = (239.0, 261.0)   # 0-based; FITS X = 240 and 262
_MIN_NX_GUARANTEED = 300    # width needed to place the guaranteed lines
_OBJECT_FRACTION = 0.07
_SQRT2 = float(np.sqrt(2.0))

# --- cosmic rays ------------------------------------------------------------
_TRACK_STEP = 0.5           # px between charge points along a track
_LEN_MEDIAN, _LEN_SIGMA, _LEN_RANGE = 2.5, 0.8, (1.0, 20.0)
_Q_MEDIAN, _Q_SIGMA, _Q_RANGE = 1000.0, 1.0, (50.0, 3.0e4)
_FAINT_FRACTION, _FAINT_RANGE = 0.15, (50.0, 200.0)
_FOOT_SIGMA_RANGE = (0.40, 0.55)   # px, Gaussian charge footprint
_MIN_DEPOSIT = 1.0          # e-; smaller per-event pixel deposits dropped
_P_TWO_EXPOSURES = 0.8

_MAX_FILL_BATCHES = 10_000
_NOISE_CHUNK_ROWS = 256
_STAMP = np.array([-1, 0, 1])


@dataclass(frozen=True, eq=False)
class SimulatedSet:
    """A simulated set of exposures with its ground truth.

    Attributes
    ----------
    exposures : numpy.ndarray
        ``(N, ny, nx)`` float32 in ADU, what the FITS files would contain:
        ``data_e / gain + bias``.
    expected : numpy.ndarray
        ``(N, ny, nx)`` float32, electrons: noise-free expectation of each
        exposure (flux factor, offset and hot pixels included, CRs excluded).
    cr_deposit : numpy.ndarray
        ``(N, ny, nx)`` float32, electrons of cosmic-ray charge per exposure.
    gain : float
        Electrons per ADU.
    rnoise : float
        Read noise in ADU.
    bias : float
        Bias level in ADU.
    flux_factors : tuple of float
        Flux factor of each exposure.
    offsets : tuple of tuple of float
        Content offset ``(dx, dy)`` of each exposure, pixels.
    hot_pixels : numpy.ndarray
        ``(M, 2)`` int, 0-based ``(row, col)`` of the hot pixels, sorted.
    hot_excess : numpy.ndarray
        ``(M,)`` float32, electrons added at each hot pixel in every exposure.
    coincident_events : list of tuple
        ``(row, col, exposures)`` of each coincident CR event: centre pixel
        (0-based) and the sorted tuple of 0-based exposure indices hit there.
    seed : int or None
        Seed given to the simulator (None if unseeded or a Generator).
    line_factors : numpy.ndarray or None
        ``(N, n_lines)`` strength of every sky (and arc-like) line in each
        exposure, relative to the scene (None: all 1).
    ratio_maps : numpy.ndarray or None
        ``(N, ny, nx)`` smooth factor applied to each exposure's scene on top
        of its flux factor (None: all 1).
    same_track : tuple of bool
        Per coincident event, whether both exposures it hits got the same track.
    """

    exposures: np.ndarray
    expected: np.ndarray
    cr_deposit: np.ndarray
    gain: float
    rnoise: float
    bias: float
    flux_factors: tuple[float, ...]
    offsets: tuple[tuple[float, float], ...]
    hot_pixels: np.ndarray
    hot_excess: np.ndarray
    coincident_events: list[tuple[int, int, tuple[int, ...]]]
    seed: int | None
    line_factors: np.ndarray | None = None
    ratio_maps: np.ndarray | None = None
    same_track: tuple[bool, ...] = ()

    @property
    def rnoise_e(self) -> float:
        """Read noise in electrons (``rnoise * gain``)."""
        return self.rnoise * self.gain

    @property
    def truth(self) -> np.ndarray:
        """Mean of ``expected`` over the exposures (electrons, float32)."""
        return self.expected.mean(axis=0, dtype=np.float64).astype(np.float32)


# =============================================================================
# Scene model
# =============================================================================
@dataclass(frozen=True)
class _SceneModel:
    """Parameters of the analytic scene (all in scene coordinates)."""

    nx: int
    ny: int
    fibre_y: np.ndarray        # trace centre at the middle column
    fibre_tilt: np.ndarray     # px, linear term in u
    fibre_sag: np.ndarray      # px, quadratic term in u
    fibre_sigma: np.ndarray    # px, Gaussian sigma of the cross profile
    fibre_thr: np.ndarray      # relative throughput (sky only)
    obj_amp: np.ndarray        # e- per column of object continuum (0 = sky)
    obj_slope: np.ndarray
    obj_line: np.ndarray       # (nfib, 3): x, flux, sigma (flux 0 = none)
    line_x: np.ndarray         # sky lines: centre, flux per fibre, sigma
    line_flux: np.ndarray
    line_sigma: np.ndarray
    sky_cont: tuple[float, float, float]    # c0, c1, c2 (polynomial in u)
    response: tuple[float, float]           # blaze centre u0, width
    background: tuple[float, float, float]  # b0, b1, width factor


def _pixel_fraction(sigma: np.ndarray | float) -> np.ndarray | float:
    """Fraction of a centred Gaussian's flux falling in its central pixel."""
    return erf(0.5 / (np.asarray(sigma) * _SQRT2))


def _draw_lines(rng: np.random.Generator, nx: int) -> tuple[np.ndarray, ...]:
    """Draw sky-line centres, fluxes (per fibre) and sigmas along X."""
    n_faint = max(3, nx // 25)
    n_bright = max(1, nx // 500)
    x_bright = rng.uniform(0.0, nx - 1.0, n_bright)
    if nx >= _MIN_NX_GUARANTEED:
        x_bright = np.concatenate([_GUARANTEED_LINES_X, x_bright])
    x = np.concatenate([x_bright, rng.uniform(0.0, nx - 1.0, n_faint)])
    peak = np.concatenate([
        np.exp(rng.uniform(np.log(3.0e3), np.log(2.0e4), x_bright.size)),
        np.exp(rng.uniform(np.log(20.0), np.log(600.0), n_faint)),
    ])
    sigma = rng.uniform(2.6, 3.4, x.size) / 2.3548
    # peak is the target peak pixel (e-) for a fibre of sigma 1.25 px
    flux = peak / (_pixel_fraction(sigma) * _pixel_fraction(1.25))
    return x, flux, sigma


def _draw_fibres(rng: np.random.Generator, ny: int) -> dict[str, np.ndarray]:
    """Draw fibre geometry, widths and throughputs (smooth in fibre index)."""
    y0 = rng.uniform(0.0, _FIBRE_PITCH)
    first = int(np.ceil((-_FIBRE_MARGIN - y0) / _FIBRE_PITCH))
    last = int(np.floor((ny - 1 + _FIBRE_MARGIN - y0) / _FIBRE_PITCH))
    y = y0 + _FIBRE_PITCH * np.arange(first, last + 1)
    v = y / max(ny, 1) - 0.5                     # -0.5 .. 0.5 along Y
    sag0, sag1 = rng.uniform(1.5, 3.5) * rng.choice([-1, 1]), rng.uniform(-1, 1)
    tilt0, tilt1 = rng.uniform(-0.6, 0.6), rng.uniform(-0.6, 0.6)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    sigma = 1.25 + 0.1 * np.sin(2.0 * np.pi * v + phase)
    sigma = np.clip(sigma + rng.uniform(-0.03, 0.03, y.size), 1.1, 1.4)
    thr = np.clip(1.0 + 0.05 * rng.standard_normal(y.size), 0.85, 1.15)
    return {"fibre_y": y, "fibre_tilt": tilt0 + tilt1 * v,
            "fibre_sag": sag0 + sag1 * v, "fibre_sigma": sigma, "fibre_thr": thr}


def _draw_objects(rng: np.random.Generator, sigma: np.ndarray,
                  nx: int) -> dict[str, np.ndarray]:
    """Choose object fibres; draw their continuum and optional line."""
    nfib = sigma.size
    is_obj = rng.random(nfib) < _OBJECT_FRACTION
    peak = np.exp(rng.uniform(np.log(200.0), np.log(3000.0), nfib))
    amp = np.where(is_obj, peak / _pixel_fraction(sigma), 0.0)
    slope = rng.uniform(-0.5, 0.5, nfib)
    has_line = is_obj & (rng.random(nfib) < 0.5)
    lsig = rng.uniform(2.6, 3.4, nfib) / 2.3548
    lpeak = np.exp(rng.uniform(np.log(200.0), np.log(5000.0), nfib))
    lflux = lpeak / (_pixel_fraction(lsig) * _pixel_fraction(sigma))
    line = np.column_stack([rng.uniform(0.0, nx - 1.0, nfib),
                            np.where(has_line, lflux, 0.0), lsig])
    return {"obj_amp": amp, "obj_slope": slope, "obj_line": line}


def _draw_scene_model(rng: np.random.Generator,
                      shape: tuple[int, int]) -> _SceneModel:
    """Draw all scene parameters from ``rng`` for an image of ``shape``."""
    ny, nx = shape
    fibres = _draw_fibres(rng, ny)
    objects = _draw_objects(rng, fibres["fibre_sigma"], nx)
    line_x, line_flux, line_sigma = _draw_lines(rng, nx)
    # integrated e- per column; peak pixel ~ 0.31 of it (tens of e-)
    sky = (rng.uniform(90.0, 150.0), rng.uniform(-0.2, 0.2), rng.uniform(-0.2, 0.1))
    response = (rng.uniform(-0.4, 0.4), rng.uniform(0.7, 1.1))
    background = (rng.uniform(0.8, 1.5), rng.uniform(2.0, 3.5), rng.uniform(0.4, 0.7))
    return _SceneModel(nx=nx, ny=ny, **fibres, **objects, line_x=line_x,
                       line_flux=line_flux, line_sigma=line_sigma,
                       sky_cont=sky, response=response, background=background)


def _lines_1d(xs: np.ndarray, centres: np.ndarray, fluxes: np.ndarray,
              sigmas: np.ndarray) -> np.ndarray:
    """Sum of pixel-integrated Gaussian lines evaluated on pixel centres ``xs``."""
    out = np.zeros(xs.size)
    for xc, flux, sig in zip(centres, fluxes, sigmas, strict=True):
        half = _PROFILE_NSIGMA * sig + 1.0
        lo, hi = np.searchsorted(xs, [xc - half, xc + half])
        if lo >= hi or flux == 0.0:
            continue
        edges = np.append(xs[lo:hi] - 0.5, xs[hi - 1] + 0.5) - xc
        out[lo:hi] += 0.5 * flux * np.diff(erf(edges / (sig * _SQRT2)))
    return out


def _spectra_1d(model: _SceneModel, xs: np.ndarray, u: np.ndarray,
                line_scale: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return the sky spectrum and the instrument response on ``xs``.

    ``line_scale``: optional factor of every sky line's flux.
    """
    u0, width = model.response
    resp = 0.35 + 0.65 * np.exp(-0.5 * ((u - u0) / width) ** 2)
    c0, c1, c2 = model.sky_cont
    sky = c0 * (1.0 + c1 * u + c2 * u**2) * resp
    flux = model.line_flux if line_scale is None else model.line_flux * line_scale
    sky += _lines_1d(xs, model.line_x, flux, model.line_sigma)
    return sky, resp


def _render_scene(model: _SceneModel, offset: tuple[float, float],
                  out: np.ndarray, line_scale: np.ndarray | None = None) -> None:
    """Evaluate ``scene(x - dx, y - dy)`` on the pixel grid into ``out``."""
    ny, nx = out.shape
    dx, dy = offset
    xs = np.arange(nx, dtype=np.float64) - dx          # scene x of columns
    ys = np.arange(ny, dtype=np.float64) - dy
    b0, b1, wfac = model.background
    gx = np.exp(-0.5 * ((xs - 0.5 * model.nx) / (wfac * model.nx)) ** 2)
    gy = np.exp(-0.5 * ((ys - 0.55 * model.ny) / (wfac * model.ny)) ** 2)
    np.multiply.outer(b1 * gy, gx, out=out, casting="same_kind")
    out += np.float32(b0)
    u = (xs - 0.5 * (model.nx - 1)) / (0.5 * max(model.nx, 2))
    sky, resp = _spectra_1d(model, xs, u, line_scale)
    for i in range(model.fibre_y.size):
        yc = model.fibre_y[i] + model.fibre_tilt[i] * u + model.fibre_sag[i] * u**2 + dy
        half = int(np.ceil(_PROFILE_NSIGMA * model.fibre_sigma[i]))
        r0 = max(0, int(np.floor(yc.min())) - half)
        r1 = min(ny, int(np.floor(yc.max())) + half + 2)
        if r0 >= r1:
            continue
        spec = model.fibre_thr[i] * sky
        if model.obj_amp[i] > 0.0:
            spec = spec + model.obj_amp[i] * resp * (1.0 + model.obj_slope[i] * u)
            spec += _lines_1d(xs, *model.obj_line[i:i + 1].T)
        edges = (np.arange(r0, r1 + 1) - 0.5)[:, None] - yc[None, :]
        cdf = erf(edges.astype(np.float32) / np.float32(model.fibre_sigma[i] * _SQRT2))
        out[r0:r1] += np.diff(cdf, axis=0) * (0.5 * spec).astype(np.float32)


def make_scene(shape: tuple[int, int], *, seed: SeedLike = 1234,
               offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Evaluate the noise-free astrophysical scene (electrons).

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)`` of the image.
    seed : int, numpy.random.Generator or None, optional
        Seed; with the same integer seed and shape, the scene equals the one
        used by `simulate_exposures` (before flux factors and hot pixels).
    offset : tuple of float, optional
        Content offset ``(dx, dy)`` in pixels; positive ``dx`` moves the
        content towards larger column index, positive ``dy`` towards larger
        row index.

    Returns
    -------
    numpy.ndarray
        ``(ny, nx)`` float32 scene ``scene(x - dx, y - dy)``, no hot pixels.
    """
    shape = _check_shape(shape)
    off = _check_pairs("offset", offset, (2,))
    scene_rng = _root_rng(seed).spawn(4)[0]
    model = _draw_scene_model(scene_rng, shape)
    out = np.empty(shape, dtype=np.float32)
    _render_scene(model, (float(off[0]), float(off[1])), out)
    return out


# =============================================================================
# Hot pixels
# =============================================================================
def _draw_hot_pixels(rng: np.random.Generator, shape: tuple[int, int],
                     hot_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Draw isolated hot pixels and a few 2-3 pixel clusters.

    Returns sorted ``(M, 2)`` (row, col) positions and their excess (e-).
    """
    ny, nx = shape
    npix = ny * nx
    if hot_fraction == 0.0:
        return np.empty((0, 2), dtype=np.int64), np.empty(0, dtype=np.float32)
    n_hot = min(npix, max(5, round(hot_fraction * npix)))
    n_clusters = max(1, n_hot // 16) if (ny >= 3 and nx >= 3 and n_hot >= 5) else 0
    flat = [rng.choice(npix, size=n_hot - 2 * n_clusters, replace=False)]
    excess = [np.exp(rng.uniform(np.log(100.0), np.log(5000.0), flat[0].size))]
    steps = np.array([(0, 1), (1, 0), (1, 1), (1, -1)])
    for _ in range(n_clusters):
        r, c = int(rng.integers(1, ny - 1)), int(rng.integers(1, nx - 1))
        size = int(rng.integers(2, 4))
        step = steps[rng.integers(steps.shape[0])]
        members = np.array([(r, c), (r + step[0], c + step[1]), (r - step[0], c - step[1])])
        flat.append(members[:size, 0] * nx + members[:size, 1])
        peak = np.exp(rng.uniform(np.log(500.0), np.log(5000.0)))
        excess.append(peak * np.concatenate([[1.0], rng.uniform(0.2, 1.0, size - 1)]))
    flat_all, first = np.unique(np.concatenate(flat), return_index=True)
    values = np.concatenate(excess)[first].astype(np.float32)
    rows, cols = np.divmod(flat_all, nx)
    return np.column_stack([rows, cols]).astype(np.int64), values


# =============================================================================
# Cosmic rays
# =============================================================================
class _Events(NamedTuple):
    """Parameters of a batch of CR events (scene-free pixel coordinates)."""

    x: np.ndarray
    y: np.ndarray
    length: np.ndarray
    angle: np.ndarray
    charge: np.ndarray
    sigma: np.ndarray
    single: np.ndarray


def _draw_events(rng: np.random.Generator, n: int, shape: tuple[int, int], *,
                 centre: tuple[int, int] | None = None) -> _Events:
    """Draw ``n`` CR events; with ``centre`` their tracks cross that pixel."""
    ny, nx = shape
    single = rng.random(n) < _FAINT_FRACTION
    length = np.clip(rng.lognormal(np.log(_LEN_MEDIAN), _LEN_SIGMA, n), *_LEN_RANGE)
    angle = rng.uniform(0.0, np.pi, n)
    charge = np.clip(rng.lognormal(np.log(_Q_MEDIAN), _Q_SIGMA, n), *_Q_RANGE)
    charge = np.where(single, rng.uniform(*_FAINT_RANGE, n), charge)
    sigma = rng.uniform(*_FOOT_SIGMA_RANGE, n)
    if centre is None:
        x, y = rng.uniform(-0.5, nx - 0.5, n), rng.uniform(-0.5, ny - 0.5, n)
    else:
        shift = np.where(single, 0.0, rng.uniform(-0.5, 0.5, n) * length)
        x = centre[1] + shift * np.cos(angle)
        y = centre[0] + shift * np.sin(angle)
    return _Events(x, y, length, angle, charge, sigma, single)


def _axis_weights(frac: np.ndarray, sigma: np.ndarray,
                  single: np.ndarray) -> np.ndarray:
    """Pixel weights at offsets -1, 0, +1 of a Gaussian centred at ``frac``."""
    edges = np.array([-1.5, -0.5, 0.5, 1.5])[None, :] - frac[:, None]
    w = np.diff(erf(edges / (sigma[:, None] * _SQRT2)), axis=1)
    w /= w.sum(axis=1, keepdims=True)
    return np.where(single[:, None], np.array([0.0, 1.0, 0.0]), w)


def _rasterise(ev: _Events, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Rasterise events; return flat pixel index, deposit (e-) and event id.

    Each (event, pixel) pair appears once; deposits below ``_MIN_DEPOSIT``
    and pixels outside the image are dropped.
    """
    ny, nx = shape
    npts = np.where(ev.single, 1, np.ceil(ev.length / _TRACK_STEP).astype(np.int64) + 1)
    eid = np.repeat(np.arange(npts.size), npts)
    n = npts[eid]
    j = np.arange(eid.size) - (np.cumsum(npts) - npts)[eid]
    t = (j / np.maximum(n - 1, 1) - np.where(n > 1, 0.5, 0.0)) * ev.length[eid]
    px = ev.x[eid] + t * np.cos(ev.angle[eid])
    py = ev.y[eid] + t * np.sin(ev.angle[eid])
    ix, iy = np.rint(px).astype(np.int64), np.rint(py).astype(np.int64)
    wx = _axis_weights(px - ix, ev.sigma[eid], ev.single[eid])
    wy = _axis_weights(py - iy, ev.sigma[eid], ev.single[eid])
    vals = (ev.charge[eid] / n)[:, None, None] * wy[:, :, None] * wx[:, None, :]
    rows = iy[:, None, None] + _STAMP[None, :, None]
    cols = ix[:, None, None] + _STAMP[None, None, :]
    ok = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx) & (vals > 0.0)
    key = eid[:, None, None] * (ny * nx) + rows * nx + cols
    ukey, inv = np.unique(key[ok], return_inverse=True)
    dep = np.bincount(inv, weights=vals[ok])
    keep = dep >= _MIN_DEPOSIT
    eid_out, flat = np.divmod(ukey[keep], ny * nx)
    return flat, dep[keep], eid_out


def _add_coincident(rng: np.random.Generator, cr: np.ndarray, n_events: int,
                    same_track: np.ndarray | None = None) -> tuple[list, list[set[int]]]:
    """Add CR events hitting one centre pixel in >= 2 exposures.

    ``same_track[i]``: event ``i``, if it hits two exposures, deposits one
    identical track in both (default: an independent track in each).  Returns the
    event list and, per exposure, the set of flat centre pixels that must
    stay free of CR charge in that exposure.
    """
    n_exp, ny, nx = cr.shape
    flat_cr = cr.reshape(n_exp, -1)
    protected: list[set[int]] = [set() for _ in range(n_exp)]
    centres: set[int] = set()
    events: list[tuple[int, int, tuple[int, ...]]] = []
    max_attempts = 50 * n_events + 100
    for _ in range(max_attempts):
        if len(events) == n_events:
            break
        c0 = int(rng.integers(ny * nx))
        two = n_exp == 2 or rng.random() < _P_TWO_EXPOSURES
        m = 2 if two else int(rng.integers(3, n_exp + 1))
        chosen = tuple(int(k) for k in np.sort(rng.choice(n_exp, m, replace=False)))
        others = [k for k in range(n_exp) if k not in chosen]
        if c0 in centres or any(flat_cr[k, c0] != 0.0 for k in others):
            continue
        tracks = []
        same = same_track is not None and bool(same_track[len(events)]) and m == 2
        shared = _rasterise(_draw_events(rng, 1, (ny, nx), centre=divmod(c0, nx)), (ny, nx)) if same else None
        for k in chosen:
            if same:
                flat, dep, _ = shared
            else:
                track = _draw_events(rng, 1, (ny, nx), centre=divmod(c0, nx))
                flat, dep, _ = _rasterise(track, (ny, nx))
            if c0 not in flat or not protected[k].isdisjoint(flat.tolist()):
                break
            tracks.append((k, flat, dep))
        else:
            for k, flat, dep in tracks:
                flat_cr[k, flat] += dep.astype(np.float32)
            for k in others:
                protected[k].add(c0)
            centres.add(c0)
            events.append((c0 // nx, c0 % nx, chosen))
    if len(events) < n_events:
        msg = f"n_coincident={n_events} is too large for an image of shape {(ny, nx)}"
        raise ValueError(msg)
    return events, protected


def _fill_random(rng: np.random.Generator, cr_k: np.ndarray, target: int,
                 protected: set[int]) -> None:
    """Add independent CR events to ``cr_k`` until ``target`` pixels are hit.

    Events that would touch a ``protected`` pixel are discarded.
    """
    shape = cr_k.shape
    flat_img = cr_k.reshape(-1)
    prot = np.fromiter(protected, dtype=np.int64, count=len(protected))
    hit = int(np.count_nonzero(flat_img))
    n_new_total, n_ev_total = 0, 0
    for _ in range(_MAX_FILL_BATCHES):
        if hit >= target:
            break
        per_event = max(1.0, n_new_total / n_ev_total) if n_ev_total else 25.0
        n_ev = max(1, int(0.8 * (target - hit) / per_event))
        flat, dep, eid = _rasterise(_draw_events(rng, n_ev, shape), shape)
        if prot.size:
            bad = np.isin(eid, eid[np.isin(flat, prot)])
            flat, dep, eid = flat[~bad], dep[~bad], eid[~bad]
        ufl = np.unique(flat)
        new = int(np.count_nonzero(flat_img[ufl] == 0.0))
        np.add.at(flat_img, flat, dep.astype(np.float32))
        hit += new
        n_new_total += new
        n_ev_total += np.unique(eid).size
    if hit < target:
        msg = f"cr_fraction cannot be reached for an image of shape {shape}"
        raise ValueError(msg)
    logger.debug("random CRs: %d events, %d pixels hit", n_ev_total, hit)


# =============================================================================
# Noise
# =============================================================================
def _draw_noisy(rng: np.random.Generator, expected: np.ndarray, cr: np.ndarray,
                *, gain: float, rnoise: float, bias: float,
                out: np.ndarray) -> None:
    """``out = (Poisson(expected) + cr + N(0, rnoise*gain)) / gain + bias``."""
    n_exp, ny, _ = expected.shape
    rnoise_e = np.float32(rnoise * gain)
    for k in range(n_exp):
        for r0 in range(0, ny, _NOISE_CHUNK_ROWS):
            r1 = min(ny, r0 + _NOISE_CHUNK_ROWS)
            blk = out[k, r0:r1]
            blk[...] = rng.poisson(expected[k, r0:r1])
            blk += cr[k, r0:r1]
            if rnoise_e > 0:
                blk += rnoise_e * rng.standard_normal(blk.shape, dtype=np.float32)
            blk /= np.float32(gain)
            blk += np.float32(bias)


# =============================================================================
# Validation
# =============================================================================
def _root_rng(seed: SeedLike) -> np.random.Generator:
    """Return the root generator for ``seed`` (a Generator is used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int | np.integer)
                             or seed < 0):
        msg = f"seed must be a non-negative int, a numpy Generator or None, got {seed!r}"
        raise ValueError(msg)
    return np.random.default_rng(seed)


def _check_shape(shape: object) -> tuple[int, int]:
    """Validate ``shape`` as two positive integers."""
    try:
        items = tuple(shape)  # type: ignore[arg-type]
    except TypeError:
        items = ()
    if len(items) != 2 or not all(
            isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items):
        msg = f"shape must be a pair of positive integers (ny, nx), got {shape!r}"
        raise ValueError(msg)
    return int(items[0]), int(items[1])


def _check_number(name: str, value: object, *, low: float | None = None,
                  high: float | None = None, strict: bool = False) -> float:
    """Validate a finite real in ``[low, high]`` (``low`` excluded if ``strict``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        msg = f"{name} must be a real number, got {value!r}"
        raise ValueError(msg)
    val = float(value)
    too_low = low is not None and (val <= low if strict else val < low)
    if not np.isfinite(val) or too_low or (high is not None and val > high):
        bounds = [] if low is None else [f"{'>' if strict else '>='} {low}"]
        bounds += [] if high is None else [f"<= {high}"]
        msg = f"{name} must be finite{''.join(', ' + b for b in bounds)}; got {value!r}"
        raise ValueError(msg)
    return val


def _check_int(name: str, value: object, *, low: int) -> int:
    """Validate an integer ``>= low``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        msg = f"{name} must be an integer >= {low}, got {value!r}"
        raise ValueError(msg)
    return int(value)


def _check_factors(flux_factors: object, n: int) -> np.ndarray:
    """Validate ``flux_factors``: ``n`` finite values > 0 (None -> ones)."""
    if flux_factors is None:
        return np.ones(n)
    try:
        arr = np.asarray(flux_factors, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != (n,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        msg = f"flux_factors must be {n} finite values > 0 (one per exposure), " \
              f"got {flux_factors!r}"
        raise ValueError(msg)
    return arr


def _check_pairs(name: str, value: object, shape: tuple[int, ...]) -> np.ndarray:
    """Validate finite ``(dx, dy)`` offsets of the given array ``shape``."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.shape != shape or not np.all(np.isfinite(arr)):
        what = "a finite (dx, dy) pair" if len(shape) == 1 else f"{shape[0]} finite (dx, dy) pairs"
        msg = f"{name} must be {what}, got {value!r}"
        raise ValueError(msg)
    return arr


# =============================================================================
# Public entry point
# =============================================================================
def simulate_exposures(shape: tuple[int, int] = (1596, 2016), n_exposures: int = 3, *,
                       gain: float = 1.0, rnoise: float = 3.4, bias: float = 0.0,
                       flux_factors: list[float] | None = None,
                       offsets: list[tuple[float, float]] | None = None,
                       cr_fraction: float = 0.01, n_coincident: int = 150,
                       hot_fraction: float = 2e-5, seed: SeedLike = 1234,
                       line_variation: float = 0.0, arc_lines: int = 0,
                       smooth_variation: float = 0.0,
                       same_track_fraction: float = 0.0) -> SimulatedSet:
    """Simulate ``n_exposures`` MEGARA-like exposures with known ground truth.

    Parameters
    ----------
    shape : tuple of int, optional
        ``(ny, nx)`` of each exposure (MEGARA full frame: ``(4112, 4096)``).
    n_exposures : int, optional
        Number of exposures, >= 1.
    gain : float, optional
        Electrons per ADU, > 0.
    rnoise : float, optional
        Read noise in ADU, >= 0.
    bias : float, optional
        Bias level in ADU added to the output exposures.
    flux_factors : sequence of float, optional
        One factor > 0 per exposure scaling the scene (default all 1).
    offsets : sequence of (float, float), optional
        Content offset ``(dx, dy)`` per exposure in pixels (default zeros);
        exposure ``k`` is ``scene(x - dx_k, y - dy_k)``.
    cr_fraction : float, optional
        Fraction of the pixels of each exposure with CR charge > 0, in
        ``[0, 0.5]``; reached by adding independent events.
    n_coincident : int, optional
        Number of coincident CR events (centre pixel hit in >= 2 exposures).
        Must be 0 when ``n_exposures == 1``.
    hot_fraction : float, optional
        Fraction of hot pixels, in ``[0, 0.01]`` (at least 5 when > 0).
    seed : int, numpy.random.Generator or None, optional
        Seed of ``numpy.random.default_rng``; same seed, same output.
    line_variation : float, optional
        Real exposures are not equivalent: every sky (and arc-like) line gets
        its own strength in each exposure, ``1 + U(-v, v)``, in ``[0, 0.5]``.
    arc_lines : int, optional
        Extra bright arc-like lines (peaks 2 000 - 40 000 e- per fibre),
        drawn like the sky lines; with ``line_variation`` they vary as well.
    smooth_variation : float, optional
        Amplitude ``a`` in ``[0, 0.5]`` of a smooth ratio map applied to each
        exposure's scene (``1 + a * m_k``, ``|m_k| <= 1``, a few long-wavelength
        modes across the detector): transparency or illumination that changes
        across the field.
    same_track_fraction : float, optional
        Fraction in ``[0, 1]`` of the coincident events hitting two exposures
        that leave the same track in both (otherwise, and always for events
        hitting three or more, a different track crossing the same centre
        pixel: one track in every exposure would look like a hot pixel).

    Returns
    -------
    SimulatedSet
        Exposures in ADU and the ground truth in electrons.

    Notes
    -----
    ``expected_k = f_k * scene(x - dx_k, y - dy_k) + hot``: the whole
    astrophysical scene, including the faint scattered-light background, is
    shifted and scaled; hot pixels are detector features, identical in every
    exposure. Fibres beyond 40 px outside the image are not modelled, so
    larger offsets leave an empty band at the edge. The data are
    ``data_e = Poisson(expected_k) + cr_k + N(0, (rnoise*gain)**2)`` and
    ``exposures = data_e / gain + bias``. Coincident events are drawn first;
    then independent events are added to each exposure until
    ``cr_fraction`` of its pixels are hit (coincident ones included), never
    touching a coincident centre pixel in an exposure not listed for it.
    Per-event pixel deposits below 1 e- are dropped. Scene, hot pixels,
    CRs and noise use separate child streams of ``default_rng(seed)``, so
    `make_scene` with the same integer seed reproduces the scene; the
    variations between exposures (lines, ratio maps, same tracks) use a fifth
    stream, so without them the output is that of earlier versions.
    """
    shape = _check_shape(shape)
    n_exp = _check_int("n_exposures", n_exposures, low=1)
    gain = _check_number("gain", gain, low=0.0, strict=True)
    rnoise = _check_number("rnoise", rnoise, low=0.0)
    bias = _check_number("bias", bias)
    factors = _check_factors(flux_factors, n_exp)
    offs = (np.zeros((n_exp, 2)) if offsets is None
            else _check_pairs("offsets", offsets, (n_exp, 2)))
    cr_fraction = _check_number("cr_fraction", cr_fraction, low=0.0, high=0.5)
    n_coincident = _check_int("n_coincident", n_coincident, low=0)
    if n_exp == 1 and n_coincident > 0:
        msg = "n_coincident must be 0 when n_exposures == 1 (coincidences need 2 exposures)"
        raise ValueError(msg)
    hot_fraction = _check_number("hot_fraction", hot_fraction, low=0.0, high=0.01)
    line_variation = _check_number("line_variation", line_variation, low=0.0, high=0.5)
    arc_lines = _check_int("arc_lines", arc_lines, low=0)
    smooth_variation = _check_number("smooth_variation", smooth_variation, low=0.0, high=0.5)
    same_track_fraction = _check_number("same_track_fraction", same_track_fraction, low=0.0, high=1.0)
    scene_rng, hot_rng, cr_rng, noise_rng, var_rng = _root_rng(seed).spawn(5)

    model = _draw_scene_model(scene_rng, shape)
    if arc_lines:
        model = _with_arc_lines(var_rng, model, arc_lines)
    line_factors = (1.0 + var_rng.uniform(-line_variation, line_variation, (n_exp, model.line_x.size))
                    if line_variation > 0 else None)
    ratio_maps = (np.stack([1.0 + smooth_variation * _smooth_map(var_rng, shape) for _ in range(n_exp)])
                  .astype(np.float32) if smooth_variation > 0 else None)
    expected = _expected_stack(model, shape, factors, offs, line_factors, ratio_maps)
    hot_pixels, hot_excess = _draw_hot_pixels(hot_rng, shape, hot_fraction)
    expected[:, hot_pixels[:, 0], hot_pixels[:, 1]] += hot_excess

    cr = np.zeros((n_exp, *shape), dtype=np.float32)
    same = var_rng.random(n_coincident) < same_track_fraction if same_track_fraction > 0 else None
    events, protected = _add_coincident(cr_rng, cr, n_coincident, same)
    target = int(np.ceil(cr_fraction * shape[0] * shape[1]))
    for k in range(n_exp):
        _fill_random(cr_rng, cr[k], target, protected[k])

    exposures = np.empty_like(expected)
    _draw_noisy(noise_rng, expected, cr, gain=gain, rnoise=rnoise, bias=bias, out=exposures)
    return SimulatedSet(
        exposures=exposures, expected=expected, cr_deposit=cr, gain=gain, rnoise=rnoise,
        bias=bias, flux_factors=tuple(float(f) for f in factors),
        offsets=tuple((float(dx), float(dy)) for dx, dy in offs),
        hot_pixels=hot_pixels, hot_excess=hot_excess, coincident_events=events,
        seed=int(seed) if isinstance(seed, int | np.integer) else None,
        line_factors=line_factors, ratio_maps=ratio_maps,
        same_track=(tuple(bool(v) and len(ev[2]) == 2 for v, ev in zip(same, events, strict=False))
                    if same is not None else ()))


def _with_arc_lines(rng: np.random.Generator, model: _SceneModel, n: int) -> _SceneModel:
    """The scene with ``n`` bright arc-like lines added to its sky lines."""
    x = rng.uniform(0.0, model.nx - 1.0, n)
    peak = np.exp(rng.uniform(np.log(2.0e3), np.log(4.0e4), n))
    sigma = rng.uniform(2.6, 3.4, n) / 2.3548
    flux = peak / (_pixel_fraction(sigma) * _pixel_fraction(1.25))
    return dataclasses.replace(model, line_x=np.concatenate([model.line_x, x]),
                               line_flux=np.concatenate([model.line_flux, flux]),
                               line_sigma=np.concatenate([model.line_sigma, sigma]))


def _smooth_map(rng: np.random.Generator, shape: tuple[int, int], n_modes: int = 4) -> np.ndarray:
    """A smooth map in [-1, 1] with its extreme at 1: a few long-wavelength cosine modes."""
    ny, nx = shape
    v = np.linspace(0.0, 1.0, ny)[:, None]
    u = np.linspace(0.0, 1.0, nx)[None, :]
    out = np.zeros(shape)
    for _ in range(n_modes):
        ky, kx = rng.uniform(0.0, 1.5, 2)
        py, px = rng.uniform(0.0, 1.0, 2)
        out += rng.normal() * np.cos(np.pi * (ky * v + py)) * np.cos(np.pi * (kx * u + px))
    return out / max(np.abs(out).max(), 1e-12)


def _expected_stack(model: _SceneModel, shape: tuple[int, int], factors: np.ndarray,
                    offsets: np.ndarray, line_factors: np.ndarray | None = None,
                    ratio_maps: np.ndarray | None = None) -> np.ndarray:
    """Render ``f_k * m_k * scene_k(x - dx_k, y - dy_k)`` for every exposure.

    ``scene_k`` has its lines scaled by ``line_factors[k]`` and ``m_k`` is
    ``ratio_maps[k]`` (each optional).
    """
    expected = np.empty((factors.size, *shape), dtype=np.float32)
    done: dict[tuple[float, float], int] = {}
    for k, off in enumerate(map(tuple, offsets)):
        if line_factors is not None:
            _render_scene(model, off, expected[k], line_factors[k])
        elif off in done:
            expected[k] = expected[done[off]]
        else:
            _render_scene(model, off, expected[k])
            done[off] = k
    for k, fac in enumerate(factors):
        if ratio_maps is not None:
            expected[k] *= ratio_maps[k]
        if fac != 1.0:
            expected[k] *= np.float32(fac)
    return expected
