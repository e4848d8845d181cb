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

Run it alone (it is heavy): ``flock /tmp/heavy.lock python benchmarks/bench_megara.py [workdir]``.
"""

from __future__ import annotations

import json
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

EXPTIME = 600.0
N_SINGLE = 1500  # events per exposure
N_PAIRS = 300  # events hit in 2 of the 3 exposures
RON_E = sim.RON_ADU * max(sim.GAINS)
#: megaradrp's route: its default requirement block, except what has to change here (see the report)
MEGARADRP_REQUIREMENTS = {"master_bias": "master_bias.fits", "crmethod": "mm_lacosmic", "interactive": False,
                          "la_niter": 1, "maxplots": 0}
#: ours: our defaults (mm_lacosmic, 4 L.A.Cosmic iterations), read noise in electrons as megaradrp's
OURS_REQUIREMENTS = {"master_bias": "master_bias.fits", "rnoise": 3.4, "maxplots": 0}


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


def make_hits(rng) -> np.ndarray:
    """Cosmic-ray electrons of the 3 exposures (4112 x 4096 each)."""
    ny, nx = sim.SHAPE
    hits = np.zeros((3, ny, nx), np.float32)

    def put(k, pts, y0, x0):
        y, x = pts[:, 0] + y0, pts[:, 1] + x0
        ok = (y >= 0) & (y < ny) & (x >= 0) & (x < nx)
        hits[k, y[ok], x[ok]] += rng.uniform(300, 8000, ok.sum()).astype(np.float32)

    for k in range(3):
        for _ in range(N_SINGLE):
            put(k, _footprint(rng), int(rng.integers(ny)), int(rng.integers(nx)))
    for _ in range(N_PAIRS):
        pts, y0, x0 = _footprint(rng), int(rng.integers(ny)), int(rng.integers(nx))
        for k in rng.choice(3, 2, replace=False):
            put(int(k), pts, y0, x0)
    return hits


def simulate(work: Path) -> None:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2026)
    rate = sim.scene()
    hits = make_hits(rng)
    sim.write_bias_frames(data, 3)
    sim.write_science_frames(data, rate, list(hits), EXPTIME)
    np.savez_compressed(work / "truth.npz", truth=sim.trimmed_view(rate * EXPTIME),
                        hits=np.stack([sim.trimmed_view(h) for h in hits]))


def _ob(work: Path, name: str, body: dict) -> Path:
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def timed_numina(work: Path, ob: Path, timeout: float) -> dict:
    """``numina run`` in its own process: exit status, wall time, peak RSS (MB)."""
    exe = Path(sys.executable).with_name("numina")
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
    from megaradrp.processing.combine import basic_processing_with_combination_frames_crmasks
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe
    from megaradrp.recipes.scientific.lcb import LCBImageRecipe
    from numina.array import combine as ncombine
    from numina.core import ObservationResult
    from numina.types.dataframe import DataFrame

    from megara_crdetect.megara import megara_profile

    data = work / "data"
    names = ["science_1.fits", "science_2.fits", "science_3.fits"]
    frames = [DataFrame(filename=str(data / n)) for n in names]
    with fits.open(data / names[0]) as first:
        ins = megara_profile(first, names[0])
    ob = ObservationResult(instrument="MEGARA", mode="MegaraLcbImage")
    ob.frames, ob.configuration = frames, ins
    lcb = LCBImageRecipe()
    calibs = CRMasksRecipe.create_input(obresult=ob, master_bias=DataFrame(filename=str(data / "master_bias.fits")))
    flows = lcb.init_filters_generic(calibs, lcb.create_getters(), ins)
    with fits.open(masks_path) as hdul:
        masks = fits.HDUList([h.copy() for h in hdul])
    result = basic_processing_with_combination_frames_crmasks(
        frames, DataFrame(frame=masks), flows, method=getattr(ncombine, method),
        method_kwargs={"apply_flux_factor": True})
    return np.asarray(result[0].data, dtype=np.float64)


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


def main(argv: list[str]) -> int:
    work = Path(argv[0] if argv else "/tmp/bench_megara").resolve()
    timeout = float(argv[1]) if len(argv) > 1 else 3000.0
    t0 = time.perf_counter()
    if not (work / "truth.npz").exists():
        simulate(work)
    print(f"simulated OB in {time.perf_counter() - t0:.0f} s", flush=True)
    frames = ["science_1.fits", "science_2.fits", "science_3.fits"]
    if not (work / "data" / "master_bias.fits").exists():
        bias = _ob(work, "bias", {"id": "bias", "instrument": "MEGARA", "mode": "MegaraBiasImage",
                                  "frames": ["bias_1.fits", "bias_2.fits", "bias_3.fits"]})
        print("MegaraBiasImage:", timed_numina(work, bias, 600), flush=True)
        shutil.copy(work / "obsidbias_results" / "master_bias.fits", work / "data" / "master_bias.fits")
    runs = {}
    ours = _ob(work, "ours", {"id": "ours", "instrument": "MEGARACR", "mode": "MegaraCrDetection",
                              "frames": frames, "requirements": OURS_REQUIREMENTS})
    runs["ours"] = timed_numina(work, ours, timeout)
    print("ours:", runs["ours"], flush=True)
    theirs = _ob(work, "megaradrp", {"id": "megaradrp", "instrument": "MEGARA", "mode": "MegaraCrDetection",
                                     "frames": frames, "requirements": MEGARADRP_REQUIREMENTS})
    runs["megaradrp"] = timed_numina(work, theirs, timeout)
    print("megaradrp:", runs["megaradrp"], flush=True)
    for name in runs:
        masks = work / f"obsid{name}_results" / "crmasks.fits"
        if runs[name]["exit"] == 0 and masks.exists():
            runs[name].update(evaluate(work, masks))
        print(name, runs[name], flush=True)
    (work / "bench_megara.json").write_text(json.dumps(runs, indent=1))
    keys = ["exit", "wall_s", "cpu_s", "peak_rss_mb", "residual_meancr2", "residual_mediancr", "mediancr_flagged",
            "false_mediancr", "false_crmaskk", "cr_pixels", "coincident_pixels"]
    print("| route | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, r in runs.items():
        print(f"| {name} | " + " | ".join(str(r.get(k, "-")) for k in keys) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
