"""A noise model that does not describe the exposures (heavy tails, wrong gain or rnoise) is reported."""

from __future__ import annotations

import logging

import numpy as np

from megara_crdetect.config import parse_requirements
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.simulate import simulate_exposures

PARAMS = parse_requirements({"crmethod": "mm_lacosmic", "mm_nsimulations": 3})


def _stack(seed: int = 3):
    sim = simulate_exposures((160, 200), 3, seed=seed, n_coincident=20, cr_fraction=0.005)
    return (sim.exposures * sim.gain).astype(np.float32), sim.rnoise_e


def _warnings(caplog, stack, rnoise):
    with caplog.at_level(logging.WARNING, logger="megara_crdetect.core.pipeline"):
        compute_crmasks(stack, PARAMS, detector=Detector(gain=1.0, rnoise=rnoise), workers=1)
    return [r.getMessage() for r in caplog.records if "heavier tails" in r.getMessage()]


def test_heavy_tailed_noise_is_reported(caplog):
    """2 % of the values 8 sigma off, either way (an amateur CCD's tails): one warning naming gain and rnoise."""
    stack, rnoise = _stack()
    rng = np.random.default_rng(5)
    sig = np.sqrt(np.maximum(np.median(stack, axis=0), 0) + rnoise**2)
    odd = rng.random(stack.shape) < 0.02
    stack = stack + np.where(odd, rng.choice([-8.0, 8.0], stack.shape) * sig, 0).astype(np.float32)
    messages = _warnings(caplog, stack, rnoise)
    assert len(messages) == 1 and "check gain and rnoise" in messages[0], messages


def test_noise_as_modelled_with_cosmic_rays_and_coincidences_is_not_reported(caplog):
    stack, rnoise = _stack()
    assert _warnings(caplog, stack, rnoise) == []
