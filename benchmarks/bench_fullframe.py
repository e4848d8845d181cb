"""Full-frame speed and memory of megara-crdetect against the reference, same run.

Simulates MEGARA-like frames (float32, 1 % of the pixels hit per exposure plus coincident
events), then runs, as separate processes on the same files, our CLI and the reference
(``python -m numina.array.crmasks``) with the same parameters (interactive off; the reference
with ``maxplots: 0``), and prints wall time, peak RSS and the ratios ours / reference::

    python benchmarks/bench_fullframe.py [--sizes full quarter] [--methods mm_lacosmic lacosmic mmcosmic]
        [--figures] [--nexp 3 5 7 10] [--where] [--no-reference] [--workdir DIR]

* ``--figures``: ours also with the figures of a default run (``maxplots: -1``, i.e. the
  first 100 pages), beside ``--no-figures``; the reference always draws its PNG figures.
* ``--nexp``: ours only, default parameters without figures, on N full frames: wall and peak
  RSS for every N and their growth per exposure.
* ``--where`` (with ``--figures``): "where the time goes" of our default run with figures
  (the detection steps logged at DEBUG level, start-up and reading, figures, writing) and the
  floors they compare with: one pass over the frames' memory and the random draws of the
  simulations.

Run full frames only under ``flock /tmp/heavy.lock`` on a shared machine (the reference
needs ~8 GB).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from megara_crdetect.simulate import simulate_exposures

sys.path.insert(0, str(Path(__file__).parent))
from common import run_timed, write_inputs  # noqa: E402

SIZES = {"full": (4112, 4096), "quarter": (2056, 2048)}
REFERENCE_METHODS = {"mm_lacosmic", "lacosmic"}


def _simulate(shape, n: int, seed: int):
    n_coinc = int(150 * shape[0] * shape[1] / (1596 * 2016))
    return simulate_exposures(shape, n, seed=seed, n_coincident=n_coinc, cr_fraction=0.01)


def _ours(params: Path, out: Path, *, figures: bool, log_level: str = "WARNING") -> list[str]:
    cmd = [sys.executable, "-m", "megara_crdetect", str(params), "--output_dir", str(out), "--log-level", log_level]
    return cmd if figures else cmd + ["--no-figures"]


def _show(label: str, info: dict) -> None:
    print(f"  {label:34s} status {info['status']}  wall {info['wall_s']:8.1f} s  "
          f"peak RSS {info['peak_rss_mb'] or float('nan'):8.0f} MB", flush=True)


def run_size(name: str, workdir: Path, methods, *, reference: bool, figures: bool, seed: int) -> dict:
    """One frame size: every method, ours (with/without figures) and the reference, same files."""
    shape = SIZES[name]
    work = workdir / name
    work.mkdir(parents=True, exist_ok=True)
    sim = _simulate(shape, 3, seed)
    print(f"\n{name} frame {shape[1]} x {shape[0]} x 3 (NAXIS1 x NAXIS2 x N)", flush=True)
    res = {}
    for method in methods:
        ours, ref = write_inputs(sim, work, {"crmethod": method}, tag=f"_{method}",
                                 ours_extra={"maxplots": -1} if figures else None)
        runs = {"ours --no-figures": _ours(ours, work / f"ours_{method}", figures=False)}
        if figures:
            runs["ours with figures"] = _ours(ours, work / f"oursfig_{method}", figures=True, log_level="DEBUG")
        if reference and method in REFERENCE_METHODS:
            runs["reference"] = [sys.executable, "-m", "numina.array.crmasks", str(ref), "--output_dir",
                                 str(work / f"ref_{method}"), "--log-level", "WARNING"]
        for who, cmd in runs.items():
            info = run_timed(cmd, work / f"{who.replace(' ', '_')}_{method}.log", work)
            res[(method, who)] = info
            _show(f"{method} {who}", info)
    print(f"  ratios ours / reference ({name} frame, same run)")
    for method in methods:
        r = res.get((method, "reference"))
        for who in ("ours with figures", "ours --no-figures"):
            o = res.get((method, who))
            if o and r and r["status"] == 0 and o["status"] == 0:
                print(f"    {method:12s} {who:18s} wall {o['wall_s'] / r['wall_s']:.3f}   peak RSS "
                      f"{o['peak_rss_mb'] / r['peak_rss_mb']:.3f}")
    return res


def growth_in_n(workdir: Path, counts, *, seed: int, size: str = "full") -> None:
    """Ours, default parameters, no figures, on N frames: wall and peak RSS against N."""
    shape = SIZES[size]
    rows = []
    for n in counts:
        work = workdir / f"nexp{n}_{size}"
        work.mkdir(parents=True, exist_ok=True)
        sim = _simulate(shape, n, seed)
        ours, _ = write_inputs(sim, work, {}, tag="_n")
        del sim
        info = run_timed(_ours(ours, work / "ours", figures=False), work / "ours.log", work)
        _show(f"N = {n}", info)
        rows.append((n, info))
    print(f"\ngrowth with the number of exposures ({size} frames {shape[1]} x {shape[0]}, ours, default parameters, "
          "no figures)")
    print(f"  {'N':>3s} {'wall [s]':>9s} {'per exposure':>13s} {'peak RSS [MB]':>14s} {'per exposure':>13s}")
    for n, info in rows:
        print(f"  {n:3d} {info['wall_s']:9.1f} {info['wall_s'] / n:13.1f} {info['peak_rss_mb']:14.0f} "
              f"{info['peak_rss_mb'] / n:13.0f}")
    if len(rows) > 1:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"  from N = {n0} to {n1} (x{n1 / n0:.2f}): wall x{b['wall_s'] / a['wall_s']:.2f}, "
              f"peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f}")


_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d)")


def where_time_goes(log: Path, shape, n: int = 3, nsim: int = 10) -> None:
    """Steps of our run (its DEBUG log) and the floors they compare with."""
    text = log.read_text(errors="replace")
    steps = re.search(r"detection steps \[s\]: (.*)", text)
    stamps = [(m, line) for line in text.splitlines() if (m := _STAMP.match(line))]
    print(f"\nwhere the time goes ({shape[1]} x {shape[0]} x {n}, default parameters, figures on; {log.name})")
    if steps:
        for item in steps.group(1).split(", "):
            print(f"  detection: {item}")
    if stamps:
        def sec(m):
            return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + int(m.group(3))
        t0 = sec(stamps[0][0])
        for m, line in stamps:
            if any(k in line for k in ("megara-crdetect", "L.A.Cosmic on", "MEDIANCR:", "figures", "wrote")):
                print(f"  t = {sec(m) - t0:5d} s  {line[9:120]}")
    stack = np.random.default_rng(1).random((n,) + tuple(shape), dtype=np.float32)
    t = time.perf_counter()
    total = float(stack.sum(dtype=np.float64))
    one_pass = time.perf_counter() - t
    rng = np.random.default_rng(0)
    block = np.empty(shape, dtype=np.float32)
    t = time.perf_counter()
    for _ in range(nsim * n):
        rng.standard_normal(shape, dtype=np.float32, out=block)
    draws = time.perf_counter() - t
    print(f"  floor: one pass over the frames' memory ({stack.nbytes / 1e6:.0f} MB, a sum): {one_pass:.2f} s"
          f" (sum {total:.3g})")
    print(f"  floor: the simulations' random draws ({nsim} sets x {n} exposures of standard normal "
          f"float32 deviates): {draws:.2f} s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["full"], choices=list(SIZES))
    p.add_argument("--quick", action="store_true", help="same as --sizes quarter")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--methods", nargs="+", default=["mm_lacosmic"])
    p.add_argument("--figures", action="store_true", help="ours also with figures")
    p.add_argument("--nexp", nargs="*", type=int, default=[], help="growth table for these numbers of exposures")
    p.add_argument("--nexp-size", default="full", choices=list(SIZES), help="frame size of the --nexp runs")
    p.add_argument("--where", action="store_true", help="where the time goes (with --figures)")
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="crbench-"))).resolve()
    print(f"workdir {workdir}")
    for name in (["quarter"] if args.quick else args.sizes):
        run_size(name, workdir, args.methods, reference=not args.no_reference, figures=args.figures,
                 seed=args.seed)
        log = workdir / name / "ours_with_figures_mm_lacosmic.log"
        if args.where and log.exists():
            where_time_goes(log, SIZES[name])
    if args.nexp:
        growth_in_n(workdir, args.nexp, seed=args.seed, size=args.nexp_size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
