"""The command-line shell on real FITS files: products, errors, exit status, atomic output."""

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits

from megara_crdetect.cli import main
from megara_crdetect.config import params_yaml
from megara_crdetect.examples import write_exposures
from megara_crdetect.simulate import simulate_exposures

FAST = {"crmethod": "mmcosmic", "mm_nsimulations": 2, "maxplots": 0}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three small simulated exposures with known cosmic rays, written to disk."""
    folder = tmp_path_factory.mktemp("data")
    sim = simulate_exposures((120, 160), 3, seed=11, n_coincident=6, cr_fraction=0.005)
    files = write_exposures(sim, folder)
    return sim, folder, [f.name for f in files]


def write_params(folder: Path, images, name="params.yaml", inputs=None, **requirements) -> Path:
    path = folder / name
    req = dict(FAST)
    req.update(requirements)
    path.write_text(params_yaml(images, inputs=inputs, requirements=req))
    return path


def snapshot(folder: Path) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


def test_run_writes_every_product(dataset, tmp_path):
    sim, folder, images = dataset
    params = write_params(folder, images)
    before = {n: (folder / n).read_bytes() for n in images}
    out = tmp_path / "out"
    assert main([str(params), "--output_dir", str(out), "--no-figures", "--log-level", "WARNING"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"crmasks.fits", "mediancr_identified.csv", "problematic_pixels.csv"} <= names
    assert {f"combined_{c}.fits" for c in ("mean", "median", "min", "mediancr", "meancrt", "meancr",
                                            "meancr2")} <= names
    assert not [n for n in names if n.startswith(".")], "staging folder left behind"
    assert all((folder / n).read_bytes() == before[n] for n in images), "inputs modified"
    with fits.open(out / "crmasks.fits") as hdul:
        names = [h.name for h in hdul]
        # CLEANMIN: the lowest of the exposures corrected by the exposure-difference model, where it is not zero
        assert names in (["PRIMARY", "MEDIANCR", "MEANCRT", "CRMASK1", "CRMASK2", "CRMASK3", "MEANCR", "DQ"],
                         ["PRIMARY", "MEDIANCR", "MEANCRT", "CRMASK1", "CRMASK2", "CRMASK3", "MEANCR", "CLEANMIN",
                          "DQ"])
        hdr = hdul[0].header
        assert hdr["CRMETHOD"] == "mmcosmic" and hdr["FLUXF1"] == 1.0 and "MMFPMED" in hdr
        history = "\n".join(str(h) for h in hdr["HISTORY"])
        assert "mm_nsimulations = 2" in history and "dilation = 1" in history
        med = hdul["MEDIANCR"].data
        assert med.dtype == np.uint8 and hdul["MEDIANCR"].header["NPMASKED"] == int(med.sum())
        # every injected 2-of-3 event whose median is clearly spoiled (> 10 sigma) is in MEDIANCR
        truth = sim.truth
        sigma = np.sqrt(np.maximum(truth, 0) + sim.rnoise_e**2)
        spoiled = (np.median(sim.exposures, axis=0) - truth) / sigma > 10
        centres = [(r, c) for r, c, e in sim.coincident_events if len(e) == 2 and spoiled[r, c]]
        assert len(centres) >= 3
        assert all(med[r, c] == 1 for r, c in centres), centres
        uuid = hdr["UUID"]
    with fits.open(out / "combined_mediancr.fits") as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "VARIANCE", "MAP", "DQ"]
        assert hdul[0].header["MASKUUID"] == uuid and hdul[0].header["BUNIT"] == "electron"
        assert hdul["MAP"].data.dtype.kind == "i" and hdul["MAP"].data.dtype.itemsize == 2 and set(np.unique(hdul["MAP"].data)) <= {1, 3}
        assert np.all(hdul["VARIANCE"].data > 0)
    rows = (out / "mediancr_identified.csv").read_text().splitlines()
    assert rows[0] == "CR_number,X_pixel,Y_pixel,Mask_value,Method"
    assert len(rows) - 1 == int(med.sum())


def test_crmasks_option_reapplies_saved_masks(dataset, tmp_path):
    _, folder, images = dataset
    params = write_params(folder, images)
    first, second = tmp_path / "a", tmp_path / "b"
    assert main([str(params), "--output_dir", str(first), "--no-figures"]) == 0
    assert main([str(params), "--output_dir", str(second), "--crmasks", str(first / "crmasks.fits")]) == 0
    assert not (second / "crmasks.fits").exists()
    for name in ("mediancr", "meancr2"):
        a = fits.getdata(first / f"combined_{name}.fits")
        b = fits.getdata(second / f"combined_{name}.fits")
        np.testing.assert_array_equal(a, b)


def test_shifted_exposures_save_their_repair_value_and_reapply_it(tmp_path):
    """With offsets MEDIANCR is repaired with CLEANMIN (saved in crmasks.fits), not min2d, and
    ``--crmasks`` gives the same combinations from the file alone."""
    offsets = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25))
    sim = simulate_exposures((120, 160), 3, seed=4, n_coincident=6, cr_fraction=0.005, offsets=offsets)
    images = [f.name for f in write_exposures(sim, tmp_path)]
    params = write_params(tmp_path, images, mm_xy_offsets=[list(o) for o in offsets])
    first, second = tmp_path / "a", tmp_path / "b"
    assert main([str(params), "--output_dir", str(first), "--no-figures"]) == 0
    with fits.open(first / "crmasks.fits") as hdul:
        assert "CLEANMIN" in [h.name for h in hdul]
        repair = hdul["CLEANMIN"].data
        med = hdul["MEDIANCR"].data.astype(bool)
    value = fits.getdata(first / "combined_mediancr.fits")
    assert med.any()
    np.testing.assert_array_equal(value[med], repair[med])
    assert main([str(params), "--output_dir", str(second), "--crmasks", str(first / "crmasks.fits")]) == 0
    for name in ("mediancr", "meancrt", "meancr"):
        np.testing.assert_array_equal(fits.getdata(first / f"combined_{name}.fits"),
                                      fits.getdata(second / f"combined_{name}.fits"))


def test_paths_are_relative_to_the_yaml_folder(dataset, tmp_path, monkeypatch):
    _, folder, images = dataset
    params = write_params(folder, images, name="relative.yaml")
    monkeypatch.chdir(tmp_path)
    assert main([str(params), "--output_dir", "rel_out", "--no-figures"]) == 0
    assert (tmp_path / "rel_out" / "crmasks.fits").exists()


def bad_cases(folder: Path, images):
    """(description, YAML document or text, expected message fragment)."""
    ok = {"images": images, "requirements": dict(FAST)}
    small = folder / "small.fits"
    fits.writeto(small, np.zeros((10, 10), np.float32), overwrite=True)
    cube = folder / "cube.fits"
    fits.writeto(cube, np.zeros((2, 10, 10), np.float32), overwrite=True)
    notfits = folder / "notfits.fits"
    notfits.write_text("this is not FITS")
    shape = fits.getdata(folder / images[0]).shape
    req = lambda **kw: {**ok, "requirements": {**FAST, **kw}}  # noqa: E731
    return [
        ("unknown key", req(mm_nsimulation=3), "requirements.mm_nsimulation: unknown key (did you mean 'mm_nsimulations'?)"),
        ("wrong type", req(la_sigclip="abc"), "requirements.la_sigclip = 'abc': expected a number > 0"),
        ("bad choice", req(crmethod="deepcosmic"), "expected one of lacosmic | mmcosmic | mm_lacosmic"),
        ("out of range", req(dilation=-1), "requirements.dilation = -1: must be >= 0"),
        ("two images", {**ok, "images": images[:2]}, "at least 3 images are needed, got 2"),
        ("missing file", {**ok, "images": images[:2] + ["nothere.fits"]}, "images[2] = 'nothere.fits': file not found"),
        ("not FITS", {**ok, "images": images[:2] + ["notfits.fits"]}, "'notfits.fits': cannot be read as FITS"),
        ("mismatched shapes", {**ok, "images": images[:2] + ["small.fits"]},
         f"images[2] = 'small.fits' is 10 x 10 (NAXIS1 x NAXIS2) but images[0] = '{images[0]}' is "
         f"{shape[1]} x {shape[0]}"),
        ("3-D data", {**ok, "images": images[:2] + ["cube.fits"]}, "HDU 0 is 3-D; a 2-D image is needed"),
        ("missing extension", {**ok, "extnum": 3}, f"extnum = 3: '{images[0]}' has only 1 HDU(s), numbered 0..0"),
        ("region out of bounds", req(regions_to_be_skipped=[[1, 500, 1, 10]]),
         f"[1, 500, 1, 10]: outside the image: needs xmax <= NAXIS1 = {shape[1]}"),
        ("pixel out of bounds", req(pixels_to_be_ignored_as_cr=[[3, 999]]), f"needs X <= NAXIS1 = {shape[1]} and Y <= NAXIS2"),
        ("flux list length", req(flux_factor=[1.0, 1.1]), "expected one entry per exposure (3), got 2"),
        ("non-positive factor", req(flux_factor=[1.0, 0.0, 1.0]), "flux factors must be > 0"),
        ("both offset options", req(mm_xy_offsets=[[0, 0], [0, 0], [0, 0]], mm_crosscorr_region=[1, 20, 1, 20]),
         "give either mm_xy_offsets or mm_crosscorr_region, not both"),
        ("key in wrong section", req(gain=2.0), "requirements.gain: this key belongs in the top level"),
        ("negative gain", {**ok, "gain": -1.0}, "gain = -1.0: must be > 0"),
        ("YAML syntax", "images: [a.fits\nrequirements: {", "is not valid YAML at line"),
        ("not a mapping", "- just\n- a list\n", "the parameter file must be a YAML mapping"),
    ]


def test_bad_inputs_give_one_line_exit_2_and_write_nothing(dataset, tmp_path, capsys):
    _, folder, images = dataset
    for description, document, fragment in bad_cases(folder, images):
        path = folder / "bad.yaml"
        path.write_text(document if isinstance(document, str) else yaml.safe_dump(document))
        out = tmp_path / description.replace(" ", "_")
        status = main([str(path), "--output_dir", str(out), "--no-figures"])
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2, description
        assert err[-1].startswith("error: ") and fragment in err[-1], (description, err)
        assert "Traceback" not in "\n".join(err)
        assert not out.exists() or not any(out.iterdir()), f"{description}: something was written"


def test_missing_parameter_file_and_no_arguments(tmp_path, capsys):
    assert main([str(tmp_path / "none.yaml"), "--output_dir", str(tmp_path / "o")]) == 2
    assert "parameter file" in capsys.readouterr().err
    assert main(["--output_dir", str(tmp_path / "o")]) == 2
    assert "give a parameter file" in capsys.readouterr().err


def test_failure_after_detection_leaves_no_partial_product(dataset, tmp_path, monkeypatch):
    """An error while writing the combinations must not leave crmasks.fits behind."""
    _, folder, images = dataset
    params = write_params(folder, images)
    import megara_crdetect.runner as runner

    def broken(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(runner, "iter_combinations", broken)
    out = tmp_path / "o"
    assert main([str(params), "--output_dir", str(out), "--no-figures"]) == 3
    assert not [p for p in out.iterdir()], os.listdir(out)


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and "megara-crdetect" in capsys.readouterr().out


def test_output_dir_that_is_a_file_is_a_one_line_error(dataset, tmp_path, capsys):
    _, folder, images = dataset
    params = write_params(folder, images)
    target = tmp_path / "taken"
    target.write_text("not a folder")
    assert main([str(params), "--output_dir", str(target), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --output_dir = '{target}': exists and is not a folder"]
    assert target.read_text() == "not a folder"


def test_default_run_writes_complete_figures(dataset, tmp_path):
    """The default run (figures on): every figure is there and complete, nothing half-written or hidden is
    left, and the warm-up thread that loaded matplotlib during the detection is over."""
    import re
    import threading

    from matplotlib.image import imread

    sim, folder, images = dataset
    params = write_params(folder, images, name="params_figures.yaml", maxplots=5)
    out = tmp_path / "out"
    assert main([str(params), "--output_dir", str(out), "--log-level", "WARNING"]) == 0
    names = {p.name for p in out.iterdir()}
    pngs = {"diagnostic_histogram2d.png", "diagnostic_mediancr.png", "diagnostic_meancr.png",
            *(f"diagnostic_crmask{k}.png" for k in (1, 2, 3))}
    assert pngs | {"mediancr_identified_cr.pdf", "mediancr_candidates.csv", "mediancr_regions.reg",
                   "review_edits.yaml"} <= names
    assert not [n for n in names if n.startswith(".")]
    for name in pngs:
        assert imread(out / name).shape[:2] in ((1200, 1560), (660, 1560)), name
    pdf = (out / "mediancr_identified_cr.pdf").read_bytes()
    assert pdf.rstrip().endswith(b"%%EOF") and 1 <= len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) <= 5
    assert not [t for t in threading.enumerate() if t.name == "figures-warm-up"]
