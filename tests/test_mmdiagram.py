"""Stack statistics, the noise sampler, the normalised MM diagram and its boundary."""

from pathlib import Path

import numpy as np
import pytest

from megara_crdetect.core import boundary as bd
from megara_crdetect.core import mmdiagram as mm
from megara_crdetect.core.noise import draw_exposure, sigma
from megara_crdetect.core.stack import low_mean, median_of_stack, stack_statistics
from megara_crdetect.simulate import make_scene

R = 3.4


def test_stack_statistics_three_and_five_exposures():
    rng = np.random.default_rng(0)
    s3 = rng.normal(size=(3, 20, 30)).astype(np.float32)
    st = stack_statistics(s3, n_coincidences=2)
    np.testing.assert_array_equal(st.min2d, s3.min(0))
    np.testing.assert_array_equal(st.max2d, s3.max(0))
    np.testing.assert_allclose(st.median2d, np.median(s3, 0))
    np.testing.assert_allclose(st.mean2d, s3.mean(0), rtol=1e-6)
    s5 = rng.normal(size=(5, 10, 10)).astype(np.float32)
    st5 = stack_statistics(s5, n_coincidences=2)  # mean of the 3 lowest
    np.testing.assert_allclose(st5.min2d, np.sort(s5, 0)[:3].mean(0), rtol=1e-6)
    np.testing.assert_allclose(median_of_stack(s5[:4]), np.median(s5[:4], 0), rtol=1e-6)
    assert low_mean(s5, 1).dtype == np.float32
    with pytest.raises(ValueError, match="n_coincidences"):
        stack_statistics(s3, n_coincidences=3)


@pytest.mark.parametrize("lam", [0.5, 5.0, 23.0, 400.0, 20000.0])
def test_fast_sampler_matches_the_noise_model(lam):
    rng = np.random.default_rng(1)
    z = draw_exposure(np.full(400_000, lam, np.float32), R, rng)
    assert z.dtype == np.float32
    var = lam + R * R
    assert abs(z.mean() - lam) < 5 * np.sqrt(var / z.size)
    assert z.var() == pytest.approx(var, rel=0.01)
    skew = ((z - z.mean()) ** 3).mean() / z.std() ** 3
    assert skew == pytest.approx(lam / var**1.5, abs=0.015)


def test_fast_sampler_tail_equals_exact_poisson():
    """The (median - min)/sigma tail that sets the boundary is the same with both samplers."""
    rng = np.random.default_rng(2)
    lam = np.full(1_000_000, 23.0, np.float32)  # where the Poisson + read-noise skewness is largest
    tails = []
    for exact in (True, False):
        z = np.stack([draw_exposure(lam, R, rng, exact=exact) for _ in range(3)])
        lo = z.min(0)
        t = (median_of_stack(z) - lo) / sigma(lo, R)
        tails.append(np.quantile(t, [0.99, 0.999, 0.9999]))
    np.testing.assert_allclose(tails[0], tails[1], rtol=0.02)


def test_sampler_uses_exact_draws_when_skewed():
    """With no read noise and faint signal the Gaussian approximation is not used: values are integers."""
    z = draw_exposure(np.full(1000, 2.0, np.float32), 0.0, np.random.default_rng(3))
    np.testing.assert_array_equal(z, np.round(z))


def _noise_stack(lam, seed, n=3):
    rng = np.random.default_rng(seed)
    return np.stack([draw_exposure(lam, R, rng, exact=True) for _ in range(n)])


@pytest.fixture(scope="module")
def sky():
    """A MEGARA-like noise-free scene: fibre traces, sky continuum and lines."""
    return make_scene((400, 500), seed=4)


def test_grid_and_cell_index(sky):
    grid = mm.make_grid(sigma(sky, R), R)
    ncol, nrow = grid.shape
    assert 90 <= ncol <= 100 and grid.u_edges[0] == pytest.approx(R)
    # columns hold about the same number of pixels
    counts = np.histogram(sigma(sky, R), bins=grid.u_edges)[0]
    assert counts.max() < 3 * sky.size / ncol
    idx = grid.cell_index(np.array([R, 1e9], np.float32), np.array([0.0, 1e9], np.float32))
    assert idx[0] == 0 and idx[1] == ncol * nrow - 1  # clipped into the grid
    np.testing.assert_allclose(grid.x_of_u(sigma(np.array([0.0, 100.0], np.float32), R)), [0.0, 100.0], atol=1e-3)


def test_noise_scale_ignores_the_pixel_itself_but_keeps_real_features():
    med = np.full((5, 5), 100.0, np.float32)
    med[2, 2] = 5000.0  # a hot pixel: its neighbours do not know it
    floor = mm.noise_floor(med)
    assert floor[2, 2] == 100.0
    low = med.copy()
    low[2, 2] = 20.0  # a downward fluctuation of min2d does not shrink the scale
    assert mm.noise_scale(low, floor, R)[2, 2] == pytest.approx(np.sqrt(100 + R * R))
    assert mm.noise_scale(med, floor, R)[2, 2] == pytest.approx(np.sqrt(5000 + R * R))


def _diagram(lam, real, nsim, seed, **kw):
    st = stack_statistics(real)
    floor = mm.noise_floor(st.median2d)
    u = mm.noise_scale(st.min2d, floor, R)
    grid = mm.make_grid(u, R)
    sims = mm.simulate_diagrams(np.stack([lam] * 3), floor, rnoise_e=R, n_coincidences=2, nsim=nsim, grid=grid,
                                seed=seed, **kw)
    return st, u, grid, sims


def test_simulation_is_reproducible_and_independent_of_threads(sky):
    real = _noise_stack(sky, 1)
    a = _diagram(sky, real, 2, 7, workers=1)[3]
    b = _diagram(sky, real, 2, 7, workers=2)[3]
    c = _diagram(sky, real, 2, 8, workers=2)[3]
    assert list(a.hist) == ["median", "mean", "exposure1", "exposure2", "exposure3"]
    for name in a.hist:
        np.testing.assert_array_equal(a.hist[name], b.hist[name])
        assert a.hist[name].sum() == 2 * sky.size and a.check[name].sum() == 2 * sky.size
    assert not np.array_equal(a.hist["median"], c.hist["median"])


def test_boundary_points_one_pixel_above():
    edges = np.array([R, 5.0, 6.0, 7.0])
    grid = mm.DiagramGrid(R, edges, np.arange(0, 10.01, 1.0), edges, np.arange(3, dtype=np.int32))
    hist = np.zeros((3, 10), int)
    hist[0, :4] = [10, 5, 3, 2]  # 20 pixels: 19 below t = 3 + 1/2
    hist[1, 2] = 1  # a single pixel: no point
    hist[2, 7] = 4  # all in one bin: 3 of 4 reached at 7 + 3/4
    u, t = mm.boundary_points(hist, grid)
    np.testing.assert_allclose(u, [grid.u_centres[0], grid.u_centres[2]])
    np.testing.assert_allclose(t, [3.5, 7.75])


def test_noise_only_false_positives_match_the_prediction(sky):
    """On pure noise, detections above each boundary do not exceed the held-out simulated expectation."""
    found, predicted = 0, 0.0
    for seed in range(4):
        real = _noise_stack(sky, 100 + seed)
        st, u, grid, sims = _diagram(np.maximum(median_of_stack(real), 0), real, 10, seed, n_check=4)
        for name, target in (("median", st.median2d), ("mean", st.mean2d), ("exposure1", real[0])):
            points = mm.boundary_points(sims.hist[name], grid)
            b = bd.fit_spline_boundary(*points, rnoise_e=R, knots=3, niter=4, weight=10.0, u_edges=grid.u_edges)
            predicted += bd.expected_false_positives(sims.check[name], grid, b, sims.n_check)
            found += int(((target - st.min2d) > b.y_at(u)).sum())
    assert 2 < predicted < 60
    assert found <= predicted + 3 * np.sqrt(predicted)  # conservative: the prediction is an upper bound


@pytest.mark.parametrize(("nsigma", "rate"), [(9, 0.9), (12, 0.99)])
def test_faint_coincident_hits_are_above_the_boundary(sky, nsigma, rate):
    """2-of-3 hits on faint background are found well below the reference's boundary (~60 e-, 16 sigma)."""
    real = _noise_stack(sky, 9)
    st, u, grid, sims = _diagram(sky, real, 5, 3)
    b = bd.fit_spline_boundary(*mm.boundary_points(sims.hist["median"], grid), rnoise_e=R, knots=3, niter=4,
                               weight=10.0, u_edges=grid.u_edges)
    faint = np.argwhere(sky < 5)[::97][:200]
    deposit = nsigma * np.sqrt(sky[faint[:, 0], faint[:, 1]] + R * R)
    assert deposit.max() < 60
    for k in (0, 2):
        real[k, faint[:, 0], faint[:, 1]] += deposit
    st = stack_statistics(real)
    u = mm.noise_scale(st.min2d, mm.noise_floor(st.median2d), R)
    flags = (st.median2d - st.min2d) > b.y_at(u)
    assert flags[faint[:, 0], faint[:, 1]].mean() > rate


def test_spline_extension_moves_the_boundary_up_and_fixed_points_are_followed():
    u = np.linspace(4, 100, 60)
    t = 6 + 0.5 * np.sin(u / 7) + np.random.default_rng(5).normal(0, 0.3, u.size)
    b0 = bd.fit_spline_boundary(u, t, rnoise_e=R, knots=3, niter=0)
    b4 = bd.fit_spline_boundary(u, t, rnoise_e=R, knots=3, niter=4, weight=10.0)
    assert len(b4.iterations) == 5
    assert np.mean(t > b4.t_at(u)) < np.mean(t > b0.t_at(u)) < 0.7
    x_fix = 50.0**2 - R * R
    bf = bd.fit_spline_boundary(u, t, rnoise_e=R, knots=3, niter=2, fixed_points=[(x_fix, 50.0 * 9.0, 1000.0)])
    assert bf(np.array([x_fix]))[0] == pytest.approx(450.0, rel=0.02)


def test_spline_extension_never_swings_below_the_points():
    """Boundary points of a real pure-noise run (flux set, exposure 2) where the last extension step
    left the low end unconstrained: the spline fell to 4.2 sigma below points at 6.5-7.3 sigma."""
    data = np.load(Path(__file__).parent / "data" / "boundary_points_dive.npz")
    u, t = data["u"], data["t"]
    b = bd.fit_spline_boundary(u, t, rnoise_e=R, knots=3, niter=4, weight=10.0, u_edges=data["edges"])
    assert t.min() > 6.0
    assert b.t_at(u).min() > 6.5
    for (_, earlier), (_, later) in zip(b.iterations, b.iterations[1:]):
        assert np.all(later >= earlier)  # the extension only moves the boundary up


def test_boundary_is_clamped_outside_the_fitted_range():
    u = np.linspace(5, 50, 30)
    b = bd.fit_spline_boundary(u, np.full(u.size, 6.0), rnoise_e=R, knots=3, niter=0)
    x = np.array([0.0, 1e6], np.float32)
    np.testing.assert_allclose(b(x) / sigma(x, R), [6.0, 6.0], rtol=1e-4)


def test_piecewise_boundary_through_the_fixed_points():
    b = bd.piecewise_boundary([(0, 40), (50, 70), (200, 90)], rnoise_e=R)
    np.testing.assert_allclose(b(np.array([-10, 0, 25, 50, 125, 200, 1e5])), [40, 40, 55, 70, 80, 90, 90])
    with pytest.raises(ValueError, match="at least 2"):
        bd.piecewise_boundary([(0, 40)], rnoise_e=R)


def test_banded_neighbour_median_equals_the_single_pass():
    img = np.random.default_rng(4).normal(100, 10, (1030, 37)).astype(np.float32)
    one = mm.local_reference(img, workers=1)
    for workers in (2, 3, 4):
        np.testing.assert_array_equal(mm.local_reference(img, workers=workers), one)


def test_simulations_reproduce_exposures_normalised_by_flux_factors(sky):
    """apply_flux_factor_to: original divides raw exposures by f_k: the faint ones get noisier."""
    factors = np.array([0.5, 1.0, 1.5], np.float32)
    rng = np.random.default_rng(12)
    real = np.stack([draw_exposure(f * sky, R, rng, exact=True) / f for f in factors])
    st = stack_statistics(real)
    floor = mm.noise_floor(st.median2d)
    u = mm.noise_scale(st.min2d, floor, R)
    grid = mm.make_grid(u, R)
    y = (real[0] - st.min2d) / u  # the noisiest exposure
    fractions = []
    for raw in (factors, None):
        sims = mm.simulate_diagrams(np.stack([sky] * 3), floor, rnoise_e=R, n_coincidences=2, nsim=4, grid=grid,
                                    seed=3, raw_factors=raw)
        level = mm.column_quantile(sims.hist["exposure1"], grid, 1e-3)[grid.column_index(u)]
        fractions.append(float((y > level).mean()))
    assert 0.5e-3 < fractions[0] < 2e-3, fractions  # as often as simulated
    assert fractions[1] > 5e-3, fractions  # simulated without the factors, the tail is far too short


@pytest.mark.parametrize("kind", ["spline", "piecewise"])
def test_float32_levels_in_chunks_equal_the_float64_levels(kind):
    u = np.random.default_rng(2).uniform(3.0, 300.0, (37, 41)).astype(np.float32)
    if kind == "spline":
        us = np.linspace(4, 100, 60)
        b = bd.fit_spline_boundary(us, 6 + 0.5 * np.sin(us / 7), rnoise_e=R, knots=3, niter=0)
    else:
        b = bd.piecewise_boundary([(0.0, 30.0), (1000.0, 200.0), (90000.0, 2000.0)], rnoise_e=R)
    got = b.t_at32(u, chunk=100)  # many chunks, the last one short
    assert got.dtype == np.float32 and got.shape == u.shape
    assert np.array_equal(got, b.t_at(u).astype(np.float32))


def test_columns_found_in_chunks_equal_one_pass():
    rng = np.random.default_rng(3)
    st = stack_statistics(rng.normal(200.0, 15.0, (3, 60, 70)).astype(np.float32))
    grid = mm.make_grid(mm.noise_scale(st.min2d, mm.noise_floor(st.median2d), R), R)
    u = rng.uniform(0.0, 2.0 * grid.u_edges[-1], (53, 47)).astype(np.float32)  # beyond both ends too
    got = grid.column_index(u, chunk=100)
    assert got.dtype == np.int32 and np.array_equal(got, grid.column_index(u, chunk=u.size))
    assert got.min() == 0 and got.max() == grid.shape[0] - 1
    assert np.array_equal(grid.column_index(u, chunk=100, dtype=np.int16), got)


@pytest.mark.parametrize("shape", [(1, 1), (2, 7), (33, 5), (70, 41)])
def test_local_reference_is_ndimage_median_of_the_eight_neighbours(shape):
    """The sorting network gives ndimage's upper-middle median of the 8 neighbours, ties and edges included."""
    from scipy import ndimage

    from megara_crdetect.core.mmdiagram import local_reference

    rng = np.random.default_rng(sum(shape))
    image = rng.integers(0, 6, shape).astype(np.float32)  # many ties
    image[0, 0] = -3.5
    ring = np.ones((3, 3), dtype=bool)
    ring[1, 1] = False
    expected = ndimage.median_filter(image, footprint=ring, mode="nearest")
    for workers in (1, 2):
        np.testing.assert_array_equal(local_reference(image, workers=workers), expected)
    image[shape[0] // 2, 0] = np.nan  # non-finite: ndimage itself
    np.testing.assert_array_equal(local_reference(image, workers=2),
                                  ndimage.median_filter(image, footprint=ring, mode="nearest"))
