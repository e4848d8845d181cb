"""The exposure-difference model (core/variation.py): real variation removed, cosmic rays left alone."""

from __future__ import annotations

import numpy as np
import pytest

from megara_crdetect.config import parse_requirements
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.core.stack import median_of_stack
from megara_crdetect.core.variation import fit_variations

RN = 3.4
SHAPE = (240, 160)


def _trace(width: float, centre: float, flux: np.ndarray) -> np.ndarray:
    """A vertical trace (dispersion along y): Gaussian profile across x, flux varying along y."""
    x = np.arange(SHAPE[1], dtype=np.float64)
    profile = np.exp(-0.5 * ((x - centre) / width) ** 2) / (np.sqrt(2 * np.pi) * width)
    return flux[:, None] * profile[None, :] + 30.0


def _exposures(varying: bool, seed: int = 1, scale: float = 1.0) -> np.ndarray:
    """Three noisy exposures of a bright trace whose strength, width and position change (or not)."""
    rng = np.random.default_rng(seed)
    y = np.arange(SHAPE[0])
    flux = 60000.0 * (1 + 0.3 * np.sin(y / 40.0))
    if varying:  # seeing, guiding, slit losses varying along the spectrum
        s = scale
        truths = [_trace(2.0, 80.0, flux * (1 + 0.04 * s * np.sin(y / 50.0))),
                  _trace(2.0 + 0.15 * s, 80.0 + 0.15 * s, flux * (1 - 0.03 * s)),
                  _trace(2.0 - 0.1 * s, 80.0 - 0.1 * s, flux * (1 + 0.03 * s - 0.03 * s * np.cos(y / 60.0)))]
    else:
        truths = [_trace(2.0, 80.0, flux)] * 3
    return np.stack([rng.normal(t, np.sqrt(t + RN**2)) for t in truths]).astype(np.float32)


def _hit(stack: np.ndarray, places, exposures=(0, 1), amplitude=3000.0) -> np.ndarray:
    """Coincident hits: a 2x3 pixel event in two exposures at each place."""
    out = stack.copy()
    for y, x in places:
        for k in exposures:
            out[k, y:y + 2, x:x + 3] += amplitude
    return out


def test_model_removes_a_varying_trace_down_to_the_noise():
    stack = _exposures(varying=True)
    m = median_of_stack(stack)
    noise = np.sqrt(np.maximum(m, 0) + RN**2)
    before = np.abs(stack - m).max(axis=0) / noise
    fit = fit_variations(stack, m, RN)
    after = np.abs(stack - fit.model - median_of_stack(stack - fit.model)).max(axis=0) / noise
    # the trace's exposures differ far beyond the noise (99th percentile 17.6 sigma, noise alone 3.2) ...
    assert np.percentile(before[:, 70:90], 99) > 12
    # ... and hardly more than the noise once the model is removed (measured: median 1.23, 99 % 5.3; the
    # 7.5 % width change leaves second-order terms)
    assert np.percentile(after[:, 70:90], 50) < 1.3
    assert np.percentile(after[:, 70:90], 99) < 6
    assert np.allclose(fit.model.sum(axis=0), 0, atol=1e-2)


def test_model_is_close_to_identity_on_equivalent_exposures():
    stack = _exposures(varying=False)
    m = median_of_stack(stack)
    noise = np.sqrt(np.maximum(m, 0) + RN**2)
    fit = fit_variations(stack, m, RN)
    # the shrinkage of insignificant coefficients: the model adds almost no noise (measured 99.9 % 0.08-0.14
    # sigma on the trace, 0.38-0.43 without the shrinkage)
    assert np.percentile(np.abs(fit.model).max(axis=0) / noise, 99.9) < 0.25


def test_coincident_hits_on_the_trace_are_not_absorbed_by_the_model():
    """A 2x3 event in 2 of 3 exposures keeps >= 90 % of its excess over the clean exposure, on the trace too.

    Measured against the same exposures without the event (same noise), so
    the bar is on what the model takes away, not on the noise of a 12 000 e-
    trace peak.  (With the median as basis the event gave itself the leverage
    to be fitted away: 40 % of it at (40, 78).)
    """
    places = [(40, 78), (100, 81), (160, 30), (200, 120)]  # two on the trace, two on the sky
    for seed in (1, 2):
        clean = _exposures(varying=True, seed=seed)
        excess = []
        for stack in (clean, _hit(clean, places)):
            corrected = stack - fit_variations(stack, median_of_stack(stack), RN).model
            excess.append([corrected[:2, y:y + 2, x:x + 3].mean(axis=0) - corrected[2, y:y + 2, x:x + 3]
                           for y, x in places])
        for (y, x), before, after in zip(places, *excess):
            kept = after - before
            assert kept.mean() > 0.9 * 3000 and kept.min() > 0.85 * 3000, (seed, y, x, kept)


def test_varying_trace_gives_no_more_mediancr_than_equivalent_exposures_and_coincidences_are_found():
    places = [(40, 78), (100, 81), (160, 30)]
    params = parse_requirements({"crmethod": "mm_lacosmic", "mm_nsimulations": 4, "mm_variation_model": True})
    detector = Detector(gain=1.0, rnoise=RN)
    same, on = [], []
    for seed in (3, 4, 5):
        clean = _exposures(varying=True, seed=seed, scale=0.4)  # 3 % width, 0.06 px, 2 % flux: like the WHT
        same.append(compute_crmasks(_exposures(varying=False, seed=seed), params, detector=detector,
                                    workers=1).mediancr.sum())
        on.append(compute_crmasks(clean, params, detector=detector, workers=1).mediancr.sum())
        if seed == 3:  # without the model the trace's flanks are taken for cosmic rays
            off = compute_crmasks(clean, params.replace(mm_variation_model=False), detector=detector, workers=1)
            assert off.mediancr.sum() > 500
            hit = compute_crmasks(_hit(clean, places), params, detector=detector, workers=1)
            for y, x in places:
                assert hit.mediancr[y:y + 2, x:x + 3].all(), (y, x)
            far = hit.mediancr.copy()
            for y, x in places:
                far[y - 3:y + 5, x - 3:x + 6] = False
            assert far.sum() <= on[-1] + 9
    # with the model, a varying trace gives about what equal exposures give: noise pixels at the boundary
    # (measured 18 / 0 / 0 against 0 / 0 / 0: two single pixels, each dilated to 9, on seed 3)
    assert sum(on) <= sum(same) + 18, (on, same)


@pytest.mark.parametrize("workers", [1, 2])
def test_strips_give_the_whole_frame_model(workers):
    """The model is fitted in strips of rows with a margin: any strip height, any thread count, same bits."""
    from megara_crdetect.core.variation import _fit_reach, _strips

    lines, _ = _blended_lines(seed=5)  # line ratios too, in the lower half
    stack = np.concatenate([_hit(_exposures(varying=True, seed=5), [(40, 60), (121, 79), (200, 100)]), lines], axis=1)
    stack[1, :, 17] = -500.0  # a defective column
    m = median_of_stack(stack)
    whole = fit_variations(stack, m, RN, strip_rows=10**6)
    assert np.abs(whole.model).max() > 1.0  # there is a model to compare
    for rows in (20, 45, 100):
        assert len(_strips(stack.shape[1], 5, rows, 5 * _fit_reach((3, 3), True))) > 1  # cut in strips
        part = fit_variations(stack, m, RN, strip_rows=rows, workers=workers)
        np.testing.assert_array_equal(part.model, whole.model)
        np.testing.assert_array_equal(part.used, whole.used)
        np.testing.assert_allclose(part.chi2, whole.chi2, rtol=1e-12)


def _blended_lines(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three exposures of pairs of blended lines 5 px apart whose strengths change by line (+-4 %).

    Returns the noisy exposures and their noise-free expectations.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SHAPE[0], 0:SHAPE[1]].astype(np.float64)
    along = 1 + 0.3 * np.sin(y / 30.0)  # strength varying along the lines
    ratios = [((1.04, 0.97), (0.96, 1.0), (1.0, 1.03)), ((1.0, 1.04), (1.03, 0.97), (0.98, 1.0))]
    truths = []
    for k in range(3):
        t = np.full(SHAPE, 30.0)
        for pair, centre in zip(ratios, (50.0, 110.0)):
            for r, c in ((pair[k][0], centre), (pair[k][1], centre + 5)):
                t += r * 20000.0 * along * np.exp(-0.5 * ((x - c) / 1.3) ** 2)
        truths.append(t)
    truths = np.stack(truths)
    return rng.normal(truths, np.sqrt(truths + RN**2)).astype(np.float32), truths


@pytest.mark.parametrize("transpose", [False, True])
def test_blended_lines_each_with_its_own_ratio_are_modelled(transpose):
    """Neighbouring lines whose ratios differ (an arc lamp's lines) leave no more than the noise.

    One ratio per model window cannot follow them; a ratio for every pixel
    across the lines, smooth along them, can, in either orientation of the
    lines (measured: 99.9th percentile of the unmodelled spread 0.66 sigma
    with it, 12.4 without, both orientations).
    """
    stack, truths = _blended_lines(seed=7)
    if transpose:  # lines along the rows, as on an arc whose dispersion runs along y
        stack, truths = stack.transpose(0, 2, 1).copy(), truths.transpose(0, 2, 1)
    noise = np.sqrt(truths.mean(axis=0) + RN**2)
    m = median_of_stack(stack)
    out = {}
    for lines in (True, False):
        model = fit_variations(stack, m, RN, lines=lines).model
        left = (truths - truths.mean(axis=0)) - model  # what the model leaves of the real differences
        out[lines] = np.percentile(np.abs(left).max(axis=0) / noise, 99.9)
    assert out[True] < 1.5 and out[False] > 8.0, out


def test_line_ratios_evaluated_at_few_pixels_equal_the_whole_evaluation(monkeypatch):
    """Where few line ratios are kept only the pixels near them are evaluated: the same bits as everywhere."""
    from megara_crdetect.core import variation

    stack, _ = _blended_lines(seed=3)
    stack[:, :, 80:] = _exposures(varying=False, seed=3)[:, :, 80:]  # half the frame equal exposures
    m = median_of_stack(stack)
    out = []
    for fraction in (1.0, 0.0):  # every evaluation at points; every one over whole planes
        monkeypatch.setattr(variation, "LINE_SPARSE", fraction)
        out.append(fit_variations(stack, m, RN).model)
    assert np.abs(out[0]).max() > 100  # there is a line model to compare
    np.testing.assert_array_equal(out[0], out[1])


def test_model_evaluated_at_few_pixels_equals_the_whole_evaluation(monkeypatch):
    """Where few windows take a model only the pixels near them are evaluated: the same bits as everywhere."""
    from megara_crdetect.core import variation

    stack = _exposures(varying=False, seed=4)
    stack[:, :, 60:100] = _exposures(varying=True, seed=4)[:, :, 60:100]  # a varying trace, equal sky
    stack[:, :, 20:40] = _blended_lines(seed=4)[0][:, :, 40:60]  # and some blended lines
    m = median_of_stack(stack)
    out = []
    for fraction in (2.0, -1.0):  # every evaluation at points; every one over whole planes
        monkeypatch.setattr(variation, "EVALUATE_SPARSE", fraction)
        out.append(fit_variations(stack, m, RN).model)
    assert np.abs(out[0]).max() > 100 and (out[0] == 0).mean() > 0.3  # a model, and zero in many places
    np.testing.assert_array_equal(out[0], out[1])


@pytest.mark.parametrize("workers", [1, 2])
def test_strips_of_a_frame_not_made_of_whole_blocks(workers):
    """Rows and columns that do not fill the last block (padded, then cut away): strips give the same bits."""
    stack = _hit(_exposures(varying=True, seed=8), [(40, 60), (121, 79)])[:, :237, :153]
    m = median_of_stack(stack)
    whole = fit_variations(stack, m, RN, strip_rows=10**6)
    assert whole.model.shape == stack.shape and whole.model.flags.c_contiguous
    assert np.abs(whole.model).max() > 1.0
    part = fit_variations(stack, m, RN, strip_rows=20, workers=workers)
    np.testing.assert_array_equal(part.model, whole.model)
    np.testing.assert_array_equal(part.used, whole.used)


def test_unpadded_is_the_corner_in_place():
    from megara_crdetect.core.variation import _unpadded

    padded = np.random.default_rng(0).normal(size=(3, 12, 10)).astype(np.float32)
    corner = padded[:, :11, :7].copy()
    out = _unpadded(padded, 11, 7)
    np.testing.assert_array_equal(out, corner)
    assert np.shares_memory(out, padded) and out.flags.c_contiguous


def test_a_failing_strip_raises_instead_of_waiting(monkeypatch):
    """A strip that fails (here: the third) stops the fit with its error; the other strips do not wait for it."""
    from megara_crdetect.core import variation

    calls = []
    real = variation._fit_strip

    def failing(frame, fixed, previous, used, bounds, *args, **kwargs):
        calls.append(bounds)
        if len(calls) == 3:
            raise MemoryError("strip")
        return real(frame, fixed, previous, used, bounds, *args, **kwargs)

    monkeypatch.setattr(variation, "_fit_strip", failing)
    stack = _exposures(varying=True, seed=5)
    with pytest.raises(MemoryError, match="strip"):
        fit_variations(stack, median_of_stack(stack), RN, strip_rows=40, workers=2)


def test_vectorised_cholesky_solves_every_block():
    """The block-wise Cholesky solve equals numpy's solve on random SPD systems; a singular one stays finite."""
    from megara_crdetect.core.variation import _cholesky_solve

    rng = np.random.default_rng(3)
    m = rng.normal(size=(40, 6, 9))
    a = np.einsum("nik,njk->nij", m, m) + 0.1 * np.eye(6)  # (blocks, P, P), positive definite
    b = rng.normal(size=(2, 40, 6))
    x = _cholesky_solve(np.moveaxis(a, 0, -1), np.moveaxis(b, 1, -1))  # planes first: (P, P, blocks)
    expected = np.stack([np.linalg.solve(a, bt[..., None])[..., 0] for bt in b])
    np.testing.assert_allclose(np.moveaxis(x, -1, 1), expected, rtol=1e-9, atol=1e-12)
    singular = np.zeros((6, 6, 1))
    singular[0, 0] = 1.0
    assert np.isfinite(_cholesky_solve(singular, np.ones((1, 6, 1)))).all()


def test_work_in_place_gives_the_same_masks_and_puts_the_exposures_back():
    """The model subtracted in the caller's stack (no copy of the frames): same result, same input bits after."""
    from megara_crdetect.config import CRMaskConfig
    from megara_crdetect.core.pipeline import Detector, compute_crmasks

    stack = _hit(_exposures(varying=True, seed=3), [(40, 60), (121, 79)])
    original = stack.copy()
    params, det = CRMaskConfig(crmethod="mm_lacosmic"), Detector(1.0, RN, 0.0)
    copy = compute_crmasks(stack, params, detector=det, workers=1)
    inplace = compute_crmasks(stack, params, detector=det, workers=1, work_in_place=True)
    assert inplace.variation is not None and copy.mediancr.any()
    np.testing.assert_array_equal(stack.view(np.uint32), original.view(np.uint32))  # bit for bit
    for name in ("mediancr", "crmasks", "meancr", "problematic"):
        np.testing.assert_array_equal(getattr(inplace, name), getattr(copy, name), err_msg=name)
    np.testing.assert_array_equal(inplace.stats.min2d, copy.stats.min2d)


def test_work_in_place_puts_the_exposures_back_on_an_error(monkeypatch):
    from megara_crdetect.config import CRMaskConfig
    from megara_crdetect.core import pipeline

    def fail(*args, **kwargs):
        raise RuntimeError("after the model")

    monkeypatch.setattr(pipeline, "stack_statistics", fail)
    stack = _exposures(varying=True, seed=3)
    original = stack.copy()
    with pytest.raises(RuntimeError, match="after the model"):
        pipeline.compute_crmasks(stack, CRMaskConfig(), detector=pipeline.Detector(1.0, RN, 0.0), workers=1,
                                 work_in_place=True)
    np.testing.assert_array_equal(stack.view(np.uint32), original.view(np.uint32))


@pytest.mark.parametrize("ny, nc, step", [(630, 126, 5), (637, 128, 5), (40, 10, 4), (9, 3, 3), (7, 2, 5), (3, 1, 5)])
def test_rows_interpolated_by_broadcasting_equal_the_gathered_rows(ny, nc, step):
    """The periodic part computed by broadcasting gives the bits of ``along[y0] * (1 - fy) + along[y1] * fy``."""
    from megara_crdetect.core.variation import _axis_weights, _interpolate_rows

    along = np.random.default_rng(ny).normal(size=(nc, 17)).astype(np.float32)
    y0, y1, fy = _axis_weights(ny, nc, step)
    out, work = np.full((ny, 17), np.nan, np.float32), np.empty((ny, 17), np.float32)
    _interpolate_rows(along, (y0, y1, fy), step, out, work)
    np.testing.assert_array_equal(out, along[y0] * (1 - fy[:, None]) + along[y1] * fy[:, None])


def test_block_products_are_the_sums_of_the_weighted_products_of_each_block():
    """Every kept pair (the normal matrix's lower triangle, each regressor by each target), block by block."""
    from megara_crdetect.core.variation import _block_products, _box_sum, _product_pairs

    rng = np.random.default_rng(3)
    planes = [None] + [rng.normal(size=(20, 30)).astype(np.float32) for _ in range(4)]
    weight = rng.random((20, 30)).astype(np.float32)
    sums = _block_products(planes, weight, 3, 5)
    pairs = _product_pairs(3, 5)
    assert len(pairs) == 6 + 2 * 3 and sums.shape == (12, 4, 6)
    for k, (i, j) in enumerate(pairs):
        a, b = [np.ones((20, 30)) if planes[m] is None else planes[m].astype(float) for m in (i, j)]
        expected = (weight * a * b).reshape(4, 5, 6, 5).sum(axis=(1, 3))
        np.testing.assert_allclose(sums[k], expected, rtol=1e-5, atol=1e-4)
    # the window sums of a stack of planes are those of each plane
    boxed = _box_sum(sums, (3, 3), "constant")
    for k in (0, 7):
        padded = np.pad(sums[k], 1)
        expected = sum(padded[i:i + 4, j:j + 6] for i in range(3) for j in range(3))
        np.testing.assert_allclose(boxed[k], expected, rtol=1e-12)
