"""Detection with sub-pixel offsets: cosmic rays on line flanks, hot pixels that do not move."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core import shiftmodel
from megara_crdetect.core.combine import combine
from megara_crdetect.core.pipeline import Detector, apply_crmasks, compute_crmasks
from megara_crdetect.core.mmdiagram import noise_floor, noise_scale
from megara_crdetect.core.stack import AGREEMENT_SIGMA, HOT_PIXEL_SIGMA, spread_sigmas, stack_statistics
from megara_crdetect.io import to_electrons
from megara_crdetect.simulate import simulate_exposures

OFFSETS = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25))


@pytest.fixture(scope="module")
def run():
    sim = simulate_exposures((400, 600), 3, offsets=OFFSETS, cr_fraction=0.005, n_coincident=10,
                             hot_fraction=2e-4, seed=21)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    return sim, res


def _sigma(sim):
    return np.sqrt(np.maximum(sim.expected, 0) + sim.rnoise_e**2)


def test_single_hits_on_line_flanks_are_masked_in_their_exposure(run):
    sim, res = run
    sig = _sigma(sim)
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    # moderate hits (8-30 sigma) where the exposures differ by > 5 sigma: exposure - min2d, judged against
    # the spread, found 84-94 % of them; the residual against each exposure's own model finds all
    moderate = (sim.cr_deposit > 8 * sig) & (sim.cr_deposit < 30 * sig)
    single = moderate & ((sim.cr_deposit > sig).sum(axis=0) == 1)
    on_flank = single & (spread > 5)[None]
    on_flank[:, :3], on_flank[:, -3:], on_flank[:, :, :3], on_flank[:, :, -3:] = False, False, False, False
    assert on_flank.sum() >= 50
    found = (res.crmasks & on_flank).sum() / on_flank.sum()
    assert found >= 0.98, found


def test_hot_pixels_do_not_move_and_are_not_cosmic_rays(run):
    sim, res = run
    hot = np.zeros(res.mediancr.shape, bool)
    hot[sim.hot_pixels[:, 0], sim.hot_pixels[:, 1]] = True
    cr_near = ndimage.binary_dilation((sim.cr_deposit > _sigma(sim)).any(axis=0), iterations=2)
    assert hot.sum() >= 20
    assert not (res.mediancr & hot & ~cr_near).any()
    # the moving model cannot describe them exactly: a few neighbour effects remain in the exposure masks
    assert (res.crmasks & (hot & ~cr_near)[None]).any(axis=0).sum() <= 0.1 * hot.sum()


def test_mediancr_of_shifted_exposures_is_repaired_with_the_exposures_without_their_hits(run):
    """On a line flank the exposure a cosmic ray hit may be the lowest one without its hit; min2d is
    then the next exposure's value, many sigmas higher.  The repair takes the minimum of the exposures
    with their CRMASKk pixels replaced by their own models: measured 6 repaired pixels more than
    5 sigma above the same combination of the noise-free exposures, against 28 with min2d."""
    sim, res = run
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim).mean(axis=0)
    noise_free = combine(sim.expected, "mediancr", rnoise_e=sim.rnoise_e, mediancr=res.mediancr).value
    ours = apply_crmasks(stack, res, "mediancr", rnoise_e=sim.rnoise_e).value
    plain = combine(stack, "mediancr", rnoise_e=sim.rnoise_e, mediancr=res.mediancr).value
    high_ours = ((ours - noise_free) / sig > 5) & res.mediancr
    high_plain = ((plain - noise_free) / sig > 5) & res.mediancr
    assert high_plain.sum() >= 20
    assert high_ours.sum() <= 0.4 * high_plain.sum(), (high_ours.sum(), high_plain.sum())
    assert not ((ours - noise_free) / sig < -5)[res.mediancr].any()  # the models do not dig holes
    # the repair value is only used on MEDIANCR: elsewhere mediancr is the plain median
    np.testing.assert_array_equal(ours[~res.mediancr], plain[~res.mediancr])


def test_aligned_exposures_are_repaired_with_min2d():
    sim = simulate_exposures((120, 160), 3, cr_fraction=0.005, n_coincident=6, seed=5)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    # without the exposure-difference model (with it, the lowest of the corrected exposures: CLEANMIN)
    res = compute_crmasks(stack, CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=2, mm_variation_model=False),
                          detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    assert res.repair_min is None and res.mediancr.any()
    ours = apply_crmasks(stack, res, "mediancr", rnoise_e=sim.rnoise_e).value
    np.testing.assert_array_equal(ours[res.mediancr], stack.min(axis=0)[res.mediancr])


def _with_equal_cores_and_hot_pixels(seed: int):
    """A shifted set without cosmic rays, plus, on faint sky, 20 events hitting all three exposures
    with the same 300 e- at their core and wings of their own in each exposure, and 20 hot pixels of
    300 e- (the same in every exposure, no wings)."""
    sim = simulate_exposures((300, 400), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=seed)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(sim.expected.min(axis=0)[10:-10, 10:-10] < 50)
    pick = rng.choice(ys.size, 40, replace=False)
    cores, hot = [], np.zeros(stack.shape[1:], bool)
    for i, p in enumerate(pick):
        y, x = ys[p] + 10, xs[p] + 10
        stack[:, y, x] += 300.0
        if i < 20:
            cores.append((y, x))
            for k in range(3):
                wings = rng.uniform(0, 150, (3, 3)) * (rng.random((3, 3)) < 0.5)
                stack[k, y - 1:y + 2, x - 1:x + 2] += wings.astype(np.float32)
        else:
            hot[y, x] = True
    return sim, stack, cores, hot


def test_events_with_equal_cores_in_every_exposure_are_not_hot_pixels():
    """A sharp pixel whose exposures agree is a hot pixel only if its neighbours agree too: a cosmic
    ray that hit every exposure with about equal deposits at its core carries wings that differ.
    Measured: 48 of these 60 cores found (38 when agreeing cores vetoed their surroundings, as on
    the offsets benchmark, where whole 3-of-3 events were missed that way), no hot pixel flagged."""
    found = flagged_hot = 0
    for seed in (3, 4, 5):
        sim, stack, cores, hot = _with_equal_cores_and_hot_pixels(seed)
        cfg = CRMaskConfig(mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
        res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
        found += sum(bool(res.mediancr[y, x]) for y, x in cores)
        flagged_hot += int((res.mediancr & hot).sum())
    assert found >= 45, found
    assert flagged_hot == 0


def _hits_next_to_line_peaks(seed: int):
    """A shifted set without cosmic rays, plus single 12-sigma hits on the median exposure of pixels
    1-2 px from the peak of a line (sharp, exposures agree) where the exposures differ by > 6 sigma."""
    sim = simulate_exposures((300, 400), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=seed)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim)
    stats = stack_statistics(stack)
    floor = noise_floor(stats.median2d)
    noise = noise_scale(stats.min2d, floor, sim.rnoise_e)
    peaks = (spread_sigmas(stats, noise) <= AGREEMENT_SIGMA) & ((stats.median2d - floor) / noise > HOT_PIXEL_SIGMA)
    peaks[:8], peaks[-8:], peaks[:, :8], peaks[:, -8:] = False, False, False, False
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    ys, xs = np.nonzero(peaks)
    rng = np.random.default_rng(seed)
    hits = []
    for p in rng.permutation(ys.size)[:40]:
        near = [(ys[p] + dy, xs[p] + dx) for dy in (-2, -1, 1, 2) for dx in (-2, -1, 0, 1, 2)
                if spread[ys[p] + dy, xs[p] + dx] > 6]
        if not near:
            continue
        y, x = near[rng.integers(len(near))]
        if any(abs(y - a) < 6 and abs(x - b) < 6 for a, b in hits):
            continue
        k = int(np.argsort(sim.expected[:, y, x])[1])
        stack[k, y, x] += 12 * sig[k, y, x]
        hits.append((y, x))
    return sim, stack, hits


def test_hits_next_to_line_peaks_are_found():
    """The peak of a bright line is sharp and its exposures agree, like a hot pixel's; but it moves
    with the scene, so its models fit it, and it must not veto the moved medians around it (only a
    feature that stands above its models in every exposure does).  Measured: 102 of 102 such hits
    found, against 11 when every sharp agreeing pixel vetoed its surroundings; the price is one
    false moved median (3 pixels) on the flank of the brightest line, against none."""
    found = total = false = 0
    for seed in (3, 4, 5):
        sim, stack, hits = _hits_next_to_line_peaks(seed)
        cfg = CRMaskConfig(mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
        res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
        found += sum(bool(res.mediancr[y, x]) for y, x in hits)
        total += len(hits)
        near = np.zeros(res.mediancr.shape, bool)
        for y, x in hits:
            near[y - 2:y + 3, x - 2:x + 3] = True
        false += int((res.mediancr & ~near).sum())
    assert total >= 90
    assert found >= 0.95 * total, (found, total)
    assert false <= 9, false  # measured 3: one moved median on the flank of an 11 000 e- line, dilated


def test_hot_pixels_are_left_out_of_the_common_scene():
    """The spline spreads a hot pixel over the models of its neighbours, 3 and more pixels away, and
    each exposure then looks hit (or clean) there.  Left out of the scene (each exposure takes the
    median of its 8 neighbours there before the shift back), 3000 e- hot pixels on line flanks
    leave model errors above 3 sigma in 65 of 11 664 model pixels 2-4 px from them, against 1161."""
    sim = simulate_exposures((300, 400), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=3)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim)
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    ys, xs = np.nonzero(spread[10:-10, 10:-10] > 5)
    rng = np.random.default_rng(3)
    hot = np.zeros(stack.shape[1:], bool)
    for p in rng.permutation(ys.size)[:60]:
        y, x = ys[p] + 10, xs[p] + 10
        if not hot[y - 8:y + 9, x - 8:x + 9].any():
            stack[:, y, x] += 3000.0
            hot[y, x] = True
    stats = stack_statistics(stack)
    noise = noise_scale(stats.min2d, noise_floor(stats.median2d), sim.rnoise_e)
    offsets, phi = np.array(OFFSETS), [1.0, 1.0, 1.0]
    distance = ndimage.distance_transform_cdt(~hot, metric="chessboard")
    ring = (distance >= 2) & (distance <= 4)

    def bad_model_pixels(static):
        models = shiftmodel.shifted_models(shiftmodel.scene(stats, stack, None, offsets, noise, phi, static),
                                           offsets, phi)
        return int((np.abs(models - sim.expected)[:, ring] / sig[:, ring] > 3).sum())

    assert hot.sum() >= 40
    without, with_static = bad_model_pixels(None), bad_model_pixels(hot)
    assert without >= 500 and with_static <= 0.1 * without, (with_static, without)


def test_coincidences_spoiling_the_median_of_shifted_exposures_are_found():
    """2-of-3 hits with offsets: a coincidence survives the median of the back-shifted exposures, so
    the common scene must be cleaned before the models are built from it.  With the coincidence left in
    the scene (models of both hit exposures containing it, spread inflated around it) 99 of these 110
    pixels were found; now 107."""
    sim = simulate_exposures((400, 600), 3, offsets=OFFSETS, cr_fraction=0.005, n_coincident=40,
                             hot_fraction=2e-4, seed=22)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    sig = np.sqrt(np.maximum(sim.truth, 0) + sim.rnoise_e**2)
    harmful = (np.median(stack, axis=0) - np.median(sim.expected, axis=0)) / sig > 5
    pairs = harmful & ((sim.cr_deposit > sig).sum(axis=0) == 2)
    assert pairs.sum() >= 100
    assert (res.mediancr & pairs).sum() / pairs.sum() >= 0.95
    far = ~ndimage.binary_dilation((sim.cr_deposit > sig).any(axis=0), np.ones((3, 3), bool), iterations=2)
    assert (res.mediancr & far).sum() <= 18  # two noise detections, dilated, at most (as before)


def _with_faint_tracks(seed: int, amplitude: float, n_tracks: int = 30):
    """A shifted set without cosmic rays, plus short diagonal tracks of ``amplitude`` sigma per pixel
    on single exposures at places where the exposures differ (line flanks): one such hit moves the median."""
    sim = simulate_exposures((300, 400), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=seed)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim)
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(spread[6:-6, 6:-6] > 5)
    picks = rng.choice(ys.size, n_tracks, replace=False)
    truth = np.zeros(stack.shape, bool)
    for i, p in enumerate(picks):
        k, y, x = i % 3, ys[p] + 6, xs[p] + 6
        for step in range(4):
            truth[k, y + step, x + step] = True
    stack += np.where(truth, amplitude * sig, 0).astype(np.float32)
    return sim, stack, truth


@pytest.mark.parametrize("seed", [3, 4])
def test_faint_tracks_on_line_flanks_are_masked(seed, monkeypatch):
    """4-pixel tracks of 5 sigma per pixel: no single pixel passes the residual test (6 sigma of one
    exposure) reliably, and the exposure at offset (0, 0) is often the median of the back-shifted
    exposures, so its residual against the common scene is 0 there.  Against the mean of the other
    exposures the group is significant: measured 29/29 and 24/30 tracks masked, against 13 and 7
    without the group test; and the group test adds no masked pixel away from the tracks."""
    sim, stack, truth = _with_faint_tracks(seed, 5.0)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    det = Detector(sim.gain, sim.rnoise, sim.bias)
    res = compute_crmasks(stack, cfg, detector=det, workers=1)
    monkeypatch.setattr(shiftmodel, "TRACK_SIGMA", np.inf)
    without = compute_crmasks(stack, cfg, detector=det, workers=1)
    labels, n = ndimage.label(truth.any(axis=0), np.ones((3, 3)))

    def masked(r):
        return ndimage.maximum((r.crmasks & truth).any(axis=0), labels, np.arange(1, n + 1)).sum()

    assert masked(res) >= 0.8 * n and masked(res) >= masked(without) + 0.3 * n, (masked(res), masked(without), n)
    # a group grows from the track into the noise pixels above 2 sigma next to it, then is dilated
    near = ndimage.binary_dilation(truth.any(axis=0), iterations=5)
    assert not (res.crmasks & ~without.crmasks & ~near[None]).any()


def test_moved_medians_are_trusted_where_exposures_agree_away_from_sharp_features():
    """static_features: the shifted model is not trusted where the raw exposures agree (a hot pixel
    does not move), but the moved-median rule only distrusts the surroundings of sharp features and
    the border: a faint hit on a flank can make the exposures agree by chance (seed 2025 of the
    offsets benchmark: 4 spoiled pixels found that way, far false flags unchanged)."""
    rng = np.random.default_rng(5)
    stack = rng.normal(100.0, 10.0, (3, 40, 50)).astype(np.float32)
    stack[:, 20, 25] += 500.0  # a hot pixel: sharp, in every exposure alike
    stack[:, 5:15, 30:40] += np.array([0.0, 300.0, 600.0], np.float32)[:, None, None]  # exposures differ
    stack[:, 32, 15] += 500.0  # the same at the core, but with wings that differ: a cosmic ray
    stack[0, 31, 14:17] += 400.0
    stack[1, 33, 14:17] += 400.0
    stats = stack_statistics(stack)
    noise = np.full((40, 50), 20.0, np.float32)  # twice the scatter: the sky agrees everywhere
    floor = np.full((40, 50), 100.0, np.float32)
    untrusted, surroundings = shiftmodel.static_features(stats, noise, shiftmodel.static_pixels(stats, floor, noise, stack))
    assert untrusted[30, 10] and not surroundings[30, 10]  # flat sky: exposures agree, no feature
    assert surroundings[18:23, 23:28].all() and not surroundings[17, 25] and not surroundings[20, 28]
    assert not surroundings[30:35, 13:18].any()
    assert surroundings[:2].all() and surroundings[:, -2:].all() and not surroundings[2:-2, 2:-2][0, 0]
    assert not untrusted[5:15, 30:40].any()  # where they differ, the model is trusted
    assert not (surroundings & ~untrusted).any()


def test_leave_one_out_confirms_hits_but_not_errors_of_the_common_scene():
    """A residual detection against the common scene needs confirmation against the mean of the
    other exposures before it makes a spread pair: the two models err in different places.  A hit is
    confirmed in its own exposure only; an error of the scene model (here: injected into the models
    away from any mask) is not, since the leave-one-out model uses the models on masked pixels only."""
    sim = simulate_exposures((120, 160), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=8)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim)
    stack[1, 60, 80] += 20 * sig[1, 60, 80]
    models = sim.expected.astype(np.float32).copy()
    models[0, 30, 40] -= 20 * sig[0, 30, 40]  # the scene model is wrong here: exposure 0 looks 20 sigma high
    masks = np.zeros(stack.shape, bool)
    loo = shiftmodel.leave_one_out(stack, models, masks, np.array(OFFSETS), [1.0, 1.0, 1.0], sim.rnoise_e)
    assert loo.strong[1, 60, 80] and not loo.strong[[0, 2], 60, 80].any()
    assert not loo.strong[:, 30, 40].any()
    # on noise alone: 1 of the 57 600 pixels (the tail is heavier than a Gaussian's, ~1e-5 per pixel)
    assert loo.strong.sum() - 1 <= 3
    assert loo.tracks[1, 60, 80] and loo.tracks.sum() == 1


def test_hits_on_the_outermost_rows_and_columns_are_found():
    """On the border the common scene extrapolates, so its models are not trusted there; the median
    moved by a hit is judged with the mean of the other exposures that saw the pixel's content
    instead.  Single 30-sigma hits on the two outermost rows and columns, where the exposures differ
    by > 5 sigma (one hit moves the median): measured (seeds 12/13/14) 20/22, 7/7 and 12/14 spoiled
    medians found, against 1, 1 and 0 without that rule, and nothing flagged away from them."""
    sim = simulate_exposures((300, 400), 3, offsets=OFFSETS, cr_fraction=0.0, n_coincident=0, hot_fraction=0.0,
                             seed=12)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    sig = _sigma(sim)
    spread = (sim.expected.max(axis=0) - sim.expected.min(axis=0)) / sig.min(axis=0)
    frame = np.zeros(spread.shape, bool)
    frame[:2], frame[-2:], frame[:, :2], frame[:, -2:] = True, True, True, True
    rng = np.random.default_rng(12)
    truth = np.zeros(stack.shape, bool)
    ys, xs = np.nonzero(frame & (spread > 5))
    for i, p in enumerate(rng.choice(ys.size, 40, replace=False)):
        truth[i % 3, ys[p], xs[p]] = True
    stack += np.where(truth, 30 * sig, 0).astype(np.float32)
    spoiled = (np.median(stack, axis=0) - np.median(sim.expected, axis=0)) / sig[1] > 5
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    assert spoiled.sum() >= 15
    assert (res.mediancr & spoiled).sum() >= 0.9 * spoiled.sum(), ((res.mediancr & spoiled).sum(), spoiled.sum())
    near = ndimage.binary_dilation(truth.any(axis=0), iterations=2)
    assert not (res.mediancr & frame & ~near).any()


def test_five_shifted_exposures():
    """N = 5 with five different offsets: the leave-one-out model averages four exposures, the
    median is spoiled by hits in 3 of them.  Measured: every hit above 30 sigma masked in its
    exposure, 51 of 51 spoiled medians found, nothing flagged away from cosmic rays, no hot pixel."""
    offsets = ((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25), (0.3, 0.3), (-0.2, -0.4))
    sim = simulate_exposures((300, 400), 5, offsets=offsets, seed=4, n_coincident=40, cr_fraction=0.005,
                             hot_fraction=1e-4)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in offsets])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    sig = _sigma(sim)
    dep = sim.cr_deposit / sig
    strong = dep > 30
    strong[:, :3], strong[:, -3:], strong[:, :, :3], strong[:, :, -3:] = False, False, False, False
    assert strong.sum() > 100 and (res.crmasks & strong).sum() == strong.sum()
    spoiled = (np.median(stack, axis=0) - np.median(sim.expected, axis=0)) / sig[1] > 5
    assert spoiled.sum() >= 40 and (res.mediancr & spoiled).sum() >= 0.98 * spoiled.sum()
    near = ndimage.binary_dilation((dep > 1).any(axis=0), np.ones((3, 3), bool), iterations=2)
    assert not (res.mediancr & ~near).any()


def test_median_diagram_detections_of_shifted_exposures_need_a_hit_exposure():
    """On the steepest flanks (exposures 2 000 e- apart) the simulated median diagram is sparse and
    its boundary extrapolated: 3 false MM detections (27 MEDIANCR pixels) on this set without cosmic
    rays other than the injected tracks.  An MM detection of shifted exposures now needs an exposure
    detected within 1 pixel (against its own model, confirmed against the others)."""
    sim, stack, truth = _with_faint_tracks(3, 5.0)
    cfg = CRMaskConfig(crmethod="mmcosmic", mm_nsimulations=5, mm_xy_offsets=[list(o) for o in OFFSETS])
    res = compute_crmasks(stack, cfg, detector=Detector(sim.gain, sim.rnoise, sim.bias), workers=1)
    near = ndimage.binary_dilation(truth.any(axis=0), iterations=3)
    assert not (res.mediancr & ~near).any()
    spoiled = (np.median(stack, axis=0) - np.median(sim.expected, axis=0)) / _sigma(sim)[1] > 5
    assert spoiled.sum() >= 10 and (res.mediancr & spoiled).sum() == spoiled.sum()


def test_an_auxiliary_detector_alone_keeps_the_lines_of_declared_shifted_exposures():
    """``lacosmic`` alone: with the offsets declared, shift residuals along sky lines and fibre traces are not
    defective detector lines, and coincidences on them are flagged (#16).

    Judged against the plain noise, every line whose exposures differ by the shift looked defective and was
    left out of the detection, cosmic rays on it included.
    """
    sim = simulate_exposures((240, 320), 3, offsets=OFFSETS, cr_fraction=0.002, n_coincident=0, seed=5)
    stack = to_electrons(sim.exposures, gain=sim.gain, bias=sim.bias)
    col = 236  # a flank of the sky line at FITS X = 240
    rows = [40, 100, 160]
    for r in rows:
        stack[:2, r, col] += 1500.0  # a coincidence: the median is spoiled
    detector = Detector(sim.gain, sim.rnoise, sim.bias)
    for declared in (False, True):
        extra = {"mm_xy_offsets": [list(o) for o in OFFSETS]} if declared else {}
        res = compute_crmasks(stack, CRMaskConfig(crmethod="lacosmic", **extra), detector=detector, workers=1)
        if declared:
            assert res.bad_rows.size == 0 and res.bad_columns.size == 0
            assert res.mediancr[rows, col].all()
            assert (res.mediancr_codes[rows, col] == 3).all()  # found by the detector, confirmed
        else:  # the defect: the shifted sky line taken as a defective column, its coincidences lost
            assert col in res.bad_columns.tolist()
            assert not res.mediancr[rows, col].any()
