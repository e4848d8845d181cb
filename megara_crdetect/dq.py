"""The data-quality (``DQ``) plane of the products: named bits of a uint16 image.

Every ``combined_<name>.fits`` and ``crmasks.fits`` carries a ``DQ``
extension.  Each bit is named in its header (cards ``DQBITn``) and in
:data:`DQ_FLAGS`, an :mod:`astropy.nddata.bitmask` flag map, so that

>>> from astropy.nddata import bitmask
>>> good = ~bitmask.bitfield_to_boolean_mask(dq, ignore_flags="SATURATED",  # doctest: +SKIP
...                                          flag_name_map=DQ_FLAGS)

selects the pixels that carry no flag other than ``SATURATED``.  The bits
are documented in ``docs/products.md``.  Pure functions on arrays: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["DQ_BITS", "DQ_FLAGS", "UNRELIABLE", "left_pixels", "unreliable", "dq_summary", "combination_dq", "flag_map_of_header", "dq_header_cards"]

#: name -> (value, meaning); the value is a power of two (bit ``log2(value)``).
DQ_BITS = {
    "CR_REPAIRED": (1, "cosmic ray replaced or left out in this image"),
    "CR_ALL_EXPOSURES": (2, "masked in every exposure (no clean value)"),
    "SATURATED": (4, "at or above the saturation level in an exposure"),
    "BAD_INPUT": (8, "NaN/inf or saturated input left out of an exposure"),
    "NO_DATA": (16, "no usable value in any exposure (MAP = 0)"),
    "DEFECTIVE_LINE": (32, "on a defective detector line (not searched)"),
    "SKIPPED": (64, "skipped region or pixel ignored as cosmic ray"),
    "LOCAL_MEDIAN": (128, "replaced by the median of its neighbours"),
    "CR_LEFT": (256, "detected cosmic ray still in this image's value"),
}

#: Bits whose pixels have no trustworthy value in a combination (``CCDData.mask`` of the Python API).
UNRELIABLE = ("CR_LEFT", "CR_ALL_EXPOSURES", "NO_DATA")

_FLAGS = []


def __getattr__(name: str):
    """``DQ_FLAGS``: the bits as an astropy flag-name map (``flag_name_map=`` of
    :mod:`astropy.nddata.bitmask`), built on first use (astropy.nddata takes seconds to import)."""
    if name != "DQ_FLAGS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not _FLAGS:
        from astropy.nddata import bitmask

        _FLAGS.append(bitmask.extend_bit_flag_map("MegaraCrdetectDQ", **{k: v for k, (v, _) in DQ_BITS.items()}))
    return _FLAGS[0]

_CR_BIT = np.uint16(DQ_BITS["CR_REPAIRED"][0])


def _set(dq: np.ndarray, mask, name: str) -> None:
    if mask is not None:  # one pass, whatever the number of pixels set
        np.bitwise_or(dq, np.uint16(DQ_BITS[name][0]), out=dq, where=np.asarray(mask, dtype=bool))


def dq_summary(shape: tuple[int, int], *, cosmic_rays=None, problematic=None, saturated=None, bad_input=None,
               no_data=None, bad_rows: Iterable[int] = (), bad_columns: Iterable[int] = (), skipped=None,
               local_median: Iterable[tuple[int, int]] = ()) -> np.ndarray:
    """The DQ plane of a set of masks.

    Parameters
    ----------
    shape : tuple of int
        ``(ny, nx)``.
    cosmic_rays, problematic, saturated, bad_input, no_data, skipped : ndarray of bool, optional
        ``(ny, nx)`` maps of the bits ``CR_REPAIRED``, ``CR_ALL_EXPOSURES``,
        ``SATURATED``, ``BAD_INPUT``, ``NO_DATA`` and ``SKIPPED``.
    bad_rows, bad_columns : iterable of int
        0-based defective detector lines (``DEFECTIVE_LINE``).
    local_median : iterable of (row, col)
        0-based pixels replaced by a local median (``LOCAL_MEDIAN``).

    Returns
    -------
    ndarray, uint16
    """
    dq = np.zeros(shape, dtype=np.uint16)
    for name, mask in (("CR_REPAIRED", cosmic_rays), ("CR_ALL_EXPOSURES", problematic), ("SATURATED", saturated),
                       ("BAD_INPUT", bad_input), ("NO_DATA", no_data), ("SKIPPED", skipped)):
        _set(dq, mask, name)
    line = np.uint16(DQ_BITS["DEFECTIVE_LINE"][0])
    rows, cols = np.asarray(list(bad_rows), dtype=int), np.asarray(list(bad_columns), dtype=int)
    if rows.size:
        dq[rows, :] |= line
    if cols.size:
        dq[:, cols] |= line
    for row, col in local_median:
        dq[row, col] |= np.uint16(DQ_BITS["LOCAL_MEDIAN"][0])
    return dq


def repaired_pixels(name: str, masks) -> np.ndarray | None:
    """Where the combination ``name`` replaced or left out cosmic-ray values (None: nowhere).

    ``mediancr``: MEDIANCR; ``meancrt``: MEANCRT; ``meancr``: any CRMASKk;
    ``meancr2``: any CRMASKk or MEANCR; the plain ``mean``, ``median`` and
    ``min`` repair nothing.
    """
    if name == "mediancr":
        return np.asarray(masks.mediancr, dtype=bool)
    if name == "meancrt":
        return np.asarray(masks.meancrt, dtype=bool)
    if name in ("meancr", "meancr2"):
        out = np.any(masks.crmasks, axis=0)
        return out | np.asarray(masks.meancr, dtype=bool) if name == "meancr2" else out
    return None


def left_pixels(name: str, masks) -> np.ndarray | None:
    """Where a detected cosmic ray is still in the value of the combination ``name`` (None: nowhere).

    ``mean``: MEANCRT; ``median``: MEDIANCR; ``meancr``: MEANCR (the
    cosmic rays that the mean of the unmasked values still holds).
    """
    attr = {"mean": "meancrt", "median": "mediancr", "meancr": "meancr"}.get(name)
    return None if attr is None else np.asarray(getattr(masks, attr), dtype=bool)


def unreliable(dq: np.ndarray) -> np.ndarray:
    """Pixels of a combination's DQ plane that carry one of the :data:`UNRELIABLE` bits."""
    bits = np.uint16(sum(DQ_BITS[name][0] for name in UNRELIABLE))
    return (np.asarray(dq) & bits) != 0


def combination_dq(summary: np.ndarray, name: str, masks) -> np.ndarray:
    """The DQ plane of ``combined_<name>.fits``: the summary's bits, ``CR_REPAIRED`` and ``CR_LEFT`` of this combination.

    Parameters
    ----------
    summary : ndarray, uint16
        :func:`dq_summary` of the run (its ``CR_REPAIRED`` bit is replaced).
    name : str
        Combination name.
    masks : CRMaskResult or SavedMasks
        The masks (``mediancr``, ``meancrt``, ``crmasks``, ``meancr``).
    """
    dq = summary & ~_CR_BIT
    _set(dq, repaired_pixels(name, masks), "CR_REPAIRED")
    _set(dq, left_pixels(name, masks), "CR_LEFT")
    return dq


def dq_header_cards() -> list[tuple[str, str, str]]:
    """``(keyword, value, comment)`` cards naming every bit: ``DQBITn = NAME``."""
    return [(f"DQBIT{int(np.log2(v))}", name, f"{v}: {doc}"[:47]) for name, (v, doc) in DQ_BITS.items()]


def flag_map_of_header(header) -> dict[str, int]:
    """Bit names -> values read back from the ``DQBITn`` cards of a DQ header."""
    return {str(header[key]): 1 << int(key[5:]) for key in header if key.startswith("DQBIT")}
