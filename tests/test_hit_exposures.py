"""Issue 17: a MEDIANCR pixel spoiled by k hits has k hit exposures, and their CRMASKk say so.

Each case is a 2-of-3 coincidence with one strong and one weak hit (30-40 e-,
5.4-7 noise sigmas) set exactly, without noise at that pixel: the median is
spoiled (MEDIANCR finds it as a pair), but the weak hit stays below the
boundary of its own exposure's diagram.  Before, its CRMASKk did not hold it
and meancr kept its deposit.
"""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core.combine import combine
from megara_crdetect.core.pipeline import Detector, compute_crmasks

SHAPE = (120, 200)
RNOISE, BACKGROUND = 3.4, 20.0
#: (row, col) -> extra electrons per exposure
CASES = {(20, 30): (400, 30, 0), (20, 60): (0, 30, 500), (20, 90): (35, 0, 300), (60, 90): (0, 400, 35)}


def _stack(factors=(1.0, 1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    x = np.arange(SHAPE[1])[None, :]
    truth = BACKGROUND + 3000 * np.exp(-0.5 * ((x - 150) / 1.2) ** 2) * np.ones((SHAPE[0], 1))
    stack = np.stack([rng.poisson(truth) + rng.normal(0, RNOISE, SHAPE) for _ in range(3)]).astype(np.float32)
    for (r, c), extra in CASES.items():
        stack[:, r, c] = truth[r, c] + np.asarray(extra)
    return stack * np.asarray(factors, np.float32)[:, None, None], truth


@pytest.mark.parametrize("factors", [(1.0, 1.0, 1.0), (0.8, 1.0, 1.2)], ids=["aligned", "flux factors"])
def test_every_exposure_hit_at_a_mediancr_pixel_is_in_its_mask(factors):
    stack, truth = _stack(factors)
    kw = {} if factors[0] == 1.0 else {"flux_factor": list(factors)}
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=30, **kw)
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    for (r, c), extra in CASES.items():
        assert res.mediancr[r, c], (r, c)
        for k in range(3):
            assert bool(res.crmasks[k, r, c]) == (extra[k] > 0), ((r, c), k)
        assert not res.problematic[r, c]
    # meancr then averages the clean exposure only: no deposit left
    normalised = stack / np.asarray(factors, np.float32)[:, None, None]
    meancr = combine(normalised, "meancr", rnoise_e=RNOISE, crmasks=res.crmasks).value
    for (r, c) in CASES:
        assert abs(meancr[r, c] - truth[r, c]) < 1e-3 * truth[r, c] + 1e-3
