"""Issue 17: offsets measured as zero within their error give the aligned result.

Before, ``mm_crosscorr_region`` on aligned exposures measured offsets of a
few 0.001 px and took the shifted path (models shifted by splines, residual
detections): every CRMASKk grew (41 200 -> 48 900 px on the 1596 x 2016 set)
and the problematic pixels with them (66 -> 176).
"""

from __future__ import annotations

import numpy as np

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.io import to_electrons
from megara_crdetect.simulate import simulate_exposures


def _run(sim, **params):
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, **params)
    return compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)


def test_aligned_exposures_with_a_crosscorr_region_give_the_aligned_masks():
    sim = simulate_exposures((200, 340), 3, cr_fraction=0.005, n_coincident=10, seed=31)
    aligned = _run(sim)
    measured = _run(sim, mm_crosscorr_region=[214, 320, 50, 150])
    assert np.array_equal(measured.offsets, np.zeros((3, 2)))
    assert np.array_equal(measured.mediancr, aligned.mediancr)
    assert np.array_equal(measured.crmasks, aligned.crmasks)
    assert np.array_equal(measured.problematic, aligned.problematic)
    # no shifted models: the repair value is the aligned run's (min2d of the exposures corrected by the
    # exposure-difference model, repaired from the neighbours only where every exposure is hit)
    assert (measured.repair_min is None) == (aligned.repair_min is None)
    if aligned.repair_min is not None:
        assert np.array_equal(measured.repair_min, aligned.repair_min)
        assert np.count_nonzero(aligned.repair_min != aligned.stats.min2d) == aligned.counts["mediancr_every_exposure"]


def test_real_offsets_are_kept():
    offsets = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25))
    sim = simulate_exposures((200, 340), 3, offsets=offsets, cr_fraction=0.005, n_coincident=5, seed=31)
    res = _run(sim, mm_crosscorr_region=[214, 320, 50, 150])
    assert np.abs(res.offsets - np.asarray(offsets)).max() < 0.05
