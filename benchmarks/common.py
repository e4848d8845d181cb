"""Shared pieces of the benchmarks: parameter files for both programs, timed runs."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import yaml

from megara_crdetect.examples import write_exposures


def common_requirements(extra: dict) -> dict:
    """Parameters given to both programs (the guide's example values, batch mode)."""
    req = dict(crmethod="mm_lacosmic", interactive=False, dilation=1, maxplots=0, color_scale="zscale",
               apply_flux_factor_to="original", la_sigclip=5.0, la_sigfrac=0.3, la_objlim=5.0,
               la_satlevel=65535.0, la_niter=4, la_sepmed=True, la_cleantype="meanmask", la_fsmode="convolve",
               la_psfmodel="gaussxy", la_psffwhm_x=2.5, la_psffwhm_y=2.5, la_psfsize=11, la_psfbeta=4.765,
               la_padwidth=10, mm_boundary_fit="spline", mm_knots_splfit=3, mm_nsimulations=10,
               mm_niter_boundary_extension=4, mm_weight_boundary_extension=10.0,
               mm_minimum_max2d_rnoise=5.0, mm_seed=123456)
    req.update(extra)
    return req


def reference_requirements(extra: dict) -> dict:
    """The same parameters with numina 0.40's names and its mandatory extra keys."""
    req = common_requirements(extra)
    req.update(use_auxmedian=False, mm_threshold_rnoise=0.0, mm_photon_distribution="poisson",
               mm_nbinom_shape=1000, mm_synthetic="median", mm_cr_coincidences=2, la_verbose=False)
    if "flux_factor" not in req:
        req["flux_factor"] = "none"
    return req


def write_inputs(sim, workdir: Path, extra: dict, *, ours_extra: dict | None = None,
                 ref_extra: dict | None = None, tag: str = "") -> tuple[Path, Path]:
    """Exposures (once) and the two parameter files; returns (ours, reference)."""
    if not (workdir / "fake_1.fits").exists():
        write_exposures(sim, workdir)
    top = {"images": [f"fake_{k}.fits" for k in range(1, sim.exposures.shape[0] + 1)], "extnum": 0,
           "gain": float(sim.gain), "rnoise": float(sim.rnoise), "bias": float(sim.bias)}
    ours = workdir / f"params_ours{tag}.yaml"
    ours.write_text(yaml.safe_dump({**top, "requirements": {**common_requirements(extra), **(ours_extra or {})}},
                                   sort_keys=False))
    ref = workdir / f"params_reference{tag}.yaml"
    ref.write_text(yaml.safe_dump({**top, "requirements": {**reference_requirements(extra), **(ref_extra or {})}},
                                  sort_keys=False))
    return ours, ref


def run_timed(cmd: list[str], log: Path, cwd: Path, timeout: float | None = None) -> dict:
    """Run a command in ``cwd``; wall time and peak RSS of the child (GNU time when available).

    The reference resolves image paths relative to the current directory (ours
    relative to the YAML file), so both run from the folder of the data.
    ``timeout`` (seconds): the command is stopped by coreutils ``timeout``
    (exit status 124), so GNU time still reports what it used.
    """
    t0 = time.perf_counter()
    timer = ["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []
    if timeout:
        timer += ["timeout", f"{timeout:.0f}"]
    env = dict(os.environ, MPLBACKEND="Agg")
    with log.open("w") as fh:
        proc = subprocess.run(timer + cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, check=False, cwd=cwd)
    wall = time.perf_counter() - t0
    rss = None
    for line in log.read_text(errors="replace").splitlines():
        if "Maximum resident set size" in line:
            rss = int(line.split()[-1]) / 1024.0
    return {"status": proc.returncode, "wall_s": wall, "peak_rss_mb": rss}
