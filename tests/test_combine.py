"""Tests for megara_crdetect.core.combine."""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.core.combine import (
    COMBINATIONS,
    combine,
    median_variance_factor,
    min_variance_factor,
    problematic_pixels,
)

RN = 3.0


def var1(value):
    return np.maximum(value, 0.0) + RN**2


def make_stack(n=3, shape=(20, 25), seed=0, level=500.0):
    rng = np.random.default_rng(seed)
    truth = level + 50.0 * rng.random(shape)
    stack = truth + rng.normal(0.0, 1.0, (n, *shape)) * np.sqrt(truth + RN**2)
    return stack.astype(np.float32)


def masks_one_pixel(shape, *pixels):
    mask = np.zeros(shape, dtype=bool)
    for p in pixels:
        mask[p] = True
    return mask


class TestVarianceFactors:
    def test_known_values(self):
        assert median_variance_factor(1) == pytest.approx(1.0, abs=1e-9)
        assert median_variance_factor(2) == pytest.approx(0.5, abs=1e-9)
        assert median_variance_factor(3) == pytest.approx(0.448671, abs=2e-6)
        assert median_variance_factor(4) == pytest.approx(0.298200, abs=2e-5)
        assert min_variance_factor(1) == pytest.approx(1.0, abs=1e-9)
        assert min_variance_factor(2) == pytest.approx(1.0 - 1.0 / np.pi, abs=1e-9)
        assert min_variance_factor(3) == pytest.approx(0.559467, abs=2e-6)

    def test_large_n_tends_to_pi_over_2n(self):
        assert median_variance_factor(401) == pytest.approx(np.pi / 802, rel=5e-3)

    @pytest.mark.parametrize("n", [4, 5, 6])
    def test_monte_carlo(self, n):
        draws = np.random.default_rng(n).normal(size=(200_000, n))
        assert median_variance_factor(n) == pytest.approx(np.median(draws, axis=1).var(), rel=0.015)
        assert min_variance_factor(n) == pytest.approx(draws.min(axis=1).var(), rel=0.015)

    @pytest.mark.parametrize("n", [0, -1, 2.0, True])
    def test_bad_n(self, n):
        with pytest.raises(ValueError, match="n must be"):
            median_variance_factor(n)


class TestPlainCombinations:
    @pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
    def test_values_and_variance(self, n):
        stack = make_stack(n=n)
        expected = {
            "mean": (stack.astype(np.float64).mean(axis=0), 1.0 / n),
            "median": (np.median(stack, axis=0), median_variance_factor(n)),
            "min": (stack.min(axis=0), min_variance_factor(n)),
        }
        for name, (value, factor) in expected.items():
            res = combine(stack, name, rnoise_e=RN)
            assert res.value.dtype == np.float32
            assert res.variance.dtype == np.float32
            assert res.exposure_map.dtype == np.int16
            np.testing.assert_allclose(res.value, value, rtol=1e-6)
            np.testing.assert_allclose(res.variance, factor * var1(res.value), rtol=1e-5)
            assert np.all(res.exposure_map == n)

    def test_median_of_three_is_exact(self):
        stack = make_stack(n=3, seed=5) * np.float32(1e3)
        assert np.array_equal(combine(stack, "median", rnoise_e=RN).value, np.median(stack, axis=0))

    def test_negative_signal_clipped_in_variance(self):
        stack = np.full((3, 4, 4), -50.0, dtype=np.float32)
        res = combine(stack, "mean", rnoise_e=RN)
        assert np.allclose(res.variance, RN**2 / 3)

    @pytest.mark.parametrize("name", ["mean", "median", "min"])
    def test_variance_matches_scatter(self, name):
        # 3 exposures of a flat 400 e- field: the variance factor times the
        # single-exposure variance equals the scatter of the combined values.
        rng = np.random.default_rng(11)
        signal = 400.0
        stack = (signal + rng.normal(0, np.sqrt(signal + RN**2), (3, 300, 300))).astype(np.float32)
        res = combine(stack, name, rnoise_e=RN)
        factor = {"mean": 1 / 3, "median": median_variance_factor(3), "min": min_variance_factor(3)}
        assert res.value.var() == pytest.approx(factor[name] * (signal + RN**2), rel=0.03)
        if name != "min":  # the minimum is biased low, so var1(min) is ~4 % low here
            assert res.value.var() == pytest.approx(res.variance.mean(), rel=0.03)


class TestMediancr:
    def test_replacement_by_minimum(self):
        stack = make_stack()
        stack[0, 5, 6] += 3000.0
        stack[1, 5, 6] += 2000.0  # 2-of-3 hit: the median keeps it
        mask = masks_one_pixel(stack.shape[1:], (5, 6))
        res = combine(stack, "mediancr", rnoise_e=RN, mediancr=mask)
        assert res.value[5, 6] == stack[2, 5, 6]
        assert res.variance[5, 6] == pytest.approx(var1(stack[2, 5, 6]), rel=1e-6)
        assert res.exposure_map[5, 6] == 1
        median = combine(stack, "median", rnoise_e=RN)
        assert np.array_equal(res.value[~mask], median.value[~mask])
        assert np.array_equal(res.variance[~mask], median.variance[~mask])
        assert np.all(res.exposure_map[~mask] == 3)

    def test_custom_replacement(self):
        stack = make_stack()
        mask = masks_one_pixel(stack.shape[1:], (1, 1), (2, 3))
        repl = np.full(stack.shape[1:], 123.0, dtype=np.float32)
        res = combine(stack, "mediancr", rnoise_e=RN, mediancr=mask, replacement=repl)
        assert res.value[1, 1] == res.value[2, 3] == np.float32(123.0)
        assert res.variance[1, 1] == pytest.approx(123.0 + RN**2)


class TestMeancrt:
    def test_three_kinds_of_pixels(self):
        stack = make_stack()
        shape = stack.shape[1:]
        mediancr = masks_one_pixel(shape, (3, 3))
        meancrt = masks_one_pixel(shape, (3, 3), (7, 8))
        res = combine(stack, "meancrt", rnoise_e=RN, mediancr=mediancr, meancrt=meancrt)
        # in both masks -> minimum, one exposure
        assert res.value[3, 3] == stack[:, 3, 3].min()
        assert res.exposure_map[3, 3] == 1
        assert res.variance[3, 3] == pytest.approx(var1(res.value[3, 3]), rel=1e-6)
        # only in meancrt -> plain median of 3
        assert res.value[7, 8] == np.median(stack[:, 7, 8])
        assert res.exposure_map[7, 8] == 3
        c3 = median_variance_factor(3)
        assert res.variance[7, 8] == pytest.approx(c3 * var1(res.value[7, 8]), rel=1e-5)
        # elsewhere -> mean
        assert res.value[0, 0] == pytest.approx(stack[:, 0, 0].astype(float).mean(), rel=1e-6)
        assert res.variance[0, 0] == pytest.approx(var1(res.value[0, 0]) / 3, rel=1e-5)
        assert res.exposure_map[0, 0] == 3

    def test_requires_both_masks(self):
        stack = make_stack()
        mask = np.zeros(stack.shape[1:], bool)
        with pytest.raises(ValueError, match="mediancr is required"):
            combine(stack, "meancrt", rnoise_e=RN, meancrt=mask)


class TestMeancr:
    def test_masked_exposures_excluded(self):
        stack = make_stack()
        crmasks = np.zeros(stack.shape, dtype=bool)
        crmasks[0, 2, 2] = True  # one masked -> mean of 2
        crmasks[:, 4, 4] = True  # all masked -> minimum
        res = combine(stack, "meancr", rnoise_e=RN, crmasks=crmasks)
        mean2 = stack[1:, 2, 2].astype(float).mean()
        assert res.value[2, 2] == pytest.approx(mean2, rel=1e-6)
        assert res.variance[2, 2] == pytest.approx(var1(mean2) / 2, rel=1e-5)
        assert res.exposure_map[2, 2] == 2
        assert res.value[4, 4] == stack[:, 4, 4].min()
        assert res.exposure_map[4, 4] == 1
        assert res.variance[4, 4] == pytest.approx(var1(res.value[4, 4]), rel=1e-6)
        plain = combine(stack, "mean", rnoise_e=RN)
        other = ~crmasks.any(axis=0)
        assert np.array_equal(res.value[other], plain.value[other])
        assert np.all(res.exposure_map[other] == 3)

    def test_accepts_uint8_masks(self):
        stack = make_stack()
        crmasks = np.zeros(stack.shape, dtype=np.uint8)
        crmasks[2, 1, 1] = 1
        res = combine(stack, "meancr", rnoise_e=RN, crmasks=crmasks)
        assert res.exposure_map[1, 1] == 2

    def test_meancr2(self):
        stack = make_stack()
        crmasks = np.zeros(stack.shape, dtype=bool)
        crmasks[1, 6, 6] = True
        meancr_mask = masks_one_pixel(stack.shape[1:], (9, 9))
        repl = np.full(stack.shape[1:], 7.0, dtype=np.float32)
        res = combine(
            stack, "meancr2", rnoise_e=RN, crmasks=crmasks, meancr_mask=meancr_mask,
            replacement=repl,
        )
        assert res.value[9, 9] == np.float32(7.0)
        assert res.exposure_map[9, 9] == 1
        assert res.variance[9, 9] == pytest.approx(7.0 + RN**2)
        assert res.exposure_map[6, 6] == 2


class TestLocalMedian:
    def test_sequential_box_median(self):
        stack = np.zeros((3, 5, 6), dtype=np.float32)
        stack[:, :, :] = np.arange(30, dtype=np.float32).reshape(5, 6)
        mask = np.zeros((5, 6), bool)
        boxes = [(0, 0, 3, 3), (1, 1, 3, 3)]
        res = combine(stack, "mediancr", rnoise_e=RN, mediancr=mask, local_median_pixels=boxes)
        # (0, 0): box rows 0-1, cols 0-1 without centre -> {1, 6, 7} -> 6
        assert res.value[0, 0] == 6.0
        # (1, 1): uses the new (0, 0) = 6: {6,1,2,6,8,12,13,14} -> median 7
        assert res.value[1, 1] == 7.0
        assert res.exposure_map[1, 1] == 3

    def test_variance_of_replaced_pixel(self):
        stack = make_stack()
        mask = np.zeros(stack.shape[1:], bool)
        plain = combine(stack, "mediancr", rnoise_e=RN, mediancr=mask)
        res = combine(stack, "mediancr", rnoise_e=RN, mediancr=mask, local_median_pixels=[(5, 5, 1, 5)])
        neigh = [(5, 3), (5, 4), (5, 6), (5, 7)]
        vals = [plain.value[p] for p in neigh]
        assert res.value[5, 5] == pytest.approx(np.median(vals))
        expected = median_variance_factor(4) * np.mean([plain.variance[p] for p in neigh])
        assert res.variance[5, 5] == pytest.approx(expected, rel=1e-5)

    def test_ignored_by_plain_combinations(self):
        stack = make_stack()
        res = combine(stack, "median", rnoise_e=RN, local_median_pixels=[(5, 5, 3, 3)])
        assert res.value[5, 5] == np.median(stack[:, 5, 5])

    @pytest.mark.parametrize("box", [(5, 5, 2, 3), (5, 5, 1, 1), (50, 5, 3, 3), (5, 5, 3)])
    def test_validation(self, box):
        stack = make_stack()
        mask = np.zeros(stack.shape[1:], bool)
        with pytest.raises(ValueError, match="local_median_pixels"):
            combine(stack, "mediancr", rnoise_e=RN, mediancr=mask, local_median_pixels=[box])


class TestValidation:
    def test_bad_combination_lists_choices(self):
        with pytest.raises(ValueError, match="mean, median, min, mediancr, meancrt, meancr, meancr2"):
            combine(make_stack(), "average", rnoise_e=RN)
        assert COMBINATIONS == ("mean", "median", "min", "mediancr", "meancrt", "meancr", "meancr2")

    @pytest.mark.parametrize("stack", [np.zeros((4, 4), np.float32), np.zeros((3, 4, 4), np.int32)])
    def test_bad_stack(self, stack):
        with pytest.raises(ValueError, match="stack"):
            combine(stack, "mean", rnoise_e=RN)

    @pytest.mark.parametrize("rnoise", [-1.0, np.nan, "a", None])
    def test_bad_rnoise(self, rnoise):
        with pytest.raises(ValueError, match="rnoise_e"):
            combine(make_stack(), "mean", rnoise_e=rnoise)

    def test_mask_shape(self):
        stack = make_stack()
        with pytest.raises(ValueError, match="crmasks has shape"):
            combine(stack, "meancr", rnoise_e=RN, crmasks=np.zeros(stack.shape[1:], bool))
        with pytest.raises(ValueError, match="replacement"):
            combine(stack, "mediancr", rnoise_e=RN, mediancr=np.zeros(stack.shape[1:], bool),
                    replacement=np.zeros((2, 2)))

    def test_stack_not_modified(self):
        stack = make_stack()
        copy = stack.copy()
        crmasks = np.ones(stack.shape, bool)
        combine(stack, "meancr2", rnoise_e=RN, crmasks=crmasks, meancr_mask=crmasks[0],
                local_median_pixels=[(1, 1, 3, 3)])
        assert np.array_equal(stack, copy)


def test_problematic_pixels():
    crmasks = np.zeros((3, 4, 5), dtype=np.uint8)
    crmasks[:, 1, 2] = 1
    crmasks[:2, 3, 3] = 1
    out = problematic_pixels(crmasks)
    assert out.dtype == bool
    assert np.argwhere(out).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="crmasks"):
        problematic_pixels(np.zeros((4, 5)))


class TestExclude:
    """Bad input values (NaN, saturated) left out of their exposure in every combination."""

    @pytest.mark.parametrize("name", COMBINATIONS)
    def test_excluded_values_are_left_out(self, name):
        stack = make_stack(n=4)
        exclude = np.zeros(stack.shape, dtype=bool)
        exclude[1, 3, 4] = exclude[2, 3, 4] = True  # two of four left out
        exclude[:, 5, 6] = True  # nothing left
        stack[exclude] = 1e6  # filler values that must not matter
        none = np.zeros(stack.shape[1:], dtype=bool)
        res = combine(stack, name, rnoise_e=RN, mediancr=none, meancrt=none, crmasks=np.zeros_like(exclude),
                      meancr_mask=none, exclude=exclude)
        kept = stack[[0, 3], 3, 4].astype(np.float64)
        expect = kept.min() if name == "min" else kept.mean()  # mean == median of two values
        factor = {"min": min_variance_factor(2), "median": median_variance_factor(2),
                  "mediancr": median_variance_factor(2)}.get(name, 0.5)
        assert res.value[3, 4] == pytest.approx(expect, rel=1e-6)
        assert res.exposure_map[3, 4] == 2
        assert res.variance[3, 4] == pytest.approx(factor * var1(res.value[3, 4]), rel=1e-5)
        assert res.value[5, 6] == 0 and res.exposure_map[5, 6] == 0
        untouched = combine(stack, name, rnoise_e=RN, mediancr=none, meancrt=none,
                            crmasks=np.zeros_like(exclude), meancr_mask=none)
        others = ~exclude.any(axis=0)
        np.testing.assert_array_equal(res.value[others], untouched.value[others])


@pytest.mark.parametrize("combination", COMBINATIONS)
def test_bands_in_threads_give_the_same_bits(monkeypatch, combination):
    """combine_in_bands: bands of 7 rows (the last one shorter) in 3 threads, local medians afterwards."""
    import megara_crdetect.core.combine as combine_module

    monkeypatch.setattr(combine_module, "BAND_PIXELS", 7 * 40)
    rng = np.random.default_rng(4)
    stack = rng.normal(100.0, 10.0, (3, 50, 40)).astype(np.float32)
    crmasks = rng.random(stack.shape) < 0.05
    stack[crmasks] += 500.0
    exclude = rng.random(stack.shape) < 0.01
    exclude[:, 3, 5] = True  # every exposure left out at one pixel
    kwargs = {"rnoise_e": 3.0, "mediancr": crmasks.sum(axis=0) >= 2, "meancrt": crmasks.any(axis=0),
              "crmasks": crmasks, "meancr_mask": crmasks.all(axis=0) | (rng.random((50, 40)) < 0.01),
              "replacement": stack.min(axis=0) - 1.0, "local_median_pixels": [(6, 10, 3, 3), (20, 39, 5, 3)],
              "exclude": exclude}
    whole = combine_module.combine(stack, combination, **kwargs)
    bands = combine_module.combine_in_bands(stack, combination, workers=3, **kwargs)
    without_boxes = combine_module.combine(stack, combination, **{**kwargs, "local_median_pixels": ()})
    assert np.array_equal(whole.value, without_boxes.value) == (combination in ("mean", "median", "min"))
    for name in ("value", "variance", "exposure_map"):
        a, b = getattr(whole, name), getattr(bands, name)
        assert a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8)), name
