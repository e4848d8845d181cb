"""The numina recipe of megara-crdetect: ``MegaraCrDetection``.

The recipe only declares and translates.  Its requirements are generated
from the parameter schema (:mod:`megara_crdetect.config`): one
``numina.core.Parameter`` per key of the ``requirements`` block of the
standalone YAML file, plus the detector keys ``gain``, ``rnoise`` and
``bias`` of its top level, each with the schema's default, description,
choices, aliases and validation.  ``run()`` reads the frames of the observation
result into a float32 stack and calls the same functions as the command line
(:func:`~megara_crdetect.runner.build_products`: the detection and the product builders
of :mod:`megara_crdetect.products` and
:func:`~megara_crdetect.runner.build_combinations`).

numina quirks handled here
--------------------------
numina converts a requirement with the type of its Parameter *before* any
validator sees it: a ``str`` Parameter turns YAML ``null`` into ``"None"``
and lists into their ``repr``, a ``bool`` one turns the string ``"False"``
into True, an ``int`` one truncates 2.7 to 2, and a ``float`` one raises a
plain ``ValueError`` (shown by ``numina run`` as a traceback) for ``abc``.
The Parameters are therefore typed with :class:`SchemaValue`, which keeps
the raw value, and their validator converts it with the schema, raising
:class:`numina.exceptions.ValidationError` (``numina run`` prints it as one
``ERROR:`` line) with the schema's message.  The values the recipe receives
are the normalised ones, in plain YAML form (lists, ``None`` for "not
given"); ``run()`` validates them together with
:func:`~megara_crdetect.config.parse_requirements` (cross-checks) and
:func:`~megara_crdetect.config.check_against_data` (image size).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from numina.core import BaseRecipe, Parameter, Requirement, Result
from numina.core.recipes import timeit
from numina.core.requirements import ObservationResultRequirement
from numina.exceptions import ValidationError
from numina.types.datatype import DataType

from megara_crdetect import __version__ as _VERSION
from megara_crdetect.config import (CRMaskConfig, InputConfig, ParamSpec, RunConfig, check_against_data,
                                    parse_requirements)
from megara_crdetect.config import convert as convert_value
from megara_crdetect.core.pipeline import COMBINATIONS, CRMaskResult
from megara_crdetect.errors import ConfigError, InputError, UserAbort
from megara_crdetect import megara
from megara_crdetect.io import file_sha256, stack_images, to_electrons
from megara_crdetect.runner import build_products

from ..datamodel import MegaraCrDataModel
from ..products import CRCombined, CRMasks, MasterBias, MasterBPM, MasterDark

__all__ = ["MegaraCrDetection", "SchemaValue", "schema_specs", "schema_parameter", "alias_parameter",
           "requirements_mapping", "read_frames", "first_frame", "DETECTOR_KEYS", "CALIBRATION_KEYS",
           "RECIPE_DEFAULTS"]

_log = logging.getLogger(__name__)

#: Top-level keys of the standalone YAML file that are recipe requirements too.
DETECTOR_KEYS = ("gain", "rnoise", "bias")
#: Top-level keys that are files: megaradrp's calibrations, numina requirements of these types.
CALIBRATION_KEYS = {"master_bias": MasterBias, "master_dark": MasterDark, "master_bpm": MasterBPM}
#: Defaults of the recipe that differ from the schema: no windows inside a pipeline
#: unless the observation result asks for them.
RECIPE_DEFAULTS = {"interactive": False}

_PYTHON_TYPE = {"bool": bool, "int": int, "float": float, "choice": str, "seed": int}
_COMBINATION_DOC = {
    "mean": "plain mean of the exposures (no repair)",
    "median": "plain median of the exposures (no repair)",
    "min": "minimum of the exposures",
    "mediancr": "median with the MEDIANCR pixels repaired",
    "meancrt": "mean with the MEANCRT pixels repaired",
    "meancr": "mean of the exposures without their CRMASKk pixels",
    "meancr2": "meancr with its remaining MEANCR pixels repaired",
}


# ---------------------------------------------------------------------------
# requirements generated from the schema
# ---------------------------------------------------------------------------


class SchemaValue(DataType):
    """numina type of one schema parameter: the raw value, validated by the schema.

    Parameters
    ----------
    spec : ParamSpec
        Declaration of the parameter.

    Notes
    -----
    :meth:`convert` is the identity, so none of numina's lossy conversions
    (``str``, ``bool``, ``int``, ``float`` of the raw value) happens; the
    Parameter's validator (see :func:`schema_parameter`) does the conversion.
    :meth:`descriptive_name` is what ``numina show-recipes`` prints as type.
    """

    def __init__(self, spec: ParamSpec) -> None:
        super().__init__(_PYTHON_TYPE.get(spec.kind, object))
        self.spec = spec

    def convert(self, obj: Any) -> Any:
        """Keep the raw value (YAML, request, command line or default)."""
        return obj

    def validate(self, obj: Any) -> bool:
        """Check a value with the schema (``numina run --validate``)."""
        _schema_convert(self.spec, obj)
        return True

    def descriptive_name(self) -> str:
        """The allowed values, as the schema describes them."""
        return self.spec.allowed()

    def __repr__(self) -> str:
        return f"SchemaValue({self.spec.name}: {self.spec.allowed()})"


def _plain(value: Any) -> Any:
    """A normalised schema value in YAML form: tuples as lists, empty as None."""
    if isinstance(value, tuple):
        return [list(v) if isinstance(v, tuple) else v for v in value] or None
    return value


def _schema_convert(spec: ParamSpec, value: Any) -> Any:
    """Convert one raw value with the schema; ConfigError becomes numina's ValidationError."""
    try:
        return _plain(convert_value(spec, value))
    except ConfigError as exc:
        raise ValidationError(str(exc)) from None


def schema_specs() -> tuple[ParamSpec, ...]:
    """The specs that become requirements: detector keys, then the requirements block."""
    top = tuple(s for s in InputConfig.specs() if s.name in DETECTOR_KEYS)
    return top + CRMaskConfig.specs()


def _parameter(spec: ParamSpec, default: Any, doc: str) -> Parameter:
    def validator(value: Any) -> Any:
        return _schema_convert(spec, value)

    param = Parameter(SchemaValue(spec), doc, choices=list(spec.choices) if spec.choices else None,
                      validator=validator)
    # A non-plain "value" leaves numina's default unset; numina converts this
    # one (through the validator) whenever the requirement is not given.
    param.default = default
    return param


def schema_parameter(spec: ParamSpec) -> Parameter:
    """The numina Parameter of one schema key.

    Parameters
    ----------
    spec : ParamSpec
        Declaration of the key.

    Returns
    -------
    numina.core.Parameter
        Typed :class:`SchemaValue`, optional, with the schema default (or
        :data:`RECIPE_DEFAULTS`) in YAML form, the description (and unit),
        the choices and a validator that converts with the schema and raises
        :class:`numina.exceptions.ValidationError`.
    """
    doc = spec.doc + (f" [{spec.unit}]" if spec.unit else "")
    return _parameter(spec, _plain(RECIPE_DEFAULTS.get(spec.name, spec.default)), doc)


def alias_parameter(spec: ParamSpec, alias: str) -> Parameter:
    """A hidden Parameter for another accepted name of a schema key.

    numina's own ``alias=`` finds the value, but ``numina run`` (strict by
    default) then rejects the key: its check of unused OB requirements knows
    only the requirement names.  So every alias is a requirement of its own,
    hidden from ``numina show-recipes``, whose default None means "not
    given"; ``run()`` merges it into its key (see :func:`requirements_mapping`).
    """
    param = _parameter(spec, None, f"{alias}: other name of {spec.name} (hidden)")
    param.hidden = True
    return param


def _aliases() -> dict[str, ParamSpec]:
    return {alias: spec for spec in CRMaskConfig.specs() for alias in spec.aliases}


def requirements_mapping(rinput) -> dict[str, Any]:
    """The ``requirements`` block of a recipe input, for :func:`parse_requirements`.

    A key given through an alias replaces the key itself when the key has its
    default value; otherwise both are passed on and the schema reports the
    key as given twice.
    """
    values = {s.name: getattr(rinput, s.name) for s in CRMaskConfig.specs()}
    for alias, spec in _aliases().items():
        given = getattr(rinput, alias)
        if given is None:
            continue
        if values.get(spec.name) == _plain(RECIPE_DEFAULTS.get(spec.name, spec.default)):
            del values[spec.name]
        values[alias] = given
    return values


def _combination_doc(name: str) -> str:
    return f"combined_{name}.fits: {_COMBINATION_DOC.get(name, name)}"


def _combination_results() -> dict[str, Result]:
    return {f"combined_{name}": Result(CRCombined, _combination_doc(name))
            for name in COMBINATIONS}


# ---------------------------------------------------------------------------
# frames
# ---------------------------------------------------------------------------


def _frame_name(frame, number: int) -> str:
    filename = getattr(frame, "filename", None)
    return os.path.basename(filename) if filename else f"frame{number}"


def _missing_name(filename: str) -> str:
    """A missing frame; for numina's dangling link in the work directory, also its target."""
    if os.path.islink(filename):
        return f"{filename} (-> {os.readlink(filename)})"
    return filename


def _check_frames(frames: Sequence) -> list[str]:
    if len(frames) < 3:
        raise InputError(f"obresult: at least 3 frames are needed, got {len(frames)}")
    names = [_frame_name(f, k) for k, f in enumerate(frames, 1)]
    missing = [_missing_name(f.filename) for f in frames
               if getattr(f, "frame", None) is None and not os.path.exists(f.filename)]
    if missing:
        raise InputError(f"frames not found: {', '.join(missing)}")
    return names


def first_frame(frames: Sequence) -> tuple[list[str], fits.Header, tuple[int, ...]]:
    """Names of the frames, header and image shape of the first one (to choose the path)."""
    names = _check_frames(frames)
    with frames[0].open() as hdul:
        hdr = hdul[0].header.copy()
    return names, hdr, tuple(hdr.get(f"NAXIS{k}", 0) for k in range(hdr.get("NAXIS", 0), 0, -1))


def read_frames(frames: Sequence) -> tuple[np.ndarray, list[str]]:
    """Primary images of the frames of an observation result as one float32 stack.

    Parameters
    ----------
    frames : sequence of numina.types.dataframe.DataFrame
        At least 3 frames, all of the same shape.

    Returns
    -------
    stack : ndarray, shape (N, ny, nx), float32
        Pixel values as stored (ADU).
    names : list of str
        File name (no folder) of each frame.

    Raises
    ------
    InputError
        Fewer than 3 frames, missing files (numina links missing frames as
        dangling symbolic links), no 2-D primary image, shapes that differ or
        non-finite pixels.
    """
    names = _check_frames(frames)

    def items():
        for name, frame in zip(names, frames):
            with frame.open() as hdul:
                data = hdul[0].data
                if data is None or data.ndim != 2:
                    raise InputError(f"frame {name}: the primary HDU holds no 2-D image")
                yield f"frame {name}", data

    return stack_images(items(), len(frames), what="frames"), names


def frame_provenance(frames) -> tuple[list, list[str]]:
    """Primary headers of the frames and SHA-256 of their files (none when a frame has no file)."""
    headers = []
    for frame in frames:
        with frame.open() as hdul:
            headers.append(hdul[0].header.copy())
    files = [getattr(f, "filename", None) for f in frames]
    on_disk = all(getattr(f, "frame", None) is None and n and os.path.exists(n) for f, n in zip(frames, files))
    return headers, [file_sha256(Path(n)) for n in files] if on_disk else []


# ---------------------------------------------------------------------------
# unknown OB keys: the schema's message instead of numina's traceback
# ---------------------------------------------------------------------------


def unknown_key_message(key: str) -> str:
    """The one-line message for an OB requirement the recipe does not have (did you mean...?)."""
    try:
        parse_requirements({key: None})
    except ConfigError as exc:
        text = str(exc)
        if "unknown key" in text or "not supported" in text:
            return text
    return f"requirements.{key}: not a requirement of MegaraCrDetection (the OB lists its images under frames:)"


class _Requirements(dict):
    """The recipe's requirements; asking for a name it does not have raises the schema's message.

    ``numina run`` checks every OB requirement with ``key in recipe.requirements()``
    and turns an unknown one into a traceback (strict inputs); raising
    :class:`numina.exceptions.ValidationError` here gives one ``ERROR:`` line
    with the did-you-mean hint instead (also with ``--loose-reqs``).
    """

    def __contains__(self, key) -> bool:
        if dict.__contains__(self, key) or not isinstance(key, str):
            return dict.__contains__(self, key)
        raise ValidationError(unknown_key_message(key))


# ---------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------


def _calibration_roots(runinfo: dict) -> list[str]:
    """Where megaradrp's calibration tree may be: numina's ``calibsdir`` (``.numina.cfg`` of the
    base folder, as ``megaradrp-inittree`` writes it), ``<base>/calibrations``, the data folder, the base."""
    import configparser

    work = runinfo.get("work_dir") or os.getcwd()
    base = os.path.dirname(os.path.abspath(work))
    roots = []
    cfg = configparser.ConfigParser()
    if cfg.read(os.path.join(base, ".numina.cfg")) and cfg.has_option("tool.run", "calibsdir"):
        roots.append(os.path.join(base, cfg.get("tool.run", "calibsdir")))
    roots.append(os.path.join(base, "calibrations"))
    if runinfo.get("data_dir"):
        roots.append(runinfo["data_dir"])
    roots.append(base)
    return roots


class MegaraCrDetection(BaseRecipe):
    """Cosmic-ray masks and repaired combinations of N >= 3 equivalent exposures.

    Requirements: ``obresult`` (the frames, primary HDU, in ADU) and one
    Parameter per schema key (``gain``, ``rnoise``, ``bias`` and every key of
    the ``requirements`` block of the standalone YAML file), so the same
    ``requirements:`` block works in both.  ``interactive`` defaults to
    false here.

    Products: ``crmasks`` (``crmasks.fits``) and ``combined_<name>`` for every
    combination (``combined_mediancr.fits``, ...).  With intermediate results
    (always on in ``numina run``) the tables ``mediancr_identified.csv`` and
    ``problematic_pixels.csv`` are written into the work directory.
    """

    __version__ = _VERSION
    logger = _log
    datamodel = MegaraCrDataModel()

    obresult = ObservationResultRequirement()
    # one Parameter per schema key, in schema order
    locals().update({spec.name: schema_parameter(spec) for spec in schema_specs()})
    locals().update({alias: alias_parameter(spec, alias) for alias, spec in _aliases().items()})
    # megaradrp's calibrations (raw MEGARA frames only), by path or through numina's data lookup
    locals().update({key: Requirement(kind(), next(s.doc for s in InputConfig.specs() if s.name == key),
                                      optional=True) for key, kind in CALIBRATION_KEYS.items()})

    crmasks = Result(CRMasks, "crmasks.fits: MEDIANCR, MEANCRT, CRMASK1..N and MEANCR masks")
    # one Result per combination: numina writes each as combined_<name>.fits
    locals().update(_combination_results())

    @classmethod
    def requirements(cls) -> dict:
        """numina's requirements, as a mapping that reports unknown names (see :class:`_Requirements`)."""
        return _Requirements(super().requirements())

    @timeit
    def run(self, rinput):
        """Detect, build the products and return them (numina writes them)."""
        try:
            params = parse_requirements(requirements_mapping(rinput))
            names, header, shape = first_frame(rinput.obresult.frames)
            detector = {k: getattr(rinput, k) for k in DETECTOR_KEYS}
            if megara.is_raw_megara(header, shape):
                products = self._megara(rinput, params, names, detector)
            else:
                self._no_calibrations(rinput, names[0])
                stack, names = read_frames(rinput.obresult.frames)
                cfg = RunConfig(InputConfig(images=tuple(names), **detector), params)
                self.logger.info("%d frames (%s), crmethod %s", len(names), ", ".join(names), params.crmethod)
                check_against_data(params, stack.shape[1:], stack.shape[0])
                products = self._process(to_electrons(stack, gain=cfg.inputs.gain, bias=cfg.inputs.bias),
                                         cfg, names, *frame_provenance(rinput.obresult.frames))
        except (ConfigError, InputError) as exc:
            raise ValidationError(str(exc)) from None
        except UserAbort as exc:  # key x in the interactive review
            raise ValidationError(f"aborted: {exc or 'by the user'}; nothing was written") from None
        for hdul in products.values():
            self.set_base_headers(hdul[0].header)
        return self.create_result(**products)

    @staticmethod
    def _no_calibrations(rinput, first: str) -> None:
        given = [key for key in CALIBRATION_KEYS if getattr(rinput, key) is not None]
        if given:
            raise InputError(f"{given[0]}: given, but {first} is not a raw MEGARA frame (INSTRUME = 'MEGARA' "
                             "with overscan); megaradrp's calibrations apply only to raw MEGARA frames")

    def _megara(self, rinput, params, names: list[str], detector: dict) -> dict:
        """Raw MEGARA frames: megaradrp's preprocessing, then the detection in electrons."""
        for key, neutral in (("gain", 1.0), ("bias", 0.0)):
            if detector[key] != neutral:
                raise ConfigError(f"{key} = {detector[key]}: not used with raw MEGARA frames (megaradrp's "
                                  "profile gives the gain of each amplifier and master_bias the bias); remove it")
        frames = rinput.obresult.frames
        prep = megara.preprocess(frames, names, **self._calibrations(rinput, frames, names))
        cfg = RunConfig(InputConfig(images=tuple(names), gain=1.0, bias=0.0, rnoise=detector["rnoise"]), params)
        self.logger.info("%d raw MEGARA frames (%s) preprocessed by megaradrp to %d x %d electrons; rnoise %s e-, "
                         "crmethod %s", len(names), ", ".join(names), prep.stack.shape[2], prep.stack.shape[1],
                         detector["rnoise"], params.crmethod)
        check_against_data(params, prep.stack.shape[1:], prep.stack.shape[0])
        if params.save_preprocessed:
            self._save_preprocessed(prep)
        products = self._process(prep.stack, cfg, names, *frame_provenance(frames))
        megara.stamp_products(products, prep.headers[0], prep)
        return products

    def _calibrations(self, rinput, frames, names) -> dict:
        """megaradrp's calibrations: as given, else from megaradrp's calibration tree (``MEGARA/<profile>/``)."""
        from numina.types.dataframe import DataFrame

        given = {key: getattr(rinput, key) for key in CALIBRATION_KEYS}
        if all(v is not None for v in given.values()) or not megara.megaradrp_available():
            return given
        with frames[0].open() as first:
            profile = str(megara.megara_profile(first, names[0]).origin.uuid)
        roots = _calibration_roots(self.runinfo)
        for key, value in given.items():
            if value is None:
                path = megara.find_calibration(key, profile, roots)
                if path is not None:
                    self.logger.info("%s: %s (megaradrp's calibration tree)", key, path)
                    given[key] = DataFrame(filename=path)
        return given

    def _save_preprocessed(self, prep) -> None:
        """``preprocessed_k.fits`` and ``preprocessed_median.fits`` in the work directory (as megaradrp)."""
        width = len(str(len(prep.stack)))
        for k, (data, hdr) in enumerate(zip(prep.stack, prep.headers), 1):
            self.save_intermediate_img(fits.HDUList([fits.PrimaryHDU(data, header=hdr)]),
                                       f"preprocessed_{k:0{width}d}.fits")
        self.save_intermediate_array(np.median(prep.stack, axis=0).astype(np.float32), "preprocessed_median.fits")

    def _process(self, stack_e: np.ndarray, cfg: RunConfig, names: list[str], headers=(), checksums=()) -> dict:
        """As the command line: detection, masks, tables, combinations (in memory)."""
        result, products = build_products(stack_e, cfg, images=names, review=self._review(cfg), headers=headers,
                                          checksums=checksums)
        self._log_counts(result)
        if self.intermediate_results:  # the CSV tables, as intermediate files (work directory)
            for name, text in products.items():
                if name.endswith(".csv"):
                    Path(name).write_text(text)
            if cfg.params.save_postprocessed:  # megaradrp's names for the combinations
                for name, hdul in products.items():
                    if name.startswith("combined_"):
                        self.save_intermediate_img(hdul, name.replace("combined_", "postprocessed_"))
        return {Path(name).stem: p for name, p in products.items() if name.endswith(".fits")}

    @staticmethod
    def _review(cfg: RunConfig) -> Callable | None:
        """The interactive review, only when the requirements ask for it."""
        if not cfg.params.interactive:
            return None
        try:
            from megara_crdetect.review.interactive import make_review
        except ImportError:
            raise ConfigError("requirements.interactive = True: the interactive review "
                              "(megara_crdetect.review.interactive) is not available") from None
        return make_review(cfg)

    def _log_counts(self, result: CRMaskResult) -> None:
        c = result.counts
        self.logger.info("MEDIANCR %d, MEANCRT %d, MEANCR %d pixels; CRMASKk %s; problematic %d",
                         c.get("mediancr", 0), c.get("meancrt", 0), c.get("meancr", 0),
                         ", ".join(str(c[k]) for k in sorted(c) if k.startswith("crmask")),
                         c.get("problematic", 0))
