"""numina 0.40's parameter set (#16): example files, two-pass thresholds, PyCosmic, AUXCLEAN, CLI options.

The machine-learned detectors (deepCR, Cosmic-CoNN) are tested only when the
optional extra is installed (``pip install 'megara-crdetect[ml]'``); run them
with ``python -m pytest tests/test_numina040.py -k ml``.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from scipy import ndimage

from megara_crdetect.cli import main
from megara_crdetect.config import CRMaskConfig, parse_run_config
from megara_crdetect.core import mldetect
from megara_crdetect.core.auxdetect import make_detector
from megara_crdetect.core.lacosmic import merge_peak_tail, threshold_passes
from megara_crdetect.core.mmdiagram import make_grid, trim_histogram
from megara_crdetect.core.noise import NoiseSampler
from megara_crdetect.core.pipeline import Detector, apply_crmasks, compute_crmasks
from megara_crdetect.core.pycosmic import contrast_scale, laplacian_plus, run_pycosmic
from megara_crdetect.products import crmasks_hdulist, read_crmasks

DATA = Path(__file__).parent / "data" / "numina040"
EXAMPLES = sorted(DATA.glob("*.yaml"))
RNOISE = 3.4
HAVE_ML = all(importlib.util.find_spec(m) is not None for m in ("torch", "deepCR", "cosmic_conn"))
needs_ml = pytest.mark.skipif(not HAVE_ML, reason="optional extra not installed: pip install 'megara-crdetect[ml]'")


# ---------------------------------------------------------------------------
# parameter files
# ---------------------------------------------------------------------------


def _reference_keywords() -> set[str]:
    """Keyword names of numina 0.40's compute_crmasks, read from its source (importing it takes ~10 s)."""
    spec = importlib.util.find_spec("numina.array.crmasks.compute_crmasks")
    tree = ast.parse(Path(spec.origin).read_text())
    func = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "compute_crmasks")
    return {a.arg for a in func.args.args + func.args.kwonlyargs}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_numina040_parameter_files_are_accepted(path):
    document = yaml.safe_load(path.read_text())
    cfg = parse_run_config(document)
    assert cfg.params.crmethod == document["requirements"]["crmethod"]
    # they are genuine numina 0.40 files: every key is a keyword of its compute_crmasks
    assert set(document["requirements"]) <= _reference_keywords()


def test_megaradrp_defaults_keep_their_meaning():
    p = parse_run_config(yaml.safe_load((DATA / "params_megaradrp.yaml").read_text())).params
    assert p.aux_method == "pycosmic" and p.uses_mm
    assert p.la_sigclip == (5.0, 3.0) and p.la_sigfrac == 0.3  # an equal pair is one pass
    assert p.pc_sigma_det == (5.0, 3.0) and p.pc_iterations == 4
    assert p.dc_mask == "ACS-WFC"  # megaradrp's ACS_WFC, which numina 0.40 itself rejects
    assert p.regions_to_be_skipped == () and p.mm_xy_offsets is None
    history = "\n".join(p.history())
    assert "pc_sigma_det = [5.0, 3.0]" in history and "la_sigclip" not in history


# ---------------------------------------------------------------------------
# two passes (peak / tail)
# ---------------------------------------------------------------------------


def test_threshold_passes_and_peak_tail_merge():
    assert threshold_passes(a=5.0, b=(0.3, 0.3)) == [{"a": 5.0, "b": 0.3}]
    assert threshold_passes(a=(5.0, 3.0), b=0.3) == [{"a": 5.0, "b": 0.3}, {"a": 3.0, "b": 0.3}]
    tail = np.zeros((8, 8), bool)
    tail[1, 1:4] = True  # group touching a peak pixel: kept whole
    tail[5, 5:7] = True  # no peak pixel: dropped
    peak = np.zeros((8, 8), bool)
    peak[1, 2] = True
    peak[7, 0] = True  # outside every tail group: dropped
    merged = merge_peak_tail(peak, tail)
    assert merged.sum() == 3 and merged[1, 1:4].all()


def _fibre_image(shape=(120, 160), seed=1, *, pitch=6.5, fwhm=2.8):
    """Fibre-like spectra: traces along X with Gaussian profiles along Y, plus sky and noise (electrons)."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    y = np.arange(ny)[:, None]
    x = np.arange(nx)[None, :]
    sigma = fwhm / 2.3548
    scene = np.full(shape, 20.0)
    for k, yc in enumerate(np.arange(3.0, ny - 3, pitch)):
        flux = 400.0 * (1 + 0.5 * np.sin(x / 17.0 + k))
        scene = scene + flux * np.exp(-0.5 * ((y - yc) / sigma) ** 2)
    return scene.astype(np.float32), rng


def _noisy(scene, rng):
    return (rng.poisson(scene) + rng.normal(0, RNOISE, scene.shape)).astype(np.float32)


def _inject(image, rng, n=25, *, amplitude=(300.0, 2000.0)):
    """Cosmic rays (single pixels and 2-3 pixel tracks) at random places; returns their cores."""
    ny, nx = image.shape
    cores = np.zeros(image.shape, bool)
    for _ in range(n):
        r, c = rng.integers(4, ny - 4), rng.integers(4, nx - 4)
        a = rng.uniform(*amplitude)
        length = rng.integers(1, 4)
        image[r, c:c + length] += a
        cores[r, c:c + length] = True
    return cores


# ---------------------------------------------------------------------------
# PyCosmic
# ---------------------------------------------------------------------------


def test_laplacian_plus_matches_the_subsampled_definition():
    rng = np.random.default_rng(3)
    img = rng.normal(100, 10, (9, 11)).astype(np.float32)
    sub = np.kron(img, np.ones((2, 2), np.float32))
    kernel = np.array([[0, -1, 0], [-1, 4, -1], [0, -1, 0]], np.float32)
    lap = np.maximum(ndimage.convolve(sub, kernel, mode="nearest"), 0)
    expected = lap.reshape(9, 2, 11, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(laplacian_plus(img), expected, rtol=1e-5, atol=1e-3)
    assert 3.0 < contrast_scale((1.06, 1.06)) < 4.5  # a point source keeps ~1/3.6 of its Laplacian


def test_pycosmic_finds_cosmic_rays_on_fibre_spectra():
    scene, rng = _fibre_image()
    image = _noisy(scene, rng)
    cores = _inject(image, rng)
    mask, cleaned = run_pycosmic(image, rnoise_e=RNOISE)
    assert (mask & cores).sum() >= 0.9 * cores.sum()
    far = mask & ~ndimage.binary_dilation(cores, iterations=2)
    assert far.sum() <= 0.002 * image.size  # fibre peaks (sharp along Y) are not cosmic rays
    # the cleaned image has the hits replaced by their surroundings (a box median: close, not exact, on fibres)
    found = cores & mask
    assert np.median(np.abs(cleaned[found] - scene[found])) < 0.1 * np.median(image[found] - scene[found])
    # two passes: the tail pass adds the fainter pixels of the groups the peak pass found
    two, _ = run_pycosmic(image, rnoise_e=RNOISE, sigma_det=(5.0, 3.0))
    assert two.sum() >= mask.sum() and (two & cores).sum() >= (mask & cores).sum()
    grown, _ = run_pycosmic(image, rnoise_e=RNOISE, increase_radius=1)
    assert (grown >= mask).all() and grown.sum() > mask.sum()


def test_pycosmic_flags_of_shared_sharp_features_are_not_confirmed():
    """A single-image detector flags hot pixels; every exposure has them, so the pipeline drops them."""
    scene, rng = _fibre_image(shape=(100, 140), seed=5)
    hot = [(20, 30), (51, 77), (80, 111)]
    for r, c in hot:
        scene[r, c] += 3000.0  # detector feature: identical in every exposure
    stack = np.stack([_noisy(scene, rng) for _ in range(3)])
    hits = [_inject(stack[k], rng, n=10) for k in range(3)]
    single, _ = run_pycosmic(stack[0], rnoise_e=RNOISE)
    assert all(single[r, c] for r, c in hot)  # alone, PyCosmic calls them cosmic rays
    result = compute_crmasks(stack, CRMaskConfig(crmethod="pycosmic", dilation=0),
                             detector=Detector(1.0, RNOISE, 0.0))
    # a hit touching a hot pixel in exposure k makes one group with it there (as dilation would): only
    # that CRMASKk may hold it; an untouched hot pixel is in no mask
    touched = np.stack([ndimage.binary_dilation(h, structure=np.ones((3, 3), bool)) for h in hits])
    for r, c in hot:
        assert not result.mediancr[r, c]
        assert not (result.crmasks[:, r, c] & ~touched[:, r, c]).any()
        assert touched[:, r, c].any() or not result.meancrt[r, c]
    assert sum(not touched[:, r, c].any() for r, c in hot) >= 2  # the test still holds untouched hot pixels
    near_hot = np.zeros(scene.shape, bool)
    near_hot[tuple(np.array(hot).T)] = True
    near_hot = ndimage.binary_dilation(near_hot, iterations=2)  # a hit touching a hot pixel joins its group
    for k in range(3):
        counted = hits[k] & ~near_hot
        assert (result.crmasks[k] & counted).sum() >= 0.9 * counted.sum()
    assert result.lamedian is not None  # PyCosmic's cleaned median becomes AUXCLEAN


def _every_exposure_event(stack, row, col, core=(185.0, 900.0, 136.0), side=(100.0, 400.0)):
    """A track across (row, col-1..col+1): its ends hit exposures 1 and 2, its core all three."""
    for k, a in enumerate(core):
        stack[k, row, col] += a
    for c in (col - 1, col + 1):
        stack[0, row, c] += side[0]
        stack[1, row, c] += side[1]


def test_cosmic_ray_hit_in_every_exposure_is_confirmed_and_repaired_from_neighbours():
    """Where every exposure is hit, min2d is hit too: the event is still found and repaired without min2d.

    At the core, the median and min2d are the two lower deposits (185 and 136 e-): they differ by
    ~3 noise sigmas, too little to confirm the group at its brightest pixel; the ends (two exposures
    hit) disagree by ~7 sigmas.  A hot pixel with a cosmic ray in one exposure (sharp in every
    exposure, exposures far apart) and plain hot pixels stay out of MEDIANCR.  PyCosmic stands for any
    auxiliary detector (the rule is in the confirmation they share).
    """
    scene, rng = _fibre_image(shape=(100, 140), seed=21)
    hot = [(20, 30), (51, 100), (80, 111)]
    for r, c in hot:
        scene[r, c] += 3000.0
    stack = np.stack([_noisy(scene, rng) for _ in range(3)])
    stack[0, 20, 30] += 800.0  # a cosmic ray on a hot pixel, one exposure
    scene[85, 40] += 3000.0  # a hot pixel ...
    stack[:, 85, 40] += 3000.0
    stack[:2, 85, 41] += 500.0  # ... next to a cosmic ray in two exposures: one group, the hot pixel brightest
    events = [(42, 60), (62, 45), (45, 90)]  # on a fibre peak, its shoulder and between fibres
    for r, c in events:
        _every_exposure_event(stack, r, c)
    result = compute_crmasks(stack, CRMaskConfig(crmethod="pycosmic", dilation=0),
                             detector=Detector(1.0, RNOISE, 0.0))
    assert result.counts["mediancr_every_exposure"] == len(events)
    mediancr = apply_crmasks(stack, result, "mediancr", rnoise_e=RNOISE).value
    meancr = apply_crmasks(stack, result, "meancr", rnoise_e=RNOISE).value
    for r, c in events:
        assert result.mediancr[r, c - 1:c + 1].all()
        assert result.crmasks[:, r, c].all()  # no exposure is clean at the core
        sig = np.sqrt(scene[r, c] + RNOISE**2)
        assert stack[:, r, c].min() - scene[r, c] > 5 * sig  # min2d would leave the cosmic ray
        assert abs(mediancr[r, c] - scene[r, c]) < 5 * sig and abs(meancr[r, c] - scene[r, c]) < 5 * sig
    assert result.mediancr[85, 41]  # the cosmic ray disagrees by far more than the confirmation level
    for r, c in hot:
        assert not result.mediancr[r - 1:r + 2, c - 1:c + 2].any()
        assert not result.crmasks[1:, r, c].any()
    assert result.crmasks[0, 20, 30]  # the exposure that the cosmic ray hit


# ---------------------------------------------------------------------------
# simulations: photon distribution, histogram options, synthetic data, MM dilation
# ---------------------------------------------------------------------------


def test_negative_binomial_noise_has_its_variance():
    lam = np.full(200_000, 400.0, np.float32)
    rng = np.random.default_rng(7)
    for exact in (False, True):
        z = NoiseSampler(lam, RNOISE, exact=exact, nbinom_shape=100.0).draw(rng)
        assert abs(z.mean() - 400) < 1.0
        assert z.var() == pytest.approx(400 + 400**2 / 100 + RNOISE**2, rel=0.03)


def test_trim_histogram_drops_isolated_bins_and_rows_above_the_top():
    grid = make_grid(np.full((10, 10), 10.0, np.float32), RNOISE)
    hist = np.zeros(grid.shape, np.int64)
    hist[:, :50] = 5
    hist[0, 200] = 1  # isolated
    out = trim_histogram(hist, grid, min_neighbors=1)
    assert out[0, 200] == 0 and (out[:, :50] == 5).all()
    top = trim_histogram(hist, grid, y_max_e=float(grid.u_centres[0] * grid.t_edges[20]))
    assert top[0, 25:].sum() == 0 and (top[0, :20] == 5).all()
    assert trim_histogram(hist, grid) is hist


def test_numina040_simulation_options_run_and_detect():
    scene, rng = _fibre_image(shape=(90, 120), seed=9)
    stack = np.stack([_noisy(scene, rng) for _ in range(3)])
    both = np.zeros(scene.shape, bool)
    for r, c in [(15, 20), (44, 60), (70, 100)]:  # the same pixel hit in two exposures: spoils the median
        stack[0, r, c] += 1500.0
        stack[1, r, c] += 1200.0
        both[r, c] = True
    base = dict(crmethod="mmcosmic", mm_nsimulations=3, dilation=0)
    det = Detector(1.0, RNOISE, 0.0)
    for extra in ({}, {"mm_photon_distribution": "nbinom", "mm_nbinom_shape": 50.0},
                  {"mm_synthetic": "single"}, {"mm_hist2d_min_neighbors": 3}, {"mm_ydiag_max": 2000.0}):
        result = compute_crmasks(stack, CRMaskConfig(**base, **extra), detector=det)
        assert result.mediancr[both].all(), extra
    plain = compute_crmasks(stack, CRMaskConfig(**base), detector=det)
    dilated = compute_crmasks(stack, CRMaskConfig(**base, mm_dilation=1), detector=det)
    assert (dilated.mediancr >= plain.mediancr).all() and dilated.mediancr.sum() > plain.mediancr.sum()
    # a wider negative binomial raises the boundary: fewer (or as many) MM detections
    nb = compute_crmasks(stack, CRMaskConfig(**base, mm_photon_distribution="nbinom", mm_nbinom_shape=5.0),
                         detector=det)
    assert nb.mediancr.sum() <= plain.mediancr.sum()


# ---------------------------------------------------------------------------
# products and command line
# ---------------------------------------------------------------------------


def _small_result():
    scene, rng = _fibre_image(shape=(40, 50), seed=2)
    stack = np.stack([_noisy(scene, rng) for _ in range(3)])
    params = CRMaskConfig(crmethod="mm_pycosmic", mm_nsimulations=2)
    return stack, params, compute_crmasks(stack, params, detector=Detector(1.0, RNOISE, 0.0))


def test_auxclean_is_written_and_old_lamedian_files_are_read(tmp_path):
    stack, params, result = _small_result()
    hdul = crmasks_hdulist(result, params, Detector(1.0, RNOISE, 0.0), ["a", "b", "c"])
    names = [h.name for h in hdul]
    assert "AUXCLEAN" in names and "LAMEDIAN" not in names
    new = tmp_path / "new.fits"
    hdul.writeto(new)
    old = tmp_path / "old.fits"
    hdul["AUXCLEAN"].name = "LAMEDIAN"  # a mask file of an earlier version
    hdul.writeto(old)
    for path in (new, old):
        saved = read_crmasks(path, 3, stack.shape[1:])
        np.testing.assert_array_equal(saved.lamedian, result.lamedian.astype(np.float32))


def _write_set(folder: Path, requirements: dict) -> Path:
    scene, rng = _fibre_image(shape=(40, 50), seed=4)
    names = []
    for k in range(3):
        names.append(f"e{k}.fits")
        fits.PrimaryHDU(_noisy(scene, rng)).writeto(folder / names[-1])
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump({"images": names, "gain": 1.0, "rnoise": RNOISE, "bias": 0.0,
                                    "requirements": requirements}))
    return path


def test_cli_record_echo_and_dtype(tmp_path, capsys):
    path = _write_set(tmp_path, {"crmethod": "mmcosmic", "mm_nsimulations": 2, "dtype": "float64", "debug": True})
    out = tmp_path / "out"
    assert main([str(path), "--output_dir", str(out), "--no-figures", "--record", "--echo"]) == 0
    assert capsys.readouterr().out.startswith("$ numina-crmasks ")
    assert "MEDIANCR" in (out / "terminal_output.txt").read_text()
    assert fits.getdata(out / "combined_meancr2.fits").dtype == np.dtype(">f8")


def test_missing_ml_extra_is_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(mldetect._MODULES, "deepcr", "megara_crdetect_no_such_module")
    path = _write_set(tmp_path, {"crmethod": "mm_deepcr"})
    assert main([str(path), "--output_dir", str(tmp_path / "out"), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1:] == ["error: crmethod deepcr needs the optional machine-learning extra (deepcr, cosmic-conn, torch): "
                   "pip install 'megara-crdetect[ml]'"]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------
# machine-learned detectors (optional extra)
# ---------------------------------------------------------------------------


@needs_ml
@pytest.mark.parametrize("method", ["deepcr", "conn"])
def test_ml_detectors_find_injected_cosmic_rays(method):
    scene, rng = _fibre_image(shape=(128, 128), seed=11)
    image = _noisy(scene, rng)
    cores = _inject(image, rng, n=15, amplitude=(1500.0, 4000.0))
    aux = make_detector(CRMaskConfig(crmethod=method), rnoise_e=RNOISE)
    mask, cleaned = aux(image)
    assert (mask & cores).sum() >= 0.5 * cores.sum()
    assert (cleaned is None) == (method == "conn")


@needs_ml
def test_ml_method_through_the_pipeline_confirms_its_flags():
    scene, rng = _fibre_image(shape=(96, 128), seed=13)
    scene[40, 64] += 3000.0  # hot pixel in every exposure
    stack = np.stack([_noisy(scene, rng) for _ in range(3)])
    hits = _inject(stack[1], rng, n=8, amplitude=(1500.0, 4000.0))
    result = compute_crmasks(stack, CRMaskConfig(crmethod="deepcr", dilation=0), detector=Detector(1.0, RNOISE, 0.0))
    assert not result.crmasks[:, 40, 64].any()
    assert (result.crmasks[1] & hits).sum() >= 0.5 * hits.sum()
