"""L.A.Cosmic on windows against L.A.Cosmic on the whole frame: identical masks, and the time each takes.

Simulates the benchmark sets (as ``benchmarks/quality.py``: equivalent, flux factors, offsets;
1 % of the pixels hit per exposure plus coincident events), runs the detection with the default
parameters twice in this process -- L.A.Cosmic on windows around the candidate pixels / on
tiles (the program) and on the whole frame in one call (the former program) -- and prints
whether MEDIANCR, its codes, CRMASKk, MEANCRT and MEANCR are identical, with the L.A.Cosmic
step's time of both::

    python benchmarks/check_windows.py [--full] [--sets equivalent flux offsets] [--crmethod ...]
"""

from __future__ import annotations

import argparse
import time
from unittest import mock

import numpy as np

from megara_crdetect.config import CRMaskConfig
from megara_crdetect.core import windows
from megara_crdetect.core.lacosmic import run_lacosmic
from megara_crdetect.core.pipeline import Detector, compute_crmasks
from megara_crdetect.simulate import simulate_exposures

SETS = {
    "equivalent": {},
    "flux": {"flux_factors": [0.8, 1.0, 1.2]},
    "offsets": {"offsets": [(-0.5, 0.5), (0.0, 0.0), (0.5, -0.25)]},
}
PARAMS = {
    "equivalent": {},
    "flux": {"flux_factor": "auto", "apply_flux_factor_to": "original"},
    "offsets": {"mm_crosscorr_region": [214, 320, 651, 733]},
}


def whole_frame(image, candidates, *, workers=None, padwidth=0, satlevel_e=None, max_fraction=0.5, **kwargs):
    """The former call: one run on the whole frame."""
    mask, cleaned = run_lacosmic(image, padwidth=padwidth, satlevel_e=satlevel_e, **kwargs)
    return mask, cleaned, None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--full", action="store_true", help="4112 x 4096 frames instead of 1596 x 2016")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--crmethod", default="mm_lacosmic")
    p.add_argument("--seed", type=int, default=2025)
    args = p.parse_args(argv)
    shape = (4112, 4096) if args.full else (1596, 2016)
    all_same = True
    for name in args.sets:
        n_coinc = int(150 * shape[0] * shape[1] / (1596 * 2016))
        sim = simulate_exposures(shape, 3, seed=args.seed, n_coincident=n_coinc, cr_fraction=0.01, **SETS[name])
        stack = ((sim.exposures - sim.bias) * sim.gain).astype(np.float32)
        det = Detector(sim.gain, sim.rnoise, sim.bias)
        extra = dict(PARAMS[name])
        if name == "offsets" and args.full:
            extra["mm_crosscorr_region"] = [214, 320, 651, 1500]
        params = CRMaskConfig(crmethod=args.crmethod, **extra)
        res = {}
        for how in ("windows", "whole"):
            t0 = time.perf_counter()
            if how == "whole":
                with mock.patch.object(windows, "lacosmic_where_needed", whole_frame):
                    r = compute_crmasks(stack, params, detector=det)
            else:
                r = compute_crmasks(stack, params, detector=det)
            res[how] = (r, time.perf_counter() - t0)
        a, b = res["windows"][0], res["whole"][0]
        same = all(np.array_equal(getattr(a, k), getattr(b, k))
                   for k in ("mediancr", "mediancr_codes", "crmasks", "meancrt", "meancr"))
        all_same &= same
        print(f"{name:10s} {shape[1]}x{shape[0]} {args.crmethod}: identical masks {same}; MEDIANCR {a.counts['mediancr']}"
              f" / {b.counts['mediancr']};  L.A.Cosmic step {a.timings.get('lacosmic', 0):.2f} s (windows/tiles) vs "
              f"{b.timings.get('lacosmic', 0):.2f} s (whole frame); total {res['windows'][1]:.1f} s vs {res['whole'][1]:.1f} s",
              flush=True)
    return 0 if all_same else 1


if __name__ == "__main__":
    raise SystemExit(main())
