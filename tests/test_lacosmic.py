"""Tests for megara_crdetect.core.lacosmic."""

from __future__ import annotations

import numpy as np
import pytest
from astroscrappy.astroscrappy import gausskernel

from megara_crdetect.core import lacosmic as lacosmic_module
from megara_crdetect.core.lacosmic import gaussxy_kernel, run_lacosmic, run_lacosmic_many

RN = 3.0
FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def sky(shape=(200, 200), level=100.0):
    y, x = np.indices(shape)
    return level + 20.0 * x / shape[1] + 10.0 * y / shape[0]


def observe(truth, seed):
    rng = np.random.default_rng(seed)
    return (rng.poisson(truth) + rng.normal(0.0, RN, truth.shape)).astype(np.float32)


def add_star(truth, yc, xc, flux, fwhm=3.0):
    y, x = np.indices(truth.shape)
    s = fwhm * FWHM_TO_SIGMA
    return truth + flux / (2 * np.pi * s * s) * np.exp(-0.5 * ((x - xc) ** 2 + (y - yc) ** 2) / s**2)


def fibre_image(shape=(200, 200), seed=0, y0=4.0, pitch=6.5, fwhm=3.0, peak=2000.0):
    """Fibre spectra along X (rows = fibres), like a MEGARA frame."""
    y, x = np.indices(shape)
    prof = np.zeros(shape)
    for yc in np.arange(y0 - 3 * pitch, shape[0] + 3 * pitch, pitch):
        prof += np.exp(-0.5 * ((y - yc) / (fwhm * FWHM_TO_SIGMA)) ** 2)
    truth = 20.0 + prof * peak * (0.6 + 0.4 * np.sin(x / 37.0) ** 2)
    return observe(truth, seed)


def edge_flags(mask, width=10):
    edge = np.ones_like(mask)
    edge[width:-width, width:-width] = False
    return int(np.count_nonzero(mask & edge))


class TestKernel:
    def test_unit_sum_symmetry_dtype(self):
        k = gaussxy_kernel(2.0, 4.0, 9)
        assert k.shape == (9, 9)
        assert k.dtype == np.float32
        assert k.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.array_equal(k, k[::-1, :])
        assert np.array_equal(k, k[:, ::-1])
        assert np.unravel_index(np.argmax(k), k.shape) == (4, 4)

    def test_sigmas_along_x_and_y(self):
        k = gaussxy_kernel(3.0, 5.0, 41).astype(np.float64)
        off = np.arange(-20, 21)
        var_x = (k.sum(axis=0) * off**2).sum()  # along columns = X
        var_y = (k.sum(axis=1) * off**2).sum()  # along rows = Y
        assert var_x == pytest.approx((3.0 * FWHM_TO_SIGMA) ** 2, rel=1e-3)
        assert var_y == pytest.approx((5.0 * FWHM_TO_SIGMA) ** 2, rel=1e-3)

    def test_circular_case_matches_astroscrappy(self):
        np.testing.assert_allclose(gaussxy_kernel(2.5, 2.5, 7), gausskernel(2.5, 7), rtol=1e-5)

    @pytest.mark.parametrize(
        ("args", "name"),
        [((0.0, 2.0, 7), "fwhm_x"), ((2.0, -1.0, 7), "fwhm_y"), ((2.0, 2.0, 6), "size"),
         ((2.0, 2.0, 1), "size"), ((2.0, 2.0, 7.0), "size")],
    )
    def test_validation(self, args, name):
        with pytest.raises(ValueError, match=name):
            gaussxy_kernel(*args)


class TestArguments:
    """The ccdproc keyword arguments of each L.A.Cosmic run (captured with a stub of the one-run function)."""

    @pytest.fixture
    def captured(self, monkeypatch):
        calls = []

        def fake(data, kwargs, workers=1):
            calls.append((data, kwargs))
            return data * 1.0, np.zeros(data.shape, bool)

        monkeypatch.setattr(lacosmic_module, "_one_pass", fake)
        return calls

    def test_electrons_and_defaults(self, captured):
        run_lacosmic(np.ones((20, 30), np.float32), rnoise_e=4.2)
        _, kw = captured[0]
        assert kw["gain"] == 1.0
        assert kw["readnoise"] == 4.2
        assert "satlevel" not in kw
        assert (kw["sigclip"], kw["sigfrac"], kw["objlim"], kw["niter"]) == (5.0, 0.3, 5.0, 4)
        assert (kw["psfmodel"], kw["psffwhm"]) == ("gauss", 2.5)

    @pytest.mark.parametrize(
        ("model", "psfmodel", "psffwhm"),
        [("gauss", "gauss", 3.0), ("moffat", "moffat", 3.0), ("gaussx", "gaussx", 2.0),
         ("gaussy", "gaussy", 4.0)],
    )
    def test_psf_fwhm_by_model(self, captured, model, psfmodel, psffwhm):
        run_lacosmic(np.ones((20, 30)), rnoise_e=RN, psfmodel=model, psffwhm_x=2.0,
                     psffwhm_y=4.0, fsmode="convolve")
        _, kw = captured[0]
        assert (kw["psfmodel"], kw["psffwhm"]) == (psfmodel, psffwhm)
        assert kw.get("psfk") is None

    def test_gaussxy_passes_kernel_and_valid_model(self, captured):
        run_lacosmic(np.ones((20, 30)), rnoise_e=RN, psfmodel="gaussxy", psffwhm_x=2.0,
                     psffwhm_y=4.0, psfsize=9, satlevel_e=1e5, fsmode="convolve")
        _, kw = captured[0]
        assert kw["psfmodel"] in ("gauss", "gaussx", "gaussy", "moffat")
        assert np.array_equal(kw["psfk"], gaussxy_kernel(2.0, 4.0, 9))
        assert kw["satlevel"] == 1e5

    def test_padding_reflects_and_crops(self, captured):
        image = np.arange(12.0).reshape(3, 4)
        mask, cleaned = run_lacosmic(image, rnoise_e=RN, padwidth=2)
        data, _ = captured[0]
        assert data.shape == (7, 8)
        np.testing.assert_array_equal(data, np.pad(image, 2, mode="reflect"))
        np.testing.assert_array_equal(cleaned, image)
        assert mask.shape == image.shape
        assert cleaned.dtype == np.float32


class TestValidation:
    @pytest.mark.parametrize(
        ("kwargs", "name"),
        [({"cleantype": "mean"}, "cleantype"), ({"fsmode": "conv"}, "fsmode"),
         ({"psfmodel": "lorentz"}, "psfmodel"), ({"psfsize": 4}, "psfsize"),
         ({"padwidth": -1}, "padwidth"), ({"padwidth": 50}, "padwidth"),
         ({"niter": 0}, "niter"), ({"sigclip": -1.0}, "sigclip"),
         ({"rnoise_e": -1.0}, "rnoise_e"), ({"psfmodel": "gaussx", "psffwhm_x": 0.0}, "psffwhm_x")],
    )
    def test_bad_options(self, kwargs, name):
        options = {"rnoise_e": RN, **kwargs}
        with pytest.raises(ValueError, match=name):
            run_lacosmic(np.ones((20, 20), np.float32), **options)

    def test_non_finite_image(self):
        image = np.ones((20, 20), np.float32)
        image[3, 3] = np.nan
        with pytest.raises(ValueError, match="NaN"):
            run_lacosmic(image, rnoise_e=RN)

    def test_bad_workers(self):
        with pytest.raises(ValueError, match="workers"):
            run_lacosmic_many([np.ones((20, 20))], workers=0, rnoise_e=RN)


class TestDetection:
    def test_cosmic_rays_found_star_spared(self):
        truth = add_star(sky(), 100.3, 60.6, 60000.0)  # FWHM 3 px, peak ~5500 e-
        image = observe(truth, seed=1)
        hits = {(30, 40): 800, (150, 170): 1500, (150, 171): 600, (80, 140): 400,
                (120, 20): 2000, (121, 21): 900}
        for pix, amp in hits.items():
            image[pix] += amp
        mask, cleaned = run_lacosmic(image, rnoise_e=RN)
        assert all(mask[p] for p in hits)
        assert not mask[92:109, 52:69].any()  # the star
        assert mask.sum() <= len(hits) + 4  # few extra (neighbours, noise)
        for pix in hits:
            assert abs(cleaned[pix] - truth[pix]) < 5 * np.sqrt(truth[pix] + RN**2)

    def test_doubling_read_noise_loses_faint_hits(self):
        truth = sky(level=5.0)
        image = observe(truth, seed=2)
        hits = [(r, c) for r in range(10, 190, 20) for c in range(10, 190, 20)]
        for pix in hits:
            image[pix] += 30.0  # ~8 sigma of 3.7 e-, ~4.5 sigma of 6.4 e-
        found = {}
        for rnoise in (RN, 2 * RN):
            mask, _ = run_lacosmic(image, rnoise_e=rnoise)
            found[rnoise] = sum(bool(mask[p]) for p in hits)
        assert found[RN] >= 0.6 * len(hits)
        assert found[2 * RN] <= 0.2 * len(hits)

    def test_padding_reduces_edge_flags_on_fibres(self):
        # No cosmic rays: every flag is false. The fibre phase (y0=4) is one where
        # the reflected edge fibre does not fall 2-5 px from the real one; for
        # other phases padding creates flags (see run_lacosmic Notes).
        image = fibre_image()
        flags = {pw: edge_flags(run_lacosmic(image, rnoise_e=RN, padwidth=pw)[0]) for pw in (0, 10)}
        assert flags[0] >= 100  # along the spectral direction at the left/right edges
        assert flags[10] <= 10


class TestParallel:
    def test_threads_bit_identical_to_serial(self):
        images = [fibre_image(shape=(150, 160), seed=s) for s in range(3)]
        for image in images:
            image[72, 80] += 3000.0
        kwargs = {"rnoise_e": RN, "padwidth": 4, "fsmode": "convolve", "psfmodel": "gaussxy",
                  "psffwhm_x": 2.0, "psffwhm_y": 3.0}
        serial = run_lacosmic_many(images, workers=1, **kwargs)
        parallel = run_lacosmic_many(images, workers=2, **kwargs)
        assert len(parallel) == 3
        for (m1, c1), (m2, c2) in zip(serial, parallel):
            assert np.array_equal(m1, m2)
            assert np.array_equal(c1, c2)
            assert m1[72, 80]
        single = run_lacosmic(images[1], **kwargs)
        assert np.array_equal(single[0], parallel[1][0])
