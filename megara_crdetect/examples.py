"""The four examples of the numina-crmasks guide, on simulated MEGARA-like data.

``numina-crmasks --example N --output_dir D`` writes three simulated exposures
(``fake_1.fits``...) and a ready ``params_exampleN.yaml`` into ``D`` and runs it:

1. equivalent exposures, boundary found automatically (spline);
2. the same exposures, piecewise boundary through fixed points;
3. flux factors 0.8 / 1.0 / 1.2, estimated with ``flux_factor: auto``;
4. offsets (-0.5, +0.5), (0, 0), (+0.5, -0.25) px, measured by cross-correlation.

The images are 2016 x 1596 pixels (NAXIS1 x NAXIS2), like the guide's crops.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .config import params_yaml
from .io import OutputStage
from .simulate import SimulatedSet, simulate_exposures

__all__ = ["EXAMPLES", "Example", "write_example", "write_exposures"]

_log = logging.getLogger(__name__)
SHAPE = (1596, 2016)


@dataclass(frozen=True)
class Example:
    """One example: what is simulated and which parameters differ from the defaults."""

    title: str
    flux_factors: tuple | None = None
    offsets: tuple | None = None
    requirements: dict = field(default_factory=dict)


EXAMPLES = {
    1: Example("Example 1: three equivalent exposures, automatic boundary"),
    # The guide's points ([0, 40], [50, 70], [200, 90]) suit its faint crop; held constant beyond 200 e-
    # they would sit about one sigma above the noise on these simulated sky lines (up to 2e4 e-).  These
    # follow about 9 sigma of the noise model, sqrt(x + 3.4**2), over the whole signal range.
    2: Example("Example 2: piecewise boundary through fixed points",
               requirements={"mm_boundary_fit": "piecewise",
                             "mm_fixed_points_in_boundary": [[0, 31], [100, 95], [1000, 290], [10000, 900],
                                                             [50000, 2015]]}),
    3: Example("Example 3: exposures with flux factors 0.8, 1.0, 1.2", flux_factors=(0.8, 1.0, 1.2),
               requirements={"flux_factor": "auto", "flux_factor_regions": [[229, 274, 1, 1596]],
                             "apply_flux_factor_to": "original"}),
    4: Example("Example 4: exposures offset by (-0.5, +0.5), (0, 0), (+0.5, -0.25) pixels",
               offsets=((-0.5, 0.5), (0.0, 0.0), (0.5, -0.25)),
               requirements={"mm_crosscorr_region": [214, 320, 651, 733]}),
}


def write_exposures(sim: SimulatedSet, directory: Path, *, prefix: str = "fake_",
                    instrument: str = "MEGARA") -> list[Path]:
    """Write the simulated exposures as FITS files ``<prefix>1.fits``... (ADU, float32)."""
    paths = []
    for k, data in enumerate(sim.exposures, 1):
        hdu = fits.PrimaryHDU(data.astype(np.float32))
        hdr = hdu.header
        hdr["INSTRUME"] = (instrument, "Instrument")
        hdr["OBJECT"] = ("SIMULATED", "megara_crdetect.simulate")
        hdr["EXPTIME"] = (1200.0, "[s] Exposure time")
        hdr["DATE-OBS"] = (f"2024-01-01T0{k}:00:00.0", "Simulated observation date")
        hdr["UUID"] = (str(uuid.UUID(int=(sim.seed or 0) * 1000 + k)), "Frame identifier")
        hdr["GAIN"] = (sim.gain, "[e-/ADU]")
        hdr["RDNOISE"] = (sim.rnoise, "[ADU]")
        hdr["SIMFLUX"] = (float(sim.flux_factors[k - 1]), "True flux factor")
        hdr["SIMXOFF"] = (float(sim.offsets[k - 1][0]), "[pix] True X offset of the content")
        hdr["SIMYOFF"] = (float(sim.offsets[k - 1][1]), "[pix] True Y offset of the content")
        path = directory / f"{prefix}{k}.fits"
        hdu.writeto(path, overwrite=True)
        paths.append(path)
    return paths


def simulate_example(number: int, *, shape=SHAPE, seed: int = 2025) -> SimulatedSet:
    """The simulated exposures of example ``number`` (1..4)."""
    ex = EXAMPLES[number]
    return simulate_exposures(shape, 3, gain=1.0, rnoise=3.4, bias=0.0, flux_factors=ex.flux_factors,
                              offsets=ex.offsets, seed=seed)


def write_example(number: int, directory: str | Path, *, shape=SHAPE, seed: int = 2025) -> Path:
    """Write the exposures and ``params_example<N>.yaml`` of an example.

    Returns
    -------
    Path
        The parameter file.
    """
    ex = EXAMPLES[number]
    sim = simulate_example(number, shape=shape, seed=seed)
    with OutputStage(directory) as stage:
        files = write_exposures(sim, stage.directory)
        text = params_yaml([p.name for p in files], inputs={"gain": 1.0, "rnoise": 3.4, "bias": 0.0},
                           requirements=ex.requirements, title=ex.title)
        stage.path(f"params_example{number}.yaml").write_text(text)
        stage.commit()
    _log.info("example %d: wrote %s", number, ", ".join(p.name for p in files))
    return Path(directory) / f"params_example{number}.yaml"


def parse_arguments(argv: list[str] | None = None) -> tuple[Path, list[int]]:
    """The folder and the example numbers (default: all) of :func:`main`'s command line."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m megara_crdetect.examples",
                                     description="Write the simulated data of the guide's examples.")
    parser.add_argument("directory")
    # no choices= here: Python 3.11's argparse checks a list default against them and fails
    parser.add_argument("numbers", nargs="*", type=int, metavar="N",
                        help=f"examples to write ({', '.join(map(str, EXAMPLES))}; default: all)")
    args = parser.parse_args(argv)
    wrong = [n for n in args.numbers if n not in EXAMPLES]
    if wrong:
        parser.error(f"invalid example number(s) {', '.join(map(str, wrong))} (choose from "
                     f"{', '.join(map(str, EXAMPLES))})")
    return Path(args.directory), list(args.numbers) or sorted(EXAMPLES)


def main(argv: list[str] | None = None) -> int:
    """``python -m megara_crdetect.examples DIR [N ...]``: write example data only.

    Writes ``DIR/example<N>/fake_1..3.fits`` and ``params_example<N>.yaml`` for
    every example given (default: all four); this is the data command of the
    numina observation results in ``obsresults/``.
    """
    directory, numbers = parse_arguments(argv)
    for number in numbers:
        path = write_example(number, directory / f"example{number}")
        print(f"wrote {path.parent}/fake_1..3.fits and {path.name}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
