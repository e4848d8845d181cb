"""Full-frame speed and memory of megara-crdetect against the reference, same run.

Simulates three full MEGARA frames (4112 x 4096 float32, 1% of the pixels hit per
exposure plus coincident events), then runs, as separate processes on the same
files: our CLI and the reference (``python -m numina.array.crmasks``) with the
same parameters (interactive off, ``maxplots: 0``), for ``crmethod``
``mm_lacosmic`` (default parameters), ``lacosmic`` and ``mmcosmic`` (ours only:
numina 0.40 no longer has ``mmcosmic``).  Prints wall time, peak RSS and the
ratios ours/reference, and how our run grows from a quarter frame to a full one.

Usage::

    python benchmarks/bench_fullframe.py [--quick] [--workdir DIR] [--no-reference] [--methods ...]

``--quick`` uses a quarter frame (2056 x 2048) instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from megara_crdetect.simulate import simulate_exposures

sys.path.insert(0, str(Path(__file__).parent))
from common import run_timed, write_inputs  # noqa: E402

FULL = (4112, 4096)
QUARTER = (2056, 2048)
REFERENCE_METHODS = {"mm_lacosmic", "lacosmic"}


def run_pair(shape, workdir: Path, methods, *, reference: bool, seed: int) -> dict:
    """Simulate one set and time every method for both programs."""
    workdir.mkdir(parents=True, exist_ok=True)
    # seeded: the same set every time (its files are written only once per workdir, the parameter
    # files need its gain, readout noise and bias)
    n_coinc = int(150 * shape[0] * shape[1] / (1596 * 2016))
    sim = simulate_exposures(shape, 3, seed=seed, n_coincident=n_coinc, cr_fraction=0.01)
    results = {}
    for method in methods:
        ours, ref = write_inputs(sim, workdir, {"crmethod": method}, tag=f"_{method}")
        runs = {"ours": [sys.executable, "-m", "megara_crdetect", str(ours), "--output_dir",
                         str(workdir / f"ours_{method}"), "--no-figures", "--log-level", "WARNING"]}
        if reference and method in REFERENCE_METHODS:
            runs["reference"] = [sys.executable, "-m", "numina.array.crmasks", str(ref), "--output_dir",
                                 str(workdir / f"ref_{method}"), "--log-level", "WARNING"]
        for who, cmd in runs.items():
            info = run_timed(cmd, workdir / f"{who}_{method}.log", workdir)
            results[(method, who)] = info
            print(f"{method:12s} {who:10s} status {info['status']}  wall {info['wall_s']:8.1f} s  "
                  f"peak RSS {info['peak_rss_mb'] or float('nan'):8.0f} MB", flush=True)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="quarter frame instead of a full frame")
    p.add_argument("--workdir", type=Path)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--methods", nargs="+", default=["mm_lacosmic", "mmcosmic", "lacosmic"])
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--scaling", action="store_true", help="also time ours on a quarter frame (growth table)")
    args = p.parse_args(argv)
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="crbench-"))).resolve()
    shape = QUARTER if args.quick else FULL
    print(f"frame {shape[1]} x {shape[0]} (NAXIS1 x NAXIS2), workdir {workdir}")
    res = run_pair(shape, workdir / f"{shape[0]}x{shape[1]}", args.methods, reference=not args.no_reference,
                   seed=args.seed)
    print("\nratios ours / reference (same machine, same run)")
    for method in args.methods:
        o, r = res.get((method, "ours")), res.get((method, "reference"))
        if o and r and r["status"] == 0 and o["status"] == 0:
            print(f"  {method:12s} wall {o['wall_s'] / r['wall_s']:.3f}   peak RSS "
                  f"{o['peak_rss_mb'] / r['peak_rss_mb']:.3f}")
    if args.scaling and shape == FULL:
        small = run_pair(QUARTER, workdir / "quarter", args.methods, reference=False, seed=args.seed)
        print("\ngrowth of our run from a quarter frame (4.2 Mpx) to a full frame (16.8 Mpx)")
        print(f"  {'method':12s} {'wall 1/4':>9s} {'wall 1/1':>9s} {'x':>5s} {'RSS 1/4':>8s} {'RSS 1/1':>8s} {'x':>5s}")
        for method in args.methods:
            a, b = small[(method, "ours")], res[(method, "ours")]
            print(f"  {method:12s} {a['wall_s']:9.1f} {b['wall_s']:9.1f} {b['wall_s'] / a['wall_s']:5.2f} "
                  f"{a['peak_rss_mb']:8.0f} {b['peak_rss_mb']:8.0f} {b['peak_rss_mb'] / a['peak_rss_mb']:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
