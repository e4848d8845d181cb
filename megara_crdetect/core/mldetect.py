"""Machine-learned single-image detectors: deepCR (Zhang & Bloom 2020) and Cosmic-CoNN (Xu et al. 2023).

Thin calls of the models that the ``deepcr`` and ``cosmic-conn`` packages
ship inside their distributions (deepCR: ``ACS-WFC`` and ``WFC3-UVIS`` masks;
Cosmic-CoNN: ``ground_imaging``, ``NRES`` and ``HST_ACS_WFC``); nothing is
downloaded at run time.  Both packages (and PyTorch, CPU build) come with the
optional extra ``megara-crdetect[ml]`` and are imported only when a
``deepcr``/``conn`` method runs; without them :class:`MissingExtraError`
says what to install.  Images are in electrons, as both models expect.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache

import numpy as np

from ..errors import ConfigError

__all__ = ["ML_EXTRA", "MissingExtraError", "check_extra", "run_deepcr", "run_conn"]

_log = logging.getLogger(__name__)

#: The command that installs the machine-learned detectors.
ML_EXTRA = "pip install 'megara-crdetect[ml]'"


_MODULES = {"deepcr": "deepCR", "conn": "cosmic_conn"}


class MissingExtraError(ConfigError, ImportError):
    """A machine-learned detector was asked for but its package is not installed (a one-line message)."""


def _missing(method: str) -> MissingExtraError:
    return MissingExtraError(f"crmethod {method} needs the optional machine-learning extra "
                             f"(deepcr, cosmic-conn, torch): {ML_EXTRA}")


def check_extra(method: str | None) -> None:
    """Raise :class:`MissingExtraError` now if ``method`` (deepcr, conn) cannot be imported (nothing imported)."""
    from importlib.util import find_spec

    if method in _MODULES and (find_spec(_MODULES[method]) is None or find_spec("torch") is None):
        raise _missing(method)


def _require(module: str, method: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise _missing(method) from None


def _threads() -> None:
    """Let PyTorch use the cores we were given (it may default to more on a shared machine)."""
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), os.cpu_count() or 1)))


@lru_cache(maxsize=2)
def _deepcr_model(mask: str):
    deepcr = _require("deepCR", "deepcr")
    _threads()
    return deepcr.deepCR(mask=mask, device="CPU")


@lru_cache(maxsize=3)
def _conn_model(model: str):
    conn = _require("cosmic_conn", "conn")
    _threads()
    return conn.init_model(model)


def run_deepcr(image: np.ndarray, *, mask: str = "ACS-WFC", threshold: float = 0.5,
               verbose: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Detect cosmic rays with a deepCR model and inpaint them.

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Image in electrons.
    mask : {'ACS-WFC', 'WFC3-UVIS'}
        deepCR mask model.
    threshold : float
        Probability (0, 1) above which a pixel is flagged.
    verbose : bool
        Log the call at INFO.

    Returns
    -------
    flags : ndarray of bool
    cleaned : ndarray of float32
        The image with the flagged pixels inpainted (deepCR's median inpainting).

    Raises
    ------
    MissingExtraError
        When deepcr (or torch) is not installed.
    """
    model = _deepcr_model(mask)
    (_log.info if verbose else _log.debug)("deepCR %s, threshold %.3f, image %s", mask, threshold, image.shape)
    flags, cleaned = model.clean(np.asarray(image, dtype=np.float32), threshold=threshold, inpaint=True)
    return np.asarray(flags, dtype=bool), np.asarray(cleaned, dtype=np.float32)


def run_conn(image: np.ndarray, *, model: str = "ground_imaging", threshold: float = 0.5,
             verbose: bool = False) -> np.ndarray:
    """Detect cosmic rays with a Cosmic-CoNN model (no cleaned image).

    Parameters
    ----------
    image : ndarray, shape (ny, nx)
        Image in electrons.
    model : {'ground_imaging', 'NRES', 'HST_ACS_WFC'}
        Cosmic-CoNN model.
    threshold : float
        Probability (0, 1) above which a pixel is flagged.
    verbose : bool
        Log the call at INFO.

    Returns
    -------
    ndarray of bool

    Raises
    ------
    MissingExtraError
        When cosmic-conn (or torch) is not installed.
    """
    net = _conn_model(model)
    (_log.info if verbose else _log.debug)("Cosmic-CoNN %s, threshold %.3f, image %s", model, threshold,
                                           image.shape)
    probability = net.detect_cr(np.asarray(image, dtype=np.float32))
    return np.asarray(probability > threshold, dtype=bool)
