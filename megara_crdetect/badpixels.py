"""Bad input pixels: non-finite values and saturation, per exposure.

A NaN or infinite value is a bad pixel of its exposure; a value at or above
the saturation level (``la_satlevel``, ADU) is a lower limit.  Both are left
out of their exposure (the other exposures give the pixel's value, the
exposure map counts them), except that a pixel saturated in every exposure
keeps its saturated values (there is nothing better).  Neither is ever
flagged as a cosmic ray: the detection ignores every such pixel, and the
products mark them in the DQ plane (``BAD_INPUT``, ``SATURATED``,
``NO_DATA``).  Pure functions on arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError

__all__ = ["BadPixels", "find_bad_pixels", "check_levels"]

#: An exposure whose median lies this many read-noise sigmas below zero (after the bias) is suspicious.
NEGATIVE_LEVEL_SIGMA = 5.0

_log = logging.getLogger(__name__)


@dataclass
class BadPixels:
    """Bad input pixels of a stack.

    Attributes
    ----------
    left_out : ndarray of bool, shape (N, ny, nx), or None
        Values left out of their exposure (None: none).
    nonfinite : ndarray of bool, shape (ny, nx)
        NaN or infinite in at least one exposure.
    saturated : ndarray of bool, shape (ny, nx)
        At or above the saturation level in at least one exposure.
    no_data : ndarray of bool, shape (ny, nx)
        Left out of every exposure.
    """

    left_out: np.ndarray | None
    nonfinite: np.ndarray
    saturated: np.ndarray
    no_data: np.ndarray

    @property
    def ignore(self) -> np.ndarray | None:
        """Pixels the detection must not flag (None: none)."""
        out = self.nonfinite | self.saturated
        return out if out.any() else None


def _fill(stack: np.ndarray, left_out: np.ndarray) -> None:
    """Replace left-out values, in place, by the median of the kept ones at that pixel (0 if none)."""
    touched = left_out.any(axis=0)
    vals = stack[:, touched].astype(np.float64)
    bad = left_out[:, touched]
    vals[bad] = np.nan
    kept = (~bad).any(axis=0)
    fill = np.zeros(kept.shape)
    if kept.any():
        fill[kept] = np.nanmedian(vals[:, kept], axis=0)
    vals = np.where(bad, fill[None, :], vals)
    stack[:, touched] = vals.astype(stack.dtype)


def find_bad_pixels(stack: np.ndarray, saturation: float, labels: Sequence[str]) -> BadPixels:
    """Find the bad input pixels and give them finite fillers (in place).

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Exposures (any units); left-out values are replaced, in place, by
        the median of the kept values of the pixel so that the detection
        sees the exposures agree there.
    saturation : float
        Saturation level in the units of ``stack``.
    labels : sequence of str
        Names of the exposures for the messages (``images[k] = 'file'``).

    Returns
    -------
    BadPixels

    Raises
    ------
    InputError
        An exposure with no finite pixel, or saturated everywhere.
    """
    n = stack.shape[0]
    # the stack went through float32 (x - bias) * gain: allow for its rounding (1e-6 ~ 0.07 ADU at 65535)
    saturation = saturation - abs(saturation) * 1e-6
    nonfinite = np.zeros(stack.shape, dtype=bool)
    saturated = np.zeros(stack.shape, dtype=bool)
    npix, clean = stack[0].size, True
    for k in range(n):
        np.logical_not(np.isfinite(stack[k]), out=nonfinite[k])
        nbad = np.count_nonzero(nonfinite[k])
        with np.errstate(invalid="ignore"):
            np.greater_equal(stack[k], saturation, out=saturated[k])
        if nbad:  # NaN compares False: only infinities can be both
            saturated[k] &= ~nonfinite[k]
        nsat = np.count_nonzero(saturated[k])
        if nbad == npix:
            raise InputError(f"{labels[k]}: every pixel is NaN or infinite; there is no data to use")
        if nsat == npix:
            raise InputError(f"{labels[k]}: every pixel is at or above the saturation level (la_satlevel); "
                             "there is no data to use")
        if nbad or nsat:
            clean = False
            _log.info("%s: %d NaN/infinite and %d saturated pixel(s), left out of this exposure and never "
                      "flagged as cosmic rays", labels[k], nbad, nsat)
    if clean:  # the usual case: nothing to leave out
        return BadPixels(None, *(np.zeros(stack.shape[1:], dtype=bool) for _ in range(3)))
    all_saturated = saturated.all(axis=0)
    left_out = nonfinite | (saturated & ~all_saturated)
    if not left_out.any():
        left_out_or_none = None
    else:
        _fill(stack, left_out)
        left_out_or_none = left_out
    return BadPixels(left_out_or_none, nonfinite.any(axis=0), saturated.any(axis=0), left_out.all(axis=0))


def check_levels(stack: np.ndarray, rnoise_e: float, labels: Sequence[str], *, gain: float = 1.0) -> None:
    """Refuse constant exposures and warn about exposures far below the bias level.

    The noise model (``max(signal, 0) + rnoise**2``) needs bias-subtracted
    counts that are >= 0 on average; a frame whose median lies more than
    :data:`NEGATIVE_LEVEL_SIGMA` read-noise sigmas below zero (wrong ``bias``,
    a frame already bias-subtracted, a pedestal) makes the exposures disagree
    everywhere and the detection flag noise.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx)
        Exposures in electrons, bias subtracted (bad pixels already filled).
    rnoise_e : float
        Read noise in electrons.
    labels : sequence of str
        Names of the exposures.
    gain : float
        e-/ADU, to quote the level in ADU.

    Raises
    ------
    InputError
        An exposure with one value everywhere (no noise: not an exposure).
    """
    for k, plane in enumerate(stack):
        lo, hi = float(plane.min()), float(plane.max())
        if lo == hi:
            raise InputError(f"{labels[k]}: every pixel has the same value ({lo / gain:g} ADU after the bias); "
                             "a constant image is not an exposure")
        level = float(np.median(plane[::3, ::3]))  # a sample is enough for a level
        if level < -NEGATIVE_LEVEL_SIGMA * max(rnoise_e, 1e-6):
            _log.warning("%s: the median level is %.1f ADU below the bias level (%.0f read-noise sigmas): "
                         "check the bias (and that the file is not already bias-subtracted); the noise model "
                         "expects counts >= 0 and will flag noise as cosmic rays", labels[k], -level / gain,
                         -level / max(rnoise_e, 1e-6))
