"""The noise-dip test on hand-made stack statistics."""

from __future__ import annotations

import numpy as np

from megara_crdetect.core.dips import noise_dips
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
