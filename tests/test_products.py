"""Products a user can trust: headers copied from the inputs, the DQ plane, bad and saturated pixels."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import bitmask

from megara_crdetect.cli import main
from megara_crdetect.config import params_yaml
from megara_crdetect.core.combine import median_variance_factor
from megara_crdetect.dq import DQ_BITS, DQ_FLAGS, flag_map_of_header
from megara_crdetect.examples import write_exposures
from megara_crdetect.simulate import simulate_exposures

FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2, "maxplots": 0}
SHAPE = (120, 160)
IDENTITY = {"TELESCOP": "GTC", "OBSERVER": "A. Astronomer", "OBJECT": "NGC 1234", "DATE-OBS": "2024-01-01T01:00:00",
            "MJD-OBS": 60310.0417, "RA": 150.25, "DEC": -12.5, "EQUINOX": 2000.0, "AIRMASS": 1.234,
            "INSCONF": "ca3558e3-e50d-4bbc-86bd-da50a0998a48", "VPH": "LR-B", "INSMODE": "LCB", "OBSMODE": "MegaraLcbImage"}
WCS = {"CTYPE1": "WAVE", "CRPIX1": 1.0, "CRVAL1": 4000.0, "CDELT1": 0.2, "CUNIT1": "Angstrom",
       "CTYPE2": "LINEAR", "CRPIX2": 1.0, "CRVAL2": 0.0, "CDELT2": 1.0, "SPECSYS": "TOPOCENT"}


def _write_set(folder: Path, *, seed=11, edit=None):
    sim = simulate_exposures(SHAPE, 3, seed=seed, n_coincident=6, cr_fraction=0.005)
    files = write_exposures(sim, folder)
    for k, f in enumerate(files):
        with fits.open(f) as hdul:
            data, hdr = hdul[0].data.copy(), hdul[0].header.copy()
        hdr.update({**IDENTITY, **WCS})
        hdr["EXPTIME"] = 100.0 * (k + 1)
        hdr["DATE-OBS"] = f"2024-01-01T0{k + 1}:00:00"
        if edit is not None:
            data = edit(k, data)
        fits.writeto(f, data, hdr, overwrite=True)
    return sim, files


def _run(folder: Path, files, out: Path, **requirements) -> int:
    path = folder / "params.yaml"
    path.write_text(params_yaml([f.name for f in files], requirements={**FAST, **requirements}))
    return main([str(path), "--output_dir", str(out), "--no-figures", "--log-level", "WARNING"])


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plain")
    _, files = _write_set(folder)
    assert _run(folder, files, folder / "out") == 0
    return files, folder / "out"


def test_combined_images_carry_the_inputs_identity_wcs_exposure_time_and_inputs(plain_run):
    files, out = plain_run
    first = fits.getheader(files[0])
    uuids = set()
    for name in ("combined_mean.fits", "combined_mediancr.fits", "combined_meancr2.fits", "crmasks.fits"):
        hdr = fits.getheader(out / name)
        for key in [*IDENTITY, *WCS, "INSTRUME"]:
            assert hdr[key] == first[key], (name, key)
        assert hdr["DATE-OBS"] == "2024-01-01T01:00:00"  # the first input's
        assert hdr["BUNIT"] == "electron"
        for k, f in enumerate(files, 1):
            assert hdr[f"INPUT{k}"] == f.name
            assert hdr[f"INCHK{k}"] == hashlib.sha256(f.read_bytes()).hexdigest()
        uuids.add(hdr["UUID"])
        if name.startswith("combined"):
            assert hdr["EXPTIME"] == pytest.approx(200.0) and hdr["TOTEXP"] == pytest.approx(600.0)
    assert len(uuids) == 4, "every product has its own UUID"
    assert fits.getheader(out / "combined_mean.fits")["MASKUUID"] == fits.getheader(out / "crmasks.fits")["UUID"]


def test_dq_bits_are_named_and_readable_with_astropy_bitmask(plain_run):
    _, out = plain_run
    with fits.open(out / "crmasks.fits") as hdul:
        med = hdul["MEDIANCR"].data.astype(bool)
        anycr = med | hdul["MEANCRT"].data.astype(bool) | hdul["MEANCR"].data.astype(bool)
        for k in (1, 2, 3):
            anycr |= hdul[f"CRMASK{k}"].data.astype(bool)
        summary = hdul["DQ"].data
        assert summary.dtype == np.uint16
        names = flag_map_of_header(hdul["DQ"].header)
    assert names == {k: v for k, (v, _) in DQ_BITS.items()}
    crs = bitmask.bitfield_to_boolean_mask(summary, ignore_flags="~CR_REPAIRED", flag_name_map=DQ_FLAGS)
    np.testing.assert_array_equal(crs, anycr)
    with fits.open(out / "combined_mediancr.fits") as hdul:
        dq = hdul["DQ"].data
        flag_map = bitmask.extend_bit_flag_map("FromHeader", **flag_map_of_header(hdul["DQ"].header))
        repaired = bitmask.bitfield_to_boolean_mask(dq, ignore_flags="~CR_REPAIRED", flag_name_map=flag_map)
        np.testing.assert_array_equal(repaired, med)
        np.testing.assert_array_equal(repaired, hdul["MAP"].data == 1)
    assert not np.any(fits.getdata(out / "combined_mean.fits", "DQ") & DQ_BITS["CR_REPAIRED"][0])


def test_non_finite_pixels_are_left_out_of_their_exposure(tmp_path):
    def edit(k, data):
        if k == 1:
            data[10, 20], data[30, 40], data[50:52, 60:63] = np.nan, np.inf, -np.inf
        data[70, 80] = np.nan  # in every exposure: no data
        return data

    _, files = _write_set(tmp_path, edit=edit)
    assert _run(tmp_path, files, tmp_path / "out") == 0
    others = np.stack([fits.getdata(files[0]), fits.getdata(files[2])]).astype(np.float64)
    for name in ("mean", "median", "mediancr", "meancr"):
        with fits.open(tmp_path / "out" / f"combined_{name}.fits") as hdul:
            value, var, emap, dq = (hdul[n].data for n in ("PRIMARY", "VARIANCE", "MAP", "DQ"))
            assert np.all(np.isfinite(value)) and np.all(np.isfinite(var))
            for r, c in ((10, 20), (30, 40), (50, 61)):
                assert emap[r, c] == 2 and dq[r, c] & DQ_BITS["BAD_INPUT"][0], (name, r, c)
                assert value[r, c] == pytest.approx(others[:, r, c].mean(), rel=1e-5), name  # mean = median of 2
                factor = 0.5 if name in ("mean", "meancr") else median_variance_factor(2)
                assert var[r, c] == pytest.approx(factor * (max(value[r, c], 0) + 3.4**2), rel=1e-4), name
            assert emap[70, 80] == 0 and value[70, 80] == 0
            assert dq[70, 80] & DQ_BITS["NO_DATA"][0]
    with fits.open(tmp_path / "out" / "crmasks.fits") as hdul:
        for ext in ("MEDIANCR", "CRMASK2"):
            assert not hdul[ext].data[[10, 30, 50, 70], [20, 40, 61, 80]].any(), ext


def test_a_frame_without_any_finite_pixel_is_an_error(tmp_path, capsys):
    _, files = _write_set(tmp_path, edit=lambda k, d: np.full_like(d, np.nan) if k == 2 else d)
    assert _run(tmp_path, files, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: images[2] = 'fake_3.fits': every pixel is NaN or infinite; there is no data to use"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_saturated_plateau_is_marked_in_dq_never_a_cosmic_ray(tmp_path):
    """A 65535 plateau in two of three exposures: 378 MEDIANCR pixels before; now DQ SATURATED,
    left out of those exposures (MAP 1, the third exposure's value)."""
    def edit(k, data):
        if k < 2:
            data[50:62, 70:95] = 65535
        return data

    _, files = _write_set(tmp_path, edit=edit)
    assert _run(tmp_path, files, tmp_path / "out") == 0
    box = (slice(49, 63), slice(69, 96))
    with fits.open(tmp_path / "out" / "crmasks.fits") as hdul:
        for ext in ("MEDIANCR", "MEANCRT", "CRMASK1", "CRMASK2", "CRMASK3"):
            assert not hdul[ext].data[box].any(), ext
        sat = bitmask.bitfield_to_boolean_mask(hdul["DQ"].data, ignore_flags="~SATURATED", flag_name_map=DQ_FLAGS)
        assert sat[50:62, 70:95].all() and sat.sum() == 12 * 25
    with fits.open(tmp_path / "out" / "combined_mediancr.fits") as hdul:
        assert np.all(hdul["MAP"].data[50:62, 70:95] == 1)
        np.testing.assert_allclose(hdul[0].data[50:62, 70:95], fits.getdata(files[2])[50:62, 70:95])
