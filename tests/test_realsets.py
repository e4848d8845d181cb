"""The real-frame test sets of benchmarks/realsets.py (issue 17): event cutting, injection, trace."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import realsets  # noqa: E402


def _frames(rng, shape=(300, 200), n=3):
    """Flat sky plus a Gaussian trace along the rows, with noise (ADU)."""
    cols = np.arange(shape[1])
    trace = 400 * np.exp(-0.5 * ((cols - 100.3) / 2.0) ** 2)
    level = 20 + trace[None, :] * np.ones((shape[0], 1))
    return np.stack([level + rng.normal(0, realsets.noise_adu(level)) for _ in range(n)]).astype(np.float32)


def test_events_are_cut_as_the_excess_and_injected_where_planned():
    rng = np.random.default_rng(1)
    a, b = _frames(rng, n=2)
    truth = np.zeros_like(a)
    truth[50, 30:34] = [300, 900, 500, 80]  # a track
    truth[200, 150] = 2000  # a single-pixel hit
    events = realsets.find_events(a + truth, b)
    assert len(events) == 2
    peaks = sorted(float(ev.stamp.max()) for ev in events)
    assert abs(peaks[0] - 900) < 30 and abs(peaks[1] - 2000) < 30
    frames = _frames(rng)
    region = np.zeros(frames.shape[1:], bool)
    region[:, 95:106] = True
    inj = realsets.inject(frames, events, seed=3, region=region, avoid=np.zeros_like(region), n_same=6,
                          n_different=6, n_single=6)
    assert len(inj.placements) == 18
    assert np.allclose(inj.frames - frames, inj.deposit, atol=1e-3)
    for row, col, exps, kind, where in inj.placements:
        assert (where == "region") == bool(region[row, col])
        hit = [k for k in range(3) if inj.deposit[k, row, col] > 0]
        assert hit == list(exps)
        if kind == "same":
            k1, k2 = exps
            win = np.s_[max(row - 3, 0):row + 4, max(col - 3, 0):col + 4]
            assert np.array_equal(inj.deposit[k1][win], inj.deposit[k2][win])


def test_trace_is_located_and_broadening_keeps_each_rows_flux():
    rng = np.random.default_rng(2)
    frames = _frames(rng, shape=(512, 200))
    centre = realsets.trace_centre(np.median(frames, axis=0))
    assert np.all(np.abs(centre - 100.3) < 0.2)
    wider = realsets.broaden_trace(frames[0], centre, sigma_px=1.0)
    assert abs(wider[:, 80:121].sum() / frames[0][:, 80:121].sum() - 1) < 1e-4
    assert wider[:, 100].mean() < 0.95 * frames[0][:, 100].mean()  # the peak is lower: a wider profile


@pytest.mark.skipif(not realsets.real_dir().is_dir(), reason=f"real frames not found at {realsets.real_dir()}")
def test_wht_triplet_trace_and_real_hits():
    clean = realsets.load(realsets.TRIPLET)
    assert clean.shape == (3, 4096, 965)
    centre = realsets.trace_centre(np.median(clean, axis=0))
    assert 460 < centre.min() < centre.max() < 478
    hits = realsets.real_hits(clean)
    assert np.all(hits.sum(axis=(1, 2)) > 100)
