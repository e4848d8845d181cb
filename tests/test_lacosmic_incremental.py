"""The incremental L.A.Cosmic gives astroscrappy's mask and cleaned image bit for bit."""

from __future__ import annotations

import astroscrappy
import numpy as np
import pytest

from megara_crdetect.core import lacosmic_incremental as incremental
from megara_crdetect.core.lacosmic import gaussxy_kernel, run_lacosmic
from megara_crdetect.core.windows import lacosmic_step_reach


def spectra(shape, seed, *, n_cr, peak=3000.0, sky=20.0):
    """Fibre spectra along X with cosmic rays (single pixels, short tracks, 2x2 blobs)."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    prof = sum(np.exp(-0.5 * ((y - yc) / 1.3) ** 2) for yc in np.arange(-3.0, shape[0] + 3, 6.5))
    truth = sky + prof * peak * (0.6 + 0.4 * np.sin(x / 37.0) ** 2)
    image = rng.poisson(truth) + rng.normal(0.0, 3.0, shape)
    for _ in range(n_cr):
        cy, cx = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        length = rng.integers(1, 5)
        image[cy:cy + 1 + rng.integers(0, 2), cx:cx + length] += rng.uniform(300, 5000)
    return image.astype(np.float32)


def reference(image, **kw):
    psfk = kw.pop("psfk", None)
    return astroscrappy.detect_cosmics(image, gain=1.0, readnoise=3.0, psfk=psfk, **kw)


def ours(image, **kw):
    psfk = kw.pop("psfk", None)
    if psfk is None and kw.get("fsmode") == "convolve":
        psfk = incremental.psf_kernel(kw.pop("psfmodel"), kw.pop("psffwhm"), kw["psfsize"])
    for key in ("psfmodel", "psffwhm"):
        kw.pop(key, None)
    return incremental.detect_cosmics(image, readnoise=3.0, psfk=psfk, **kw)


BASE = {"sigclip": 5.0, "sigfrac": 0.3, "objlim": 5.0, "satlevel": 65535.0, "niter": 4, "sepmed": True,
        "cleantype": "meanmask", "fsmode": "convolve", "psfmodel": "gauss", "psffwhm": 2.5, "psfsize": 11}


def assert_identical(image, **changes):
    kw = {**BASE, **changes}
    ref_mask, ref_clean = reference(image, **dict(kw))
    mask, clean = ours(image, **dict(kw))
    assert mask.dtype == bool and clean.dtype == np.float32
    assert np.array_equal(mask, ref_mask), f"{np.count_nonzero(mask != ref_mask)} mask pixels differ"
    assert np.array_equal(clean, ref_clean), f"{np.count_nonzero(clean != ref_clean)} cleaned pixels differ"
    return mask


@pytest.mark.parametrize("changes", [
    {},
    {"sepmed": False},
    {"fsmode": "median"},
    {"fsmode": "median", "sepmed": False},
    {"cleantype": "medmask"},
    {"psfmodel": "gaussx", "psfsize": 7},
    {"psfmodel": "gaussy", "psffwhm": 3.5, "psfsize": 9},
    {"psfmodel": None, "psfk": gaussxy_kernel(2.0, 4.0, 11)},
    {"sigclip": 4.0, "sigfrac": 0.5, "objlim": 3.0, "niter": 2},
])
def test_identical_to_astroscrappy(changes):
    image = spectra((300, 260), seed=11, n_cr=60)
    mask = assert_identical(image, **changes)
    assert np.count_nonzero(mask) > 60  # the cosmic rays were found


def test_later_steps_run_on_windows_and_match():
    """Few cosmic rays on a large image: the later steps run on windows only (their area is asserted)."""
    image = spectra((700, 640), seed=5, n_cr=12)
    image[0:2, 300:302] += 4000.0  # on the frame's edge rows: the windows are clipped there
    image[350, 0] += 4000.0
    crmask = assert_identical(image)
    wins = incremental._windows(crmask, lacosmic_step_reach(sepmed=True, fsmode="convolve", psfsize=11))
    assert 0 < sum(w.area for w in wins) < 0.3 * image.size


def test_first_step_on_bands_in_threads_matches(monkeypatch):
    """The first step on bands of rows (here 9 bands of ~30 rows) in two threads."""
    monkeypatch.setattr(incremental, "STRIP_PIXELS", 8_000)
    image = spectra((260, 300), seed=9, n_cr=80)
    ref_mask, ref_clean = reference(image, **dict(BASE))
    mask, clean = ours(image, workers=2, **dict(BASE))
    assert len(incremental.tiles(image.shape, lacosmic_step_reach(sepmed=True, fsmode="convolve", psfsize=11),
                                 -(-image.size // incremental.STRIP_PIXELS))) == 9
    assert np.array_equal(mask, ref_mask) and np.array_equal(clean, ref_clean)


def test_dense_cosmic_rays_whole_image_steps_match():
    """Many cosmic rays: the later steps' windows would cover most of the image, so they run whole."""
    image = spectra((200, 220), seed=3, n_cr=900)
    crmask = assert_identical(image)
    wins = incremental._windows(crmask, lacosmic_step_reach(sepmed=True, fsmode="convolve", psfsize=11))
    assert sum(w.area for w in wins) > incremental.MAX_WINDOW_FRACTION * image.size


@pytest.mark.parametrize("dense_fraction", [0.0, 1.0])
def test_cleaning_on_whole_rows_and_on_gathers_match(monkeypatch, dense_fraction):
    """The mean cleaning computed over whole rows (many flags) or gathered at the flags (few)."""
    monkeypatch.setattr(incremental, "DENSE_FRACTION", dense_fraction)
    image = spectra((200, 220), seed=3, n_cr=400)
    image[100:109, 30:39] += np.random.default_rng(2).uniform(2000, 20000, (9, 9)).astype(np.float32)
    image[150:160, 150:160] = 70000.0
    assert_identical(image, satlevel=65000.0)


def test_saturated_star_and_pixel_without_good_neighbours():
    """The saturation mask (astroscrappy's own) and the image's level for a pixel with no good neighbour."""
    from scipy import ndimage

    image = spectra((160, 180), seed=8, n_cr=20)
    image[60:75, 80:95] = 70000.0  # saturated: masked with its surroundings
    blob = np.random.default_rng(2).uniform(2000, 20000, (9, 9)).astype(np.float32)
    blob[::2, ::2] *= 3
    image[100:109, 30:39] += blob  # a large hit: some of its pixels have no unflagged 5x5 neighbour
    for cleantype in ("meanmask", "medmask"):
        mask = assert_identical(image, satlevel=65000.0, cleantype=cleantype)
        assert ndimage.binary_erosion(mask, np.ones((5, 5), bool)).any()  # cleaned with the image's level


def test_nothing_to_find_stops_after_one_step():
    image = np.full((50, 60), 100.0, dtype=np.float32)
    mask = assert_identical(image)
    assert not mask.any()


def test_run_lacosmic_uses_it_and_matches_ccdproc():
    """The wrapper (electrons, padding, gaussxy kernel) gives ccdproc's result; other options fall back."""
    import ccdproc

    image = spectra((180, 200), seed=21, n_cr=40)
    opts = {"rnoise_e": 3.0, "fsmode": "convolve", "psfmodel": "gaussxy", "psffwhm_x": 2.5, "psffwhm_y": 3.0,
            "psfsize": 11, "padwidth": 10}
    mask, clean = run_lacosmic(image, **opts)
    padded = np.pad(image, 10, mode="reflect")
    ref_clean, ref_mask = ccdproc.cosmicray_lacosmic(
        padded, gain=1.0, readnoise=3.0, sigclip=5.0, sigfrac=0.3, objlim=5.0, niter=4, fsmode="convolve",
        psfmodel="gauss", psfk=gaussxy_kernel(2.5, 3.0, 11), psfsize=11)
    assert np.array_equal(mask, ref_mask[10:-10, 10:-10])
    assert np.array_equal(clean, ref_clean[10:-10, 10:-10])
    assert incremental.supported("meanmask", "convolve", "gaussxy")
    assert not incremental.supported("idw", "median", "gauss")
    assert not incremental.supported("meanmask", "convolve", "moffat")
    mask_idw, _ = run_lacosmic(image, rnoise_e=3.0, cleantype="idw")  # astroscrappy itself
    assert mask_idw.any()


def test_bad_cleantype_is_refused():
    with pytest.raises(ValueError, match="cleantype must be one of meanmask, medmask; got 'idw'"):
        incremental.detect_cosmics(np.zeros((10, 10), np.float32), readnoise=3.0, sigclip=5.0, sigfrac=0.3,
                                   objlim=5.0, satlevel=65535.0, niter=1, sepmed=True, cleantype="idw",
                                   fsmode="median")


def test_astroscrappy_filters_do_not_depend_on_the_position_in_the_array():
    """The windows rely on it: astroscrappy's filters (built with -ffast-math) give a pixel the same value
    whatever its offset in the array and the array's width."""
    from astroscrappy.utils import convolve, laplaceconvolve, rebin, sepmedfilt9

    image = np.random.default_rng(0).normal(100.0, 50.0, (48, 203)).astype(np.float32)
    kernel = gaussxy_kernel(2.5, 3.0, 11)
    whole = {"lap": laplaceconvolve(image), "conv": convolve(image, kernel), "med": sepmedfilt9(image),
             "rebin": rebin(np.ascontiguousarray(image[:, :202]))}
    for offset in range(0, 18):
        for width in (37, 64, 101):
            part = np.ascontiguousarray(image[:, offset:offset + width])
            for name, func, r in (("lap", laplaceconvolve, 1), ("conv", lambda a: convolve(a, kernel), 5),
                                  ("med", sepmedfilt9, 4)):
                inner = func(part)[r:-r, r:-r]
                expected = whole[name][r:-r, offset + r:offset + width - r]
                assert np.array_equal(inner, expected), (name, offset, width)
            if offset % 2 == 0 and width % 2 == 0:
                assert np.array_equal(rebin(part), whole["rebin"][:, offset // 2:(offset + width) // 2])


def test_one_openmp_thread_is_set_for_this_thread_only_and_restored():
    import threading

    lib = incremental._libgomp()
    if lib is None:
        pytest.skip("astroscrappy's OpenMP runtime (GNU libgomp) is not loaded on this system")
    before = lib.omp_get_max_threads()
    seen = []
    with incremental._one_openmp_thread():
        seen.append(lib.omp_get_max_threads())
        other = threading.Thread(target=lambda: seen.append(lib.omp_get_max_threads()))
        other.start()
        other.join()
    assert seen == [1, before] and lib.omp_get_max_threads() == before
