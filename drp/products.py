"""numina types of the products of the MegaraCrDetection recipe."""

from __future__ import annotations

from numina.exceptions import ValidationError
from numina.types.frame import DataFrameType
from numina.types.product import DataProductMixin

__all__ = ["CRMasks", "CRCombined", "MasterBias", "MasterDark", "MasterBPM"]


def _require(hdulist, names: list[str], what: str) -> None:
    present = [hdu.name for hdu in hdulist]
    missing = [n for n in names if n not in present]
    if missing:
        raise ValidationError(f"{what}: missing extension(s) {', '.join(missing)} (has {', '.join(present)})")


class CRMasks(DataProductMixin, DataFrameType):
    """``crmasks.fits``: MEDIANCR, MEANCRT, CRMASK1..N and MEANCR (uint8 0/1) extensions."""

    def validate_hdulist(self, hdulist) -> None:
        """Check the mask extensions (only with ``numina run --validate``)."""
        _require(hdulist, ["MEDIANCR", "MEANCRT", "CRMASK1", "MEANCR"], "crmasks")


class CRCombined(DataProductMixin, DataFrameType):
    """``combined_<name>.fits``: PRIMARY (electrons), VARIANCE and MAP (exposures used)."""

    def validate_hdulist(self, hdulist) -> None:
        """Check the extensions (only with ``numina run --validate``)."""
        _require(hdulist, ["PRIMARY", "VARIANCE", "MAP"], "combined image")


# -- inputs: megaradrp's calibrations (raw MEGARA frames).  Same names as megaradrp's
# types, so numina finds them under the same labels (control-file ``products:`` entries
# ``type: MasterBias``, calibration-tree folders ``MasterBias/``).


class MasterBias(DataFrameType):
    """megaradrp's ``master_bias.fits`` (MegaraBiasImage): trimmed bias in ADU."""


class MasterDark(DataFrameType):
    """megaradrp's ``master_dark.fits`` (MegaraDarkImage)."""


class MasterBPM(DataFrameType):
    """megaradrp's ``master_bpm.fits`` (MegaraBadPixelMask)."""
