"""Tests of megara_crdetect.core.fluxfactor."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from _mkframes import make_frames
from megara_crdetect.core.fluxfactor import (
    FluxFactorFit,
    estimate_flux_factors,
    fit_flux_factors,
    image_number_at_median,
)

TRUE = np.array([0.8, 1.0, 1.2])


@functools.lru_cache(maxsize=None)
def _frames(seed: int, **kwargs):
    fs = make_frames(seed, **kwargs)
    return fs, np.median(fs.stack, axis=0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_factors_meet_accuracy_with_offsets_crs_and_hot_pixels(seed):
    # canonical set: factors 0.8/1.0/1.2, offsets (-0.5,+0.5)/(0,0)/(+0.5,-0.25),
    # 1 % cosmic rays, 60 hot pixels, Poisson + 3.4 e- read noise
    fs, med = _frames(seed)
    factors = estimate_flux_factors(fs.stack, med, rnoise_e=3.4)
    assert factors.shape == (3,)
    assert factors.dtype == np.float64
    assert np.abs(factors - TRUE).max() < 0.005         # requirement: 0.01


def test_aligned_frames_are_nearly_exact():
    fs, med = _frames(4, offsets=((0.0, 0.0),) * 3)
    factors = estimate_flux_factors(fs.stack, med, rnoise_e=3.4)
    assert np.abs(factors - TRUE).max() < 0.002


def test_naive_ratio_is_biased_where_the_estimator_is_not():
    """The per-pixel median ratio (what a histogram ridge measures) fails here."""
    fs, med = _frames(0)
    bright = med > 1000.0
    naive = np.median(fs.stack[:, bright] / med[bright], axis=1)
    assert np.abs(naive - TRUE).max() > 0.02
    assert np.abs(estimate_flux_factors(fs.stack, med, rnoise_e=3.4) - TRUE).max() < 0.005


def test_robust_to_many_hot_pixels_and_cosmic_rays():
    fs, med = _frames(5, nhot=1000, cr_fraction=0.02)
    factors = estimate_flux_factors(fs.stack, med, rnoise_e=3.4)
    assert np.abs(factors - TRUE).max() < 0.01


def test_fit_result_contents():
    fs, med = _frames(4, offsets=((0.0, 0.0),) * 3)     # aligned: ratios are meaningful
    fit = fit_flux_factors(fs.stack, med, rnoise_e=3.4, max_samples=5000)
    assert isinstance(fit, FluxFactorFit)
    np.testing.assert_array_equal(fit.factors, estimate_flux_factors(fs.stack, med,
                                                                     rnoise_e=3.4))
    assert fit.factors[1] == pytest.approx(1.0)         # normalisation: median factor = 1
    assert np.all((fit.uncertainties > 0) & (fit.uncertainties < 0.002))
    assert np.all(fit.npix > 0.5 * med.size)
    m = fit.signal.size
    assert 4000 <= m <= 5000
    assert fit.ratio.shape == fit.used.shape == (3, m)
    # cosmic rays are flagged as not used, and the used bright ratios scatter
    # around the factors (with offsets they would not: that is why the
    # estimator sums fluxes instead)
    assert np.all(~fit.used.all(axis=1))
    for k in range(3):
        sel = fit.used[k] & (fit.signal > 2000.0)
        assert np.median(fit.ratio[k, sel]) == pytest.approx(TRUE[k], abs=0.05)


def test_region_mask_restricts_the_pixels():
    fs, med = _frames(2)
    region = np.zeros(med.shape, dtype=bool)
    region[:, :200] = True
    fit = fit_flux_factors(fs.stack, med, region_mask=region, rnoise_e=3.4)
    assert np.abs(fit.factors - TRUE).max() < 0.01
    assert fit.npix.max() <= region.sum()
    # corrupting the excluded half changes nothing (beyond the 3 x 3 neighbourhood
    # of the boundary used by the cosmic-ray test)
    stack = fs.stack.copy()
    stack[2, :, 200:] *= 3.0
    again = fit_flux_factors(stack, med, region_mask=region, rnoise_e=3.4)
    np.testing.assert_allclose(again.factors, fit.factors, rtol=0, atol=1e-4)


def test_four_exposures_relative_factors():
    true = np.array([0.9, 1.0, 1.1, 0.8])
    fs, med = _frames(6, factors=tuple(true),
                      offsets=((0.1, 0.2), (0.0, 0.0), (-0.3, 0.4), (0.6, -0.6)))
    factors = estimate_flux_factors(fs.stack, med, rnoise_e=3.4)
    assert np.median(factors) == pytest.approx(1.0)
    assert np.abs(factors / factors[1] - true).max() < 0.01


def test_nan_pixels_are_ignored():
    fs, med = _frames(3)
    stack = fs.stack.copy()
    stack[1, 50:60, 50:90] = np.nan
    factors = estimate_flux_factors(stack, np.nanmedian(stack, axis=0), rnoise_e=3.4)
    assert np.abs(factors - TRUE).max() < 0.005


@pytest.mark.parametrize(("args", "kwargs", "match"), [
    ((np.zeros((3, 10, 10)), np.zeros((10, 11))), {"rnoise_e": 3.0}, "median"),
    ((np.zeros((10, 10)), np.zeros((10, 10))), {"rnoise_e": 3.0}, "stack"),
    ((np.zeros((3, 10, 10)), np.zeros((10, 10))), {"rnoise_e": -1.0}, "rnoise_e"),
    ((np.zeros((3, 10, 10)), np.zeros((10, 10))),
     {"rnoise_e": 3.0, "region_mask": np.ones((10, 10))}, "region_mask"),
    ((np.zeros((3, 10, 10)), np.zeros((10, 10))), {"rnoise_e": 3.0, "grow": -1}, "grow"),
    ((np.ones((3, 30, 30)), np.ones((30, 30))), {"rnoise_e": 3.0}, "significant"),
])
def test_bad_arguments_raise(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit_flux_factors(*args, **kwargs)


# ---------------------------------------------------------------- image_number_at_median
def test_image_number_at_median_odd_and_even():
    stack = np.array([[[1.0, 5.0]], [[3.0, 4.0]], [[2.0, 6.0]]])   # (3, 1, 2)
    out = image_number_at_median(stack)
    assert out.dtype == np.int8
    np.testing.assert_array_equal(out, [[3, 1]])
    even = np.array([[[4.0]], [[1.0]], [[3.0]], [[2.0]]])           # lower middle = 2 -> #4
    np.testing.assert_array_equal(image_number_at_median(even), [[4]])


def test_image_number_at_median_matches_median_values():
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(5, 300, 17)).astype(np.float32)      # > one row block
    idx = image_number_at_median(stack)
    picked = np.take_along_axis(stack, (idx.astype(int) - 1)[None], axis=0)[0]
    np.testing.assert_array_equal(picked, np.median(stack, axis=0))


def test_image_number_at_median_rejects_bad_stack():
    with pytest.raises(ValueError, match="stack"):
        image_number_at_median(np.zeros((4, 4)))
