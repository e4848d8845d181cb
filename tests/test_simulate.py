"""Tests of the seeded MEGARA-like exposure simulator."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from megara_crdetect.simulate import SimulatedSet, make_scene, simulate_exposures

SHAPE = (160, 340)       # wide enough for the guaranteed lines at x = 239, 261


def _small(**kwargs: object) -> SimulatedSet:
    """Simulate a small set with test-friendly defaults."""
    opts: dict[str, object] = {"shape": SHAPE, "n_coincident": 20, "seed": 11}
    opts.update(kwargs)
    return simulate_exposures(**opts)  # type: ignore[arg-type]


def _hot_mask(sim: SimulatedSet) -> np.ndarray:
    mask = np.zeros(sim.expected.shape[1:], dtype=bool)
    mask[sim.hot_pixels[:, 0], sim.hot_pixels[:, 1]] = True
    return mask


# ----------------------------------------------------------------------------
# reproducibility, shapes, units
# ----------------------------------------------------------------------------
def test_same_seed_bit_identical_and_other_seed_differs() -> None:
    a, b, c = _small(seed=5), _small(seed=5), _small(seed=6)
    for name in ("exposures", "expected", "cr_deposit", "hot_pixels", "hot_excess"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.coincident_events == b.coincident_events
    assert not np.array_equal(a.exposures, c.exposures)
    assert not np.array_equal(a.cr_deposit, c.cr_deposit)
    assert a.coincident_events != c.coincident_events


def test_shapes_dtypes_and_metadata() -> None:
    sim = _small(n_exposures=4, gain=1.7, rnoise=2.0, bias=300.0,
                 flux_factors=[1.0, 0.9, 1.1, 1.2], offsets=[(0, 0), (0.5, 0), (0, -1), (2, 2)])
    for arr in (sim.exposures, sim.expected, sim.cr_deposit):
        assert arr.shape == (4, *SHAPE)
        assert arr.dtype == np.float32
    assert sim.truth.shape == SHAPE and sim.truth.dtype == np.float32
    np.testing.assert_allclose(sim.truth, sim.expected.mean(axis=0), rtol=1e-6)
    assert sim.flux_factors == (1.0, 0.9, 1.1, 1.2)
    assert sim.offsets == ((0.0, 0.0), (0.5, 0.0), (0.0, -1.0), (2.0, 2.0))
    assert (sim.gain, sim.rnoise, sim.bias, sim.seed) == (1.7, 2.0, 300.0, 11)
    assert sim.rnoise_e == pytest.approx(3.4)
    assert sim.hot_pixels.shape == (sim.hot_excess.size, 2)
    assert np.all(sim.expected > 0.0)


def test_generator_seed_and_make_scene_matches_simulation() -> None:
    sim = _small(seed=np.random.default_rng(3), hot_fraction=0.0)
    assert sim.seed is None
    sim2 = _small(seed=21, hot_fraction=0.0)
    np.testing.assert_array_equal(sim2.expected[0], make_scene(SHAPE, seed=21))


@pytest.mark.parametrize(("gain", "rnoise", "bias"), [(1.0, 3.4, 0.0), (2.0, 2.5, 1000.0)])
def test_noise_mean_and_variance(gain: float, rnoise: float, bias: float) -> None:
    sim = simulate_exposures((300, 400), 2, gain=gain, rnoise=rnoise, bias=bias,
                             n_coincident=10, seed=4)
    data_e = (sim.exposures.astype(np.float64) - bias) * gain
    resid = data_e - sim.expected - sim.cr_deposit
    rn2 = (rnoise * gain) ** 2
    for sel in (sim.expected < 15.0, sim.expected > 500.0):
        n = int(sel.sum())
        assert n > 800
        r, mu = resid[sel], sim.expected[sel].astype(np.float64)
        z = r / np.sqrt(mu + rn2)
        assert abs(z.mean()) < 5.0 / np.sqrt(n)
        # variance ~ expected + rnoise_e**2 (relative to its mean)
        assert r.var() / (mu + rn2).mean() == pytest.approx(1.0, abs=6.0 * np.sqrt(2.0 / n))
        assert z.var() == pytest.approx(1.0, abs=6.0 * np.sqrt(2.0 / n))


def test_no_cosmic_rays_when_disabled() -> None:
    sim = _small(cr_fraction=0.0, n_coincident=0)
    assert not np.any(sim.cr_deposit)
    assert sim.coincident_events == []


# ----------------------------------------------------------------------------
# cosmic rays
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.005, 0.01, 0.03])
def test_cr_fraction_honoured(fraction: float) -> None:
    shape = (300, 400)
    sim = simulate_exposures(shape, 3, cr_fraction=fraction, n_coincident=30, seed=8)
    npix = shape[0] * shape[1]
    for k in range(3):
        hit = np.count_nonzero(sim.cr_deposit[k]) / npix
        assert fraction <= hit <= fraction * 1.02 + 200.0 / npix
    assert np.all(sim.cr_deposit >= 0.0)
    assert np.all(sim.cr_deposit[sim.cr_deposit > 0] >= 1.0)


def test_coincident_events_recorded_and_exclusive() -> None:
    # cr_fraction well above the coincident pixels, so random events fill in too
    sim = simulate_exposures((200, 300), 4, n_coincident=200, cr_fraction=0.08, seed=2)
    events = sim.coincident_events
    assert len(events) == 200
    assert len({(r, c) for r, c, _ in events}) == 200
    n_two = 0
    neighbours = []
    for row, col, exps in events:
        assert 2 <= len(exps) <= 4 and list(exps) == sorted(set(exps))
        hit = tuple(int(k) for k in np.flatnonzero(sim.cr_deposit[:, row, col] > 0))
        assert hit == exps
        n_two += len(exps) == 2
        for k in exps:
            box = sim.cr_deposit[k, max(row - 1, 0):row + 2, max(col - 1, 0):col + 2]
            neighbours.append(np.count_nonzero(box) - 1)
    assert 0.7 <= n_two / len(events) <= 0.9
    assert any(len(e[2]) == 4 for e in events)
    assert np.median(neighbours) >= 3                  # tracks, not lone pixels


def test_cr_morphology() -> None:
    sim = simulate_exposures((400, 400), 1, cr_fraction=0.004, n_coincident=0,
                             hot_fraction=0.0, seed=9)
    cr = sim.cr_deposit[0]
    labels, n = ndimage.label(cr > 0, structure=np.ones((3, 3)))
    index = np.arange(1, n + 1)
    charge = ndimage.sum(cr, labels, index)
    size = np.bincount(labels.ravel())[1:]
    assert n > 30
    assert 300.0 < np.median(charge) < 3000.0
    assert charge.min() >= 40.0 and np.percentile(charge, 95) < 3.0e4
    assert 0.05 < np.mean(size == 1) < 0.35               # faint single-pixel hits
    assert np.all(charge[size == 1] < 250.0)
    assert size.max() >= 25                               # some long tracks
    assert np.median(size[charge > 500.0]) >= 12          # charge spread to neighbours
    # spread: brightest 4-neighbour of each multi-pixel event's peak pixel
    ratios = []
    for lab in index[size >= 5]:
        r, c = np.unravel_index(np.argmax(np.where(labels == lab, cr, 0)), cr.shape)
        nb = [cr[r + dr, c + dc] for dr, dc in ((0, 1), (0, -1), (1, 0), (-1, 0))
              if 0 <= r + dr < cr.shape[0] and 0 <= c + dc < cr.shape[1]]
        ratios.append(max(nb) / cr[r, c])
    assert 0.05 < np.median(ratios) < 0.8


# ----------------------------------------------------------------------------
# hot pixels, flux factors, offsets
# ----------------------------------------------------------------------------
def test_hot_pixels_fixed_with_flux_factors_and_offsets() -> None:
    factors = (1.0, 0.6, 1.4)
    offsets = ((0.0, 0.0), (1.5, -0.7), (-2.0, 3.0))
    sim = simulate_exposures((400, 500), 3, flux_factors=factors, offsets=offsets,
                             hot_fraction=1e-4, n_coincident=5, seed=31)
    rows, cols = sim.hot_pixels.T
    assert 15 <= sim.hot_excess.size <= 25            # ~ 1e-4 * 200_000 = 20
    assert np.all((sim.hot_excess >= 100.0) & (sim.hot_excess <= 5000.0))
    for k in range(3):
        scene = np.float32(factors[k]) * make_scene((400, 500), seed=31, offset=offsets[k])
        excess = sim.expected[k] - scene
        np.testing.assert_allclose(excess[rows, cols], sim.hot_excess, rtol=1e-4, atol=1e-2)
        excess[rows, cols] = 0.0
        assert np.abs(excess).max() < 1e-3 * scene.max()
    # at least one small cluster of adjacent hot pixels
    mask = _hot_mask(sim)
    n_near = ndimage.convolve(mask.astype(int), np.ones((3, 3), int), mode="constant")
    assert np.any(n_near[mask] > 1)


def test_hot_fraction_minimum_and_zero() -> None:
    assert _small(hot_fraction=1e-7).hot_excess.size >= 5
    none = _small(hot_fraction=0.0)
    assert none.hot_pixels.shape == (0, 2)


def test_flux_factors_scale_expected() -> None:
    factors = (1.0, 0.7, 1.3)
    sim = _small(flux_factors=factors)
    away = ~_hot_mask(sim)
    for k in (1, 2):
        ratio = sim.expected[k][away] / sim.expected[0][away]
        np.testing.assert_allclose(ratio, factors[k], rtol=1e-5)


def test_integer_offset_sign_convention() -> None:
    sim = _small(offsets=[(0.0, 0.0), (1.0, 0.0), (0.0, 1.0)], hot_fraction=0.0)
    e0, e1, e2 = sim.expected
    # +dx: content moves to larger column index; +dy: to larger row index
    np.testing.assert_allclose(e1[:, 1:], e0[:, :-1], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(e2[1:, :], e0[:-1, :], rtol=1e-5, atol=1e-4)
    assert np.abs(e1[:, :-1] - e0[:, 1:]).max() > 100.0   # the wrong direction differs
    moved = make_scene(SHAPE, seed=11, offset=(-2.0, 3.0))
    np.testing.assert_allclose(moved[3:, :-2], e0[:-3, 2:], rtol=1e-5, atol=1e-4)
    # exact also for a sub-pixel base offset
    a = make_scene(SHAPE, seed=11, offset=(0.3, 0.4))
    b = make_scene(SHAPE, seed=11, offset=(1.3, 1.4))
    np.testing.assert_allclose(b[1:, 1:], a[:-1, :-1], rtol=1e-5, atol=1e-4)


def _line_centroid(img: np.ndarray, x0: int = 239, hw: int = 8) -> float:
    prof = img[20:140, x0 - hw:x0 + hw + 1].sum(axis=0).astype(np.float64)
    prof -= np.median(np.r_[prof[:3], prof[-3:]])
    return float((prof * np.arange(x0 - hw, x0 + hw + 1)).sum() / prof.sum())


@pytest.mark.parametrize("dx", [0.3, -0.45, 0.8])
def test_subpixel_dx_moves_sky_line_centroid(dx: float) -> None:
    base = make_scene(SHAPE, seed=7)
    moved = make_scene(SHAPE, seed=7, offset=(dx, 0.0))
    assert _line_centroid(moved) - _line_centroid(base) == pytest.approx(dx, abs=0.01)


@pytest.mark.parametrize("dy", [0.35, -0.6])
def test_subpixel_dy_moves_fibre_profiles(dy: float) -> None:
    base = make_scene(SHAPE, seed=7)[:, 150].astype(np.float64)
    moved = make_scene(SHAPE, seed=7, offset=(0.0, dy))[:, 150].astype(np.float64)
    trials = np.linspace(-1.0, 1.0, 201)
    err = [np.sum((ndimage.shift(base, s, order=3) - moved)[10:-10] ** 2) for s in trials]
    assert trials[int(np.argmin(err))] == pytest.approx(dy, abs=0.03)


# ----------------------------------------------------------------------------
# scene content
# ----------------------------------------------------------------------------
def test_bright_sky_lines_in_guide_regions() -> None:
    scene = make_scene((1596, 2016), seed=1234)
    # FITS X 229..274 -> columns 228..273; mm_crosscorr_region Y 651..733 -> rows 650..732
    for rows in (slice(None), slice(650, 733)):
        prof = np.percentile(scene[rows, 228:274], 90, axis=0)
        peaks = [228 + i for i in range(1, prof.size - 1)
                 if prof[i] > prof[i - 1] and prof[i] >= prof[i + 1] and prof[i] > 1.0e3]
        assert len(peaks) >= 2
        assert {239, 261} <= set(peaks)
    sky = np.median(scene[:, 1000])
    assert np.percentile(scene[:, 239], 90) - sky > 1.0e3


def test_fibre_traces_and_interfibre_light() -> None:
    scene = make_scene((400, 600), seed=3)
    for col in (50, 300, 550):
        c = scene[:, col]
        peaks = np.array([i for i in range(1, c.size - 1) if c[i] > c[i - 1] and c[i] >= c[i + 1]])
        assert abs(peaks.size - 400 / 6.6) <= 2
        assert np.median(np.diff(peaks)) in (6, 7)
        valleys = [c[a:b].min() for a, b in zip(peaks[:-1], peaks[1:], strict=True)]
        assert np.min(valleys) > 0.5
        assert np.median(np.array(valleys) / c[peaks[1:]]) < 0.35
    # traces are curved: the peak row of one fibre changes across the width
    rows = [np.argmax(scene[180:200, col]) for col in (0, 300, 599)]
    assert max(rows) - min(rows) >= 1
    # some object fibres clearly above the sky continuum
    col_sum = scene[:, 20:40].mean(axis=1)
    assert np.max(col_sum) > 4.0 * np.median(col_sum)


# ----------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "name"), [
    ({"shape": (10,)}, "shape"),
    ({"shape": (0, 10)}, "shape"),
    ({"shape": (10.0, 10)}, "shape"),
    ({"n_exposures": 0}, "n_exposures"),
    ({"gain": 0.0}, "gain"),
    ({"gain": float("nan")}, "gain"),
    ({"rnoise": -1.0}, "rnoise"),
    ({"bias": float("inf")}, "bias"),
    ({"flux_factors": [1.0, 1.0]}, "flux_factors"),
    ({"flux_factors": [1.0, 0.0, 1.0]}, "flux_factors"),
    ({"offsets": [(0, 0), (1, 1)]}, "offsets"),
    ({"offsets": [(0, 0), (1,), (1, 1)]}, "offsets"),
    ({"cr_fraction": 0.9}, "cr_fraction"),
    ({"n_coincident": -1}, "n_coincident"),
    ({"n_exposures": 1, "n_coincident": 5}, "n_coincident"),
    ({"hot_fraction": -1e-5}, "hot_fraction"),
    ({"seed": -3}, "seed"),
    ({"shape": (3, 3), "n_coincident": 20}, "n_coincident"),
])
def test_invalid_arguments(kwargs: dict[str, object], name: str) -> None:
    opts: dict[str, object] = {"shape": (20, 30), "n_coincident": 2}
    opts.update(kwargs)
    with pytest.raises(ValueError, match=name):
        simulate_exposures(**opts)  # type: ignore[arg-type]


def test_make_scene_validates_offset() -> None:
    with pytest.raises(ValueError, match="offset"):
        make_scene((20, 30), offset=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="shape"):
        make_scene((20, 30, 2))


def test_single_exposure_without_coincidences() -> None:
    sim = simulate_exposures((40, 50), 1, n_coincident=0, seed=1)
    assert sim.exposures.shape == (1, 40, 50)
    assert np.count_nonzero(sim.cr_deposit) >= 0.01 * 40 * 50


# ----------------------------------------------------------------------------
# exposures that are not equivalent (issue 17)
# ----------------------------------------------------------------------------
def test_line_variation_changes_each_line_by_its_own_factor_and_nothing_else() -> None:
    base = _small(n_coincident=0)
    var = _small(n_coincident=0, line_variation=0.05, arc_lines=5)
    assert var.line_factors.shape[0] == 3
    assert np.all(np.abs(var.line_factors - 1) <= 0.05)
    assert np.ptp(var.line_factors[0] / var.line_factors[1]) > 0  # by line, not one factor
    # between exposures, the expected images differ (lines) ...
    diff = np.abs(var.expected[0] - var.expected[1])
    assert diff.max() > 10
    # ... but not in columns without lines: the continuum of the varied set equals the plain scene there
    quiet = np.argmin(np.abs(base.expected[0] - np.median(base.expected[0], axis=1, keepdims=True)).sum(axis=0))
    assert diff[:, quiet].max() < 1e-3 * max(var.expected[0][:, quiet].max(), 1)


def test_smooth_variation_scales_each_exposure_by_a_smooth_map() -> None:
    var = _small(n_coincident=0, smooth_variation=0.03, hot_fraction=0.0)
    plain = _small(n_coincident=0, hot_fraction=0.0)
    assert var.ratio_maps.shape == var.expected.shape
    assert var.ratio_maps.min() >= 0.97 - 1e-6 and var.ratio_maps.max() <= 1.03 + 1e-6
    ratio = var.expected / np.maximum(plain.expected, 1e-3)
    bright = plain.expected > 10
    assert np.allclose(ratio[bright], var.ratio_maps[bright], rtol=1e-5)
    assert np.abs(np.diff(var.ratio_maps, axis=2)).max() < 1e-3  # smooth


def test_same_track_coincidences_leave_identical_deposits_in_both_exposures() -> None:
    sim = _small(n_coincident=30, same_track_fraction=1.0, cr_fraction=0.0)
    assert len(sim.same_track) == 30
    equal = []
    for (row, col, hit), same in zip(sim.coincident_events, sim.same_track, strict=True):
        assert same == (len(hit) == 2)
        if same:
            a, b = (sim.cr_deposit[k, max(row - 2, 0):row + 3, max(col - 2, 0):col + 3] for k in hit)
            assert sim.cr_deposit[hit[0], row, col] > 0
            equal.append(np.array_equal(a, b))  # unless another event overlaps
    assert len(equal) >= 15 and np.mean(equal) >= 0.8


def test_new_options_off_give_the_previous_output() -> None:
    a = _small(seed=5)
    b = _small(seed=5, line_variation=0.0, smooth_variation=0.0, same_track_fraction=0.0, arc_lines=0)
    assert np.array_equal(a.exposures, b.exposures)
    assert a.line_factors is None and a.ratio_maps is None and a.same_track == ()
