"""Small MEGARA-like test frames evaluated analytically (test helper).

The scene is a stack of fibre traces (Gaussian cross-section along Y, one
every ~6.6 rows, slightly tilted) whose spectra hold a smooth continuum and
sky lines (Gaussian along X, FWHM 3 px), on top of a faint background.  Every
term is integrated over the pixel area (error functions), so a shifted
exposure is the scene evaluated at shifted coordinates, not an interpolated
copy.  Exposures get a flux factor, Poisson + read noise, cosmic rays (single
pixels, different in each exposure) and hot pixels (same in all exposures,
neither scaled nor shifted).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import erf

__all__ = ["FrameSet", "make_frames", "scene"]

_SQ2 = np.sqrt(2.0)


def _pixel_gauss(coord: np.ndarray, centre: np.ndarray | float, sigma: float) -> np.ndarray:
    """Integral over the unit pixel centred on ``coord`` of a unit-peak Gaussian."""
    hi = (coord + 0.5 - centre) / (_SQ2 * sigma)
    lo = (coord - 0.5 - centre) / (_SQ2 * sigma)
    return 0.5 * (erf(hi) - erf(lo)) * (np.sqrt(2.0 * np.pi) * sigma)


@dataclass(frozen=True)
class _SceneParams:
    fibre_y: np.ndarray      # trace centre at x = 0
    fibre_amp: np.ndarray    # continuum peak per fibre (e-)
    line_x: np.ndarray       # sky-line centres
    line_amp: np.ndarray     # sky-line peaks (e-)
    tilt: float              # trace slope (px per px)
    background: float        # uniform background (e-)


def _scene_params(ny: int, nx: int, rng: np.random.Generator) -> _SceneParams:
    fibre_y = np.arange(3.0, ny - 2.0, 6.6) + rng.uniform(-0.5, 0.5)
    nlines = max(4, nx // 30)
    line_x = np.sort(rng.uniform(8.0, nx - 8.0, nlines))
    return _SceneParams(
        fibre_y=fibre_y,
        fibre_amp=rng.uniform(50.0, 500.0, fibre_y.size),
        line_x=line_x,
        line_amp=np.exp(rng.uniform(np.log(500.0), np.log(20000.0), nlines)),
        tilt=rng.uniform(-0.004, 0.004),
        background=15.0,
    )


def scene(shape: tuple[int, int], params: _SceneParams, dx: float = 0.0,
          dy: float = 0.0) -> np.ndarray:
    """Noise-free scene (e-) with its content displaced by (+dx, +dy)."""
    ny, nx = shape
    x = np.arange(nx, dtype=np.float64) - dx
    y = np.arange(ny, dtype=np.float64)[:, None] - dy
    sigma_line = 3.0 / 2.3548
    spectrum = 0.3 + 0.7 * (1.0 + 0.3 * np.sin(x / 37.0)) * 0.5
    lines = np.zeros(nx)
    for xc, amp in zip(params.line_x, params.line_amp):
        lines += amp * _pixel_gauss(x, xc, sigma_line)
    out = np.full((ny, nx), params.background)
    spec_lines = lines[None, :]
    for yc, amp in zip(params.fibre_y, params.fibre_amp):
        centre = yc + dy + params.tilt * x[None, :]
        lo = max(int(np.floor(centre.min() - 9.0)), 0)
        hi = min(int(np.ceil(centre.max() + 9.0)), ny)
        if lo >= hi:
            continue
        prof = _pixel_gauss(y[lo:hi], centre - dy, 1.2)
        out[lo:hi] += prof * (amp * spectrum[None, :] + spec_lines)
    return out


@dataclass(frozen=True)
class FrameSet:
    """Simulated exposures (e-) and the truth used to make them."""

    stack: np.ndarray          # (N, ny, nx) float32
    factors: np.ndarray        # true flux factors
    offsets: np.ndarray        # true (dx, dy) per exposure
    cr_mask: np.ndarray        # (N, ny, nx) bool
    hot_mask: np.ndarray       # (ny, nx) bool
    truth: np.ndarray          # (N, ny, nx) noise-free expectation (no CR/hot)


def make_frames(seed: int, *, shape: tuple[int, int] = (300, 400),
                factors: tuple[float, ...] = (0.8, 1.0, 1.2),
                offsets: tuple[tuple[float, float], ...] = ((-0.5, 0.5), (0.0, 0.0),
                                                             (0.5, -0.25)),
                rnoise: float = 3.4, cr_fraction: float = 0.01,
                nhot: int = 60) -> FrameSet:
    """Build a seeded MEGARA-like exposure set.

    Parameters
    ----------
    seed : int
        Seed of the random generator (scene layout and noise).
    shape : tuple of int
        (ny, nx) of every exposure.
    factors, offsets : tuple
        True flux factor and content displacement (dx, dy) per exposure.
    rnoise : float
        Read noise in electrons.
    cr_fraction : float
        Fraction of pixels hit by a cosmic ray in each exposure.
    nhot : int
        Number of hot pixels (identical in every exposure).

    Returns
    -------
    FrameSet
    """
    rng = np.random.default_rng(seed)
    params = _scene_params(shape[0], shape[1], rng)
    hot = np.zeros(shape, dtype=bool)
    hot.flat[rng.choice(hot.size, nhot, replace=False)] = True
    hot_values = np.exp(rng.uniform(np.log(300.0), np.log(30000.0), nhot))
    nexp = len(factors)
    stack = np.empty((nexp,) + shape, dtype=np.float32)
    truth = np.empty((nexp,) + shape, dtype=np.float32)
    crs = np.zeros((nexp,) + shape, dtype=bool)
    for k, (fk, (dxk, dyk)) in enumerate(zip(factors, offsets)):
        lam = fk * scene(shape, params, dxk, dyk)
        truth[k] = lam
        frame = rng.poisson(lam).astype(np.float64) + rng.normal(0.0, rnoise, shape)
        frame[hot] += hot_values
        ncr = int(round(cr_fraction * frame.size))
        idx = rng.choice(frame.size, ncr, replace=False)
        frame.flat[idx] += rng.uniform(200.0, 5000.0, ncr)
        crs[k].flat[idx] = True
        stack[k] = frame
    return FrameSet(stack=stack, factors=np.asarray(factors, dtype=float),
                    offsets=np.asarray(offsets, dtype=float), cr_mask=crs,
                    hot_mask=hot, truth=truth)
