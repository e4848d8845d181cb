"""Entry point of the DRP: ``MEGARACR = "megara_crdetect.drp.loader:load_drp"``."""

from __future__ import annotations

import numina.core

__all__ = ["load_drp"]


def load_drp() -> numina.core.InstrumentDRP:
    """Load the DRP described in ``drp.yaml`` (package data of this package).

    Returns
    -------
    numina.core.InstrumentDRP
        The DRP named ``MEGARACR``; numina keeps it only because that name is
        also the name of the entry point.
    """
    return numina.core.drp_load("megara_crdetect.drp", "drp.yaml")
