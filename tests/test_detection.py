"""Known cosmic rays injected into a small scene: what the core finds and what it must not find.

The scene has a faint background (20 e-), a bright sky line (5000 e- at its
peak) and hot pixels (identical in every exposure).  Each case sits at its own
position, far from the others, and the exposure values of the delicate cases
are set exactly (no noise at that pixel) so that the test cannot pass or fail
by chance.
"""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core.pipeline import CODES, Detector, _confirm, compute_crmasks

SHAPE = (160, 240)
RNOISE = 3.4
BACKGROUND = 20.0
LINE_COL, LINE_PEAK = 102, 5000.0
#: 0-based (row, col) -> extra electrons per exposure
SINGLE = {(20, 30): (800, 0, 0), (20, 60): (0, 800, 0), (20, 200): (0, 0, 800)}
PAIR_STRONG = {(50, 30): (600, 600, 0)}
PAIR_ON_LINE = {(50, LINE_COL): (0, 1500, 1500)}
#: a strong hit plus a weak second one: median2d - min2d = 25 e- ~ 4.5 sigma, below the boundary
PAIR_WEAK = {(80, 30): (400, 25, 0)}
#: two tracks crossing: each is detected in its own exposure next to the crossing pixel, which both
#: graze with 24 e- (median2d - min2d ~ 4.3 sigma, nothing stands out above the median)
CROSSING = {(80, 199): (0, 400, 0), (80, 200): (24, 24, 0), (80, 201): (400, 0, 0)}
TRIPLE_EQUAL = {(110, 30): (300, 300, 300)}
TRIPLE_UNEQUAL = {(110, 60): (900, 500, 100)}
HOT = [(140, 30), (140, 60), (140, 200)]
#: one exposure 30 e- (5.3 sigma) low, and its mirror image, two exposures 30 e- high: the same
#: median2d - min2d, but only the second raises the median
DIP = {(20, 150): (0, -30, 0)}
PAIR_MIRROR = {(50, 150): (30, 30, 0)}
#: a 2-of-3 coincidence (200 and 35 e-) whose clean exposure is 25 e- (4.5 sigma) high by noise:
#: median2d - min2d = 10 e- (1.8 sigma), but median2d stands 35 e- (6 sigma) above the level
RAISED = {(140, 120): (25, 200, 35)}
EXACT = {**PAIR_WEAK, **CROSSING, **TRIPLE_EQUAL, **DIP, **PAIR_MIRROR, **RAISED}  # values set without noise


def scene() -> np.ndarray:
    x = np.arange(SHAPE[1])[None, :]
    line = LINE_PEAK * np.exp(-0.5 * ((x - LINE_COL) / 1.2) ** 2)
    img = BACKGROUND + line * np.ones((SHAPE[0], 1))
    for r, c in HOT:
        img[r, c] += 3000.0
    return img


def make_stack(seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    truth = scene()
    stack = np.stack([rng.poisson(truth) + rng.normal(0, RNOISE, SHAPE) for _ in range(3)]).astype(np.float32)
    for cases in (SINGLE, PAIR_STRONG, PAIR_ON_LINE, PAIR_WEAK, CROSSING, TRIPLE_EQUAL, TRIPLE_UNEQUAL, DIP,
                  PAIR_MIRROR, RAISED):
        for (r, c), extra in cases.items():
            if (r, c) in EXACT:
                stack[:, r, c] = truth[r, c]
            stack[:, r, c] += np.asarray(extra, dtype=np.float32)
    return stack


def run(**params):
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=30, **params)
    return compute_crmasks(make_stack(), cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)


@pytest.fixture(scope="module")
def result():
    return run()


def _code(res, r, c) -> str:
    return CODES[int(res.mediancr_codes[r, c])]


def test_single_hits_are_masked_in_their_exposure_only(result):
    for (r, c), extra in SINGLE.items():
        k = int(np.argmax(extra))
        assert not result.mediancr[r, c], f"single hit at {(r, c)} is not a MEDIANCR pixel"
        assert result.crmasks[k, r, c] and result.meancrt[r, c]
        others = [j for j in range(3) if j != k]
        assert not result.crmasks[others, r, c].any()


@pytest.mark.parametrize("cases", [PAIR_STRONG, PAIR_ON_LINE, TRIPLE_UNEQUAL, PAIR_MIRROR],
                         ids=["faint", "sky line", "3-of-3", "faint 5 sigma"])
def test_coincident_hits_spoiling_the_median_are_found(result, cases):
    for (r, c) in cases:
        assert result.mediancr[r, c]
        assert _code(result, r, c) in ("MM", "MM+LA")
        assert result.mediancr[r - 1:r + 2, c - 1:c + 2].all()  # dilation 1


def test_weak_second_hit_is_found_as_a_pair_and_only_then():
    (r, c), = PAIR_WEAK
    res = run()
    assert res.mediancr[r, c] and _code(res, r, c) == "pair"
    assert res.counts["mediancr_pair"] >= 1
    off = run(mm_pair_sigma=0.0)
    assert not off.mediancr[r, c]
    assert off.counts["mediancr_pair"] == 0


def test_grazed_pixel_of_two_crossing_tracks_is_a_pair(result):
    (r, c) = (80, 200)
    assert result.crmasks[0, r, c + 1] and result.crmasks[1, r, c - 1]  # each track in its exposure
    assert _code(result, r, c - 1) == _code(result, r, c + 1) == "dilation"  # single hits themselves
    assert result.mediancr[r, c] and _code(result, r, c) == "pair"
    assert not run(mm_pair_sigma=0.0).mediancr[r, c]


def test_hot_pixels_and_identical_hits_are_not_cosmic_rays(result):
    for r, c in HOT + list(TRIPLE_EQUAL):
        assert not result.mediancr[r - 1:r + 2, c - 1:c + 2].any(), (r, c)
        assert not result.crmasks[:, r, c].any(), (r, c)


def test_no_false_flags_away_from_the_injected_hits(result):
    allowed = np.zeros(SHAPE, bool)
    for cases in (PAIR_STRONG, PAIR_ON_LINE, PAIR_WEAK, TRIPLE_UNEQUAL, RAISED, {(80, 200): None}):
        for r, c in cases:
            allowed[r - 1:r + 2, c - 1:c + 2] = True
    (r, c), = PAIR_MIRROR  # L.A.Cosmic groups it with a noisy neighbour, dilated in turn
    allowed[r - 2:r + 3, c - 2:c + 3] = True
    assert not (result.mediancr & ~allowed).any()


def test_noise_dip_of_one_exposure_is_not_a_cosmic_ray(result, monkeypatch):
    (r, c), = DIP
    assert not result.mediancr[r - 1:r + 2, c - 1:c + 2].any()
    # the diagram alone flags it (same median2d - min2d as PAIR_MIRROR): only the neighbours tell
    import megara_crdetect.core.pipeline as pipeline
    monkeypatch.setattr(pipeline, "noise_dips", lambda flagged, *args: np.zeros_like(flagged))
    assert _code(run(), r, c) == "MM"


def test_coincidence_with_a_high_clean_exposure_is_found_by_its_raised_median(result, monkeypatch):
    (r, c), = RAISED
    assert _code(result, r, c) == "pair"
    assert result.mediancr[r - 1:r + 2, c - 1:c + 2].all()
    import megara_crdetect.core.pipeline as pipeline
    monkeypatch.setattr(pipeline, "raised_medians", lambda where, *args: np.zeros_like(where))
    assert not run().mediancr[r, c]  # median2d - min2d alone does not show it


def test_la_group_is_confirmed_by_its_brightest_pixel_only():
    flags = np.zeros((5, 5), bool)
    flags[2, 2:4] = True
    target = np.zeros((5, 5), np.float32)
    target[2, 2], target[2, 3] = 1000.0, 30.0  # a hot pixel and a neighbour L.A.Cosmic added
    t = np.zeros((5, 5), np.float32)
    t[2, 3] = 6.0  # only the neighbour disagrees (noise)
    assert not _confirm(flags, t, 4.0, target).any()
    t[2, 2], t[2, 3] = 6.0, 2.5  # the brightest pixel disagrees: a cosmic ray, with its faint wing
    np.testing.assert_array_equal(_confirm(flags, t, 4.0, target), flags)


def test_one_cosmic_ray_on_a_sharp_line_does_not_confirm_the_whole_line():
    """L.A.Cosmic joins a hit on an arc line with the line; only the hit (and its disagreeing wing) is kept."""
    flags = np.zeros((5, 40), bool)
    flags[2, :] = True  # the arc line, one L.A.Cosmic group
    target = np.full((5, 40), 100.0, np.float32)
    t = np.full((5, 40), 0.8, np.float32)  # the exposures agree along the line ...
    target[2, 20], t[2, 20] = 900.0, 30.0  # ... except at the hit
    t[2, 21] = 3.0  # its wing disagrees mildly
    t[2, 30] = 3.0  # a noise pixel farther along the line, not joined to the hit
    kept = _confirm(flags, t, 4.0, target)
    assert np.argwhere(kept).tolist() == [[2, 20], [2, 21]]


def test_confirmation_level_map_is_read_at_the_flagged_pixels_like_a_whole_map():
    """A per-column level map evaluated lazily at the flagged pixels confirms the same groups as the whole map."""
    from megara_crdetect.core import mmdiagram as mm
    from megara_crdetect.core.pipeline import _ColumnLevels

    rng = np.random.default_rng(5)
    scale = rng.uniform(4, 60, (60, 80)).astype(np.float32)
    grid = mm.make_grid(scale, 3.4, n_columns=8)
    levels = np.linspace(3.0, 9.0, grid.shape[0]).astype(np.float32)
    lazy = _ColumnLevels(levels, grid, scale)
    whole = levels[grid.column_index(scale)]
    ys, xs = rng.integers(0, 60, 50), rng.integers(0, 80, 50)
    np.testing.assert_array_equal(lazy[ys, xs], whole[ys, xs])
    flags = rng.random((60, 80)) < 0.05
    flags[10, 10:14] = True
    target = rng.uniform(0, 1000, (60, 80)).astype(np.float32)
    t = rng.uniform(0, 12, (60, 80)).astype(np.float32)
    kept = _confirm(flags, t, lazy, target)
    assert kept.any() and (flags & ~kept).any() and not (kept & ~flags).any()
    np.testing.assert_array_equal(kept, _confirm(flags, t, whole, target))
    # the reference rule, written out: a group is kept where its brightest pixel is above its level, or any
    # pixel above SURE_FACTOR times it; of it the pixels above GROW_FRACTION of the level joined to a seed
    from scipy import ndimage

    from megara_crdetect.core.pipeline import GROW_FRACTION, SURE_FACTOR

    labels, n = ndimage.label(flags, np.ones((3, 3)))
    seeds = np.zeros_like(flags)
    for g in range(1, n + 1):
        pix = labels == g
        seeds |= pix & (target >= target[pix].max()) & (t > whole)
        seeds |= pix & (t > SURE_FACTOR * whole)
    core = flags & ((t > np.float32(GROW_FRACTION) * whole) | seeds)
    core_labels, m = ndimage.label(core, np.ones((3, 3)))
    expected = np.isin(core_labels, np.unique(core_labels[seeds])) & core
    np.testing.assert_array_equal(kept, expected)


def test_input_stack_is_not_modified_with_flux_factors():
    stack = make_stack()
    before = stack.copy()
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=2, flux_factor=[1.0, 1.2, 0.8])
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    np.testing.assert_array_equal(stack, before)
    np.testing.assert_allclose(res.flux_factors, [1.0, 1.2, 0.8])


def test_parallel_run_gives_bit_identical_masks():
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=3, la_everywhere=True)
    runs = [compute_crmasks(make_stack(), cfg, detector=Detector(1.0, RNOISE, 0.0), workers=w) for w in (1, 3)]
    for name in ("mediancr", "mediancr_codes", "meancrt", "crmasks", "meancr", "problematic", "noise", "lamedian"):
        np.testing.assert_array_equal(getattr(runs[0], name), getattr(runs[1], name), err_msg=name)
    for diagram, hist in runs[0].diagrams.hist.items():
        np.testing.assert_array_equal(hist, runs[1].diagrams.hist[diagram], err_msg=diagram)


def test_hot_pixel_under_a_scaled_scene_is_not_a_cosmic_ray():
    """With flux factors 0.8/1.0/1.2 a hot pixel on a bright scene disagrees in raw and normalised data."""
    rng = np.random.default_rng(8)
    factors = np.array([0.8, 1.0, 1.2], np.float32)
    scene = np.full(SHAPE, 2000.0)
    truth = factors[:, None, None] * scene
    hot, cr = (40, 40), (100, 150)
    truth[:, hot[0], hot[1]] += 3000.0  # static: the same in every raw exposure
    stack = (rng.poisson(truth) + rng.normal(0, RNOISE, truth.shape)).astype(np.float32)
    stack[:2, cr[0], cr[1]] += 2000.0  # a 2-of-3 cosmic ray on the same scene
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=5, flux_factor=factors.tolist())
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert not res.mediancr[hot[0] - 1:hot[0] + 2, hot[1] - 1:hot[1] + 2].any()
    assert res.mediancr[cr]
    assert res.mediancr.sum() <= 100  # the cosmic ray, its dilation and a few noise detections (5 sets)


def test_equal_hits_in_every_exposure_next_to_unequal_ones_are_not_a_hot_pixel(monkeypatch):
    """A cosmic ray in all three exposures with equal raw deposits at its core fits f_k * S + H there,
    like a hot pixel; its neighbour, hit unequally, does not."""
    import megara_crdetect.core.pipeline as pipeline
    rng = np.random.default_rng(8)
    factors = np.array([0.8, 1.0, 1.2], np.float32)
    truth = factors[:, None, None] * np.full(SHAPE, 2000.0)
    stack = (rng.poisson(truth) + rng.normal(0, RNOISE, truth.shape)).astype(np.float32)
    core, edge = (100, 60), (100, 61)
    stack[:, core[0], core[1]] += 3000.0  # normalised median2d - min2d = 600 e-, 13 sigma
    stack[:, edge[0], edge[1]] += np.array([300.0, 0.0, 900.0], np.float32)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, flux_factor=factors.tolist())
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert _code(res, *core) == "MM"
    monkeypatch.setattr(pipeline, "STATIC_BUSY_CHI2", np.inf)  # the neighbour not looked at
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert not res.mediancr[core]


def test_crossing_tracks_under_flux_factors_make_a_pair_where_the_raw_exposures_agree():
    """The grazed pixel of CROSSING with factors 0.8/1.0/1.2: raw values 40/44/24 e- agree within 5
    sigma (not a detection of its own), normalised 50/44/20 make a pair."""
    rng = np.random.default_rng(10)
    factors = np.array([0.8, 1.0, 1.2], np.float32)
    truth = factors[:, None, None] * np.full(SHAPE, BACKGROUND)
    stack = (rng.poisson(truth) + rng.normal(0, RNOISE, truth.shape)).astype(np.float32)
    for (r, c), extra in CROSSING.items():
        stack[:, r, c] = truth[:, r, c] + np.asarray(extra, np.float32)
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=30, flux_factor=factors.tolist())
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert _code(res, 80, 200) == "pair"


def test_dilation_around_a_cosmic_ray_is_kept_under_flux_factors():
    """The edge of a cosmic ray on a faint scene agrees in the raw exposures; it is dilated all the same."""
    rng = np.random.default_rng(9)
    factors = np.array([0.8, 1.0, 1.2], np.float32)
    truth = factors[:, None, None] * np.full(SHAPE, BACKGROUND)
    stack = (rng.poisson(truth) + rng.normal(0, RNOISE, truth.shape)).astype(np.float32)
    r, c = 80, 120
    stack[:2, r, c] += 600.0  # a 2-of-3 cosmic ray; its 8 neighbours are untouched
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, flux_factor=factors.tolist())
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert _code(res, r, c) == "MM"
    box = (slice(r - 1, r + 2), slice(c - 1, c + 2))
    assert res.mediancr[box].all()
    assert res.crmasks[:2][(slice(None),) + box].all() and not res.crmasks[2][box].any()


def test_a_defective_column_is_left_out_and_a_long_track_is_not():
    stack = make_stack()
    rng = np.random.default_rng(2)
    stack[:, :, 200] = rng.normal(0, 2000, (3, SHAPE[0])).astype(np.float32)  # wild, frame to frame
    stack[0, 5:45, 150] += 900.0  # a 40-pixel cosmic-ray track along a column, one exposure
    stack[:2, 60:100, 170] += 900.0  # ... and a 40-pixel coincidence along another
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5)
    res = compute_crmasks(stack, cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1)
    assert res.bad_columns.tolist() == [200] and res.bad_rows.size == 0
    assert not res.mediancr[:, 200].any() and not res.crmasks[:, :, 200].any()
    assert res.crmasks[0, 5:45, 150].all()
    assert res.mediancr[60:100, 170].all()


def test_every_long_step_reports_its_start_and_end():
    seen = []
    cfg = CRMaskConfig(crmethod="mm_lacosmic", mm_nsimulations=5, mm_variation_model=True)
    compute_crmasks(make_stack(), cfg, detector=Detector(1.0, RNOISE, 0.0), workers=1,
                    progress=lambda step, done, total: seen.append((step, done, total)))
    steps = [s for s, _, _ in seen]
    assert steps.index("exposure-difference model") < steps.index("L.A.Cosmic") < steps.index("simulations") \
        < steps.index("masks")
    for step in ("exposure-difference model", "L.A.Cosmic", "simulations", "masks"):
        reports = [(d, t) for s, d, t in seen if s == step]
        assert reports[-1][0] == reports[-1][1] and (step == "simulations" or reports[0][0] == 0), reports
    assert [(d, t) for s, d, t in seen if s == "masks"] == [(0, 2), (1, 2), (2, 2)]
