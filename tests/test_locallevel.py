"""The local-level tests (noise dips, raised medians, spoiled minima) on hand-made stack statistics."""

from __future__ import annotations

import numpy as np

from megara_crdetect.core.locallevel import noise_dips, raised_medians, spoiled_minima
from megara_crdetect.core.stack import StackStats

SIGMA = 5.0


def stats_on_gradient(low_at, high_at, shape=(9, 9)):
    """Exposures on a steep gradient (20 e- per column), equal except where told."""
    level = 100.0 + 20.0 * np.arange(shape[1])[None, :] * np.ones((shape[0], 1))
    stack = np.stack([level] * 3).astype(np.float32)
    stack[:, 1, 1] += (0.0, 0.0, 2.0 * SIGMA)  # a tiny disagreement elsewhere, quiet still
    for (r, c), values in {**low_at, **high_at}.items():
        stack[:, r, c] += np.asarray(values, dtype=np.float32)
    s = np.sort(stack, axis=0)
    return StackStats(min2d=s[0], max2d=s[2], median2d=s[1], mean2d=stack.mean(axis=0))


def test_dip_and_raised_median_on_a_gradient():
    dip, pair = (4, 4), (4, 6)
    stats = stats_on_gradient({dip: (0, -6 * SIGMA, 0)}, {pair: (6 * SIGMA, 6 * SIGMA, 0)})
    candidates = np.zeros(stats.min2d.shape, bool)
    candidates[dip] = candidates[pair] = True
    noise = np.full(candidates.shape, SIGMA, np.float32)
    out = noise_dips(candidates, stats, noise)
    assert out[dip] and not out[pair]
    assert out.sum() == 1


def test_groups_edges_and_busy_neighbourhoods_are_never_dips():
    dip = (4, 4)
    noise = np.full((9, 9), SIGMA, np.float32)
    stats = stats_on_gradient({dip: (0, -6 * SIGMA, 0), (0, 3): (0, -6 * SIGMA, 0)}, {})
    candidates = np.zeros((9, 9), bool)
    candidates[dip] = candidates[0, 3] = True
    assert noise_dips(candidates, stats, noise)[dip]
    assert not noise_dips(candidates, stats, noise)[0, 3]  # on the edge: no neighbours on one side
    grouped = candidates.copy()
    grouped[4, 5] = True
    assert not noise_dips(grouped, stats, noise).any()  # a group of two pixels
    busy = stats_on_gradient({dip: (0, -6 * SIGMA, 0)}, {(3, 3): (0, 0, 6 * SIGMA)})
    assert not noise_dips(candidates, busy, noise)[dip]  # a hit next to it: the level is not trusted


def stats_of(stack):
    s = np.sort(stack, axis=0)
    return StackStats(min2d=s[0], max2d=s[-1], median2d=s[1], mean2d=stack.mean(axis=0))


def line_stack(shape=(9, 9)):
    """Three equal exposures of a sharp line along the columns (peak 2000 e- at column 4)."""
    x = np.arange(shape[1])[None, :]
    scene = 20.0 + 2000.0 * np.exp(-0.5 * ((x - 4) / 0.8) ** 2) * np.ones((shape[0], 1))
    return np.stack([scene] * 3).astype(np.float32)


def test_raised_median_is_found_where_median2d_minus_min2d_is_small():
    stack = line_stack()
    # on the line peak, sharp across the line but level along it: 2-of-3, the clean exposure high by noise
    stack[:, 4, 4] += np.array([4.5, 36.0, 6.0], np.float32) * SIGMA
    stats = stats_of(stack)
    noise = np.full(stack.shape[1:], SIGMA, np.float32)
    where = np.ones(stack.shape[1:], bool)
    out = raised_medians(where, stats, noise, offset=0.0)
    assert out[4, 4]
    assert out.sum() == 1  # the rest of the line is not raised
    assert not raised_medians(where & ~out, stats, noise, offset=0.0).any()  # only where told to look


def test_hot_pixels_and_clusters_are_not_raised_medians():
    stack = line_stack()
    stack[:, 2, 1] += 100 * SIGMA  # a hot pixel: the same in every exposure
    stack[:, 6, 1] += 100 * SIGMA  # a cluster of two
    stack[:, 7, 2] += 100 * SIGMA
    noise = np.full(stack.shape[1:], SIGMA, np.float32)
    where = np.ones(stack.shape[1:], bool)
    assert not raised_medians(where, stats_of(stack), noise, offset=0.0).any()
    stack[:, 2, 1] += np.array([0.0, 10.0, 20.0], np.float32) * SIGMA  # hit in all three, unequally
    assert raised_medians(where, stats_of(stack), noise, offset=0.0)[2, 1]


def test_spoiled_minima_take_the_level_along_the_trace_on_a_peak_and_in_a_valley():
    """A pixel hit in every exposure: min2d is repaired from the flattest line, not across the profile."""
    profile = np.array([100.0, 300.0, 800.0, 300.0, 100.0, 40.0, 20.0, 40.0, 100.0])  # peak at row 2, valley at 6
    scene = (profile[:, None] * np.ones((1, 9))).astype(np.float32)
    stack = np.stack([scene] * 3)
    peak, valley, flat = (2, 4), (6, 4), (4, 1)
    for r, c in (peak, valley):
        stack[:, r, c] += np.float32([400.0, 900.0, 250.0])  # every exposure hit
    stack[:, flat[0], flat[1]] += np.float32([0.0, 900.0, 0.0])  # one exposure: min2d clean
    s = np.sort(stack, axis=0)
    stats = StackStats(min2d=s[0], max2d=s[2], median2d=s[1], mean2d=stack.mean(axis=0))
    noise = np.sqrt(np.maximum(stats.min2d, 0) + 3.4**2).astype(np.float32)
    where = np.zeros(scene.shape, bool)
    for p in (peak, valley, flat):
        where[p] = True
    spoiled, values = spoiled_minima(where, stats, noise)
    assert spoiled[peak] and spoiled[valley] and not spoiled[flat]
    np.testing.assert_allclose(values, [scene[peak], scene[valley]], rtol=1e-6)  # np.nonzero order


def test_a_coincidence_on_the_curved_flank_of_a_fibre_is_not_a_dip():
    """Numbers of a MEGARA OB: the rows above and below differ by 10x; the row itself is the local level."""
    y = np.arange(9)[:, None] * np.ones((1, 9))
    profile = 20.0 + 20000.0 * np.exp(-0.5 * ((y - 6.0) / 1.2) ** 2)  # fibre across rows, trace along them
    stack = np.stack([profile] * 3).astype(np.float32)
    pixel = (4, 4)
    stack[:, 4, 4] += (4700.0, 6200.0, 0.0)  # hit in two exposures
    stats = stats_of(stack)
    around = stats.median2d[3:6, 3:6]
    across = 0.5 * (around[0, 1] + around[2, 1])  # the line across the flank passes far above the pixel's level
    assert stats.median2d[pixel] - across < across - stats.min2d[pixel]  # judged by it: a "dip"
    noise = np.sqrt(stats.min2d + 3.4**2).astype(np.float32)
    candidates = np.zeros(stack.shape[1:], bool)
    candidates[pixel] = True
    assert not noise_dips(candidates, stats, noise)[pixel]
    flat = np.full_like(stack, 2000.0)
    flat[1, 4, 4] -= 6 * 45.0  # a true dip of min2d on a flat level stays a dip
    assert noise_dips(candidates, stats_of(flat), np.full(candidates.shape, 45.0, np.float32))[pixel]
