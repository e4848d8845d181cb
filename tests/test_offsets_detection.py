"""Detection with sub-pixel offsets: cosmic rays on line flanks, hot pixels that do not move."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.io import to_electrons
from megara_crdetect.simulate import simulate_exposures

OFFSETS = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25))


@pytest.fixture(scope="module")
def run():
    sim = simulate_exposures((400, 600), 3, offsets=OFFSETS, cr_fraction=0.005, n_coincident=10,
                             hot_fraction=2e-4, seed=21)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    return sim, res


def _sigma(sim):
    return np.sqrt(np.maximum(sim.expected, 0) + sim.rnoise_e**2)


def test_single_hits_on_line_flanks_are_masked_in_their_exposure(run):
    sim, res = run
    sig = _sigma(sim)
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    # moderate hits (8-30 sigma) where the exposures differ by > 5 sigma: exposure - min2d, judged against
    # the spread, found 84-94 % of them; the residual against each exposure's own model finds all
    moderate = (sim.cr_deposit > 8 * sig) & (sim.cr_deposit < 30 * sig)
    single = moderate & ((sim.cr_deposit > sig).sum(axis=0) == 1)
    on_flank = single & (spread > 5)[None]
    on_flank[:, :3], on_flank[:, -3:], on_flank[:, :, :3], on_flank[:, :, -3:] = False, False, False, False
    assert on_flank.sum() >= 50
    found = (res.crmasks & on_flank).sum() / on_flank.sum()
    assert found >= 0.98, found


def test_hot_pixels_do_not_move_and_are_not_cosmic_rays(run):
    sim, res = run
    hot = np.zeros(res.mediancr.shape, bool)
    hot[sim.hot_pixels[:, 0], sim.hot_pixels[:, 1]] = True
    cr_near = ndimage.binary_dilation((sim.cr_deposit > _sigma(sim)).any(axis=0), iterations=2)
    assert hot.sum() >= 20
    assert not (res.mediancr & hot & ~cr_near).any()
    # the moving model cannot describe them exactly: a few neighbour effects remain in the exposure masks
    assert (res.crmasks & (hot & ~cr_near)[None]).any(axis=0).sum() <= 0.1 * hot.sum()


def test_coincidences_spoiling_the_median_of_shifted_exposures_are_found():
    """2-of-3 hits with offsets: a coincidence survives the median of the back-shifted exposures, so
    the common scene must be cleaned before the models are built from it.  With the coincidence left in
    the scene (models of both hit exposures containing it, spread inflated around it) 99 of these 110
    pixels were found; now 107."""
    sim = simulate_exposures((400, 600), 3, offsets=OFFSETS, cr_fraction=0.005, n_coincident=40,
                             hot_fraction=2e-4, seed=22)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    sig = np.sqrt(np.maximum(sim.truth, 0) + sim.rnoise_e**2)
    harmful = (np.median(stack, axis=0) - np.median(sim.expected, axis=0)) / sig > 5
    pairs = harmful & ((sim.cr_deposit > sig).sum(axis=0) == 2)
    assert pairs.sum() >= 100
    assert (res.mediancr & pairs).sum() / pairs.sum() >= 0.95
    far = ~ndimage.binary_dilation((sim.cr_deposit > sig).any(axis=0), np.ones((3, 3), bool), iterations=2)
    assert (res.mediancr & far).sum() <= 18  # two noise detections, dilated, at most (as before)
