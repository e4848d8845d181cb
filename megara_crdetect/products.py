"""Output products: ``crmasks.fits``, ``combined_<name>.fits`` and the CSV tables.

Functions here turn results into astropy HDULists and text; they write no
file themselves (the shells put them through :class:`~megara_crdetect.io.OutputStage`
or hand them to numina).  :func:`read_crmasks` reads a mask file back so that
``--crmasks FILE`` can re-apply saved masks.
"""

from __future__ import annotations

import datetime
import io
import platform
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from . import __version__
from .config import CRMaskConfig
from .core.masks import group_pixel_table, label_groups
from .core.pipeline import CODES, CRMaskResult, Detector
from .dq import combination_dq, dq_header_cards

__all__ = ["crmasks_hdulist", "combined_hdulist", "dq_hdu", "cr_table_csv", "problematic_csv", "read_crmasks",
           "SavedMasks", "IDENTITY_KEYS", "OWN_PRODUCTS"]

#: Cards of the first input copied into every product (when present): what was observed, where and how.
IDENTITY_KEYS = ("TELESCOP", "OBSERVAT", "INSTRUME", "DETECTOR", "OBSERVER", "PROGRAM", "OBJECT", "OBSTYPE",
                 "IMAGETYP", "DATE-OBS", "MJD-OBS", "UTC", "LST", "RA", "DEC", "EQUINOX", "RADESYS", "AIRMASS",
                 "ZD", "AZ", "PA", "INSCONF", "INSMODE", "OBSMODE", "VPH", "VPHWHEEL", "FOCUS", "SPECLAMP",
                 "FILTER")
#: World coordinate cards copied from the first input (celestial and spectral, any alternate letter).
_WCS_KEY = re.compile(r"^(WCSAXES|WCSNAME|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CROTA\d|CD\d_\d|PC\d_\d|"
                      r"PV\d_\d+|PS\d_\d+|LONPOLE|LATPOLE|MJDREF|SPECSYS|SSYSOBS|RESTFRQ|RESTWAV|VELOSYS)[A-Z]?$")
#: Names (glob patterns) of the files a run writes: a re-run into the same folder replaces or removes them.
OWN_PRODUCTS = ("crmasks.fits", "combined_*.fits", "mediancr_identified.csv", "problematic_pixels.csv",
                "mediancr_candidates.csv", "mediancr_regions.reg", "review_edits.yaml", "diagnostic_*.png",
                "mediancr_identified_cr.pdf", "problematic_pixels.pdf", "image_number_at_median_position.png",
                "flux_factor*.png", "xyoffset_crosscorr_*.png")

_EXPOSURE_TAG = {"median": "MED", "mean": "MEA"}
_COUNT_CARDS = {"mediancr_mm": "NMEDMM", "mediancr_la": "NMEDLA", "mediancr_mm_la": "NMEDBOTH",
                "mediancr_user": "NMEDUSER", "mediancr_dilation": "NMEDDIL", "mediancr_pair": "NMEDPAIR"}


def _history(header: fits.Header, lines: Sequence[str]) -> None:
    for line in lines:
        header.add_history(line)


def _provenance(header: fits.Header, detector: Detector, images: Sequence[str], extnum: int) -> None:
    header["ORIGIN"] = ("megara-crdetect", "Software that made this file")
    header["CRDVERS"] = (__version__, "megara-crdetect version")
    header["DATE"] = (datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                      "UTC date of creation")
    header["NIMAGES"] = (len(images), "Number of combined exposures")
    header["GAIN"] = (detector.gain, "[e-/ADU] Gain used")
    header["RNOISE"] = (detector.rnoise, "[ADU] Readout noise used")
    header["BIASLEV"] = (detector.bias, "[ADU] Bias level subtracted")
    header["BUNIT"] = ("electron", "Data are bias-subtracted electrons")
    _history(header, [f"megara-crdetect {__version__} on {platform.node()}, Python {platform.python_version()}",
                      f"extnum = {extnum}"] + [f"image {k} = {Path(p).name}" for k, p in enumerate(images, 1)])


def _identity(header: fits.Header, first: fits.Header | None) -> None:
    """Copy the identifying cards (:data:`IDENTITY_KEYS`) and the WCS of the first input."""
    if first is None:
        return
    for key in IDENTITY_KEYS:
        if key in first:
            header[key] = (first[key], first.comments[key])
    for card in first.cards:
        if _WCS_KEY.match(card.keyword):
            header[card.keyword] = (card.value, card.comment)


def _exposure_time(header: fits.Header, inputs: Sequence[fits.Header]) -> None:
    """EXPTIME of a combined image: the mean of the inputs' (every combination estimates one
    exposure's signal, after the flux factors are divided out); TOTEXP: their sum."""
    times = [h.get("EXPTIME") for h in inputs]
    if not times or any(not isinstance(t, (int, float)) or isinstance(t, bool) for t in times):
        return
    header["EXPTIME"] = (float(np.mean(times)), "[s] Mean exposure time of the inputs")
    header["TOTEXP"] = (float(np.sum(times)), "[s] Sum of the inputs' exposure times")


def _input_list(header: fits.Header, images: Sequence[str], checksums: Sequence[str] = ()) -> None:
    """INPUTk (file name) and INCHKk (SHA-256 of the file) of every input."""
    for k, name in enumerate(images, 1):
        header[f"INPUT{k}"] = (Path(name).name, f"Input exposure {k}")
    for k, digest in enumerate(checksums, 1):
        header[f"INCHK{k}"] = digest
    if checksums:
        header["COMMENT"] = "INCHKk: SHA-256 of the bytes of input file k"


def _product_header(header: fits.Header, detector: Detector, images: Sequence[str], extnum: int,
                    inputs: Sequence[fits.Header], checksums: Sequence[str]) -> None:
    """Cards shared by every FITS product: identity and WCS of the first input, provenance, inputs."""
    _identity(header, inputs[0] if inputs else None)
    _provenance(header, detector, images, extnum)
    _input_list(header, images, checksums)


def dq_hdu(dq: np.ndarray) -> fits.ImageHDU:
    """The ``DQ`` extension: uint16 bits named by ``DQBITn`` cards (see :mod:`megara_crdetect.dq`)."""
    hdu = fits.ImageHDU(np.asarray(dq, dtype=np.uint16), name="DQ")
    for key, value, comment in dq_header_cards():
        hdu.header[key] = (value, comment)
    hdu.header["COMMENT"] = "Data-quality bits; readable with astropy.nddata.bitmask (see docs/products.md)"
    return hdu


def _mask_hdu(mask: np.ndarray, name: str, comment: str) -> fits.ImageHDU:
    hdu = fits.ImageHDU(mask.astype(np.uint8), name=name)
    hdu.header["NPMASKED"] = (int(np.count_nonzero(mask)), "Number of masked pixels")
    hdu.header["COMMENT"] = comment
    return hdu


def crmasks_hdulist(result: CRMaskResult, params: CRMaskConfig, detector: Detector, images: Sequence[str],
                    *, extnum: int = 0, inputs: Sequence[fits.Header] = (), checksums: Sequence[str] = (),
                    dq: np.ndarray | None = None) -> fits.HDUList:
    """The mask file: primary header (keywords + HISTORY) and one extension per mask.

    Extensions: MEDIANCR, MEANCRT, CRMASK1..N, MEANCR (uint8 0/1, ``NPMASKED``),
    AUXCLEAN (float32, the median cleaned by the auxiliary detector: L.A.Cosmic,
    PyCosmic or deepCR; numina 0.40's name, which megaradrp reads), CLEANMIN (float32, shifted
    exposures: the value that repairs MEDIANCR, see
    :attr:`~megara_crdetect.core.pipeline.CRMaskResult.repair_min`) and
    RPMEDIAN (table, when pixels are to be replaced by a local median) and
    DQ (uint16 summary bits, when ``dq`` is given).  The images are in
    electrons, divided by the flux factors.  ``inputs`` (headers) and
    ``checksums`` (SHA-256 of the files) describe the exposures.
    """
    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["UUID"] = (str(uuid.uuid4()), "Identifier of these masks")
    hdr["CRMETHOD"] = (params.crmethod, "Cosmic-ray detection method")
    _product_header(hdr, detector, images, extnum, inputs, checksums)
    for k, f in enumerate(result.flux_factors, 1):
        hdr[f"FLUXF{k}"] = (float(f), f"Flux factor of exposure {k}")
    for k, (dx, dy) in enumerate(result.offsets, 1):
        hdr[f"XOFF{k}"] = (round(float(dx), 4), f"[pix] X content offset of exposure {k}")
        hdr[f"YOFF{k}"] = (round(float(dy), 4), f"[pix] Y content offset of exposure {k}")
    for key, lines in (("BADCOLS", result.bad_columns), ("BADROWS", result.bad_rows)):
        if len(lines):
            text = ",".join(str(int(i) + 1) for i in lines)
            hdr[key] = (text if len(text) <= 40 else text[:36].rsplit(",", 1)[0] + ",...",
                        "Defective lines (FITS)")
    for name, value in result.expected_false.items():
        tag = _EXPOSURE_TAG.get(name, "E" + name.removeprefix("exposure"))
        hdr[f"MMFP{tag}"] = (round(float(value), 3), f"Expected noise-only MM pixels, {name}")
    for key, card in _COUNT_CARDS.items():
        if key in result.counts:
            hdr[card] = (result.counts[key], f"MEDIANCR pixels: {key.removeprefix('mediancr_')}")
    _history(hdr, ["Parameters:"] + params.history())
    hdus = [primary, _mask_hdu(result.mediancr, "MEDIANCR", "Residual cosmic rays of the median"),
            _mask_hdu(result.meancrt, "MEANCRT", "Cosmic rays of the mean (includes MEDIANCR)")]
    hdus += [_mask_hdu(m, f"CRMASK{k}", f"Cosmic rays of exposure {k}") for k, m in enumerate(result.crmasks, 1)]
    hdus.append(_mask_hdu(result.meancr, "MEANCR", "Cosmic rays left in the meancr combination"))
    if result.lamedian is not None:
        hdu = fits.ImageHDU(result.lamedian.astype(np.float32), name="AUXCLEAN")
        hdu.header["COMMENT"] = f"Median cleaned by the auxiliary detector ({params.crmethod})"
        hdus.append(hdu)
    if result.repair_min is not None:
        hdu = fits.ImageHDU(result.repair_min.astype(np.float32), name="CLEANMIN")
        hdu.header["COMMENT"] = "Repair value of MEDIANCR and MEANCR instead of the plain minimum of the exposures"
        hdus.append(hdu)
    rp = params.pixels_to_be_replaced_by_local_median
    if rp:
        cols = [fits.Column(name=n, format="K", array=np.array([e[i] for e in rp]))
                for i, n in enumerate(("X_pixel", "Y_pixel", "X_width", "Y_width"))]
        hdus.append(fits.BinTableHDU.from_columns(cols, name="RPMEDIAN"))
    if dq is not None:
        hdus.append(dq_hdu(dq))
    return fits.HDUList(hdus)


def combined_hdulist(name: str, combined, *, masks_uuid: str, detector: Detector, images: Sequence[str],
                     extnum: int = 0, flux_factors: Sequence[float] = (), inputs: Sequence[fits.Header] = (),
                     checksums: Sequence[str] = (), dq: np.ndarray | None = None, masks=None,
                     dtype: str = "float32") -> fits.HDUList:
    """``combined_<name>.fits``: PRIMARY (value), VARIANCE, MAP (exposures used, int16) and DQ.

    The primary header carries the first input's identifying cards and WCS,
    EXPTIME (mean of the inputs) and TOTEXP (their sum), BUNIT, INPUTk /
    INCHKk and a fresh UUID.  DQ (written when ``dq``, the run's summary, is
    given) is the summary with ``CR_REPAIRED`` where this combination
    repaired a cosmic ray (``masks``; see :func:`megara_crdetect.dq.combination_dq`).
    ``dtype`` (float32 or float64, numina 0.40's ``dtype``) is the type of the value and variance.
    """
    primary = fits.PrimaryHDU(np.asarray(combined.value, dtype=dtype))
    hdr = primary.header
    hdr["UUID"] = (str(uuid.uuid4()), "Identifier of this image")
    hdr["COMBINED"] = (name, "Combination method")
    hdr["MASKUUID"] = (masks_uuid, "UUID of the crmasks.fits used")
    _product_header(hdr, detector, images, extnum, inputs, checksums)
    _exposure_time(hdr, inputs)
    for k, f in enumerate(flux_factors, 1):
        hdr[f"FLUXF{k}"] = (float(f), f"Exposure {k} was divided by this flux factor")
    var = fits.ImageHDU(np.asarray(combined.variance, dtype=dtype), name="VARIANCE")
    var.header["BUNIT"] = ("electron2", "Variance of the combined value (noise model)")
    exp_map = fits.ImageHDU(np.asarray(combined.exposure_map, dtype=np.int16), name="MAP")
    exp_map.header["COMMENT"] = "Number of exposures used for each pixel"
    hdus = [primary, var, exp_map]
    if dq is not None:
        hdus.append(dq_hdu(combination_dq(dq, name, masks) if masks is not None else dq))
    return fits.HDUList(hdus)


def cr_table_csv(mediancr: np.ndarray, codes: np.ndarray) -> str:
    """``mediancr_identified.csv``: one row per MEDIANCR pixel (FITS coordinates).

    Columns: ``CR_number`` (8-connected group, raster order of first pixel),
    ``X_pixel``, ``Y_pixel``, ``Mask_value`` (code) and ``Method``.
    """
    labels, _ = label_groups(mediancr)
    table = group_pixel_table(labels, codes)
    out = io.StringIO()
    out.write("CR_number,X_pixel,Y_pixel,Mask_value,Method\n")
    for row in table:
        out.write(f"{row['cr_index']},{row['x']},{row['y']},{row['code']},{CODES[int(row['code'])]}\n")
    return out.getvalue()


def problematic_csv(problematic: np.ndarray, crmasks: np.ndarray) -> str:
    """``problematic_pixels.csv``: pixels masked in every exposure, by group."""
    labels, _ = label_groups(problematic)
    table = group_pixel_table(labels, np.full(problematic.shape, crmasks.shape[0], dtype=np.int8))
    out = io.StringIO()
    out.write("CR_number,X_pixel,Y_pixel,Mask_value\n")
    for row in table:
        out.write(f"{row['cr_index']},{row['x']},{row['y']},{row['code']}\n")
    return out.getvalue()


@dataclass
class SavedMasks:
    """Masks read back from a ``crmasks.fits`` (enough for :func:`apply_crmasks`)."""

    mediancr: np.ndarray
    meancrt: np.ndarray
    crmasks: np.ndarray
    meancr: np.ndarray
    flux_factors: np.ndarray
    lamedian: np.ndarray | None = None
    repair_min: np.ndarray | None = None
    uuid: str = ""
    local_median: list = field(default_factory=list)
    dq: np.ndarray | None = None


def read_crmasks(path: str | Path, n_images: int, shape: tuple[int, int]) -> SavedMasks:
    """Read a mask file written by :func:`crmasks_hdulist` (or by numina-crmasks)."""
    from .errors import InputError

    path = Path(path)
    if not path.exists():
        raise InputError(f"--crmasks '{path}': file not found")
    try:
        with fits.open(path) as hdul:
            names = [h.name for h in hdul]
            need = ["MEDIANCR", "MEANCRT"] + [f"CRMASK{k}" for k in range(1, n_images + 1)]
            missing = [n for n in need if n not in names]
            if missing:
                raise InputError(f"--crmasks '{path.name}': missing extension(s) {', '.join(missing)} "
                                 f"for {n_images} exposures")
            get = lambda n: np.asarray(hdul[n].data, dtype=bool)  # noqa: E731
            if get("MEDIANCR").shape != shape:
                raise InputError(f"--crmasks '{path.name}': masks are {get('MEDIANCR').shape[::-1]} "
                                 f"(NAXIS1, NAXIS2) but the exposures are {shape[::-1]}")
            hdr = hdul[0].header
            factors = np.array([hdr.get(f"FLUXF{k}", 1.0) for k in range(1, n_images + 1)], dtype=float)
            meancr = get("MEANCR") if "MEANCR" in names else np.zeros(shape, bool)
            aux = next((n for n in ("AUXCLEAN", "LAMEDIAN") if n in names), None)  # LAMEDIAN: older files
            lam = np.asarray(hdul[aux].data, np.float32) if aux else None
            repair = np.asarray(hdul["CLEANMIN"].data, np.float32) if "CLEANMIN" in names else None
            rp = []
            if "RPMEDIAN" in names:
                t = hdul["RPMEDIAN"].data
                rp = [tuple(int(v) for v in r) for r in zip(t["X_pixel"], t["Y_pixel"], t["X_width"], t["Y_width"])]
            dq = np.asarray(hdul["DQ"].data, np.uint16) if "DQ" in names else None
            return SavedMasks(get("MEDIANCR"), get("MEANCRT"),
                              np.stack([get(f"CRMASK{k}") for k in range(1, n_images + 1)]), meancr, factors,
                              lam, repair, str(hdr.get("UUID", "")), rp, dq)
    except OSError as exc:
        raise InputError(f"--crmasks '{path.name}': cannot be read as FITS ({exc})") from None
