"""The fine-structure test decided from bounds is astroscrappy's test, bit for bit, and its bounds hold."""

from __future__ import annotations

import numpy as np
import pytest
from astroscrappy.utils import convolve

from megara_crdetect.core import lacosmic_fine as fine
from megara_crdetect.core.lacosmic import gaussxy_kernel
from megara_crdetect.core.lacosmic_incremental import psf_kernel
from megara_crdetect.core.sortnet import separable_median

KERNELS = {
    "gaussxy": gaussxy_kernel(2.5, 1.8, 11),
    "gauss": psf_kernel("gauss", 2.5, 7),
    "gaussx": psf_kernel("gaussx", 3.0, 9),
    "gaussy": psf_kernel("gaussy", 2.0, 11),
}


def scene(shape=(300, 400), seed=0):
    """Fibres along X with a strong dynamic range, negative sky pixels and cosmic-ray spikes."""
    rng = np.random.default_rng(seed)
    y, x = np.indices(shape)
    fibres = sum(np.exp(-0.5 * ((y - yc) / 1.2) ** 2) for yc in np.arange(2.0, shape[0], 6.3))
    clean = 5.0 + fibres * 40000.0 * (0.2 + np.sin(x / 23.0) ** 2) + rng.normal(0.0, 4.0, shape)
    hits = rng.integers(0, shape[0], 300), rng.integers(0, shape[1], 300)
    clean[hits] += rng.uniform(50.0, 20000.0, 300)
    clean = clean.astype(np.float32)
    noise = np.sqrt(np.maximum(separable_median(clean + np.float32(16.0), 7), np.float32(1e-5)))
    sp = (rng.normal(0.0, 3.0, shape) + 6.0 * fibres).astype(np.float32)
    return clean, noise, sp


def options(kernel, objlim=5.0):
    return {"fsmode": "convolve", "psfk": kernel, "sepmed": True, "objlim": float(np.float32(objlim)),
            "separable": fine.separable_kernel(kernel)}


def exact_test(clean, noise, sp, candidates, o):
    return candidates & ((sp / fine.fine_structure(clean, noise, o)) > o["objlim"])


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_of_the_psf_models_are_separable(name):
    kernel = fine.separable_kernel(KERNELS[name])
    assert kernel is not None and kernel.taps == KERNELS[name].size
    assert kernel.relative <= 1e-6 and kernel.absolute <= 1e-9 * KERNELS[name].max()


def test_kernels_that_are_not_products_are_refused():
    rng = np.random.default_rng(3)
    assert fine.separable_kernel(rng.uniform(0.1, 1.0, (5, 5)).astype(np.float32)) is None
    signed = gaussxy_kernel(2.0, 2.0, 5)
    signed[0, 0] = -signed[0, 0]
    assert fine.separable_kernel(signed) is None


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bound_holds_for_astroscrappys_convolution_ratio(name):
    """|c_astroscrappy - c| <= K |c| + delta at every pixel, and for the 9 x 9 separable medians too."""
    clean, noise, _ = scene(seed=len(name))
    o = options(KERNELS[name])
    x1, x2 = clean / noise / noise, 1.0 / noise / noise
    exact = convolve(x1, o["psfk"]) / convolve(x2, o["psfk"])
    c2 = fine._separable(x2, o["separable"])
    approx = fine._separable(x1, o["separable"]) / c2
    scale, offset = fine._tile_bounds(x1, x2, c2, o["separable"])
    ty, tx = np.indices(clean.shape) // fine.TILE
    k, delta = scale[ty, tx], offset[ty, tx]
    assert np.isfinite(k).all()
    for ours, theirs in ((approx, exact), (separable_median(approx, 9), separable_median(exact, 9))):
        err = np.abs(theirs.astype(np.float64) - ours)
        bound = k * np.abs(ours.astype(np.float64)) + delta
        assert np.all(err <= bound)
        assert np.max(err / bound) < 0.5  # the factor 2 to spare is not used up


@pytest.mark.parametrize("name", sorted(KERNELS))
@pytest.mark.parametrize("objlim", [2.0, 5.0])
def test_test_is_astroscrappys(name, objlim):
    clean, noise, sp = scene(seed=7)
    candidates = sp > 5.0
    o = options(KERNELS[name], objlim)
    got = fine.fine_structure_test(clean, noise, sp, candidates, o)
    expected = exact_test(clean, noise, sp, candidates, o)
    assert expected.any() and (candidates & ~expected).any()
    assert np.array_equal(got, expected)


def test_undecided_candidates_are_computed_exactly():
    """A candidate whose ratio is objlim itself cannot be decided by bounds: it is computed on a patch."""
    clean, noise, sp = scene(seed=11)
    candidates = sp > 5.0
    o = options(KERNELS["gaussxy"])
    ratio = sp / fine.fine_structure(clean, noise, o)
    ys, xs = np.nonzero(candidates)
    pick = np.argsort(ratio[ys, xs])[ys.size // 2]
    o["objlim"] = float(ratio[ys[pick], xs[pick]])  # this one is exactly at the limit: it fails
    _, unsure = fine._decided(clean, noise, sp, ys, xs, o["separable"], o["objlim"])
    assert unsure[pick] and unsure.sum() < ys.size // 10
    got = fine.fine_structure_test(clean, noise, sp, candidates, o)
    assert not got[ys[pick], xs[pick]]
    assert np.array_equal(got, exact_test(clean, noise, sp, candidates, o))


def test_options_without_bounds_run_the_exact_test():
    clean, noise, sp = scene(seed=5)
    candidates = sp > 5.0
    for changes in ({"separable": None}, {"sepmed": False}, {"fsmode": "median"}):
        o = {**options(KERNELS["gauss"]), **changes}
        assert np.array_equal(fine.fine_structure_test(clean, noise, sp, candidates, o),
                              exact_test(clean, noise, sp, candidates, o))
    assert not fine.fine_structure_test(clean, noise, sp, np.zeros(sp.shape, bool), options(KERNELS["gauss"])).any()


def test_bounds_too_wide_fall_back_to_the_whole_computation():
    """Where the noise is floored at astroscrappy's minimum under negative pixels the bounds are useless."""
    clean, _, sp = scene(seed=13)
    clean[:, :200] = -np.abs(clean[:, :200]) - 20.0  # a variance below zero: astroscrappy floors the noise
    noise = np.sqrt(np.maximum(separable_median(clean + np.float32(16.0), 7), np.float32(1e-5)))
    candidates = sp > 5.0
    o = options(KERNELS["gaussxy"])
    ys, xs = np.nonzero(candidates)
    assert fine._decided(clean, noise, sp, ys, xs, o["separable"], o["objlim"]) is None
    assert np.array_equal(fine.fine_structure_test(clean, noise, sp, candidates, o),
                          exact_test(clean, noise, sp, candidates, o))


@pytest.mark.parametrize("kernel", [KERNELS["gauss"], KERNELS["gaussxy"], gaussxy_kernel(8.0, 8.0, 15)])
def test_patches_give_the_whole_arrays_fine_structure(kernel):
    """The undecided candidates' patches reach as far as the kernel and the median do: the same bits."""
    from megara_crdetect.core.windows import cell_boxes, lacosmic_fine_reach

    clean, noise, sp = scene(seed=3)
    o = options(kernel)
    ys, xs = np.nonzero(sp > 5.0)
    ys, xs = ys[::23], xs[::23]  # scattered, some cells with several, some at the sides
    order, starts, boxes = cell_boxes(ys, xs, fine.CELL, clean.shape[1])
    ys, xs = ys[order], xs[order]
    reach = lacosmic_fine_reach(sepmed=True, fsmode="convolve", psfsize=kernel.shape[0])
    got = fine._on_patches(clean, noise, (ys, xs, starts, boxes), reach, o)
    assert np.array_equal(got, fine.fine_structure(clean, noise, o)[ys, xs])
