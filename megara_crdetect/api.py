"""The Python interface: :func:`detect` and :class:`CRMasks`, in the astropy style.

>>> import megara_crdetect as mcr                                  # doctest: +SKIP
>>> masks = mcr.detect(["a.fits", "b.fits", "c.fits"], gain=1.25, rnoise=3.4)  # doctest: +SKIP
>>> clean = masks.combine("mediancr")      # astropy.nddata.CCDData in electrons  # doctest: +SKIP

:func:`detect` takes the exposures as :class:`~astropy.nddata.CCDData`,
:class:`~astropy.nddata.NDData`, 2-D arrays or FITS file names, the detector
as ``gain``/``rnoise``/``bias`` and every other parameter of the
``requirements`` block of the YAML file as a keyword argument.  The
parameters are validated by the same schema as the YAML file
(:mod:`megara_crdetect.config`) and the detection and the combinations are
made by the same functions as the command line and the numina recipe
(:func:`megara_crdetect.runner.detect`,
:func:`megara_crdetect.runner.iter_combinations`), so the three give the
same pixels.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, NDData, VarianceUncertainty

from .config import RunConfig, check_against_data, parse_run_config
from .core.pipeline import COMBINATIONS, CRMaskResult
from .dq import DQ_BITS, unreliable
from .errors import ConfigError, InputError
from .io import OutputStage, read_images, stack_images, to_electrons

__all__ = ["detect", "CRMasks", "FLAG_REPAIRED", "FLAG_CR_LEFT", "FLAG_NO_EXPOSURE"]

_log = logging.getLogger(__name__)

#: ``flags`` bit (the DQ plane's ``CR_REPAIRED``): a cosmic ray was replaced or left out in this combination.
FLAG_REPAIRED = DQ_BITS["CR_REPAIRED"][0]
#: ``flags`` bit (``CR_LEFT``): a detected cosmic ray is still in the value of this combination (also ``mask``).
FLAG_CR_LEFT = DQ_BITS["CR_LEFT"][0]
#: ``flags`` bit (``CR_ALL_EXPOSURES``): masked in every exposure (``problematic_pixels.csv``; also ``mask``).
FLAG_NO_EXPOSURE = DQ_BITS["CR_ALL_EXPOSURES"][0]

_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "EXTEND", "BZERO", "BSCALE",
               "PCOUNT", "GCOUNT", "XTENSION", "EXTNAME", "BUNIT", "CHECKSUM", "DATASUM", "BLANK"}
_NOT_INHERITED = ("UUID", "CHECKSUM", "DATASUM", *_STRUCTURAL)
_ELECTRON_UNITS = (u.electron,)
_ADU_UNITS = (u.adu, u.count, u.dimensionless_unscaled)


# ---------------------------------------------------------------------------
# inputs: CCDData, NDData, arrays or file names -> one float32 stack
# ---------------------------------------------------------------------------


def _is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def _unit_of(item: Any) -> u.UnitBase | None:
    unit = getattr(item, "unit", None)
    return None if unit is None else u.Unit(unit)


def _kind(index: int, item: Any) -> str:
    """``electron`` or ``adu`` for one exposure (file names and bare arrays are ADU, as in the YAML file)."""
    unit = _unit_of(item)
    if unit is None or any(unit == x for x in _ADU_UNITS):
        return "adu"
    if any(unit == x for x in _ELECTRON_UNITS):
        return "electron"
    raise ConfigError(f"images[{index}]: unit '{unit}' not supported: expected adu (or count, or no unit) "
                      "or electron")


def _as_items(images: Any) -> list:
    if isinstance(images, (NDData, str, os.PathLike)):
        raise ConfigError("images: expected a sequence of at least 3 exposures, got a single one")
    if isinstance(images, np.ndarray):
        if images.ndim != 3:
            raise ConfigError(f"images: a {images.ndim}-D array; expected a (N, ny, nx) stack or a list of "
                              "2-D exposures")
        return list(images)
    if not isinstance(images, Iterable):
        raise ConfigError(f"images = {type(images).__name__}: expected a sequence of CCDData, NDData, "
                          "2-D arrays or FITS file names")
    items = list(images)
    if len(items) < 3:
        raise ConfigError(f"images: at least 3 exposures are needed, got {len(items)}")
    return items


def _label(index: int, item: Any) -> str:
    return f"images[{index}] = '{Path(item).name}'" if _is_path(item) else f"images[{index}]"


def _name(index: int, item: Any) -> str:
    """The name recorded in the product headers (file name, else the position)."""
    return str(item) if _is_path(item) else f"images[{index}]"


def _header(item: Any) -> fits.Header:
    meta = getattr(item, "meta", None) or {}
    header = fits.Header()
    for key, value in meta.items():
        if str(key).upper() in _STRUCTURAL or not isinstance(value, (str, int, float, bool, np.number)):
            continue
        try:
            header[str(key)] = value
        except (ValueError, KeyError):  # not a valid FITS keyword or value: not carried over
            continue
    return header


def _load(items: list, extnum: int) -> tuple[np.ndarray, list[fits.Header]]:
    """Read file names, take the data of the others; float32 stack in the units given."""
    headers: list[fits.Header] = [fits.Header() for _ in items]
    paths = {k: item for k, item in enumerate(items) if _is_path(item)}
    read = read_images(list(paths.values()), extnum=extnum) if paths else None
    if read is not None:
        for (k, _), header in zip(paths.items(), read.headers):
            headers[k] = header
    planes = iter(read.data) if read is not None else iter(())

    def data():
        for k, item in enumerate(items):
            if k in paths:
                yield _label(k, item), next(planes)
                continue
            array = np.asarray(item.data if isinstance(item, NDData) else item)
            if array.ndim != 2 or not np.issubdtype(array.dtype, np.number):
                raise InputError(f"{_label(k, item)}: a {array.ndim}-D {array.dtype} array; a 2-D numeric "
                                 "image is needed")
            headers[k] = _header(item)
            yield _label(k, item), array

    return stack_images(data(), len(items)), headers


def _detector_value(name: str, value: Any, gain: float | None) -> float | None:
    """A detector value as the schema wants it: a number, or a Quantity in its unit."""
    if value is None or not isinstance(value, u.Quantity):
        return value
    want = {"gain": u.electron / u.adu, "rnoise": u.adu, "bias": u.adu}[name]
    try:
        return float(value.to_value(want))
    except u.UnitConversionError:
        if name in ("rnoise", "bias") and value.unit.is_equivalent(u.electron):
            return float(value.to_value(u.electron)) / (gain or 1.0)
        raise ConfigError(f"{name} = {value}: expected a number or a Quantity in {want}") from None


def _config(names: list[str], gain, rnoise, bias, extnum: int, params: dict) -> RunConfig:
    top: dict[str, Any] = {"images": names, "extnum": extnum}
    gain = _detector_value("gain", gain, None)
    for key, value in (("gain", gain), ("rnoise", _detector_value("rnoise", rnoise, gain)),
                       ("bias", _detector_value("bias", bias, gain))):
        if value is not None:
            top[key] = value
    return parse_run_config({**top, "requirements": params})


# ---------------------------------------------------------------------------
# the result
# ---------------------------------------------------------------------------


class CRMasks:
    """The cosmic rays found in N exposures, and the combinations they allow.

    Made by :func:`detect`; not meant to be built directly.

    Attributes
    ----------
    mediancr : ndarray of bool, shape (ny, nx)
        Cosmic rays that survive the median (hit in at least two exposures).
    meancrt : ndarray of bool, shape (ny, nx)
        Cosmic rays of the mean (includes ``mediancr``).
    crmasks : ndarray of bool, shape (N, ny, nx)
        Cosmic rays of each exposure.
    meancr : ndarray of bool, shape (ny, nx)
        Cosmic rays left in the ``meancr`` combination.
    problematic : ndarray of bool, shape (ny, nx)
        Pixels masked in every exposure.
    result : CRMaskResult
        Everything the detection found (diagrams, boundaries, timings...).
    config : RunConfig
        The validated parameters.
    uuid : str
        Identifier of these masks (``UUID`` of ``crmasks.fits``, ``MASKUUID`` of the combinations).
    """

    def __init__(self, *, stack_e: np.ndarray, result: CRMaskResult, config: RunConfig, products: dict,
                 names: Sequence[str], headers: Sequence[fits.Header], bad=None):
        from .runner import run_dq

        self._stack = stack_e
        self.result = result
        self.config = config
        self._products = products
        self._names = list(names)
        self._headers = list(headers)
        self.uuid = products["crmasks.fits"][0].header["UUID"]
        # what every combination is built with, as the command line builds it: bad pixels, DQ, input headers
        self._described = dict(bad=bad, dq=run_dq(result, config, bad, stack_e.shape[1:]), headers=self._headers)

    mediancr = property(lambda self: self.result.mediancr, doc="MEDIANCR mask (bool, (ny, nx)).")
    meancrt = property(lambda self: self.result.meancrt, doc="MEANCRT mask (bool, (ny, nx)).")
    crmasks = property(lambda self: self.result.crmasks, doc="CRMASK1..N (bool, (N, ny, nx)).")
    meancr = property(lambda self: self.result.meancr, doc="MEANCR mask (bool, (ny, nx)).")
    problematic = property(lambda self: self.result.problematic, doc="Pixels masked in every exposure.")

    @property
    def summary(self) -> dict:
        """Counts of masked pixels, flux factors, offsets and expected false MM detections.

        Keys: ``mediancr``, ``meancrt``, ``meancr``, ``problematic``, ``crmask1``...
        (pixels), ``mediancr_mm``, ``mediancr_la``, ``mediancr_pair``... (how the
        MEDIANCR pixels were found), ``flux_factors``, ``offsets`` ((dx, dy) per
        exposure), ``expected_false`` (per diagram) and ``timings`` (seconds per step).
        """
        r = self.result
        return {**r.counts, "flux_factors": [float(f) for f in r.flux_factors],
                "offsets": [(float(dx), float(dy)) for dx, dy in r.offsets],
                "expected_false": {k: float(v) for k, v in r.expected_false.items()},
                "timings": dict(r.timings)}

    @property
    def mediancr_table(self) -> str:
        """``mediancr_identified.csv``: one line per MEDIANCR pixel (FITS coordinates, how found)."""
        return self._products["mediancr_identified.csv"]

    def to_hdulist(self) -> fits.HDUList:
        """``crmasks.fits`` as written by the command line (a copy)."""
        return fits.HDUList([h.copy() for h in self._products["crmasks.fits"]])

    def _hdulist(self, name: str) -> fits.HDUList:
        from .runner import iter_combinations

        if name not in COMBINATIONS:
            raise ConfigError(f"combination = {name!r}: expected one of {' | '.join(COMBINATIONS)}")
        (_, hdul), = iter_combinations(self._stack, self.result, self.config, masks_uuid=self.uuid,
                                       images=self._names, combinations=(name,), **self._described)
        return hdul

    def combine(self, name: str = "mediancr") -> CCDData:
        """One combination of the exposures as a :class:`~astropy.nddata.CCDData`.

        Parameters
        ----------
        name : str
            ``mean``, ``median``, ``min`` (no repair), ``mediancr`` (median with
            MEDIANCR repaired), ``meancrt`` (mean with MEANCRT repaired),
            ``meancr`` (mean of the exposures without their cosmic rays) or
            ``meancr2`` (``meancr`` with MEANCR repaired).

        Returns
        -------
        CCDData
            ``data`` in electrons (float32, the exposures divided by their
            flux factors), ``uncertainty`` a
            :class:`~astropy.nddata.VarianceUncertainty` (the ``VARIANCE`` of
            ``combined_<name>.fits``, electron**2), ``unit`` electron, ``meta``
            the header of the first exposure updated with the product's
            header (``COMBINED``, ``MASKUUID``, ``GAIN``...; the number of
            exposures used per pixel is :meth:`exposure_map`). ``flags`` is
            the product's ``DQ`` plane (bits :data:`megara_crdetect.dq.DQ_BITS`,
            among them :data:`FLAG_REPAIRED`, :data:`FLAG_CR_LEFT`,
            :data:`FLAG_NO_EXPOSURE`); ``mask`` marks the pixels without a
            trustworthy value (:data:`megara_crdetect.dq.UNRELIABLE`: a detected
            cosmic ray still in the value, masked in every exposure, no data).

        Raises
        ------
        ConfigError
            Unknown combination name.
        """
        hdul = self._hdulist(name)
        flags = np.asarray(hdul["DQ"].data)
        mask = unreliable(flags)
        meta = self._headers[0].copy() if self._headers else fits.Header()
        for key in _NOT_INHERITED:  # identifiers of the first exposure, not of the combination
            meta.remove(key, ignore_missing=True, remove_all=True)
        for card in hdul[0].header.cards:
            if card.keyword in ("HISTORY", "COMMENT"):
                meta.add_history(card.value) if card.keyword == "HISTORY" else meta.add_comment(card.value)
            elif card.keyword not in _STRUCTURAL:
                meta[card.keyword] = (card.value, card.comment)
        return CCDData(hdul[0].data, unit=u.electron, meta=meta, mask=mask, flags=flags,
                       uncertainty=VarianceUncertainty(hdul["VARIANCE"].data, unit=u.electron ** 2))

    def exposure_map(self, name: str = "mediancr") -> np.ndarray:
        """Number of exposures used for each pixel of a combination (``MAP`` of the product, int16)."""
        return np.asarray(self._hdulist(name)["MAP"].data)

    def write(self, output_dir: str | os.PathLike) -> list[Path]:
        """Write the products of the command line (without the figures) into ``output_dir``.

        ``crmasks.fits``, ``mediancr_identified.csv``, ``problematic_pixels.csv`` and
        ``combined_<name>.fits`` for every combination; all or nothing.

        Returns
        -------
        list of Path
            The files written.
        """
        from .runner import iter_combinations, write_product

        with OutputStage(output_dir) as stage:
            for name, product in self._products.items():
                write_product(stage, name, product)
            for name, product in iter_combinations(self._stack, self.result, self.config,
                                                   masks_uuid=self.uuid, images=self._names, **self._described):
                write_product(stage, name, product)
            return stage.commit()

    def __repr__(self) -> str:
        n, ny, nx = self.crmasks.shape
        c = self.result.counts
        return (f"<CRMasks {n} exposures {nx} x {ny}: MEDIANCR {c.get('mediancr', 0)}, "
                f"MEANCRT {c.get('meancrt', 0)}, MEANCR {c.get('meancr', 0)} pixels>")


def detect(images: Sequence[Any] | np.ndarray, *, gain: float | u.Quantity | None = None,
           rnoise: float | u.Quantity | None = None, bias: float | u.Quantity | None = None, extnum: int = 0,
           progress: Callable[[str, int, int], None] | None = None, **params: Any) -> CRMasks:
    """Detect the cosmic rays of N >= 3 equivalent exposures.

    Parameters
    ----------
    images : sequence of CCDData, NDData, 2-D array or path-like, or an (N, ny, nx) array
        The exposures. File names are read from HDU ``extnum`` like the
        ``images`` of the YAML file. Data with a ``unit`` of electron are
        used as they are (bias subtracted); data in adu (or count, or
        without a unit), files and bare arrays are raw: ``(data - bias) * gain``.
    gain : float or Quantity, optional
        Electrons per ADU (default 1). With data in electrons the gain only
        converts the parameters given in ADU (``rnoise``, ``la_satlevel``,
        ``mm_threshold``).
    rnoise : float or Quantity, optional
        Readout noise in ADU (default 3.4), or a Quantity in adu or electron.
    bias : float or Quantity, optional
        Bias level in ADU subtracted from raw data (default 0).
    extnum : int
        HDU holding the image in the files.
    progress : callable, optional
        ``progress(step, done, total)`` for long steps.
    **params
        Any key of the ``requirements`` block (see the parameter reference),
        e.g. ``crmethod="mmcosmic"``, ``dilation=2``, ``flux_factor="auto"``.

    Returns
    -------
    CRMasks

    Raises
    ------
    ConfigError
        A bad parameter or unit (one line naming the key, the value and what is allowed).
    InputError
        A missing or unreadable file, different sizes, NaN pixels.

    Examples
    --------
    >>> import megara_crdetect as mcr                                         # doctest: +SKIP
    >>> masks = mcr.detect(ccds, gain=1.25 * u.electron / u.adu, rnoise=3.4)  # doctest: +SKIP
    >>> masks.combine("meancr2").write("clean.fits")                          # doctest: +SKIP
    """
    from .runner import bad_pixels_of
    from .runner import detect as run_detect

    items = _as_items(images)
    kinds = {_kind(k, item) for k, item in enumerate(items)}
    if len(kinds) > 1:
        raise ConfigError("images: some exposures are in electron and some in adu; give them all in one unit")
    electrons = kinds == {"electron"}
    if electrons and bias not in (None, 0):
        raise ConfigError(f"bias = {bias}: the images are in electron (bias already subtracted); leave bias out")
    cfg = _config([_name(k, item) for k, item in enumerate(items)], gain, rnoise, bias, extnum, params)
    if cfg.params.interactive:
        raise ConfigError("requirements.interactive = True: no figure windows in the Python interface; "
                          "use numina-crmasks, or the review files it writes")
    stack, headers = _load(items, cfg.inputs.extnum)
    check_against_data(cfg.params, stack.shape[1:], stack.shape[0])
    if not electrons:
        stack = to_electrons(stack, gain=cfg.inputs.gain, bias=cfg.inputs.bias)
    bad = bad_pixels_of(stack, cfg, [f"images[{k}] = {name!r}" for k, name in enumerate(cfg.inputs.images)])
    result, products = run_detect(stack, cfg, images=cfg.inputs.images, progress=progress, bad=bad,
                                  headers=headers)
    return CRMasks(stack_e=stack, result=result, config=cfg, products=products, names=cfg.inputs.images,
                   headers=headers, bad=bad)

