"""One dispatch for the auxiliary single-image detectors: L.A.Cosmic, PyCosmic, deepCR, Cosmic-CoNN.

:func:`make_detector` turns the parameters into an :class:`AuxDetector`, a
callable ``image -> (mask, cleaned or None)`` on images in electrons; its
:meth:`AuxDetector.mask` is the plain ``image -> bool mask`` function (for
callers that run it on parts of an image).  The pipeline runs every detector
in the same way and submits its flags to the same confirmation by the
disagreement of the exposures (a single-image detector also flags sharp
real features, which every exposure shares).

=============  ====================================  ==========================
method         detector                              cleaned image (AUXCLEAN)
=============  ====================================  ==========================
``lacosmic``   :func:`.lacosmic.run_lacosmic`        L.A.Cosmic's (la_cleantype)
``pycosmic``   :func:`.pycosmic.run_pycosmic`        box-median replacement
``deepcr``     :func:`.mldetect.run_deepcr`          deepCR's inpainting
``conn``       :func:`.mldetect.run_conn`            none
=============  ====================================  ==========================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..config import CRMaskConfig

__all__ = ["lacosmic_arguments", "AuxDetector", "make_detector", "run_many", "METHOD_NAMES"]

_log = logging.getLogger(__name__)

#: Display names of the auxiliary methods.
METHOD_NAMES = {"lacosmic": "L.A.Cosmic", "pycosmic": "PyCosmic", "deepcr": "deepCR", "conn": "Cosmic-CoNN"}


@dataclass(frozen=True)
class AuxDetector:
    """An auxiliary detector with its parameters bound.

    Attributes
    ----------
    method : str
        ``lacosmic``, ``pycosmic``, ``deepcr`` or ``conn``.
    run : callable
        ``run(image) -> (mask, cleaned or None)``.
    parallel : bool
        Whether several images may run in threads at once (the
        machine-learned models run one at a time: PyTorch already uses every
        core).
    """

    method: str
    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
    parallel: bool = True

    @property
    def name(self) -> str:
        """Display name (L.A.Cosmic, PyCosmic, deepCR, Cosmic-CoNN)."""
        return METHOD_NAMES[self.method]

    @property
    def cleans(self) -> bool:
        """Whether the detector returns a cleaned image."""
        return self.method != "conn"

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        mask, cleaned = self.run(image)
        _log.debug("%s flagged %d pixels", self.name, int(np.count_nonzero(mask)))
        return mask, cleaned

    def mask(self, image: np.ndarray) -> np.ndarray:
        """The bool mask of ``image`` alone."""
        return self(image)[0]


def lacosmic_arguments(params: CRMaskConfig, rnoise_e: float, satlevel_e: float | None) -> dict:
    """Keyword arguments of :func:`~megara_crdetect.core.lacosmic.run_lacosmic` from the ``la_*`` parameters."""
    return dict(
        rnoise_e=rnoise_e, sigclip=params.la_sigclip, sigfrac=params.la_sigfrac, objlim=params.la_objlim,
        satlevel_e=satlevel_e, niter=params.la_niter, sepmed=params.la_sepmed, cleantype=params.la_cleantype,
        fsmode=params.la_fsmode, psfmodel=params.la_psfmodel, psffwhm_x=params.la_psffwhm_x,
        psffwhm_y=params.la_psffwhm_y, psfsize=params.la_psfsize, psfbeta=params.la_psfbeta,
        padwidth=params.la_padwidth, verbose=params.la_verbose)


def _lacosmic(params: CRMaskConfig, rnoise_e: float, satlevel_e: float | None):
    from .lacosmic import run_lacosmic

    kwargs = lacosmic_arguments(params, rnoise_e, satlevel_e)
    return lambda image: run_lacosmic(image, **kwargs)


def _pycosmic(params: CRMaskConfig, rnoise_e: float):
    from .pycosmic import run_pycosmic

    kwargs = dict(
        rnoise_e=rnoise_e, sigma_det=params.pc_sigma_det, rlim=params.pc_rlim, iterations=params.pc_iterations,
        fwhm_gauss_x=params.pc_fwhm_gauss_x, fwhm_gauss_y=params.pc_fwhm_gauss_y,
        replace_box_x=params.pc_replace_box_x, replace_box_y=params.pc_replace_box_y,
        increase_radius=params.pc_increase_radius, verbose=params.pc_verbose)
    return lambda image: run_pycosmic(image, **kwargs)


def _deepcr(params: CRMaskConfig):
    from .mldetect import run_deepcr

    return lambda image: run_deepcr(image, mask=params.dc_mask, threshold=params.dc_threshold,
                                    verbose=params.dc_verbose)


def _conn(params: CRMaskConfig):
    from .mldetect import run_conn

    return lambda image: (run_conn(image, model=params.nn_model, threshold=params.nn_threshold,
                                   verbose=params.nn_verbose), None)


def make_detector(params: CRMaskConfig, *, rnoise_e: float, satlevel_e: float | None = None) -> AuxDetector:
    """The auxiliary detector of ``params.crmethod``.

    Parameters
    ----------
    params : CRMaskConfig
        Validated parameters (``params.aux_method`` must not be None).
    rnoise_e : float
        Readout noise in electrons.
    satlevel_e : float, optional
        Saturation level in electrons (L.A.Cosmic).
    """
    method = params.aux_method
    if method == "lacosmic":
        return AuxDetector(method, _lacosmic(params, rnoise_e, satlevel_e))
    if method == "pycosmic":
        return AuxDetector(method, _pycosmic(params, rnoise_e))
    if method == "deepcr":
        return AuxDetector(method, _deepcr(params), parallel=False)
    if method == "conn":
        return AuxDetector(method, _conn(params), parallel=False)
    raise ValueError(f"crmethod {params.crmethod!r} has no auxiliary detector")


def run_many(detector: AuxDetector, images: Sequence[np.ndarray], *, workers: int | None = None
             ) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Run a detector on several images (threads when it allows; results in input order).

    L.A.Cosmic (C filters) and PyCosmic (NumPy/SciPy) release the GIL, so
    threads share the images without copies; see
    :mod:`megara_crdetect.core.lacosmic` for the measurements.
    """
    images = list(images)
    workers = min(len(images), workers or os.cpu_count() or 1)
    if workers <= 1 or not detector.parallel:
        return [detector(image) for image in images]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(detector, images))
