"""The one parameter schema of megara-crdetect.

Every parameter the program understands is declared here, once, as a field of
a frozen dataclass: :class:`InputConfig` for the top level of the YAML file
(``images``, ``extnum``, ``gain``, ``rnoise``, ``bias``) and
:class:`CRMaskConfig` for the ``requirements`` block (general keys, ``la_*``
for L.A.Cosmic and ``mm_*`` for the Median-Minimum method).  Each field
carries its type ("kind"), default, allowed values or bounds, accepted
aliases and a one-line description in its metadata.  The command-line shell,
the numina recipe, the parameter reference (docs/parameters.md) and the FITS HISTORY cards are
all generated from these declarations.

Values are normalised on construction (``__post_init__``): YAML ``null`` and
the strings ``none``/``null`` mean "not given", lists may also arrive as
strings (numina turns them into their ``repr``), regions are FITS 1-based
inclusive ``[xmin, xmax, ymin, ymax]`` and pixels FITS ``[X, Y]``.  Invalid
values raise :class:`~megara_crdetect.errors.ConfigError` with a one-line
message naming the key, the value and what is allowed.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError

__all__ = [
    "ParamSpec",
    "InputConfig",
    "CRMaskConfig",
    "RunConfig",
    "parse_run_config",
    "schema",
    "schema_markdown",
    "check_against_data",
    "convert",
    "parse_requirements",
    "params_yaml",
]

_NONE_STRINGS = {"", "none", "null", "~"}
_REGION_STR = re.compile(
    r"^\[?\s*(-?\d+)\s*:\s*(-?\d+)\s*,\s*(-?\d+)\s*:\s*(-?\d+)\s*\]?$"
)


@dataclass(frozen=True)
class ParamSpec:
    """Declaration of one parameter (built from a dataclass field).

    Attributes
    ----------
    name : str
        Key in the YAML file (or recipe requirement name).
    kind : str
        Converter used: ``bool``, ``int``, ``float``, ``choice``, ``seed``,
        ``images``, ``regions``, ``region``, ``pixels``, ``replace_pixels``,
        ``offsets``, ``fixed_points``, ``flux_factor`` or ``float_pair``.
    default : object
        Default value (already normalised).
    doc : str
        One-line description.
    section : str
        ``top`` or ``requirements``.
    group : str
        ``input``, ``general``, ``la``, ``mm``, ``pc`` (PyCosmic), ``dc`` (deepCR) or ``nn`` (Cosmic-CoNN).
    choices : tuple of str or None
        Allowed values for ``choice`` parameters.
    low, high : float or None
        Inclusive bounds for numbers (``low_open``/``high_open`` make them
        exclusive).
    aliases : tuple of str
        Other accepted names (e.g. the reference's newer names).
    unit : str
        Unit of the value, for the documentation.
    nullable : bool
        Whether ``null``/``none`` is an allowed value.
    """

    name: str
    kind: str
    default: Any
    doc: str
    section: str = "requirements"
    group: str = "general"
    choices: tuple[str, ...] | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    aliases: tuple[str, ...] = ()
    unit: str = ""
    nullable: bool = False

    @property
    def key(self) -> str:
        """Name as the user sees it in the YAML file (with its section)."""
        return self.name if self.section == "top" else f"requirements.{self.name}"

    def allowed(self) -> str:
        """Human description of the allowed values (for messages and docs)."""
        text = _KIND_TEXT[self.kind]
        if self.choices:
            text = "one of " + " | ".join(self.choices)
        bounds = _bounds_text(self)
        if bounds:
            text += f" {bounds}"
        if self.kind == "float_pair":
            text += ", or [peak, tail]: two such numbers for a strict and a permissive pass"
        if self.nullable and self.kind not in {"regions", "pixels", "replace_pixels"}:
            text += " or null"
        return text


_KIND_TEXT = {
    "bool": "true or false",
    "int": "an integer",
    "float": "a number",
    "choice": "a string",
    "seed": "a non-negative integer",
    "images": "a list of at least 3 FITS file names",
    "regions": "a list of [xmin, xmax, ymin, ymax] integer regions (FITS, 1-based, inclusive)",
    "region": "[xmin, xmax, ymin, ymax] integers (FITS, 1-based, inclusive)",
    "pixels": "a list of [X, Y] integer pixels (FITS, 1-based)",
    "replace_pixels": "a list of [X, Y, X_width, Y_width] integers (FITS; odd widths)",
    "offsets": "a list with one [dx, dy] pair of numbers per exposure",
    "fixed_points": "a list of [x, y] or [x, y, weight] numbers",
    "flux_factor": "none, auto, a positive number or a list with one positive number per exposure",
    "float_pair": "a number",
    "file": "a FITS file name",
}


def _bounds_text(spec: ParamSpec) -> str:
    parts = []
    if spec.low is not None:
        parts.append(f"{'>' if spec.low_open else '>='} {_fmt_num(spec.low)}")
    if spec.high is not None:
        parts.append(f"{'<' if spec.high_open else '<='} {_fmt_num(spec.high)}")
    return " and ".join(parts)


def _fmt_num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(spec: ParamSpec, value: Any, why: str | None = None) -> ConfigError:
    why = why or f"expected {spec.allowed()}"
    return ConfigError(f"{spec.key} = {_show(value)}: {why}")


def param(default: Any, doc: str, kind: str, **meta: Any) -> Any:
    """Declare a schema field (a dataclass field with its metadata)."""
    return field(default=default, metadata={"doc": doc, "kind": kind, **meta})


# ---------------------------------------------------------------------------
# converters: raw value (YAML, numina, Python) -> normalised value
# ---------------------------------------------------------------------------


def _unstring(value: Any) -> Any:
    """Turn strings coming from numina/YAML into Python values when possible."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in _NONE_STRINGS:
        return None
    match = _REGION_STR.match(text)
    if match:
        return [int(g) for g in match.groups()]
    if text[:1] in "[(-+.0123456789":
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return value
    return value


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE_STRINGS)


def _to_bool(spec: ParamSpec, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in {"true", "yes", "on", "1"}:
        return True
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "off", "0"}:
        return False
    raise _fail(spec, value)


def _to_number(spec: ParamSpec, value: Any, integer: bool) -> int | float:
    raw = value
    value = _unstring(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(spec, raw)
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise _fail(spec, raw)
            value = int(value)
    else:
        value = float(value)
        if not math.isfinite(value):
            raise _fail(spec, raw, "expected a finite number")
    _check_bounds(spec, raw, value)
    return value


def _check_bounds(spec: ParamSpec, raw: Any, value: float) -> None:
    low_bad = spec.low is not None and (
        value <= spec.low if spec.low_open else value < spec.low
    )
    high_bad = spec.high is not None and (
        value >= spec.high if spec.high_open else value > spec.high
    )
    if low_bad or high_bad:
        raise _fail(spec, raw, f"must be {_bounds_text(spec)}")


def _choice_key(text: str) -> str:
    return text.strip().lower().replace("-", "_")


def _to_choice(spec: ParamSpec, value: Any) -> str:
    if isinstance(value, str):
        canonical = {_choice_key(c): c for c in spec.choices}.get(_choice_key(value))
        if canonical is not None:
            return canonical
    raise _fail(spec, value, f"expected one of {' | '.join(spec.choices)}")


def _to_float_pair(spec: ParamSpec, value: Any) -> float | tuple[float, float]:
    """A number, or a [peak, tail] pair (#16: numina 0.40's two-pass thresholds); equal pair -> one number."""
    raw = value
    value = _unstring(value)
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise _fail(spec, raw, "expected one number or a list of two numbers [peak, tail]")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
            raise _fail(spec, raw)
        peak, tail = (float(v) for v in value)
        for v in (peak, tail):
            _check_bounds(spec, raw, v)
        return peak if peak == tail else (peak, tail)
    return _to_number(spec, raw, integer=False)


def _int_list(spec: ParamSpec, raw: Any, item: Any, length: int) -> tuple[int, ...]:
    ok = (
        isinstance(item, (list, tuple))
        and len(item) == length
        and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
    )
    if not ok:
        raise _fail(spec, raw)
    return tuple(int(v) for v in item)


def _num_list(spec: ParamSpec, raw: Any, item: Any, lengths: tuple[int, ...]) -> tuple[float, ...]:
    ok = (
        isinstance(item, (list, tuple))
        and len(item) in lengths
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in item)
        and all(math.isfinite(v) for v in item)
    )
    if not ok:
        raise _fail(spec, raw)
    return tuple(float(v) for v in item)


def _as_items(spec: ParamSpec, value: Any) -> list | None:
    """Normalise a list-of-items parameter; None for not given."""
    value = _unstring(value)
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return None
    if not isinstance(value, (list, tuple)):
        raise _fail(spec, value)
    return list(value)


def _int_entries(spec: ParamSpec, value: Any, width: int, *, flat_any_length: bool = False) -> tuple:
    """A list of ``width``-integer entries; a single entry may be written without the outer list.

    A flat list of integers is one entry when it has ``width`` items (or any
    number with ``flat_any_length``, so that a wrong length is reported for
    the entry as a whole).
    """
    items = _as_items(spec, value)
    if items is None:
        return ()
    if (flat_any_length or len(items) == width) and all(isinstance(v, int) and not isinstance(v, bool)
                                                         for v in items):
        items = [items]
    return tuple(_int_list(spec, value, _unstring(it), width) for it in items)


def _to_regions(spec: ParamSpec, value: Any) -> tuple:
    regions = _int_entries(spec, value, 4, flat_any_length=True)
    for reg in regions:
        if reg[0] > reg[1] or reg[2] > reg[3] or min(reg) < 1:
            raise _fail(spec, value, f"region {list(reg)} must satisfy 1 <= xmin <= xmax and 1 <= ymin <= ymax")
    return regions


def _to_region(spec: ParamSpec, value: Any) -> tuple[int, int, int, int] | None:
    regions = _to_regions(spec, value)
    if not regions:
        return None
    if len(regions) != 1:
        raise _fail(spec, value, "expected a single region [xmin, xmax, ymin, ymax]")
    return regions[0]


def _to_pixels(spec: ParamSpec, value: Any) -> tuple:
    pixels = _int_entries(spec, value, 2)
    if any(min(p) < 1 for p in pixels):
        raise _fail(spec, value, "pixel coordinates are FITS 1-based: X >= 1 and Y >= 1")
    return pixels


def _to_replace(spec: ParamSpec, value: Any) -> tuple:
    entries = _int_entries(spec, value, 4)
    for x, y, xw, yw in entries:
        if min(x, y) < 1:
            raise _fail(spec, value, "X and Y are FITS 1-based: >= 1")
        if xw < 1 or yw < 1 or xw % 2 == 0 or yw % 2 == 0 or xw * yw < 3:
            raise _fail(spec, value, f"[{x}, {y}, {xw}, {yw}]: X_width and Y_width must be odd, >= 1, "
                        "and the box must hold at least 3 pixels")
    return entries


def _to_offsets(spec: ParamSpec, value: Any) -> tuple | None:
    items = _as_items(spec, value)
    if items is None:
        return None
    return tuple(_num_list(spec, value, _unstring(it), (2,)) for it in items)


def _to_fixed_points(spec: ParamSpec, value: Any) -> tuple:
    items = _as_items(spec, value)
    if items is None:
        return ()
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        items = [items]
    points = []
    for it in items:
        pt = _num_list(spec, value, _unstring(it), (2, 3))
        weight = pt[2] if len(pt) == 3 else DEFAULT_FIXED_POINT_WEIGHT
        if weight <= 0:
            raise _fail(spec, value, "fixed-point weights must be > 0")
        points.append((pt[0], pt[1], weight))
    return tuple(sorted(points))


DEFAULT_FIXED_POINT_WEIGHT = 1000.0


def _to_flux_factor(spec: ParamSpec, value: Any) -> str | tuple | None:
    if _is_none(value):
        return None
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    raw = value
    value = _unstring(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    if isinstance(value, (list, tuple)) and not value:
        return None
    if not isinstance(value, (list, tuple)):
        raise _fail(spec, raw)
    factors = _num_list(spec, raw, value, (len(value),))
    if any(f <= 0 for f in factors):
        raise _fail(spec, raw, "flux factors must be > 0")
    return factors


def _to_seed(spec: ParamSpec, value: Any) -> int | None:
    if _is_none(value):
        return None
    return _to_number(spec, value, integer=True)


def _to_images(spec: ParamSpec, value: Any) -> tuple[str, ...]:
    value = _unstring(value)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise _fail(spec, value)
    if len(value) < 3:
        raise _fail(spec, value, f"at least 3 images are needed, got {len(value)}")
    return tuple(value)


def _to_file(spec: ParamSpec, value: Any) -> str | None:
    if _is_none(value):
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(spec, value)
    return value.strip()


_CONVERTERS = {
    "bool": _to_bool,
    "int": lambda s, v: _to_number(s, v, integer=True),
    "float": lambda s, v: _to_number(s, v, integer=False),
    "choice": _to_choice,
    "seed": _to_seed,
    "images": _to_images,
    "regions": _to_regions,
    "region": _to_region,
    "pixels": _to_pixels,
    "replace_pixels": _to_replace,
    "offsets": _to_offsets,
    "fixed_points": _to_fixed_points,
    "flux_factor": _to_flux_factor,
    "float_pair": _to_float_pair,
    "file": _to_file,
}
_LIST_KINDS = {"regions", "region", "pixels", "replace_pixels", "offsets", "fixed_points",
               "flux_factor", "seed", "file"}


def convert(spec: ParamSpec, value: Any) -> Any:
    """Convert and validate one raw value according to its spec."""
    if spec.kind not in _LIST_KINDS and _is_none(value):
        if spec.nullable:
            return None
        raise _fail(spec, value, f"a value is required: {spec.allowed()}")
    return _CONVERTERS[spec.kind](spec, value)


# ---------------------------------------------------------------------------
# the schema itself
# ---------------------------------------------------------------------------

#: Detection methods: the auxiliary single-image detector alone, MMcosmic alone, or their union (mm_*).
CRMETHODS = ("lacosmic", "mmcosmic", "mm_lacosmic", "pycosmic", "mm_pycosmic", "deepcr", "mm_deepcr",
             "conn", "mm_conn")
#: Auxiliary detectors whose cleaned image can repair MEDIANCR (Cosmic-CoNN returns none).
CLEANING_METHODS = ("lacosmic", "pycosmic", "deepcr")

_LA = {"group": "la"}
_MM = {"group": "mm"}
_TOP = {"section": "top", "group": "input"}
_PC = {"group": "pc"}
_DC = {"group": "dc"}
_NN = {"group": "nn"}


class _Validated:
    """Mixin: convert every field through its spec on construction."""

    def __post_init__(self) -> None:
        for spec in self.specs():
            object.__setattr__(self, spec.name, convert(spec, getattr(self, spec.name)))
        self._cross_checks()

    def _cross_checks(self) -> None:  # pragma: no cover - overridden
        pass

    @classmethod
    def specs(cls) -> tuple[ParamSpec, ...]:
        """The :class:`ParamSpec` of every field, in declaration order."""
        return tuple(_spec_of(f) for f in fields(cls))

    def replace(self, **changes: Any):
        """Return a copy with some values changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _spec_of(f: dataclasses.Field) -> ParamSpec:
    meta = dict(f.metadata)
    return ParamSpec(name=f.name, default=f.default, doc=meta.pop("doc"), kind=meta.pop("kind"), **meta)


@dataclass(frozen=True)
class InputConfig(_Validated):
    """Top level of the YAML file: the exposures and the detector noise model."""

    images: tuple = param(
        None, "Input FITS exposures (paths relative to the YAML file's folder); at least 3", "images", **_TOP)
    extnum: int = param(0, "FITS extension (HDU number) holding the image; 0 is the primary", "int",
                        low=0, **_TOP)
    gain: float = param(1.0, "Detector gain", "float", low=0, low_open=True, unit="e-/ADU", **_TOP)
    rnoise: float = param(3.4, "Readout noise (raw MEGARA frames: electrons, as in megaradrp)", "float", low=0,
                          unit="ADU", **_TOP)
    bias: float = param(0.0, "Bias level subtracted from every exposure", "float", unit="ADU", **_TOP)
    # -- #15 raw MEGARA frames: megaradrp's calibrations (see docs/megara.md) ----------------
    master_bias: Any = param(None, "Master bias of megaradrp (master_bias.fits); required for raw MEGARA frames", "file",
                             nullable=True, **_TOP)
    master_dark: Any = param(None, "Master dark of megaradrp (master_dark.fits), for raw MEGARA frames", "file",
                             nullable=True, **_TOP)
    master_bpm: Any = param(None, "Bad-pixel mask of megaradrp (master_bpm.fits), for raw MEGARA frames", "file",
                            nullable=True, **_TOP)


@dataclass(frozen=True)
class CRMaskConfig(_Validated):
    """The ``requirements`` block: how cosmic rays are detected and repaired."""

    # -- general -------------------------------------------------------------
    crmethod: str = param(
        "mm_lacosmic", "Detection method: an auxiliary single-image detector (L.A.Cosmic, PyCosmic, deepCR, "
        "Cosmic-CoNN), the Median-Minimum diagram (mmcosmic), or their union (mm_*)",
        "choice", choices=CRMETHODS)
    use_lamedian: bool = param(
        False, "Repair MEDIANCR pixels with the median cleaned by the auxiliary detector (AUXCLEAN) instead "
        "of the minimum",
        "bool", aliases=("use_auxmedian",))
    interactive: bool = param(
        False, "Show the diagnostic figures in windows and wait for a key (q continue, x abort)", "bool")
    flux_factor: Any = param(
        None, "Relative flux of each exposure: none (all 1), auto (estimated), a number, or one per exposure",
        "flux_factor")
    flux_factor_regions: tuple = param(
        (), "Regions used by flux_factor: auto (empty: whole image)", "regions",
        aliases=("flux_factor_region",))
    apply_flux_factor_to: str = param(
        "original", "Apply the flux factors to the original exposures (normalise them) or to the simulated ones",
        "choice", choices=("original", "simulated"))
    dilation: int = param(1, "Pixels added around every detected cosmic-ray pixel (Chebyshev radius)",
                          "int", low=0)
    regions_to_be_skipped: tuple = param((), "Regions where nothing is flagged", "regions")
    pixels_to_be_flagged_as_cr: tuple = param(
        (), "Pixels always flagged as cosmic ray in MEDIANCR (and so in MEANCRT)", "pixels")
    pixels_to_be_ignored_as_cr: tuple = param((), "Pixels never flagged as cosmic ray", "pixels")
    pixels_to_be_replaced_by_local_median: tuple = param(
        (), "Pixels replaced by the median of an X_width x Y_width box in the repaired combinations",
        "replace_pixels")
    verify_cr: bool = param(False, "Ask, for every detected cosmic ray, whether to keep it (needs interactive)",
                            "bool")
    semiwindow: int = param(15, "Half size of the cut-outs of the per-cosmic-ray figures", "int",
                            low=1, unit="pixel")
    color_scale: str = param("zscale", "Colour scale of the cut-outs", "choice", choices=("minmax", "zscale"))
    maxplots: int = param(-1, "Maximum number of cosmic rays drawn in mediancr_identified_cr.pdf (-1: the "
                          "first 100; the candidates CSV, region file and review_edits.yaml list them all)",
                          "int", low=-1)
    # -- L.A.Cosmic --------------------------------------------------------------
    la_gain_apply: bool = param(
        True, "Accepted for compatibility; no effect (data are converted to electrons before L.A.Cosmic)",
        "bool", **_LA)
    la_sigclip: Any = param(5.0, "Laplacian-to-noise limit for cosmic-ray detection", "float_pair",
                              low=0, low_open=True, **_LA)
    la_sigfrac: Any = param(0.3, "Fractional detection limit for neighbouring pixels", "float_pair",
                              low=0, low_open=True, **_LA)
    la_objlim: Any = param(5.0, "Contrast limit between the Laplacian and the fine-structure image",
                             "float_pair", low=0, low_open=True, **_LA)
    la_satlevel: float = param(65535.0, "Saturation level of the raw image", "float", low=0, low_open=True,
                               unit="ADU", **_LA)
    la_niter: int = param(4, "Number of L.A.Cosmic iterations", "int", low=1, **_LA)
    la_sepmed: bool = param(True, "Use the separable median filter", "bool", **_LA)
    la_cleantype: str = param("meanmask", "Cleaning algorithm of L.A.Cosmic", "choice",
                              choices=("median", "medmask", "meanmask", "idw"), **_LA)
    la_fsmode: str = param("convolve", "How the fine-structure image is built", "choice",
                           choices=("median", "convolve"), **_LA)
    la_psfmodel: str = param("gaussxy", "PSF model of the convolution kernel (gaussxy: elliptical Gaussian)",
                             "choice", choices=("gauss", "moffat", "gaussx", "gaussy", "gaussxy"), **_LA)
    la_psffwhm_x: float = param(2.5, "PSF FWHM along X", "float", low=0, low_open=True, unit="pixel", **_LA)
    la_psffwhm_y: float = param(2.5, "PSF FWHM along Y", "float", low=0, low_open=True, unit="pixel", **_LA)
    la_psfsize: int = param(11, "Size of the PSF kernel (odd)", "int", low=3, unit="pixel", **_LA)
    la_psfbeta: float = param(4.765, "Moffat beta (la_psfmodel: moffat)", "float", low=0, low_open=True, **_LA)
    la_verbose: bool = param(False, "Let L.A.Cosmic print its own progress", "bool", **_LA)
    la_confirm_sigma: float = param(
        4.0, "Keep a detection of the auxiliary detector (L.A.Cosmic, PyCosmic, deepCR, Cosmic-CoNN) only where "
        "target - min2d exceeds this many noise sigmas at the brightest pixel of its group (0: keep all)", "float",
        low=0, **_LA)
    la_everywhere: bool = param(
        False, "With an mm_* method, also run the auxiliary detector on mean2d, every exposure and meancr (as the "
        "reference); by default it runs on median2d only", "bool", **_LA)
    la_padwidth: int = param(10, "Mirror padding added around the image before L.A.Cosmic", "int",
                             low=0, unit="pixel", **_LA)
    # -- Median-Minimum diagram ------------------------------------------------
    mm_xy_offsets: Any = param(None, "Content offset [dx, dy] of every exposure relative to the median",
                               "offsets", unit="pixel", **_MM)
    mm_crosscorr_region: Any = param(
        None, "Region where the offsets are measured by cross-correlation (null: exposures aligned)",
        "region", **_MM)
    mm_boundary_fit: str = param("spline", "Detection boundary: spline fit or piecewise line through fixed points",
                                 "choice", choices=("spline", "piecewise"), **_MM)
    mm_knots_splfit: int = param(3, "Total number of knots of the spline boundary", "int", low=2, **_MM)
    mm_fixed_points_in_boundary: tuple = param(
        (), "Points [x, y(, weight)] the boundary must follow (diagram units, electrons)", "fixed_points",
        **_MM)
    mm_nsimulations: int = param(10, "Simulated sets of exposures used to build the diagram", "int",
                                 low=1, **_MM)
    mm_niter_boundary_extension: int = param(4, "Iterations that push the spline boundary upwards", "int",
                                             low=0, **_MM)
    mm_weight_boundary_extension: float = param(
        10.0, "Weight factor (per iteration) of points above the previous boundary", "float", low=1, **_MM)
    mm_threshold: float = param(0.0, "Minimum median2d - min2d of a flagged pixel", "float", low=0,
                                unit="ADU", **_MM)
    mm_threshold_rnoise: Any = param(
        None, "Same as mm_threshold, in units of the readout noise (give one or the other)", "float",
        low=0, nullable=True, **_MM)
    mm_minimum_max2d_rnoise: float = param(
        5.0, "Minimum max2d of a flagged pixel, in units of the readout noise", "float", low=0, **_MM)
    mm_cr_coincidences: Any = param(
        None, "Hits per pixel that spoil the median; null: ceil(N/2) (2 for 3 exposures)", "int",
        low=2, nullable=True, **_MM)
    mm_pair_sigma: float = param(
        3.64, "Also flag in MEDIANCR a pixel in the cosmic-ray mask of an exposure whose median2d - min2d "
        "exceeds this many noise sigmas: the second hit of a coincidence (3.64: two-sided 1 % point of the "
        "difference of two exposures; 0: off; see Algorithm, item 4)", "float", low=0, **_MM)
    mm_seed: Any = param(123456, "Seed of the simulations (null: a different one each run)", "seed", low=0, **_MM)
    # -- #16: the rest of numina 0.40's parameter set ------------------------------------------------
    mm_photon_distribution: str = param(
        "poisson", "Photon noise of the simulated exposures: Poisson, or negative binomial (variance "
        "lam + lam**2 / mm_nbinom_shape, lam in electrons)", "choice", choices=("poisson", "nbinom"), **_MM)
    mm_nbinom_shape: float = param(1000.0, "Shape n of the negative binomial (mm_photon_distribution: nbinom)",
                                   "float", low=0, low_open=True, **_MM)
    mm_synthetic: str = param(
        "median", "Expected signal of each simulated exposure: the cleaned median, or the exposure itself "
        "cleaned (single; aligned exposures without flux factors)", "choice", choices=("median", "single"), **_MM)
    mm_hist2d_min_neighbors: int = param(
        0, "Empty every bin of the simulated diagram with fewer non-empty neighbours (of 8) before the "
        "boundary is computed (0: off)", "int", low=0, high=8, **_MM)
    mm_ydiag_max: float = param(
        0.0, "Top of the simulated diagram: simulated pixels with median2d - min2d above it are left out "
        "(0: no limit)", "float", low=0, unit="ADU", **_MM)
    mm_dilation: int = param(0, "Dilation of the MM detections before they join the other detections", "int",
                             low=0, unit="pixel", **_MM)
    pc_sigma_det: Any = param(5.0, "Detection limit of the Laplacian above the noise (PyCosmic)", "float_pair",
                              low=0, low_open=True, **_PC)
    pc_rlim: Any = param(1.2, "Contrast limit: Laplacian over that of the Gaussian-smoothed image",
                         "float_pair", low=0, low_open=True, **_PC)
    pc_iterations: int = param(5, "Detection iterations (each on the image cleaned by the previous ones)", "int",
                               low=1, **_PC)
    pc_fwhm_gauss_x: float = param(2.5, "FWHM along X of the Gaussian smoothing (instrumental resolution)",
                                   "float", low=0, low_open=True, unit="pixel", **_PC)
    pc_fwhm_gauss_y: float = param(2.5, "FWHM along Y of the Gaussian smoothing", "float", low=0, low_open=True,
                                   unit="pixel", **_PC)
    pc_replace_box_x: int = param(5, "X size of the median box that replaces a flagged pixel", "int", low=1,
                                  unit="pixel", **_PC)
    pc_replace_box_y: int = param(5, "Y size of the median box that replaces a flagged pixel", "int", low=1,
                                  unit="pixel", **_PC)
    pc_replace_error: float = param(
        1e6, "Error PyCosmic gives flagged pixels in its error image (accepted; no error image is written)",
        "float", **_PC)
    pc_increase_radius: int = param(0, "Grow the final PyCosmic mask by this many pixels", "int", low=0,
                                    unit="pixel", **_PC)
    pc_verbose: bool = param(False, "Log every PyCosmic iteration (at INFO)", "bool", **_PC)
    dc_mask: str = param("ACS-WFC", "Model of deepCR (shipped with the deepcr package)", "choice",
                         choices=("ACS-WFC", "WFC3-UVIS"), **_DC)
    dc_threshold: float = param(0.5, "Probability (deepCR) above which a pixel is a cosmic ray", "float",
                                low=0, high=1, low_open=True, high_open=True, **_DC)
    dc_verbose: bool = param(False, "Log the deepCR call (at INFO)", "bool", **_DC)
    nn_model: str = param("ground_imaging", "Cosmic-CoNN model (shipped with the cosmic-conn package)", "choice",
                          choices=("ground_imaging", "NRES", "HST_ACS_WFC"), **_NN)
    nn_threshold: float = param(0.5, "Cosmic-CoNN probability above which a pixel is a cosmic ray", "float",
                                low=0, high=1, low_open=True, high_open=True, **_NN)
    nn_verbose: bool = param(False, "Log the Cosmic-CoNN call (at INFO)", "bool", **_NN)
    dtype: str = param("float32", "Floating type of the combined images written (detection runs in float32)",
                       "choice", choices=("float32", "float64"))
    debug: bool = param(False, "Log at DEBUG level (as --log-level DEBUG)", "bool")
    # -- #15 megaradrp's MegaraCrDetection keys (raw MEGARA frames) --------------------------
    save_preprocessed: bool = param(
        False, "Also write the frames as preprocessed by megaradrp (preprocessed_k.fits, preprocessed_median.fits)",
        "bool")
    save_postprocessed: bool = param(
        False, "Also write every combination as postprocessed_<name>.fits in the work directory, as megaradrp "
        "(the combined_<name>.fits results are always written)", "bool")
    # -- issue #17: how real exposures differ (core/variation.py) -----------------
    mm_variation_model: bool = param(
        True, "Model how aligned exposures really differ (a local offset, ratio, shift and width change of the "
        "scene, fitted robustly over windows) and remove it before the detection; see docs/method.md, How real "
        "exposures differ",
        "bool", **_MM)
    mm_variation_window: int = param(
        15, "Size of the window (pixels) over which the coefficients of mm_variation_model are fitted", "int",
        low=5, **_MM)

    def _cross_checks(self) -> None:
        spec = {s.name: s for s in self.specs()}
        if self.verify_cr and not self.interactive:
            raise _fail(spec["verify_cr"], True, "verify_cr: true needs interactive: true")
        if self.mm_xy_offsets is not None and self.mm_crosscorr_region is not None:
            raise _fail(spec["mm_crosscorr_region"], list(self.mm_crosscorr_region),
                        "give either mm_xy_offsets or mm_crosscorr_region, not both")
        if self.mm_boundary_fit == "piecewise" and len(self.mm_fixed_points_in_boundary) < 2:
            raise _fail(spec["mm_fixed_points_in_boundary"],
                        [list(p[:2]) for p in self.mm_fixed_points_in_boundary],
                        "mm_boundary_fit: piecewise needs at least 2 fixed points")
        if self.mm_threshold_rnoise is not None and self.mm_threshold != 0.0:
            raise _fail(spec["mm_threshold_rnoise"], self.mm_threshold_rnoise,
                        "give either mm_threshold or mm_threshold_rnoise, not both")
        if self.use_lamedian and self.aux_method not in CLEANING_METHODS:
            raise _fail(spec["use_lamedian"], True, "use_lamedian: true needs crmethod lacosmic or mm_lacosmic "
                        "(or pycosmic, mm_pycosmic, deepcr, mm_deepcr: a detector that returns a cleaned image)")
        if self.mm_synthetic == "single" and (self.mm_xy_offsets is not None or self.mm_crosscorr_region is not None
                                              or self.flux_factor is not None):
            raise _fail(spec["mm_synthetic"], "single", "mm_synthetic: single needs aligned exposures without "
                        "flux factors (no mm_xy_offsets, mm_crosscorr_region or flux_factor)")
        if self.la_psfsize % 2 == 0:
            raise _fail(spec["la_psfsize"], self.la_psfsize, "must be odd")

    # -- derived quantities ---------------------------------------------------
    @property
    def uses_mm(self) -> bool:
        """Whether the Median-Minimum method runs."""
        return self.crmethod.startswith("mm")

    @property
    def aux_method(self) -> str | None:
        """The auxiliary single-image detector (lacosmic, pycosmic, deepcr, conn), None for mmcosmic."""
        name = self.crmethod.removeprefix("mm_")
        return None if name == "mmcosmic" else name

    @property
    def uses_aux(self) -> bool:
        """Whether an auxiliary single-image detector runs."""
        return self.aux_method is not None

    @property
    def uses_la(self) -> bool:
        """Whether L.A.Cosmic runs."""
        return self.aux_method == "lacosmic"

    def coincidences(self, n_images: int) -> int:
        """Number of hits that spoil the median of ``n_images`` exposures."""
        if self.mm_cr_coincidences is not None:
            return self.mm_cr_coincidences
        return max(2, (n_images + 1) // 2)

    def threshold_e(self, gain: float, rnoise_e: float) -> float:
        """``mm_threshold`` in electrons (from either of its two forms)."""
        if self.mm_threshold_rnoise is not None:
            return self.mm_threshold_rnoise * rnoise_e
        return self.mm_threshold * gain

    def history(self) -> list[str]:
        """``name = value`` lines of every parameter, for FITS HISTORY cards."""
        skip = {"la": not self.uses_la, "mm": not self.uses_mm, "pc": self.aux_method != "pycosmic",
                "dc": self.aux_method != "deepcr", "nn": self.aux_method != "conn"}
        shared = {"la_confirm_sigma", "la_everywhere"} if self.uses_aux else set()  # any auxiliary detector
        return [f"{s.name} = {_history_value(getattr(self, s.name))}"
                for s in self.specs() if not skip.get(s.group, False) or s.name in shared]


def _history_value(value: Any) -> str:
    if isinstance(value, tuple):
        return repr([list(v) if isinstance(v, tuple) else v for v in value])
    return repr(value) if isinstance(value, str) else str(value)


# ---------------------------------------------------------------------------
# the whole run: parsing a mapping (YAML document) with helpful errors
# ---------------------------------------------------------------------------

# Keys of numina's crmasks (0.40) that this program deliberately does not implement.
_REFERENCE_ONLY: dict[str, str] = {}  # #16: every key of numina 0.40 is now implemented


@dataclass(frozen=True)
class RunConfig:
    """A complete run: inputs (top level) and parameters (``requirements``)."""

    inputs: InputConfig
    params: CRMaskConfig

    @property
    def rnoise_e(self) -> float:
        """Readout noise in electrons."""
        return self.inputs.rnoise * self.inputs.gain


def schema() -> tuple[ParamSpec, ...]:
    """Every parameter, top level first, then the ``requirements`` block."""
    return InputConfig.specs() + CRMaskConfig.specs()


def _lookup(specs: Sequence[ParamSpec]) -> dict[str, ParamSpec]:
    table = {}
    for spec in specs:
        table[spec.name] = spec
        for alias in spec.aliases:
            table[alias] = spec
    return table


def _unknown_key(key: Any, section: str, here: dict, other: dict) -> ConfigError:
    where = "requirements." if section == "requirements" else ""
    if not isinstance(key, str):
        return ConfigError(f"{where}{key!r}: keys must be strings")
    if key in other:
        right = "the top level" if section == "requirements" else "the requirements block"
        return ConfigError(f"{where}{key}: this key belongs in {right} of the YAML file")
    if key in _REFERENCE_ONLY:
        return ConfigError(f"{where}{key}: not supported by megara-crdetect ({_REFERENCE_ONLY[key]})")
    close = difflib.get_close_matches(key, list(here), n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}{key}: unknown key{hint}")


def _collect(mapping: Mapping, specs: Sequence[ParamSpec], section: str, other: dict) -> dict:
    here = _lookup(specs)
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        spec = here.get(key)
        if spec is None:
            raise _unknown_key(key, section, here, other)
        if spec.name in values:
            raise _fail(spec, value, f"given twice (as '{spec.name}' and its alias)")
        values[spec.name] = value
    return values


def parse_requirements(mapping: Mapping | None) -> CRMaskConfig:
    """Build a :class:`CRMaskConfig` from a ``requirements`` mapping."""
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"requirements = {_show(mapping)}: expected a mapping of parameters")
    values = _collect(mapping, CRMaskConfig.specs(), "requirements", _lookup(InputConfig.specs()))
    return CRMaskConfig(**values)


def parse_run_config(document: Any) -> RunConfig:
    """Validate a whole parameter document (the YAML file, already loaded).

    Parameters
    ----------
    document : mapping
        Top-level keys ``images``, ``extnum``, ``gain``, ``rnoise``, ``bias``
        and ``requirements``.

    Returns
    -------
    RunConfig
        The validated configuration (image paths still as written).

    Raises
    ------
    ConfigError
        With a one-line message for the first problem found.
    """
    if not isinstance(document, Mapping):
        raise ConfigError(f"the parameter file must be a YAML mapping of keys, got {_show(document)}")
    top = {k: v for k, v in document.items() if k != "requirements"}
    values = _collect(top, InputConfig.specs(), "top", _lookup(CRMaskConfig.specs()))
    if "images" not in values:
        raise ConfigError("images: missing key: expected a list of at least 3 FITS file names")
    return RunConfig(InputConfig(**values), parse_requirements(document.get("requirements")))


# ---------------------------------------------------------------------------
# checks that need the data (image shape, number of exposures)
# ---------------------------------------------------------------------------


def check_against_data(params: CRMaskConfig, shape: tuple[int, int], n_images: int) -> None:
    """Check the parameters that depend on the image size and count.

    Regions and pixels must lie inside the image (FITS ``1 <= X <= NAXIS1``,
    ``1 <= Y <= NAXIS2``), per-exposure lists must have one entry per image
    and ``mm_cr_coincidences`` must leave at least one clean exposure.

    Raises
    ------
    ConfigError
        For the first violation found.
    """
    naxis2, naxis1 = shape
    specs = {s.name: s for s in CRMaskConfig.specs()}
    for name in ("regions_to_be_skipped", "flux_factor_regions", "mm_crosscorr_region"):
        value = getattr(params, name)
        regions = [value] if name == "mm_crosscorr_region" and value is not None else (value or ())
        for reg in regions:
            if reg[1] > naxis1 or reg[3] > naxis2:
                raise _fail(specs[name], list(reg), f"outside the image: needs xmax <= NAXIS1 = {naxis1} "
                            f"and ymax <= NAXIS2 = {naxis2}")
    reg = params.mm_crosscorr_region
    if reg is not None and (reg[1] - reg[0] + 1 < 8 or reg[3] - reg[2] + 1 < 8):
        raise _fail(specs["mm_crosscorr_region"], list(reg), "the region must be at least 8 x 8 pixels")
    for name in ("pixels_to_be_flagged_as_cr", "pixels_to_be_ignored_as_cr",
                 "pixels_to_be_replaced_by_local_median"):
        for entry in getattr(params, name):
            if entry[0] > naxis1 or entry[1] > naxis2:
                raise _fail(specs[name], list(entry), f"outside the image: needs X <= NAXIS1 = {naxis1} "
                            f"and Y <= NAXIS2 = {naxis2}")
    for name in ("flux_factor", "mm_xy_offsets"):
        value = getattr(params, name)
        if isinstance(value, tuple) and len(value) not in ({1, n_images} if name == "flux_factor"
                                                           else {n_images}):
            raise _fail(specs[name], [list(v) if isinstance(v, tuple) else v for v in value],
                        f"expected one entry per exposure ({n_images}), got {len(value)}")
    n_c = params.coincidences(n_images)
    if n_c >= n_images:
        raise _fail(specs["mm_cr_coincidences"], n_c,
                    f"must be smaller than the number of exposures ({n_images})")


# ---------------------------------------------------------------------------
# documentation
# ---------------------------------------------------------------------------


def _doc_default(spec: ParamSpec) -> str:
    value = spec.default
    if value is None or value == ():
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def schema_markdown() -> str:
    """The parameter reference as a Markdown table (docs/parameters.md)."""
    lines = ["| key | default | allowed values | unit | description |",
             "|---|---|---|---|---|"]
    for spec in schema():
        key = f"`{spec.name}`" + "".join(f" (alias `{a}`)" for a in spec.aliases)
        cells = [key, f"`{_doc_default(spec)}`", spec.allowed(), spec.unit, spec.doc]
        lines.append("| " + " | ".join(_md_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def _md_cell(text: str) -> str:
    """A Markdown table cell: ``|`` escaped (it would split the row, even inside code)."""
    return text.replace("|", "\\|")


if __name__ == "__main__":  # pragma: no cover - documentation helper
    print(schema_markdown())


def _yaml_value(value: Any) -> str:
    if value is None or value == ():
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        inner = [list(v) if isinstance(v, tuple) else v for v in value]
        return repr(inner).replace("'", "")
    return str(value)


def params_yaml(images: Sequence[str], *, inputs: Mapping[str, Any] | None = None,
                requirements: Mapping[str, Any] | None = None, title: str = "") -> str:
    """A complete, commented parameter file (every key, with its description).

    Parameters
    ----------
    images : sequence of str
        File names to list under ``images``.
    inputs : mapping, optional
        Top-level values other than the defaults (``gain``, ``rnoise``...).
    requirements : mapping, optional
        ``requirements`` values other than the defaults.
    title : str
        First comment line.

    Returns
    -------
    str
        YAML text that :func:`parse_run_config` accepts.
    """
    top = InputConfig(images=tuple(images), **(inputs or {}))
    req = parse_requirements(requirements or {})
    lines = ["#" + "-" * 78, f"# {title or 'megara-crdetect parameters'}",
             "# Regions are [xmin, xmax, ymin, ymax] and pixels [X, Y] in FITS convention (first pixel 1).",
             "#" + "-" * 78, "images:"]
    lines += [f"  - {name}" for name in images]
    for spec in InputConfig.specs()[1:]:
        lines.append(f"{spec.name}: {_yaml_value(getattr(top, spec.name))}  # {spec.doc}"
                     + (f" [{spec.unit}]" if spec.unit else ""))
    lines.append("requirements:")
    heading = {"general": "General", "la": "L.A.Cosmic (van Dokkum 2001) through ccdproc/astroscrappy",
               "mm": "Median-Minimum diagnostic diagram", "pc": "PyCosmic (Husemann et al. 2012)",
               "dc": "deepCR (Zhang & Bloom 2020; extra [ml])", "nn": "Cosmic-CoNN (Xu et al. 2023; extra [ml])"}
    specs = CRMaskConfig.specs()
    for group in dict.fromkeys(s.group for s in specs):
        lines.append(f"  # -- {heading[group]} " + "-" * max(1, 60 - len(heading[group])))
        for spec in (s for s in specs if s.group == group):
            lines.append(f"  {spec.name}: {_yaml_value(getattr(req, spec.name))}  # {spec.doc}"
                         + (f" [{spec.unit}]" if spec.unit else ""))
    return "\n".join(lines) + "\n"
