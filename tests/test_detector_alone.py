"""A detector alone (#16): its flags on the exposures find the coincidences it misses on the median.

With ``crmethod: lacosmic`` (the guide's PSF-convolved fine structure, as in the
benchmarks) L.A.Cosmic flags a compact deposit in an exposure but not the two-pixel
feature that two such deposits leave in the median.  The values at every case are set
exactly (no noise there), so the test cannot pass or fail by chance.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core.pipeline import CODES, PAIR_SURE_SIGMA, Detector, compute_crmasks
from megara_crdetect.io import to_electrons
from megara_crdetect.simulate import simulate_exposures

SHAPE = (48, 96)
RNOISE = 3.4
BACKGROUND = 20.0
SIGMA = np.sqrt(BACKGROUND + RNOISE**2)  # ~5.6 e-
#: 0-based (row, col) -> extra electrons per exposure.  Two exposures hit, each by a compact deposit with
#: a faint neighbour (1000 and 25 e-, mirrored): the median takes 25 e- (4.5 sigma) on both pixels, a flat
#: two-pixel feature that L.A.Cosmic does not flag; it flags the compact deposit of each exposure (and, in
#: exposure 2, its faint neighbour), so the first pixel is flagged in both exposures.
SEEN_TWICE = {(24, 20): (1000, 25, 0), (24, 21): (25, 1000, 0)}
#: Two exposures hit, only one flagged: a compact deposit with a 60 e- neighbour in exposure 1, a flat
#: 60 e- two-pixel deposit in exposure 2; the median stands 60 e- (11 sigma) above min2d.
SEEN_ONCE = {(24, 50): (1000, 60, 0), (24, 51): (60, 60, 0)}
#: One exposure hit (flagged there); the other two differ by 22 e- (3.9 sigma) of "noise": not spoiled.
SINGLE = {(10, 80): (0, 0, 1000), (36, 80): (22, 0, 1000)}
CASES = {**SEEN_TWICE, **SEEN_ONCE, **SINGLE}


def make_stack(seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    stack = (rng.poisson(BACKGROUND, (3, *SHAPE)) + rng.normal(0, RNOISE, (3, *SHAPE))).astype(np.float32)
    for (r, c), extra in CASES.items():
        stack[:, r, c] = BACKGROUND + np.asarray(extra, dtype=np.float32)
    return stack


def run(crmethod: str = "lacosmic"):
    cfg = CRMaskConfig(crmethod=crmethod, la_psfmodel="gaussxy", la_fsmode="convolve", mm_nsimulations=20)
    return compute_crmasks(make_stack(), cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)


@pytest.fixture(scope="module")
def result():
    return run()


def test_coincidence_flagged_in_two_exposures_but_not_on_the_median_is_mediancr(result):
    rows, cols = zip(*SEEN_TWICE)
    assert (result.stats.median2d[rows, cols] - result.stats.min2d[rows, cols] < PAIR_SURE_SIGMA * SIGMA).all()
    assert result.crmasks[0, rows, cols].all() and result.crmasks[1, rows, cols].all()  # flagged in both
    assert result.counts["mediancr_la"] == 0  # L.A.Cosmic flagged nothing on the median
    assert result.mediancr[rows, cols].all()
    assert CODES[int(result.mediancr_codes[24, 20])] == "pair"  # the rule's pixel; its neighbour by dilation


def test_coincidence_flagged_in_one_exposure_with_a_median_far_above_the_minimum_is_mediancr(result):
    rows, cols = zip(*SEEN_ONCE)
    assert result.mediancr[rows, cols].all()
    assert result.mediancr_codes[24, 50] == 6


def test_a_hit_flagged_in_one_exposure_only_is_not_mediancr(result):
    for r, c in SINGLE:
        assert result.crmasks[2, r, c], (r, c)  # the detector flagged the hit exposure
        assert not result.mediancr[r - 1:r + 2, c - 1:c + 2].any(), (r, c)
    far = np.ones(SHAPE, bool)
    for r, c in {**SEEN_TWICE, **SEEN_ONCE}:
        far[r - 1:r + 2, c - 1:c + 2] = False
    assert not (result.mediancr & far).any()


def test_a_detector_alone_on_shifted_exposures_adds_no_faint_groups():
    """Faint groups compare each exposure with min2d: on exposures declared shifted every line flank
    would pass for a group (offsets set 798 x 1008, ``deepcr``: 272 000 pixels, a third of the frame,
    before they were limited to aligned exposures)."""
    offsets = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25))
    sim = simulate_exposures((300, 400), 3, offsets=offsets, cr_fraction=0.002, n_coincident=5, seed=5)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="pycosmic", mm_xy_offsets=[list(o) for o in offsets])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    sig = np.sqrt(np.maximum(sim.expected, 0) + sim.rnoise_e**2)
    near_cr = ndimage.binary_dilation(sim.cr_deposit > sig, iterations=2)
    assert "faint_group_pixels" not in res.counts
    assert "mediancr_every_exposure" in res.counts  # the repair of pixels hit in every exposure still runs
    assert np.count_nonzero(res.crmasks & ~near_cr) < 1e-3 * res.crmasks[0].size
