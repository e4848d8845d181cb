"""benchmarks/seeds.py: rate bars judged over seeds; quality.py reads what our log expects from noise."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import quality  # noqa: E402
import seeds  # noqa: E402

from megara_crdetect.core import pipeline  # noqa: E402

NPIX = 1596 * 2016


def _write(tmp_path: Path, counts: list[int]) -> list[Path]:
    files = []
    for seed, count in enumerate(counts, start=1):
        ours = {"status": 0, "far_false_flags": count, "far_false_fraction": count / NPIX, "recall_harmful": 0.99}
        f = tmp_path / f"s{seed}.json"
        f.write_text(json.dumps({"seed": seed, "results": {"ours": ours, "ref": {"status": 137}}}))
        files.append(f)
    return files


def test_rate_bar_on_the_mean_passes_although_single_seeds_exceed_it(tmp_path):
    counts = [9, 0, 36, 18, 9, 27, 9, 45, 18, 9]  # mean 18 px = 5.6e-6 per pixel; two seeds above 32 px
    lines = seeds.summary(seeds.collect(_write(tmp_path, counts)))
    verdict = [line for line in lines if "far_false_fraction" in line]
    assert len(verdict) == 1 and verdict[0].startswith("  [PASS]")
    assert "single seeds above the bar: 2" in verdict[0]
    assert not any(line.startswith("ref") for line in lines)  # failed runs are left out


def test_rate_bar_fails_when_the_upper_bound_is_above_it(tmp_path):
    counts = [27, 36, 18, 45, 27, 36]  # mean 31.5 px: below 32, but not with 95 % confidence
    verdict = [line for line in seeds.summary(seeds.collect(_write(tmp_path, counts))) if "[" in line]
    assert verdict[0].startswith("  [FAIL]")


def test_expected_noise_flags_read_from_our_log_format(tmp_path):
    assert "expected false MM detections from noise alone:" in inspect.getsource(pipeline._mm_stage)
    log = tmp_path / "ours.log"
    log.write_text("INFO reading\nINFO expected false MM detections from noise alone: median 2.55, "
                   "mean 1.20, exposure1 0.80\nINFO done\n")
    assert quality.expected_noise_flags(log) == {"expected_false_median": 2.55, "expected_false_mean": 1.2,
                                                 "expected_false_exposure1": 0.8}
    log.write_text("no such line\n")
    assert quality.expected_noise_flags(log) == {}
