"""Inside a real MEGARA reduction: megaradrp MegaraBiasImage -> ours -> megaradrp's meancr2 combination.

Raw frames come from megaradrp's own simulator (``tests/_megarasim.py``:
4212 x 4196, two amplifiers with gains 1.73/1.60 e-/ADU and biases
1000/1030 ADU).  One full-size OB is simulated once per module (the chain
needs megaradrp's real trim regions, so it cannot be smaller); the runs use
``crmethod: mmcosmic`` with two simulations to stay cheap.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

pytestmark = pytest.mark.skipif(importlib.util.find_spec("megaradrp") is None,
                                reason="megaradrp (extra .[megara]) is not installed")

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _megarasim as sim  # noqa: E402

from megara_crdetect.drp import INSTRUMENT, MODE  # noqa: E402
from megara_crdetect.drp.loader import load_drp  # noqa: E402

EXPTIME = 100.0
FRAMES = ["science_1.fits", "science_2.fits", "science_3.fits"]
FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2}


def _hits(shape, rng):
    """Per-exposure cosmic-ray electrons: single hits, a 3-pixel track hit in exposures 1 and 2."""
    hits = np.zeros((3,) + shape, np.float32)
    for k in range(3):
        for y, x in zip(rng.integers(20, shape[0] - 20, 40), rng.integers(20, shape[1] - 20, 40)):
            hits[k, y, x:x + 2] += rng.uniform(2000, 8000)
    track = (slice(1500, 1503), slice(2000, 2001))  # in the electrons image (flipped by the readout)
    hits[0][track] += 6000.0
    hits[1][track] += 5000.0
    return hits, track


@pytest.fixture(scope="module")
def chain(tmp_path_factory, drpmocker_module):
    """The simulated OB, megaradrp's master bias and our crmasks.fits."""
    from megaradrp.loader import load_drp as load_megara
    from numina.user.session import Session

    base = tmp_path_factory.mktemp("megara")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(11)
    rate = sim.scene()
    hits, track = _hits(sim.SHAPE, rng)
    sim.write_bias_frames(data, 1)
    sim.write_science_frames(data, rate, list(hits), EXPTIME)
    drpmocker_module.add_drp("MEGARA", load_megara)
    drpmocker_module.add_drp(INSTRUMENT, load_drp)
    session = Session(basedir=base, datadir=data, config=_run_config(base))
    session.add_observations({"id": "bias", "instrument": "MEGARA", "mode": "MegaraBiasImage",
                              "frames": ["bias_1.fits"]})
    session.add_observations({"id": "cr", "instrument": INSTRUMENT, "mode": MODE, "frames": FRAMES,
                              "requirements": {"master_bias": "master_bias.fits", **FAST}})
    assert session.run("bias").state == 2
    shutil.copy(base / "obsidbias_results" / "master_bias.fits", data / "master_bias.fits")
    task = session.run("cr")
    return {"base": base, "data": data, "task": task, "rate": rate, "hits": hits, "track": track,
            "session": session}


@pytest.fixture(scope="module")
def drpmocker_module():
    """numina's drpmocker for one module (only the DRPs added here are visible)."""
    from numina.testing.drpmocker import DRPMocker

    mp = pytest.MonkeyPatch()
    mocker = DRPMocker(mp)
    yield mocker
    mp.undo()


def _run_config(base: Path):
    from numina.user.cli import base_config

    config = base_config()
    config["tool.run"]["basedir"] = str(base)
    return config


def test_chain_masks_in_megaradrp_geometry(chain):
    assert chain["task"].state == 2
    with fits.open(chain["base"] / "obsidcr_results" / "crmasks.fits") as hdul:
        assert hdul["MEDIANCR"].shape == (4112, 4096)
        hdr = hdul[0].header
        assert hdr["INSTRUME"] == "MEGARA" and hdr["INSCONF"] == sim.INSCONF
        assert hdr["VPH"] == "LR-B" and hdr["INSMODE"] == "LCB" and hdr["EXPTIME"] == EXPTIME
        assert hdr["MBIASUID"] != "none"
        # the 2-of-3 track, where megaradrp's trimmed frame shows it (rows flipped by the readout)
        track = sim.trimmed_view(np.arange(np.prod(sim.SHAPE)).reshape(sim.SHAPE))[chain["track"]]
        flagged = np.flatnonzero(hdul["MEDIANCR"].data)
        assert np.isin(track.ravel(), flagged).all()


def test_chain_megaradrp_meancr2_combination(chain):
    """megaradrp's combination (what MegaraLcbImage calls with method: meancr2) accepts our masks."""
    from megaradrp.processing.combine import basic_processing_with_combination_frames_crmasks
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe
    from megaradrp.recipes.scientific.lcb import LCBImageRecipe
    from numina.array import combine
    from numina.core import ObservationResult
    from numina.types.dataframe import DataFrame

    from megara_crdetect.megara import megara_profile

    data = chain["data"]
    frames = [DataFrame(filename=str(data / f)) for f in FRAMES]
    with fits.open(data / FRAMES[0]) as first:
        ins = megara_profile(first, FRAMES[0])
    ob = ObservationResult(instrument="MEGARA", mode="MegaraLcbImage")
    ob.frames, ob.configuration = frames, ins
    # MegaraLcbImage's own getters (overscan, trim; bpm, bias, dark, gain, slit flat, diffuse light),
    # fed with the calibrations this OB has (its wavelength calibration, fibre flat and apertures are
    # needed only after the combination)
    lcb = LCBImageRecipe()
    calibs = CRMasksRecipe.create_input(obresult=ob, master_bias=DataFrame(filename=str(data / "master_bias.fits")))
    flows = lcb.init_filters_generic(calibs, lcb.create_getters(), ins)
    # megaradrp opens the masks and leaves them open: hand it a copy in memory
    with fits.open(chain["base"] / "obsidcr_results" / "crmasks.fits") as hdul:
        masks = fits.HDUList([h.copy() for h in hdul])
    result = basic_processing_with_combination_frames_crmasks(
        frames, DataFrame(frame=masks), flows, method=combine.meancr2, method_kwargs={"apply_flux_factor": True})
    image = result[0].data
    assert image.shape == (4112, 4096)
    truth = sim.trimmed_view(chain["rate"] * EXPTIME)
    track = chain["track"]
    flipped = (slice(4112 - track[0].stop, 4112 - track[0].start), track[1])
    # the coincidence is repaired: within 6 sigma of the noise-free truth (not +5000 e-)
    assert np.all(np.abs(image[flipped] - truth[flipped]) < 6 * np.sqrt(truth[flipped] + 3.4 ** 2) + 50)
    assert any("Masks uuid" in h for h in result[0].header["HISTORY"])
