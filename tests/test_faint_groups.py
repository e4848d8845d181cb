"""Issue 17: faint two-exposure events found as groups join both hit exposures' CRMASKk.

The event below deposits 22 e- (about 3.5 noise sigmas) in each of nine pixels of
exposures 1 and 2 and nothing in exposure 3: every pixel stays below the
single-pixel boundaries of the exposure and median diagrams, but the group's
summed excess is far beyond what noise-only stacks reach.
"""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core import faintgroups as fg
from megara_crdetect.core import mmdiagram as mm
from megara_crdetect.core.pipeline import Detector, compute_crmasks

SHAPE = (120, 200)
RNOISE, BACKGROUND = 3.4, 20.0
EVENT = (slice(40, 43), slice(60, 63))
# the exposure-difference model is left out: on this small flat frame it absorbs part of a compact
# event (the scene's own derivatives carry it), which is not what is tested here
KW = {"mm_variation_model": False}
DEPOSIT = (22.0, 22.0, 0.0)


def _noise_stack(seed: int, n: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([rng.poisson(BACKGROUND, SHAPE) + rng.normal(0, RNOISE, SHAPE)
                     for _ in range(n)]).astype(np.float32)


def _run(stack: np.ndarray):
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=30, **KW)
    return compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)


def test_faint_two_exposure_group_is_masked_in_both_hit_exposures():
    stack = _noise_stack(11)
    for k, extra in enumerate(DEPOSIT):  # set exactly: the clean exposure is the truth
        stack[k][EVENT] = BACKGROUND + extra
    res = _run(stack)
    u = float(np.sqrt(BACKGROUND + RNOISE**2))
    assert DEPOSIT[0] / u < 4.0  # every pixel faint on its own
    assert not res.mediancr[EVENT].any()  # the per-pixel tests do not see it
    assert res.crmasks[0][EVENT].all() and res.crmasks[1][EVENT].all()
    assert not res.crmasks[2][EVENT].any()
    assert res.counts["faint_group_pixels"] >= 18
    assert not res.problematic[EVENT].any()


def test_pure_noise_gets_no_extra_pixels():
    added = [_run(_noise_stack(seed)).counts["faint_group_pixels"] for seed in (1, 2)]
    # 1e-6 false groups per pixel and map: 0.2 groups expected over both frames
    assert sum(added) <= 4, added


@pytest.mark.parametrize("n", [5, 8])
def test_pure_noise_of_more_exposures_gets_no_extra_pixels(n):
    """The calibration simulates the run's N exposures (it simulated three: with N = 5 the thresholds were
    those of min2d = mean of 2 of 3, and N >= 8 stopped the run)."""
    added = [_run(_noise_stack(seed, n)).counts["faint_group_pixels"] for seed in (1, 2)]
    assert sum(added) <= 4, added


def _fresh_noise(rng, lam, floor):
    """Three noise-only exposures around ``lam``, their min2d and noise scale ``u``."""
    z = np.stack([rng.poisson(lam) + rng.normal(0, RNOISE, lam.shape) for _ in range(3)]).astype(np.float32)
    lo = z.min(axis=0)
    return z, lo, mm.noise_scale(lo, floor, RNOISE)


def test_calibrated_rate_holds_on_fresh_noise():
    rng = np.random.default_rng(3)
    lam = np.full((200, 200), 50.0, dtype=np.float32)
    floor = mm.noise_floor(lam)
    rate = 1e-3  # high enough to be counted on a few frames
    th = fg.calibrate(lam, floor, RNOISE, seed=5, rate=rate, min_pixels=1_000_000)
    found, frames = 0, 10
    for _ in range(frames):
        z, lo, u = _fresh_noise(rng, lam, floor)
        found += int(fg.group_scores((np.median(z, axis=0) - lo) / u, fg.MEDIAN_LEVEL)[1].__gt__(th.median).sum())
    expected = rate * lam.size * frames
    assert 0.5 * expected < found < 2.0 * expected, (found, expected)


def test_calibration_on_every_other_block_of_a_large_frame_holds_its_rate():
    # a frame twice the simulated pixels needed: every other block of 256 rows is drawn, and the rate is per
    # pixel drawn (counted as the whole frame, the calibrated rate would be off by the stride: 2x here)
    rng = np.random.default_rng(4)
    lam = np.repeat(np.geomspace(20.0, 5000.0, 2048, dtype=np.float32)[:, None], 400, axis=1)
    floor = mm.noise_floor(lam)
    rate = 1e-3
    th = fg.calibrate(lam, floor, RNOISE, seed=6, rate=rate, min_pixels=400_000)
    found, frames = 0, 2
    for _ in range(frames):
        z, lo, u = _fresh_noise(rng, lam, floor)
        for k in range(3):
            found += int((fg.group_scores((z[k] - lo) / u, fg.EXPOSURE_LEVEL)[1] > th.exposure).sum())
    expected = rate * lam.size * frames * 3
    assert 0.5 * expected < found < 2.0 * expected, (found, expected)


def test_seeds_keep_only_groups_that_hold_one():
    t = np.zeros((20, 20), dtype=np.float32)
    t[2:4, 2:5] = 5.0  # two groups of six pixels, summed excess 12 each at level 3
    t[12:14, 12:15] = 5.0
    seeds = np.zeros(t.shape, dtype=bool)
    seeds[13, 14] = True
    assert fg.passing_groups(t, 3.0, 10.0).sum() == 12
    kept = fg.passing_groups(t, 3.0, 10.0, seeds)
    assert kept[12:14, 12:15].all() and not kept[2:4, 2:5].any()
    assert not fg.passing_groups(t, 3.0, 12.5).any()  # the score is the summed excess


@pytest.mark.parametrize("use_seeds", [False, True])
def test_exposures_in_threads_and_blocks_give_the_whole_frame_test(use_seeds):
    """faint_groups (blocks of rows, exposures in threads) = passing_groups on each exposure's whole t."""
    stack = _noise_stack(5)
    stack[0][EVENT] += 40.0
    stack[1][EVENT] += 40.0
    stack[2][10:12, 150:156] += 40.0
    min2d, median2d = stack.min(axis=0), np.median(stack, axis=0)
    noise = mm.noise_scale(min2d, mm.noise_floor(median2d), RNOISE)
    where = np.ones(SHAPE, dtype=bool)
    where[:, 100:104] = False
    rng = np.random.default_rng(2)
    seeds = rng.random(stack.shape) < 0.002 if use_seeds else None
    thresholds = fg.GroupThresholds(exposure=4.0, median=3.0)
    inv = np.float32(1.0) / noise
    t_med = (median2d - min2d) * inv
    t_med[~where] = 0
    coinc = fg.passing_groups(t_med, fg.MEDIAN_LEVEL, thresholds.median)
    expected = np.empty(stack.shape, dtype=bool)
    for k in range(3):
        t = (stack[k] - min2d) * inv
        t[~where] = 0
        own = coinc & (t > fg.MEDIAN_LEVEL)
        expected[k] = fg.passing_groups(t, fg.EXPOSURE_LEVEL, thresholds.exposure,
                                        None if seeds is None else seeds[k] | own) | own
    assert expected[0][EVENT].any() and expected[2][10:12, 150:156].any() != use_seeds  # no seed there
    for workers in (1, 2):
        got = fg.faint_groups(stack, min2d, median2d, noise, thresholds, where, seeds, workers=workers)
        assert np.array_equal(got, expected)
    above, values, own = fg._exposure_excess(stack[2], min2d, inv, where, coinc, 3.0, 2.5, rows=7)
    t = (stack[2] - min2d) * inv
    t[~where] = 0
    assert np.array_equal(above, t > 3.0) and np.array_equal(values, t[t > 3.0])
