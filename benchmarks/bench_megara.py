"""Side by side inside a MEGARA reduction: megaradrp's own MegaraCrDetection vs ours.

One simulated MEGARA OB (megaradrp's own detector simulator, full 4212 x 4196
raw frames, two amplifiers) with known cosmic rays: single hits (1-4 pixel
blobs and tracks of 3-20 pixels at random angles) in every exposure and the
same footprints hit in 2 of the 3 exposures (coincidences).  Both routes get
the same raw frames and megaradrp's master bias (MegaraBiasImage on 3 raw
biases); each runs as ``numina run`` in its own process (wall time and peak
RSS of that process).  Both mask files then go through megaradrp's own
combination (``basic_processing_with_combination_frames_crmasks``, what
``MegaraLcbImage`` calls) with ``meancr2`` and ``mediancr``, and the results
are compared with the noise-free truth:

* residual CR pixels: pixels hit by a cosmic ray in any exposure whose
  combined value exceeds the truth by more than 5 sigma of that combination
  (sigma from the truth, the read noise and N = 3);
* false flags: flagged pixels farther than 1 pixel (the dilation) from any
  hit pixel (MEDIANCR; CRMASK1..3 against the hits of their own exposure).

Routes (each its own ``numina run``, capped by ``--cap``, killed after it):
ours with its defaults, ours with ``mm_variation_model: true``, and megaradrp's
own recipe with each crmethod of numina 0.40 that can run here (``mm_lacosmic``,
``lacosmic``, and ``mm_deepcr`` with ``--deepcr-python``; see :data:`ROUTES`), with
megaradrp's defaults except :data:`MEGARADRP_UNATTENDED` and the keys of the route
(the routes that complete on the full-size OB: ``megaradrp_mm_lacosmic_sigclip100``,
``megaradrp_mm_lacosmic_sigclip50``, ``megaradrp_mm_deepcr``; docs/megara.md says
why megaradrp's defaults do not).  CPU time and peak RSS are those of the
``numina run`` process and its children (``wait4``); the load average is
recorded before and after each route.  Results go to ``<workdir>/bench_megara.json``
(merged with the routes of earlier runs in the same workdir) and ``--json``.

Heavy: ``python benchmarks/bench_megara.py [workdir] --lock /tmp/heavy.lock`` takes
the lock around each route (up to ``--cap`` each) instead of around the whole
run.  ``--quick`` checks the harness end to end in a few minutes (fewer
events, cheap settings; same full-size frames: megaradrp's profile only
knows the unbinned raw geometry).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import _megarasim as sim  # noqa: E402

log = logging.getLogger("bench_megara")

EXPTIME = 600.0
N_SINGLE = 1500  # events per exposure
N_PAIRS = 300  # events hit in 2 of the 3 exposures
RON_E = sim.RON_ADU * max(sim.GAINS)
#: what megaradrp's route must change in its default requirement block to run unattended here:
#: the master bias, no interactive prompt, no figures (with figures on, megaradrp's recipe stopped with
#: "ValueError: boundaryfit must be provided for mediancr plots" and spends its time in up to 1000 PDFs)
MEGARADRP_UNATTENDED = {"master_bias": "master_bias.fits", "interactive": False, "maxplots": 0}
#: ours: our defaults (mm_lacosmic, 4 L.A.Cosmic iterations), read noise in electrons as megaradrp's
OURS_REQUIREMENTS = {"master_bias": "master_bias.fits", "rnoise": 3.4, "maxplots": 0}
#: route name -> (instrument of the OB, requirements).  megaradrp's crmethods in numina 0.40: lacosmic,
#: mm_lacosmic, pycosmic, mm_pycosmic, deepcr, mm_deepcr, conn, mm_conn (no mmcosmic); its default
#: mm_pycosmic and the pycosmic/deepcr/conn ones need packages not installable here (PyCosmic; deepCR,
#: cosmic-conn with torch and downloaded models), so its routes are mm_lacosmic and lacosmic, each with
#: its own defaults for everything else
ROUTES = {
    "ours": ("MEGARACR", OURS_REQUIREMENTS),
    "ours_variation": ("MEGARACR", {**OURS_REQUIREMENTS, "mm_variation_model": True}),
    # megaradrp's default crmethod, with our PyCosmic (core/pycosmic.py)
    "ours_mm_pycosmic": ("MEGARACR", {**OURS_REQUIREMENTS, "crmethod": "mm_pycosmic"}),
    # the Median-Minimum diagram alone: the method of megaradrp's routes that complete (their L.A.Cosmic
    # thresholds raised until it finds next to nothing, see below)
    "ours_mmcosmic": ("MEGARACR", {**OURS_REQUIREMENTS, "crmethod": "mmcosmic"}),
    "megaradrp_mm_lacosmic": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "mm_lacosmic"}),
    "megaradrp_lacosmic": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "lacosmic"}),
    # megaradrp's defaults run L.A.Cosmic twice (la_sigclip [5, 3]) and merge the two masks with
    # teareduce's merge_peak_tail_masks, which scans the whole frame once per detected group: hours on a
    # full frame with thousands of cosmic rays.  One pass (both values 5) avoids the merge but not the
    # MEDIANCR figure below (stopped at 22 GB).
    "megaradrp_mm_lacosmic_1pass": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "mm_lacosmic",
                                               "la_sigclip": [5.0, 5.0]}),
    # numina draws its MEDIANCR diagnostic figure whatever maxplots/interactive/debug say, with one
    # matplotlib text label per pixel L.A.Cosmic flags in the median (~13 kB and ~2 ms each): at 5 sigma
    # L.A.Cosmic flags the sharp fibre peaks of this scene (8 % of the pixels) and the figure needs > 20 GB.
    # One pass with its threshold raised until the median's flagged fraction (printed in megaradrp's log)
    # falls below 1 % (50) or to nothing (100; L.A.Cosmic then finds no cosmic ray either and the
    # Median-Minimum step does all the work) is what completes (docs/megara.md)
    "megaradrp_mm_lacosmic_sigclip50": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "mm_lacosmic",
                                                   "la_sigclip": [50.0, 50.0]}),
    "megaradrp_mm_lacosmic_sigclip100": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "mm_lacosmic",
                                                    "la_sigclip": [100.0, 100.0]}),
    # deepCR (CPU torch) + Median-Minimum; megaradrp's default dc_mask 'ACS_WFC' is no deepCR model name
    # (deepCR 0.3.1 ships 'ACS-WFC', 'decam', 'WFC3-UVIS'): needs --deepcr-python
    "megaradrp_mm_deepcr": ("MEGARA", {**MEGARADRP_UNATTENDED, "crmethod": "mm_deepcr", "dc_mask": "ACS-WFC"}),
}
#: routes whose recipe imports deepCR (torch): run with the numina of --deepcr-python's environment
NEEDS_DEEPCR = {"megaradrp_mm_deepcr"}
#: --quick: a cheap run of the whole harness (the geometry cannot shrink: megaradrp's profile has fixed
#: trim regions for unbinned 4212 x 4196 frames), fewer events and cheap settings for every route
QUICK_EVENTS = (200, 40)
QUICK_SETTINGS = {"MEGARACR": {"crmethod": "mmcosmic", "mm_nsimulations": 2},
                  "MEGARA": {"la_niter": 1, "mm_nsimulations": 2}}


def _footprint(rng) -> np.ndarray:
    """Pixel offsets (dy, dx) of one cosmic ray: a small blob or a track."""
    if rng.random() < 0.5:
        size = int(rng.integers(1, 5))
        pts = {(0, 0)}
        while len(pts) < size:
            y, x = list(pts)[int(rng.integers(len(pts)))]
            pts.add((y + int(rng.integers(-1, 2)), x + int(rng.integers(-1, 2))))
        return np.array(sorted(pts))
    length = rng.uniform(3, 20)
    angle = rng.uniform(0, np.pi)
    t = np.arange(0, length, 0.5)
    pts = np.unique(np.round(np.c_[t * np.sin(angle), t * np.cos(angle)]).astype(int), axis=0)
    return pts


def make_hits(rng, n_single: int = N_SINGLE, n_pairs: int = N_PAIRS) -> np.ndarray:
    """Cosmic-ray electrons of the 3 exposures (4112 x 4096 each)."""
    ny, nx = sim.SHAPE
    hits = np.zeros((3, ny, nx), np.float32)

    def put(k, pts, y0, x0):
        y, x = pts[:, 0] + y0, pts[:, 1] + x0
        ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        hits[k, y[ok], x[ok]] += rng.uniform(300, 8000, ok.sum()).astype(np.float32)

    for k in range(3):
        for _ in range(n_single):
            put(k, _footprint(rng), int(rng.integers(ny)), int(rng.integers(nx)))
    for _ in range(n_pairs):
        pts, y0, x0 = _footprint(rng), int(rng.integers(ny)), int(rng.integers(nx))
        for k in rng.choice(3, 2, replace=False):
            put(int(k), pts, y0, x0)
    return hits


def simulate(work: Path, n_single: int = N_SINGLE, n_pairs: int = N_PAIRS) -> None:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    rate = sim.scene()
    hits = make_hits(rng, n_single, n_pairs)
    sim.write_bias_frames(data, 3)
    sim.write_science_frames(data, rate, list(hits), EXPTIME)
    np.savez_compressed(work / "truth.npz", truth=sim.trimmed_view(rate * EXPTIME),
                        hits=np.stack([sim.trimmed_view(h) for h in hits]))


def _ob(work: Path, name: str, body: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def timed_numina(work: Path, ob: Path, timeout: float, python: str | None = None) -> dict:
    """``numina run`` in its own process: exit status, wall time, peak RSS (MB).

    ``python``: the interpreter of another environment whose ``numina`` runs the OB (default: this one).
    """
    exe = Path(python or sys.executable).with_name("numina")
    log = open(work / f"{ob.stem}.log", "w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe), "run", ob.name, "--datadir", "data"], cwd=work, stdout=log,
                            stderr=subprocess.STDOUT)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            status = -9
            break
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    log.close()
    code = os.waitstatus_to_exitcode(status) if status != -9 else -9
    return {"exit": code, "wall_s": round(wall, 1), "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def combine(work: Path, masks_path: Path, method: str) -> np.ndarray:
    """megaradrp's combination of the raw frames with these masks (as MegaraLcbImage does)."""
    names = ["science_1.fits", "science_2.fits", "science_3.fits"]
    return np.asarray(sim.megaradrp_combination(work / "data", names, masks_path, method).data, dtype=np.float64)


def evaluate(work: Path, masks_path: Path) -> dict:
    with np.load(work / "truth.npz") as z:
        truth, hits = z["truth"], z["hits"] > 0
    any_hit = hits.any(axis=0)
    near_any = ndimage.binary_dilation(any_hit, np.ones((3, 3), bool))
    out = {}
    sigma1 = np.sqrt(np.maximum(truth, 0) + RON_E ** 2)
    for method, factor in (("meancr2", 1.0), ("mediancr", 1.2533)):
        excess = combine(work, masks_path, method) - truth
        residual = any_hit & (excess > 5 * factor * sigma1 / np.sqrt(3))
        out[f"residual_{method}"] = int(residual.sum())
    with fits.open(masks_path) as hdul:
        mediancr = hdul["MEDIANCR"].data.astype(bool)
        out["mediancr_flagged"] = int(mediancr.sum())
        out["false_mediancr"] = int((mediancr & ~near_any).sum())
        false_k = 0
        for k in range(3):
            m = hdul[f"CRMASK{k + 1}"].data.astype(bool)
            false_k += int((m & ~ndimage.binary_dilation(hits[k], np.ones((3, 3), bool))).sum())
        out["false_crmaskk"] = false_k
    coinc = (hits.sum(axis=0) >= 2)
    out["coincident_pixels"] = int(coinc.sum())
    out["cr_pixels"] = int(any_hit.sum())
    return out


def _load() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


@contextlib.contextmanager
def _locked(path: str | None):
    """Hold ``path`` (flock, as ``flock /tmp/heavy.lock``) while one route runs; nothing if None."""
    if not path:
        yield 0.0
        return
    t0 = time.perf_counter()
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield time.perf_counter() - t0
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_route(work: Path, name: str, instrument: str, requirements: dict, cap: float,
              python: str | None = None) -> dict:
    """One route: its OB through ``numina run`` (capped), then its masks through megaradrp's combination."""
    frames = ["science_1.fits", "science_2.fits", "science_3.fits"]
    ob = _ob(work, name, {"id": name, "instrument": instrument, "mode": "MegaraCrDetection",
                          "frames": frames, "requirements": requirements})
    shutil.rmtree(work / f"obsid{name}_results", ignore_errors=True)
    shutil.rmtree(work / f"obsid{name}_work", ignore_errors=True)
    result = {"instrument": instrument, "requirements": requirements, "cap_s": cap, "load_before": _load()}
    if python:
        result["python"] = python
    result.update(timed_numina(work, ob, cap, python))
    result["load_after"] = _load()
    log.info("%s: %s", name, result)
    masks = work / f"obsid{name}_results" / "crmasks.fits"
    if result["exit"] == 0 and masks.exists():
        try:
            result.update(evaluate(work, masks))
        except Exception as exc:  # keep the timings of a long run whatever the evaluation does
            log.exception("evaluation of %s failed", name)
            result["evaluation_error"] = f"{type(exc).__name__}: {exc}"
    return result


KEYS = ["exit", "wall_s", "cpu_s", "peak_rss_mb", "residual_meancr2", "residual_mediancr", "mediancr_flagged",
        "false_mediancr", "false_crmaskk", "cr_pixels", "coincident_pixels"]


def table(runs: dict) -> str:
    """The results as a Markdown table."""
    lines = ["| route | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for name, r in runs.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "-")) for k in KEYS) + " |")
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workdir", nargs="?", default="/tmp/bench_megara")
    parser.add_argument("--routes", nargs="+", choices=list(ROUTES), default=list(ROUTES),
                        help="routes to run, in this order (default: all)")
    parser.add_argument("--cap", type=float, default=2700.0,
                        help="wall-time cap of each numina run in seconds (the run is killed after it)")
    parser.add_argument("--quick", action="store_true",
                        help="check the harness end to end: fewer events, cheap settings for every route")
    parser.add_argument("--lock", default=None,
                        help="flock this file around each route (e.g. /tmp/heavy.lock), not around the whole run")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--deepcr-python", default=None,
                        help="python of an environment with deepCR and CPU torch (plus this package, numina, "
                             "megaradrp) for the routes that need deepCR; without it they are skipped")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse(argv)
    work = Path(args.workdir).resolve()
    events = QUICK_EVENTS if args.quick else (N_SINGLE, N_PAIRS)
    out = work / "bench_megara.json"
    runs = json.loads(out.read_text()) if out.exists() else {}
    with _locked(args.lock) as waited:
        t0 = time.perf_counter()
        if not (work / "truth.npz").exists():
            simulate(work, *events)
        log.info("simulated OB in %.0f s (waited %.0f s for the lock)", time.perf_counter() - t0, waited)
        if not (work / "data" / "master_bias.fits").exists():
            bias = _ob(work, "bias", {"id": "bias", "instrument": "MEGARA", "mode": "MegaraBiasImage",
                                      "frames": ["bias_1.fits", "bias_2.fits", "bias_3.fits"]})
            log.info("MegaraBiasImage: %s", timed_numina(work, bias, 600))
            shutil.copy(work / "obsidbias_results" / "master_bias.fits", work / "data" / "master_bias.fits")
    for name in args.routes:
        instrument, requirements = ROUTES[name]
        python = args.deepcr_python if name in NEEDS_DEEPCR else None
        if name in NEEDS_DEEPCR and not python:
            log.warning("route %s skipped: it needs deepCR (give --deepcr-python)", name)
            continue
        if args.quick:
            requirements = {**requirements, **QUICK_SETTINGS[instrument]}
        with _locked(args.lock) as waited:
            log.info("route %s (waited %.0f s for the lock)", name, waited)
            runs[name] = run_route(work, name, instrument, requirements, args.cap, python)
        runs[name]["quick"] = args.quick
        out.write_text(json.dumps(runs, indent=1))
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1) + "\n")
        log.info("%s: %s", name, runs[name])
    print(table({k: runs[k] for k in args.routes if k in runs}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
