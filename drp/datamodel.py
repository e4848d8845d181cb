"""Data model of MEGARACR: raw MEGARA frames are accepted as they are.

numina picks the instrument configuration from the first frame of an
observation result (``INSCONF`` by uuid, else ``INSTRUME`` by name) and then
requires its name to be the instrument of the observation result.  MEGARA
frames say ``INSTRUME = 'MEGARA'`` and carry the uuid of a megaradrp profile
in ``INSCONF``, so without this mapping they would be rejected (``... is for
instrument 'MEGARA', not 'MEGARACR'`` or ``Not found instrument uuid=...``).
Mapping the instrument to ``MEGARACR`` and ``insconf`` to None makes numina
use our own configuration (``instrument/configs/instrument-<uuid>.json``)
for frames of any instrument.
"""

from __future__ import annotations

from numina.datamodel import DataModel

from . import INSTRUMENT

__all__ = ["MegaraCrDataModel"]


def _instrument(hdulist) -> str:
    return INSTRUMENT


def _no_insconf(hdulist) -> None:
    return None


class MegaraCrDataModel(DataModel):
    """numina data model of the MEGARACR pseudo-instrument."""

    def __init__(self) -> None:
        super().__init__(name=INSTRUMENT)

    def default_mappings(self) -> dict:
        """numina's mappings, with ``instrument`` and ``insconf`` overridden."""
        mappings = super().default_mappings()
        mappings["instrument"] = _instrument
        mappings["insconf"] = _no_insconf
        return mappings
