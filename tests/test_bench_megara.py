"""The routes of ``benchmarks/bench_megara.py`` name only keys their recipe knows (no full-size run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

pytestmark = pytest.mark.skipif(importlib.util.find_spec("megaradrp") is None,
                                reason="megaradrp (extra .[megara]) is not installed")


@pytest.fixture(scope="module")
def bench():
    import bench_megara

    return bench_megara


def test_megaradrp_routes_use_megaradrp_keys(bench):
    """numina stops an OB whose requirement megaradrp's CRMasksRecipe does not have; none may slip in."""
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe

    known = set(CRMasksRecipe.requirements())
    routes = {name: req for name, (instrument, req) in bench.ROUTES.items() if instrument == "MEGARA"}
    assert {"megaradrp_mm_lacosmic_sigclip100", "megaradrp_mm_deepcr"} <= set(routes)
    for name, requirements in routes.items():
        assert set(requirements) <= known, (name, set(requirements) - known)
        assert requirements["interactive"] is False and requirements["maxplots"] == 0, name


def test_deepcr_routes_run_deepcr_and_are_skipped_without_its_python(bench, tmp_path, caplog):
    """The deepCR routes use a deepCR method; without --deepcr-python they are skipped, nothing else runs."""
    assert bench.NEEDS_DEEPCR <= set(bench.ROUTES)
    for name in bench.NEEDS_DEEPCR:
        assert bench.ROUTES[name][1]["crmethod"] in ("deepcr", "mm_deepcr")
    # an OB already simulated (truth and master bias present): main() only walks the routes
    (tmp_path / "data").mkdir()
    (tmp_path / "truth.npz").write_bytes(b"")
    (tmp_path / "data" / "master_bias.fits").write_bytes(b"")
    caplog.set_level("WARNING", logger="bench_megara")
    assert bench.main([str(tmp_path), "--routes", *sorted(bench.NEEDS_DEEPCR)]) == 0
    assert "it needs deepCR (give --deepcr-python)" in caplog.text
    assert not list(tmp_path.glob("*.yaml")) and not (tmp_path / "bench_megara.json").exists()
