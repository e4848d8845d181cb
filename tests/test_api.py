"""The Python interface (megara_crdetect.detect / CRMasks.combine): same pixels as the CLI and numina run.

300 x 200 simulated frames, ``crmethod: mmcosmic`` with two simulations, so each detection takes well
under a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, NDData, VarianceUncertainty

import megara_crdetect as mcr
from megara_crdetect import cli
from megara_crdetect.api import FLAG_CR_LEFT, FLAG_REPAIRED
from megara_crdetect.config import params_yaml
from megara_crdetect.core.pipeline import COMBINATIONS
from megara_crdetect.drp import INSTRUMENT, MODE
from megara_crdetect.errors import ConfigError, InputError
from megara_crdetect.examples import write_exposures
from megara_crdetect.simulate import simulate_exposures

REQUIREMENTS = {"crmethod": "mmcosmic", "mm_nsimulations": 2, "dilation": 2,
                "pixels_to_be_flagged_as_cr": [[10, 12]], "regions_to_be_skipped": [[1, 20, 1, 10]]}
DETECTOR = {"gain": 1.25, "rnoise": 3.0, "bias": 2.0}
MASKS = ("MEDIANCR", "MEANCRT", "CRMASK1", "CRMASK2", "CRMASK3", "MEANCR")
MEGARA_INSCONF = "ca3558e3-e50d-4bbc-86bd-da50a0998a48"


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> list[Path]:
    data = tmp_path_factory.mktemp("api") / "data"
    data.mkdir()
    paths = write_exposures(simulate_exposures((200, 300), 3, seed=11), data)
    for path in paths:
        fits.setval(path, "INSCONF", value=MEGARA_INSCONF)
    return paths


@pytest.fixture(scope="module")
def api(frames) -> mcr.CRMasks:
    return mcr.detect([str(p) for p in frames], **DETECTOR, **REQUIREMENTS)


@pytest.fixture(scope="module")
def cli_out(frames, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    params = folder / "params.yaml"
    params.write_text(params_yaml([str(p) for p in frames], inputs=DETECTOR, requirements=REQUIREMENTS))
    assert cli.main([str(params), "--output_dir", str(folder / "out"), "--no-figures"]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def numina_out(frames, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("numina")
    ob = {"id": "api", "instrument": INSTRUMENT, "mode": MODE, "frames": [p.name for p in frames],
          "requirements": {**REQUIREMENTS, **DETECTOR}}
    (folder / "ob.yaml").write_text(yaml.safe_dump(ob))
    exe = Path(sys.executable).with_name("numina")
    run = subprocess.run([str(exe), "run", "ob.yaml", "--datadir", str(frames[0].parent)], cwd=folder,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return folder / "obsidapi_results"


def _raw(frames) -> list[np.ndarray]:
    return [fits.getdata(p).astype(np.float32) for p in frames]


# ---------------------------------------------------------------------------
# one core: API, command line and numina run give the same pixels
# ---------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Card is too long:astropy.io.fits.verify.VerifyWarning")
@pytest.mark.parametrize("source", ["cli", "numina"])
def test_api_equals_cli_and_numina_run(api, source, request):
    out = request.getfixturevalue(f"{source}_out")
    with fits.open(out / "crmasks.fits") as ref:
        ours = {"MEDIANCR": api.mediancr, "MEANCRT": api.meancrt, "MEANCR": api.meancr,
                **{f"CRMASK{k}": m for k, m in enumerate(api.crmasks, 1)}}
        for name in MASKS:
            assert np.array_equal(ours[name], ref[name].data.astype(bool)), name
        assert ref["MEDIANCR"].data.sum() == api.summary["mediancr"] > 0
    for name in COMBINATIONS:
        ccd = api.combine(name)
        with fits.open(out / f"combined_{name}.fits") as ref:
            assert np.array_equal(ccd.data, ref[0].data), name
            assert np.array_equal(ccd.uncertainty.array, ref["VARIANCE"].data), name
            assert np.array_equal(api.exposure_map(name), ref["MAP"].data), name


def test_write_gives_the_command_line_files(api, cli_out, tmp_path):
    written = {p.name for p in api.write(tmp_path / "w")}
    assert written == {p.name for p in cli_out.iterdir()}
    with fits.open(tmp_path / "w" / "combined_meancr2.fits") as ours, \
            fits.open(cli_out / "combined_meancr2.fits") as ref:
        assert np.array_equal(ours[0].data, ref[0].data)
    assert (tmp_path / "w" / "mediancr_identified.csv").read_text() == \
        (cli_out / "mediancr_identified.csv").read_text() == api.mediancr_table


# ---------------------------------------------------------------------------
# CCDData / NDData / arrays in, units
# ---------------------------------------------------------------------------


def test_ccddata_in_adu_with_a_gain_is_converted_to_electrons(api, frames):
    ccds = [CCDData(d, unit="adu", meta={"OBJECT": "SIM", "EXPTIME": 1200.0}) for d in _raw(frames)]
    masks = mcr.detect(ccds, gain=1.25 * u.electron / u.adu, rnoise=3.0 * u.adu, bias=2.0 * u.adu,
                       **REQUIREMENTS)
    assert np.array_equal(masks.mediancr, api.mediancr)
    mean = masks.combine("mean")
    expected = np.mean([(d - 2.0) * 1.25 for d in _raw(frames)], axis=0)
    np.testing.assert_allclose(mean.data, expected, rtol=1e-5, atol=1e-3)
    assert mean.unit == u.electron and mean.meta["OBJECT"] == "SIM" and mean.meta["GAIN"] == 1.25


def test_ccddata_in_electrons_needs_no_gain(api, frames):
    electrons = [CCDData((d - np.float32(2.0)) * np.float32(1.25), unit="electron") for d in _raw(frames)]
    # the read noise in electrons (3.0 ADU x 1.25): the same noise model, the same masks
    masks = mcr.detect(electrons, rnoise=3.75 * u.electron, **REQUIREMENTS)
    assert masks.config.inputs.gain == 1.0 and masks.config.rnoise_e == 3.75
    assert np.array_equal(masks.mediancr, api.mediancr)
    assert np.array_equal(masks.combine("mediancr").data, api.combine("mediancr").data)
    with pytest.raises(ConfigError, match=r"bias = 2.0: the images are in electron"):
        mcr.detect(electrons, bias=2.0, **REQUIREMENTS)


def test_arrays_nddata_and_a_3d_stack_give_the_same_masks(api, frames):
    raw = _raw(frames)
    for images in ([NDData(d) for d in raw], raw, np.stack(raw)):
        masks = mcr.detect(images, **DETECTOR, **REQUIREMENTS)
        assert np.array_equal(masks.mediancr, api.mediancr)
        assert np.array_equal(masks.crmasks, api.crmasks)


# ---------------------------------------------------------------------------
# CCDData out
# ---------------------------------------------------------------------------


def test_combined_ccddata_round_trips_through_write_and_read(api, tmp_path):
    ccd = api.combine("median")
    # meta: the first exposure's header (OBJECT, EXPTIME...) plus the product's cards, its own UUID among them
    assert ccd.meta["OBJECT"] == "SIMULATED" and ccd.meta["NIMAGES"] == 3
    assert ccd.meta["UUID"] != api.uuid and len(ccd.meta["UUID"]) == 36
    assert isinstance(ccd.uncertainty, VarianceUncertainty) and ccd.uncertainty.unit == u.electron ** 2
    # the plain median keeps the MEDIANCR cosmic rays: masked; mediancr repairs them: flagged, not masked
    assert np.array_equal(ccd.mask, api.mediancr | api.problematic) and ccd.mask.any()
    repaired = api.combine("mediancr")
    assert np.array_equal(repaired.mask, api.problematic)  # masked in every exposure: no clean value anywhere
    assert np.array_equal((repaired.flags & FLAG_REPAIRED) != 0, api.mediancr)
    assert np.array_equal((ccd.flags & FLAG_CR_LEFT) != 0, api.mediancr)
    ccd.write(tmp_path / "median.fits")
    back = CCDData.read(tmp_path / "median.fits")
    assert back.unit == u.electron
    assert np.array_equal(back.data, ccd.data)
    assert isinstance(back.uncertainty, VarianceUncertainty)
    assert np.array_equal(back.uncertainty.array, ccd.uncertainty.array)
    assert np.array_equal(back.mask, ccd.mask)
    assert back.meta["COMBINED"] == "median" and back.meta["MASKUUID"] == api.uuid


# ---------------------------------------------------------------------------
# errors: one line naming the key
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"la_sigclp": 5}, "requirements.la_sigclp: unknown key (did you mean 'la_sigclip'?)"),
    ({"dilation": -1}, "requirements.dilation = -1: must be >= 0"),
    ({"crmethod": "pycosmics"}, "requirements.crmethod = 'pycosmics': expected one of"),
    ({"gain": -1.0}, "gain = -1.0: must be > 0"),
    ({"rnoise": 3 * u.s}, "rnoise = 3.0 s: expected a number or a Quantity in adu"),
    ({"pixels_to_be_flagged_as_cr": [[301, 1]]}, "outside the image: needs X <= NAXIS1 = 300"),
    ({"interactive": True}, "requirements.interactive = True: no figure windows in the Python interface"),
])
def test_bad_keyword_raises_a_one_line_config_error(frames, kwargs, message):
    with pytest.raises(ConfigError) as err:
        mcr.detect([str(p) for p in frames], **{**REQUIREMENTS, **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_images_raise_one_line_errors(frames, api):
    raw = _raw(frames)
    with pytest.raises(ConfigError, match="at least 3 exposures are needed, got 2"):
        mcr.detect(raw[:2])
    with pytest.raises(ConfigError, match=r"images\[1\]: unit 'electron / s' not supported"):
        mcr.detect([CCDData(d, unit="adu") if k != 1 else CCDData(d, unit="electron/s")
                    for k, d in enumerate(raw)])
    with pytest.raises(InputError, match=r"images\[2\] = 'nothere.fits': file not found"):
        mcr.detect([str(frames[0]), str(frames[1]), str(frames[0].parent / "nothere.fits")])
    with pytest.raises(ConfigError, match="combination = 'best': expected one of mean"):
        api.combine("best")
