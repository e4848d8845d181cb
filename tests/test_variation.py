"""The exposure-difference model (core/variation.py): real variation removed, cosmic rays left alone."""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.config import parse_requirements
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.core.stack import median_of_stack
from megara_crdetect.core.variation import fit_variations

RN = 3.4
SHAPE = (240, 160)


def _trace(width: float, centre: float, flux: np.ndarray) -> np.ndarray:
    """A vertical trace (dispersion along y): Gaussian profile across x, flux varying along y."""
    x = np.arange(SHAPE[1], dtype=np.float64)
    profile = np.exp(-0.5 * ((x - centre) / width) ** 2) / (np.sqrt(2 * np.pi) * width)
    return flux[:, None] * profile[None, :] + 30.0


def _exposures(varying: bool, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    """Three noisy exposures of a bright trace whose strength, width and position change (or not)."""
    rng = np.random.default_rng(seed)
    y = np.arange(SHAPE[0])
    flux = 60000.0 * (1 + 0.3 * np.sin(y / 40.0))
    if varying:  # seeing, guiding, slit losses varying along the spectrum
        s = scale
        truths = [_trace(2.0, 80.0, flux * (1 + 0.04 * s * np.sin(y / 50.0))),
                  _trace(2.0 + 0.15 * s, 80.0 + 0.15 * s, flux * (1 - 0.03 * s)),
                  _trace(2.0 - 0.1 * s, 80.0 - 0.1 * s, flux * (1 + 0.03 * s - 0.03 * s * np.cos(y / 60.0)))]
    else:
        truths = [_trace(2.0, 80.0, flux)] * 3
    return np.stack([rng.normal(t, np.sqrt(t + RN**2)) for t in truths]).astype(np.float32)


def _hit(stack: np.ndarray, places, exposures=(0, 1), amplitude=3000.0) -> np.ndarray:
    """Coincident hits: a 2x3 pixel event in two exposures at each place."""
    out = stack.copy()
    for y, x in places:
        for k in exposures:
            out[k, y:y + 2, x:x + 3] += amplitude
    return out


def test_model_removes_a_varying_trace_down_to_the_noise():
    stack = _exposures(varying=True)
    m = median_of_stack(stack)
    noise = np.sqrt(np.maximum(m, 0) + RN**2)
    before = np.abs(stack - m).max(axis=0) / noise
    fit = fit_variations(stack, m, RN)
    after = np.abs(stack - fit.model - median_of_stack(stack - fit.model)).max(axis=0) / noise
    # the trace's exposures differ far beyond the noise (99th percentile 17.6 sigma, noise alone 3.2) ...
    assert np.percentile(before[:, 70:90], 99) > 12
    # ... and hardly more than the noise once the model is removed (measured: median 1.23, 99 % 5.3; the
    # 7.5 % width change leaves second-order terms)
    assert np.percentile(after[:, 70:90], 50) < 1.3
    assert np.percentile(after[:, 70:90], 99) < 6
    assert np.allclose(fit.model.sum(axis=0), 0, atol=1e-2)


def test_model_is_close_to_identity_on_equivalent_exposures():
    stack = _exposures(varying=False)
    m = median_of_stack(stack)
    noise = np.sqrt(np.maximum(m, 0) + RN**2)
    fit = fit_variations(stack, m, RN)
    assert np.percentile(np.abs(fit.model).max(axis=0) / noise, 99.9) < 0.6


@pytest.mark.xfail(reason="open (#17): with the 3x3-median basis where pixels leave the fit, a bright "
                   "coincident hit on the trace peak is partly absorbed and the varying trace still gives "
                   "~40 MEDIANCR pixels; the pixelwise-min basis passed these but failed on a bad edge column",
                   strict=True)
def test_coincident_hits_on_the_trace_are_not_absorbed_by_the_model():
    places = [(40, 78), (100, 81), (160, 30), (200, 120)]  # two on the trace, two on the sky
    stack = _hit(_exposures(varying=True), places)
    fit = fit_variations(stack, median_of_stack(stack), RN)
    corrected = stack - fit.model
    for y, x in places:
        excess = corrected[:2, y:y + 2, x:x + 3].mean(axis=0) - corrected[2, y:y + 2, x:x + 3]
        assert np.all(excess > 0.9 * 3000), (y, x, excess)


@pytest.mark.xfail(reason="open (#17): with the 3x3-median basis where pixels leave the fit, a bright "
                   "coincident hit on the trace peak is partly absorbed and the varying trace still gives "
                   "~40 MEDIANCR pixels; the pixelwise-min basis passed these but failed on a bad edge column",
                   strict=True)
def test_varying_trace_gives_no_mediancr_but_coincidences_are_found():
    places = [(40, 78), (100, 81), (160, 30)]
    clean = _exposures(varying=True, seed=3, scale=0.4)  # 3 % width, 0.06 px, 2 % flux: like the WHT triplet
    params = parse_requirements({"crmethod": "mm_lacosmic", "mm_nsimulations": 4, "mm_variation_model": True})
    detector = Detector(gain=1.0, rnoise=RN)
    off = compute_crmasks(clean, params.replace(mm_variation_model=False), detector=detector, workers=1)
    on = compute_crmasks(clean, params, detector=detector, workers=1)
    assert off.mediancr.sum() > 20  # the trace's flanks are taken for cosmic rays without the model
    assert on.mediancr.sum() == 0
    hit = compute_crmasks(_hit(clean, places), params, detector=detector, workers=1)
    for y, x in places:
        assert hit.mediancr[y:y + 2, x:x + 3].all(), (y, x)
    far = hit.mediancr.copy()
    for y, x in places:
        far[y - 3:y + 5, x - 3:x + 6] = False
    assert far.sum() <= 9  # at most one false MM pixel (dilated): the boundary lets ~1 per image through
