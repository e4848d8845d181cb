"""L.A.Cosmic on windows and tiles gives what it gives on the whole frame (core/windows.py)."""

from __future__ import annotations


import numpy as np
import pytest
from astroscrappy.utils import median as astroscrappy_median

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core import windows as W
from megara_crdetect.core.lacosmic import run_lacosmic
from megara_crdetect.core.masks import keep_groups_with
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.simulate import simulate_exposures

from _mkframes import make_frames

RN = 3.4
LA = dict(rnoise_e=RN, sigclip=5.0, sigfrac=0.3, objlim=5.0, niter=4, sepmed=True, cleantype="meanmask",
          fsmode="convolve", psfmodel="gaussxy", psffwhm_x=2.5, psffwhm_y=2.5, psfsize=11, psfbeta=4.765,
          verbose=False)
SAT = 65535.0
PAD = 10


@pytest.fixture(scope="module")
def image():
    """Median of a simulated set (sharp lines cleaned with the image-wide level) plus a track."""
    sim = simulate_exposures((330, 300), 3, seed=3, n_coincident=20)
    img = np.median(((sim.exposures - sim.bias) * sim.gain).astype(np.float32), axis=0)
    i = np.arange(240)
    img[100 + i // 2, 20 + i] += np.random.default_rng(0).uniform(800.0, 3000.0, 240)  # a long track
    return img


@pytest.fixture(scope="module")
def whole(image):
    return run_lacosmic(image, satlevel_e=SAT, padwidth=PAD, **LA)


def _runner(image):
    level = W.frame_level(image, PAD, SAT)
    return W.lacosmic_runner(SAT, PAD, level, image.shape, **LA), W.lacosmic_reach(
        niter=4, sepmed=True, fsmode="convolve", psfsize=11)


def test_reach_of_the_default_settings_and_of_full_medians():
    assert W.lacosmic_reach(niter=4, sepmed=True, fsmode="convolve", psfsize=11) == 71
    assert W.lacosmic_reach(niter=1, sepmed=False, fsmode="median", psfsize=7) == 6 + (4 + 2) + 2


@pytest.mark.parametrize("d_sign", [-1, 1])
def test_filler_sets_astroscrappy_median_to_the_level(d_sign):
    rng = np.random.default_rng(1)
    work = rng.normal(100, 10, (40, 30)).astype(np.float32)
    level = np.float32(np.quantile(work, 0.2 if d_sign < 0 else 0.8))
    for free in ("bottom", "top", "left", "right"):
        out = W._with_level(work, level, free)
        flat = np.ascontiguousarray(out).ravel()
        assert astroscrappy_median(flat, flat.size) == level
        inner = out[-40:] if free == "top" else out[:, -30:] if free == "left" else out[:40, :30]
        assert np.array_equal(inner, work)


def test_tiles_are_bit_identical_to_the_whole_frame(image, whole):
    runner, margin = _runner(image)
    found = W.tiled(runner, image, margin, n_tiles=2, workers=2)
    assert found.n_windows == 2
    assert np.array_equal(found.mask, whole[0])
    assert np.array_equal(found.cleaned, whole[1])


def test_windows_give_the_whole_frame_groups_that_hold_a_candidate(image, whole):
    mask, cleaned = whole
    runner, margin = _runner(image)
    full_box = W.ndimage.minimum_filter(mask.view(np.uint8), size=5) > 0
    boxes = np.argwhere(full_box & mask)
    assert len(boxes)  # pixels cleaned with the image-wide level: the filler matters
    cands = np.zeros(image.shape, dtype=bool)
    cands[tuple(boxes[0])] = True  # at the frame's top side
    cands[210, 240] = cands[160, 140] = True  # on the track
    cands[160:170, 100] = True  # plain pixels
    cands[300, 280] = True  # near the frame's corner
    found = W.around_candidates(runner, image, cands, margin, workers=2, max_fraction=2.0)
    expected = keep_groups_with(mask, cands)
    assert expected[tuple(boxes[0])] and expected[210, 240] and expected[160, 140]
    assert np.array_equal(found.mask, expected)
    assert np.array_equal(found.cleaned[expected], cleaned[expected])
    assert np.array_equal(found.cleaned[~expected], image[~expected])


def test_windows_are_refused_when_they_would_cover_most_of_the_frame(image):
    runner, margin = _runner(image)
    cands = np.zeros(image.shape, dtype=bool)
    cands[::50, ::50] = True
    assert W.around_candidates(runner, image, cands, margin, max_fraction=0.5) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_occupied_cells_never_exceed_the_windows_area(seed):
    """The cheap refusal (cells that hold a candidate) is a lower bound of the windows' area."""
    rng = np.random.default_rng(seed)
    cands = rng.random((300, 257)) < 10 ** rng.uniform(-4, -2)
    cands[0, -1] = cands[-1, 0] = True  # clipped cells at the frame's sides
    for margin in (5, 20, 71):
        area = sum(w.area for w in W.windows_around(cands, margin))
        assert 0 < W._cells_covered(cands, margin) <= area


def _whole_frame(image, candidates, *, workers=None, padwidth=0, satlevel_e=None, max_fraction=0.5, **kwargs):
    mask, cleaned = run_lacosmic(image, padwidth=padwidth, satlevel_e=satlevel_e, **kwargs)
    return mask, cleaned, None


def test_pipeline_masks_identical_with_windows_and_with_the_whole_frame(monkeypatch):
    fs = make_frames(3, shape=(240, 320), factors=(1.0, 1.0, 1.0), offsets=((0, 0),) * 3, cr_fraction=0.002)
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=3)
    det = Detector(1.0, 3.4, 0.0)
    used = []
    orig = W.lacosmic_where_needed

    def windows_always(*args, **kwargs):
        out = orig(*args, **{**kwargs, "max_fraction": 5.0})
        used.append(out[2])
        return out

    monkeypatch.setattr(W, "lacosmic_where_needed", windows_always)
    a = compute_crmasks(fs.stack, cfg, detector=det, workers=2)
    assert used and used[0] is not None and not used[0].whole_frame
    monkeypatch.setattr(W, "lacosmic_where_needed", _whole_frame)
    b = compute_crmasks(fs.stack, cfg, detector=det, workers=2)
    assert a.counts["mediancr"] > 0
    for key in ("mediancr", "mediancr_codes", "crmasks", "meancrt", "meancr"):
        assert np.array_equal(getattr(a, key), getattr(b, key)), key


def test_tile_count_bounds_the_pixels_of_a_tile():
    full, quarter = 4112 * 4096, 2056 * 2048
    assert W._n_tiles(full, 2) == 4  # a multiple of the workers, each tile under TILE_PIXELS
    assert W._n_tiles(quarter, 2) == 4  # the tiles running at once cover at most half of the frame
    assert W._n_tiles(600 * 160, 2) == 2  # small frames: one tile per worker
    assert W._n_tiles(full, 1) == 4 and W._n_tiles(quarter, 1) == 2 and W._n_tiles(600 * 160, 1) == 1
    assert full / W._n_tiles(full, 2) <= W.TILE_PIXELS


@pytest.mark.parametrize(("cleantype", "n_windows"), [("idw", 4), ("meanmask", None)])
def test_more_tiles_than_workers_are_bit_identical_to_the_whole_frame(monkeypatch, cleantype, n_windows):
    """astroscrappy itself (idw) runs on tiles; the incremental L.A.Cosmic (meanmask) on the whole frame."""
    sim = simulate_exposures((600, 160), 3, seed=5, n_coincident=10)
    img = np.median(((sim.exposures - sim.bias) * sim.gain).astype(np.float32), axis=0)
    kwargs = {k: v for k, v in LA.items() if k != "verbose"} | {"cleantype": cleantype}
    whole = run_lacosmic(img, satlevel_e=SAT, padwidth=PAD, **kwargs)
    monkeypatch.setattr(W, "TILE_PIXELS", img.size // 4)
    monkeypatch.setattr(W, "MIN_TILE_PIXELS", 1000)
    mask, cleaned, info = W.lacosmic_where_needed(img, None, workers=2, padwidth=PAD, satlevel_e=SAT,
                                                  verbose=False, **kwargs)
    assert (info and info.n_windows) == n_windows
    assert whole[0].any() and np.array_equal(mask, whole[0])
    assert np.array_equal(cleaned, whole[1])
