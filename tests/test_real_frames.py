"""Real CCD frames (WHT/ISIS, ../shared/data/real): the command line on three 100 s exposures.

The triplet has real single cosmic-ray hits and no pixel hit in two of the
three frames, plus a defective edge column (FITS x = 1) with large values of
both signs that change from frame to frame.  The star's spectrum (columns
~460-480) changes a little between the exposures (seeing), the only place
where the median was flagged before the exposure-difference model removed those changes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from megara_crdetect.cli import main

REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "wht_isis"
FRAMES = ("r2701253.fit.gz", "r2701255.fit.gz", "r2701257.fit.gz")
GAIN, RNOISE = 0.98, 4.2  # e-/ADU (header), ADU (measured)
ROWS = slice(1500, 2524)  # 1024 rows of the 4096 science rows keep the test fast
STAR = slice(459, 481)  # 0-based columns of the standard star's trace

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"real frames not found at {REAL}")


def _reduced(path: Path) -> np.ndarray:
    """Bias (per-column median of the overscan rows 4110-4190) subtracted, trimmed to rows 1-4096."""
    with fits.open(path) as hdul:
        data = hdul[1].data.astype(np.float32)
    return (data[:4096] - np.median(data[4109:4190], axis=0))[ROWS]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wht")
    stack = np.stack([_reduced(REAL / name) for name in FRAMES])
    names = []
    for k, img in enumerate(stack, 1):
        names.append(f"isis_{k}.fits")
        fits.PrimaryHDU(img).writeto(folder / names[-1])
    params = folder / "params.yaml"
    params.write_text(yaml.safe_dump({"images": names, "gain": GAIN, "rnoise": RNOISE, "bias": 0.0,
                                      "requirements": {"crmethod": "mm_lacosmic"}}))  # the model: default
    before = {n: (folder / n).read_bytes() for n in names}
    status = main([str(params), "--output_dir", str(folder / "out"), "--no-figures"])
    assert status == 0
    assert {n: (folder / n).read_bytes() for n in names} == before  # inputs untouched
    with fits.open(folder / "out" / "crmasks.fits") as hdul:
        masks = {h.name: (h.data.astype(bool) if h.name.startswith(("MEDIANCR", "CRMASK")) else None)
                 for h in hdul[1:]}
        header = hdul[0].header.copy()
    return stack * GAIN, masks, header


def test_bad_edge_column_is_left_out_not_reported_as_cosmic_rays(run):
    _, masks, header = run
    assert header["BADCOLS"] == "1"
    assert not masks["MEDIANCR"][:, :2].any()
    for k in (1, 2, 3):
        assert not masks[f"CRMASK{k}"][:, :2].any()


def test_no_coincidences_in_real_data_means_no_mediancr_away_from_the_star(run):
    _, masks, _ = run
    away = masks["MEDIANCR"].copy()
    away[:, STAR] = False
    assert not away.any(), np.argwhere(away)[:10]
    # on the trace the seeing changes the profile and strength from exposure to exposure; the
    # exposure-difference model (core/variation.py) removes that before the detection (without it: 95
    # pixels on this part of the trace, 0.4 % of it; on the whole triplet 216 -> 12 with flux_factor auto)
    print("MEDIANCR on the trace:", int(masks["MEDIANCR"].sum()))
    assert masks["MEDIANCR"].sum() <= 5


def test_real_single_hits_are_masked_in_their_exposure(run):
    data, masks, _ = run
    noise = np.sqrt(np.maximum(np.median(data, axis=0), 0) + (RNOISE * GAIN) ** 2)
    for k in range(3):
        hits = data[k] - np.median(np.delete(data, k, axis=0), axis=0) > 10 * noise
        hits[:, 0] = False  # the defective column
        assert hits.sum() >= 20
        assert (hits & masks[f"CRMASK{k + 1}"]).sum() / hits.sum() >= 0.98
