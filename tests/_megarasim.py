"""Raw MEGARA frames made by megaradrp's own simulator, for the chain test and the benchmark.

megaradrp's :class:`~megaradrp.instrument.components.detector.MegaraDetector`
reads a 4112 x 4096 electron image out through two amplifiers (gain 1.73 and
1.60 e-/ADU, bias 1000 and 1030 ADU, read noise 2 ADU here) into a raw
4212 x 4196 frame with prescan, overscan and a middle strip; the header
cards numina and megaradrp need (INSTRUME, INSCONF, DATE-OBS, UUID, VPH,
INSMODE, EXPTIME, OBSMODE, OBJECT) are added.  The readout flips the rows,
so the trimmed frame megaradrp makes shows ``flipud(electrons)``
(:func:`trimmed_view`).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
from astropy.io import fits

INSCONF = "ca3558e3-e50d-4bbc-86bd-da50a0998a48"  # megaradrp's profile for 2017-2025 data
SHAPE = (4112, 4096)  # electrons image (trimmed geometry)
GAINS = (1.73, 1.60)
BIASES = (1000.0, 1030.0)
RON_ADU = 2.0


def detector(direction: str = "normal"):
    """megaradrp's simulated MEGARA detector, no binning, read mode ``normal`` or ``mirror``."""
    from megaradrp.instrument.components.detector import MegaraDetector, ReadParams

    return MegaraDetector("MEGARA", SHAPE, oscan=50, pscan=50, qe=1.0, dark=0.0,
                          readpars1=ReadParams(GAINS[0], RON_ADU, BIASES[0]),
                          readpars2=ReadParams(GAINS[1], RON_ADU, BIASES[1]), bins="11", direction=direction)


def header(obsmode: str, exptime: float, number: int, obj: str = "SIMULATED") -> fits.Header:
    """The cards numina and megaradrp read from a raw MEGARA frame."""
    hdr = fits.Header()
    hdr["INSTRUME"] = "MEGARA"
    hdr["INSCONF"] = INSCONF
    hdr["DATE-OBS"] = f"2024-03-0{1 + number % 9}T02:{number % 60:02d}:00.0"
    hdr["UUID"] = str(uuid.uuid4())
    hdr["VPH"] = "LR-B"
    hdr["INSMODE"] = "LCB"
    hdr["EXPTIME"] = exptime
    hdr["OBSMODE"] = obsmode
    hdr["OBJECT"] = obj
    hdr["IMAGETYP"] = "BIAS" if exptime == 0 else "OBJECT"
    return hdr


def write_bias_frames(folder: Path, count: int = 3, *, seed: int = 1) -> list[str]:
    """``bias_<k>.fits``: raw bias frames (ADU, 4212 x 4196)."""
    from megaradrp.simulation.actions import simulate_bias

    np.random.seed(seed)  # megaradrp's simulator draws from numpy's global generator
    det = detector()
    names = []
    for k in range(count):
        name = f"bias_{k + 1}.fits"
        fits.PrimaryHDU(simulate_bias(det).astype(np.float32), header=header("MegaraBiasImage", 0.0, k)
                        ).writeto(folder / name, overwrite=True)
        names.append(name)
    return names


def scene(seed: int = 3) -> np.ndarray:
    """A noise-free spectral scene in electrons per second (4112 x 4096): fibre traces along X."""
    rng = np.random.default_rng(seed)
    ny, nx = SHAPE
    y = np.arange(ny, dtype=np.float32)[:, None]
    x = np.arange(nx, dtype=np.float32)[None, :]
    centres = np.arange(8, ny - 8, 7.4)
    fibre = np.zeros((ny, 1), np.float32)
    for c in centres:
        lo, hi = int(c) - 5, int(c) + 6
        fibre[lo:hi, 0] += np.exp(-0.5 * ((y[lo:hi, 0] - c) / 1.1) ** 2)
    continuum = 40.0 + 25.0 * np.sin(x / 900.0) ** 2
    lines = np.zeros((1, nx), np.float32)
    for pos, amp in zip(rng.uniform(50, nx - 50, 60), rng.uniform(50, 800, 60)):
        lo, hi = int(pos) - 8, int(pos) + 9
        lines[0, lo:hi] += amp * np.exp(-0.5 * ((x[0, lo:hi] - pos) / 1.6) ** 2)
    return (2.0 + fibre * (continuum + lines)).astype(np.float32)


def write_science_frames(folder: Path, rate: np.ndarray, hits: list[np.ndarray], exptime: float, *,
                         seed: int = 2, obsmode: str = "MegaraLcbImage", direction: str = "normal",
                         prefix: str = "science") -> list[str]:
    """``<prefix>_<k>.fits``: raw frames of ``rate * exptime`` electrons plus the hits of exposure k."""
    from megaradrp.simulation.actions import simulate_flat

    np.random.seed(seed)
    det = detector(direction)
    names = []
    for k, hit in enumerate(hits):
        name = f"{prefix}_{k + 1}.fits"
        source = rate + hit / exptime
        fits.PrimaryHDU(simulate_flat(det, exptime, source).astype(np.float32),
                        header=header(obsmode, exptime, 10 + k, obj="SIM-TARGET")).writeto(folder / name,
                                                                                            overwrite=True)
        names.append(name)
    return names


def trimmed_view(electrons: np.ndarray) -> np.ndarray:
    """Where an electron image lands in megaradrp's trimmed frame (the readout flips the rows)."""
    return np.flipud(electrons)


def megaradrp_lcb_flows(frames: list, first: Path, master_bias) -> list:
    """MegaraLcbImage's own preprocessing flows for these raw frames (numina DataFrames).

    Its getters (overscan, trim; bpm, bias, dark, gain, slit flat, diffuse light) fed with the
    calibrations this OB has (``master_bias``, a DataFrame; its wavelength calibration, fibre flat and
    apertures are needed only after the combination); ``first`` is the first frame's path (profile).
    """
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe
    from megaradrp.recipes.scientific.lcb import LCBImageRecipe
    from numina.core import ObservationResult

    from megara_crdetect.megara import megara_profile

    with fits.open(first) as hdul:
        ins = megara_profile(hdul, first.name)
    ob = ObservationResult(instrument="MEGARA", mode="MegaraLcbImage")
    ob.frames, ob.configuration = frames, ins
    lcb = LCBImageRecipe()
    return lcb.init_filters_generic(CRMasksRecipe.create_input(obresult=ob, master_bias=master_bias),
                                    lcb.create_getters(), ins)


def megaradrp_combination(data: Path, names: list[str], masks_path: Path, method: str) -> fits.PrimaryHDU:
    """megaradrp's combination of the raw frames ``data/names`` with our masks, as MegaraLcbImage calls it.

    Preprocessed by :func:`megaradrp_lcb_flows` with ``data/master_bias.fits``; ``method`` is a numina
    combination (``meancr2``, ``mediancr``...).  Returns the combined HDU.
    """
    from megaradrp.processing.combine import basic_processing_with_combination_frames_crmasks
    from numina.array import combine
    from numina.types.dataframe import DataFrame

    frames = [DataFrame(filename=str(data / n)) for n in names]
    flows = megaradrp_lcb_flows(frames, data / names[0], DataFrame(filename=str(data / "master_bias.fits")))
    # megaradrp opens the masks and leaves them open: hand it a copy in memory
    with fits.open(masks_path) as hdul:
        masks = fits.HDUList([h.copy() for h in hdul])
    result = basic_processing_with_combination_frames_crmasks(
        frames, DataFrame(frame=masks), flows, method=getattr(combine, method),
        method_kwargs={"apply_flux_factor": True})
    return result[0]
