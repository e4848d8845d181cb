"""Rates over several seeds: one ``benchmarks/quality.py`` set, run (or read) for many seeds, summarised.

A bar such as "far false flags <= 1e-5 of the pixels" is a rate. On a
1596 x 2016 frame it allows 32 pixels, and with dilation 1 each false MM
detection from noise becomes 9 of them; the MM boundary itself expects a few
such detections by design (one simulated pixel per diagram column over
``mm_nsimulations`` sets; our run logs the count). One seed's count is then a
Poisson number of 9-pixel groups and cannot settle the bar: the mean over seeds
can, with its standard error. This script prints every seed, the mean and
its standard error, and judges the bars of rates on the mean's one-sided 95 %
upper bound (mean + 1.645 standard errors).

Usage::

    python benchmarks/seeds.py --set skylines --seeds 1 2 3 ... [--workdir DIR] [--reference]
    python benchmarks/seeds.py --json-files DIR/*.json     # summarise runs already made
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

FIGURES = ["far_false_flags", "expected_false_median", "recall_harmful", "residuals_mediancr", "residuals_meancr2",
           "crmask_coverage_coinc2_min"]
RATE_BARS = {"far_false_fraction": 1e-5}


def run_seeds(name: str, seeds: list[int], workdir: Path, reference: bool) -> list[Path]:
    """One quality.py process per seed (sequential); returns the JSON files written."""
    files = []
    for seed in seeds:
        out = workdir / f"{name}_{seed}.json"
        if not out.exists():
            cmd = [sys.executable, str(Path(__file__).with_name("quality.py")), "--set", name, "--seed", str(seed),
                   "--json", str(out), "--workdir", str(workdir / f"{name}_{seed}")]
            if not reference:
                cmd.append("--no-reference")
            with (workdir / f"{name}_{seed}.txt").open("w") as fh:
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=False)
        if out.exists():
            files.append(out)
    return files


def collect(files: list[Path]) -> dict[str, dict[str, list[float]]]:
    """Per program, its completed seeds and every figure's value per seed (NaN where absent)."""
    table = {}
    for doc in sorted((json.loads(f.read_text()) for f in files), key=lambda doc: doc["seed"]):
        for who, res in doc["results"].items():
            if res.get("status") != 0:
                continue
            cols = table.setdefault(who, {})
            cols.setdefault("seed", []).append(doc["seed"])
            for key in FIGURES + list(RATE_BARS):
                cols.setdefault(key, []).append(float(res.get(key, np.nan)))
    return table


def summary(table: dict) -> list[str]:
    """Printable lines: per seed, mean +- standard error, and the rate bars on the mean."""
    lines = []
    for who, cols in table.items():
        lines.append(f"{who}: {len(cols['far_false_flags'])} seeds")
        lines.append(f"{'seed':>8s}" + "".join(f"{k[:18]:>20s}" for k in FIGURES))
        for i, seed in enumerate(cols["seed"]):  # the seeds this program completed
            lines.append(f"{seed:>8d}" + "".join(f"{cols[k][i]:>20.4g}" for k in FIGURES))
        stats = {k: (np.nanmean(v), np.nanstd(v, ddof=1) / np.sqrt(np.sum(np.isfinite(v))))
                 for k, v in cols.items() if k != "seed" and np.isfinite(v).sum() > 1}
        lines.append(f"{'mean':>8s}" + "".join(f"{stats[k][0]:>20.4g}" if k in stats else f"{'-':>20s}"
                                               for k in FIGURES))
        lines.append(f"{'s.e.':>8s}" + "".join(f"{stats[k][1]:>20.2g}" if k in stats else f"{'-':>20s}"
                                               for k in FIGURES))
        for key, bar in RATE_BARS.items():
            if key in stats:
                mean, err = stats[key]
                upper = mean + 1.645 * err  # one-sided 95 % upper bound of the rate
                verdict = "PASS" if upper <= bar else "FAIL"
                lines.append(f"  [{verdict}] {key} <= {bar:g} (mean + 1.645 s.e.): {mean:.2e} +- {err:.1e}, "
                             f"upper {upper:.2e} (single seeds above the bar: "
                             f"{int(np.sum(np.asarray(cols[key]) > bar))})")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", default="skylines")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(1, 21)))
    p.add_argument("--workdir", type=Path, default=Path("seeds-work"))
    p.add_argument("--reference", action="store_true", help="numina 0.40 too, in the same runs")
    p.add_argument("--json-files", type=Path, nargs="+", help="summarise these quality.py JSON files instead")
    args = p.parse_args(argv)
    if args.json_files:
        files = args.json_files
    else:
        args.workdir.mkdir(parents=True, exist_ok=True)
        files = run_seeds(args.set, args.seeds, args.workdir, args.reference)
    if not files:
        print("error: no results to summarise")
        return 2
    print("\n".join(summary(collect(files))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
