"""Raw MEGARA frames: preprocessed by megaradrp itself before the detection.

A shell, not core: megaradrp (the MEGARA DRP, optional extra ``.[megara]``)
does the preprocessing exactly as in its own ``MegaraCrDetection`` recipe.
Its recipe class builds its usual two reduction flows with ``init_filters``
(overscan and trim, then master bias, master dark, bad-pixel mask and the
per-amplifier gains of the instrument profile selected by ``INSCONF`` and
``DATE-OBS``); they are run here on every frame, and the detection then gets
trimmed float32 frames in electrons (gain 1, bias 0, read noise in
electrons), in megaradrp's 4112 x 4096 geometry.  Nothing of the detector
geometry is re-implemented: :data:`RAW_SHAPES` only *recognises* raw frames.

Frames that are not raw MEGARA frames (already in electrons, other
instruments, cut-outs) keep the standalone path.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import types
import uuid as uuidlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits

from .errors import InputError

__all__ = ["CALIBRATION_TYPES", "find_calibration", "RAW_SHAPES", "IDENTITY_CARDS", "EXTRA_HINT", "is_raw_megara", "megaradrp_available",
           "require_megaradrp", "Preprocessed", "megara_profile", "preprocess", "load_raw", "identity_cards",
           "stamp_products", "stamp_hdulist"]

_log = logging.getLogger(__name__)

#: numpy shapes of raw MEGARA frames (4196 x 4212 NAXIS1 x NAXIS2 unbinned, and the binned read modes):
#: used only to recognise a raw frame, the processing takes its geometry from megaradrp's profile.
RAW_SHAPES = ((4212, 4196), (2106, 4146), (4212, 2148), (2106, 2098))
#: Cards copied from the first frame into every product: what identifies a MEGARA image.
IDENTITY_CARDS = ("INSTRUME", "INSCONF", "DATE-OBS", "EXPTIME", "VPH", "INSMODE", "OBJECT", "OBSMODE")
#: How to install megaradrp with megara-crdetect.
EXTRA_HINT = "pip install 'megara-crdetect[megara]'"


def is_raw_megara(header: fits.Header, shape: tuple[int, ...]) -> bool:
    """Whether a frame is a raw MEGARA frame (``INSTRUME = 'MEGARA'`` and a raw detector size)."""
    return str(header.get("INSTRUME", "")).strip().upper() == "MEGARA" and tuple(shape) in RAW_SHAPES


def megaradrp_available() -> bool:
    """Whether megaradrp can be imported."""
    try:
        import megaradrp  # noqa: F401
    except ImportError:
        return False
    return True


def require_megaradrp(what: str) -> None:
    """Raise :class:`InputError` naming the extra when megaradrp is missing.

    Parameters
    ----------
    what : str
        The input that needs it (e.g. ``"frame a.fits"``).
    """
    if not megaradrp_available():
        raise InputError(f"{what} is a raw MEGARA frame (INSTRUME = 'MEGARA', with overscan): its "
                         f"preprocessing needs megaradrp, the optional extra: {EXTRA_HINT}")


@dataclass
class Preprocessed:
    """Frames preprocessed by megaradrp.

    Attributes
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Trimmed frames in electrons (overscan, bias, dark, bad pixels, gains done).
    headers : list of astropy.io.fits.Header
        Primary header of each preprocessed frame (megaradrp's cards and HISTORY).
    profile : str
        uuid of the MEGARA instrument profile used.
    notes : list of str
        What was done, one line each (for HISTORY cards of the products).
    calibrations : dict
        ``master_bias``/``master_dark``/``master_bpm`` -> UUID of the file used (or ``"none"``).
    """

    stack: np.ndarray
    headers: list
    profile: str
    notes: list = field(default_factory=list)
    calibrations: dict = field(default_factory=dict)


@functools.lru_cache(maxsize=1)
def _megara_drp():
    import megaradrp.loader

    return megaradrp.loader.load_drp()


def megara_profile(hdul: fits.HDUList, name: str):
    """The MEGARA instrument configuration of a raw frame (from ``INSCONF`` and ``DATE-OBS``).

    Parameters
    ----------
    hdul : astropy.io.fits.HDUList
        The first raw frame.
    name : str
        Its name, for messages.

    Returns
    -------
    numina instrument configuration, configured with the frame (read mode, binning).

    Raises
    ------
    InputError
        Unknown profile, a profile of another instrument or not valid on ``DATE-OBS``.
    """
    from numina.instrument.assembly import assembly_instrument, load_panoply_store

    drp = _megara_drp()
    key, date, keyname = drp.select_profile_image(hdul)
    store = load_panoply_store(types.SimpleNamespace(drps={drp.name: drp}))
    hdr = hdul[0].header
    try:
        ins = assembly_instrument(store, key, date, by_key=keyname)
    except (ValueError, KeyError) as exc:
        raise InputError(f"frame {name}: no MEGARA instrument profile for INSCONF = "
                         f"{hdr.get('INSCONF', '(none)')!r} on DATE-OBS = {hdr.get('DATE-OBS', '(none)')!r} "
                         f"({exc}); megaradrp's profiles: 'numina show-instruments -o'") from None
    if ins.name != "MEGARA":
        raise InputError(f"frame {name}: INSCONF = {key!r} is a profile of {ins.name!r}, not of MEGARA")
    ins.configure_with_image(hdul)
    return ins


#: megaradrp's product types of the calibrations (their names label the calibration-tree folders).
CALIBRATION_TYPES = {"master_bias": "MasterBias", "master_dark": "MasterDark", "master_bpm": "MasterBPM"}


def find_calibration(key: str, profile: str, roots: Sequence) -> str | None:
    """A calibration in megaradrp's calibration tree (``<root>/MEGARA/<profile>/<Type>/``).

    numina's own search (:func:`numina.dal.diskfiledal.build_product_path`,
    with megaradrp's DRP and product type) is run from every root in turn,
    so the tree that ``megaradrp-inittree`` builds for ``instrument: MEGARA``
    OBs is found for ours too.

    Returns
    -------
    str or None
        Path of the first file found (None when there is none).
    """
    import megaradrp.ntypes
    from numina.dal.diskfiledal import build_product_path
    from numina.exceptions import NoResultFound

    drp = _megara_drp()
    tipo = getattr(megaradrp.ntypes, CALIBRATION_TYPES[key])()
    ob = types.SimpleNamespace(instrument="MEGARA", tags={})
    for root in roots:
        try:
            found = build_product_path(drp, str(root), profile, key, tipo, ob)
        except NoResultFound:
            continue
        path, kind = found if isinstance(found, tuple) else (found, 0)
        if kind == 0:
            return path
    return None


def _uuid_of(frame) -> str:
    if frame is None:
        return "none"
    with frame.open() as hdul:
        return str(hdul[0].header.get("UUID", "unknown"))


def _check_instrument(frame, name: str) -> None:
    """Every frame must be a raw MEGARA frame too (headers only: nothing is processed yet)."""
    with frame.open() as hdul:
        hdr = hdul[0].header
    inst = str(hdr.get("INSTRUME", "")).strip()
    if inst.upper() != "MEGARA":
        raise InputError(f"frame {name}: INSTRUME = {inst!r}, but the first frame is a raw MEGARA frame; "
                         "all frames must be raw MEGARA frames")
    shape = tuple(hdr.get(f"NAXIS{k}", 0) for k in range(hdr.get("NAXIS", 0), 0, -1))
    if tuple(shape) not in RAW_SHAPES:
        raise InputError(f"frame {name}: {tuple(shape)[::-1]} (NAXIS1, NAXIS2) is not the size of a raw "
                         "MEGARA frame, but the first frame is one")


def _check_calibration(frame, key: str, shape: tuple[int, int]) -> None:
    if frame is None:
        return
    label = f"{key} = {getattr(frame, 'filename', None) or '(in memory)'}"
    try:
        with frame.open() as hdul:
            data = hdul[0].data
            inst = str(hdul[0].header.get("INSTRUME", "MEGARA")).strip()
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: cannot be read as FITS ({exc})") from None
    if inst.upper() != "MEGARA":
        raise InputError(f"{label}: INSTRUME = {inst!r}; a MEGARA {key} is needed")
    if data is None or data.shape != shape:
        got = "no image" if data is None else f"{data.shape[::-1]} (NAXIS1, NAXIS2)"
        raise InputError(f"{label}: {got}, but megaradrp's trimmed frames are {shape[::-1]}")


def preprocess(frames: Sequence, names: Sequence[str], *, master_bias, master_dark=None,
               master_bpm=None) -> Preprocessed:
    """Run megaradrp's preprocessing (as in its ``MegaraCrDetection``) on raw MEGARA frames.

    Parameters
    ----------
    frames : sequence of numina.types.dataframe.DataFrame
        Raw MEGARA frames (at least 3).
    names : sequence of str
        Their names, for messages.
    master_bias : numina DataFrame
        megaradrp's ``master_bias.fits`` (required, as in megaradrp).
    master_dark, master_bpm : numina DataFrame, optional
        Applied when given.

    Returns
    -------
    Preprocessed

    Raises
    ------
    InputError
        megaradrp missing, no master bias, frames or calibrations of another
        instrument or size, unknown profile.
    """
    require_megaradrp(f"frame {names[0]}")
    if master_bias is None:
        raise InputError("master_bias: required for raw MEGARA frames (as in megaradrp's MegaraCrDetection); "
                         "give megaradrp's master_bias.fits (MegaraBiasImage) in the requirements")
    from megaradrp.recipes.calibration.crdetect import CRMasksRecipe
    from numina.core import ObservationResult

    for frame, name in zip(frames, names):
        _check_instrument(frame, name)
    for key, cal in (("master_bias", master_bias), ("master_dark", master_dark), ("master_bpm", master_bpm)):
        filename = getattr(cal, "filename", None)
        if cal is not None and getattr(cal, "frame", None) is None and filename and not os.path.exists(filename):
            target = f" (-> {os.readlink(filename)})" if os.path.islink(filename) else ""
            raise InputError(f"{key} = {os.path.basename(filename)}: file not found{target}")
    with frames[0].open() as first:
        ins = megara_profile(first, names[0])
    profile = str(ins.origin.uuid)
    ob = ObservationResult(instrument="MEGARA", mode="MegaraCrDetection")
    ob.frames = list(frames)
    ob.configuration = ins
    ob.profile = profile
    recipe = CRMasksRecipe()
    rinput = recipe.create_input(obresult=ob, master_bias=master_bias, master_dark=master_dark,
                                 master_bpm=master_bpm)
    flow_ot, flow_1im = recipe.init_filters(rinput, ins)
    stack, headers = None, []
    with contextlib.ExitStack() as opened:
        for k, (frame, name) in enumerate(zip(frames, names)):
            hdul = opened.enter_context(frame.open())
            trimmed = flow_ot(fits.HDUList([h.copy() for h in hdul]))
            if stack is None:  # the calibrations must fit the trimmed frames before they are used
                for key, cal in (("master_bias", master_bias), ("master_dark", master_dark),
                                 ("master_bpm", master_bpm)):
                    _check_calibration(cal, key, trimmed[0].data.shape)
            hdul = flow_1im(trimmed)
            data = hdul[0].data
            if stack is None:
                stack = np.empty((len(frames),) + data.shape, dtype=np.float32)
            elif data.shape != stack.shape[1:]:
                raise InputError(f"frame {name}: trimmed to {data.shape[::-1]} but the first frame to "
                                 f"{stack.shape[:0:-1]}; all frames must have the same read mode")
            stack[k] = data
            headers.append(hdul[0].header.copy())
    gains = ins.get_property("detector.scan")
    cals = {key: _uuid_of(cal) for key, cal in (("master_bias", master_bias), ("master_dark", master_dark),
                                                ("master_bpm", master_bpm))}
    notes = [f"Preprocessed by megaradrp as in its MegaraCrDetection; units: electrons (BUNIT)",
             f"MEGARA profile {profile}: overscan, trim to {stack.shape[2]} x {stack.shape[1]}",
             f"gain1 {gains['gain1']} gain2 {gains['gain2']} e-/ADU (profile)"]
    notes += [f"{key} {value}" if value != "none" else f"{key} not applied" for key, value in cals.items()]
    _log.info("megaradrp preprocessing: %d frames, profile %s, %s", len(frames), profile,
              ", ".join(f"{k} {v}" for k, v in cals.items()))
    return Preprocessed(stack, headers, profile, notes, cals)


def load_raw(cfg, base_dir) -> tuple | None:
    """The command line's raw MEGARA frames: ``(cfg, InputStack, Preprocessed)``, or None for other frames.

    Parameters
    ----------
    cfg : RunConfig
        The validated parameter file (``master_bias`` etc. at its top level,
        paths relative to ``base_dir`` like the images).
    base_dir : path-like
        Folder of the parameter file.

    Returns
    -------
    tuple or None
        The configuration with gain 1 and bias 0 (the data are electrons),
        the preprocessed stack and what was done; None when the first image
        is not a raw MEGARA frame (the standalone path).
    """
    import dataclasses
    from pathlib import Path

    from numina.types.dataframe import DataFrame

    from .errors import ConfigError
    from .io import InputStack

    base = Path(base_dir)
    paths = [(base / p) if not Path(p).is_absolute() else Path(p) for p in cfg.inputs.images]
    calibs = {key: getattr(cfg.inputs, key) for key in CALIBRATION_TYPES}
    try:
        header = fits.getheader(paths[0], cfg.inputs.extnum)
    except (OSError, IndexError, KeyError):
        return None  # reported by the standalone reader
    shape = tuple(header.get(f"NAXIS{k}", 0) for k in range(header.get("NAXIS", 0), 0, -1))
    if not is_raw_megara(header, shape):
        given = [k for k, v in calibs.items() if v is not None]
        if given:
            raise ConfigError(f"{given[0]}: given, but '{paths[0].name}' is not a raw MEGARA frame (INSTRUME = "
                              "'MEGARA' with overscan); megaradrp's calibrations apply only to raw MEGARA frames")
        return None
    for key, neutral in (("gain", 1.0), ("bias", 0.0)):
        if getattr(cfg.inputs, key) != neutral:
            raise ConfigError(f"{key} = {getattr(cfg.inputs, key)}: not used with raw MEGARA frames (megaradrp's "
                              "profile gives the gain of each amplifier and master_bias the bias); remove it")
    frames = []
    for k, path in enumerate(paths):
        if not path.exists():
            raise InputError(f"images[{k}] = '{path.name}': file not found ({path})")
        frames.append(DataFrame(filename=str(path)))
    cal_frames = {}
    for key, value in calibs.items():
        path = None if value is None else ((base / value) if not Path(value).is_absolute() else Path(value))
        if path is not None and not path.exists():
            raise InputError(f"{key} = '{value}': file not found ({path})")
        cal_frames[key] = None if path is None else DataFrame(filename=str(path))
    prep = preprocess(frames, [p.name for p in paths], **cal_frames)
    inputs = dataclasses.replace(cfg.inputs, gain=1.0, bias=0.0)
    return dataclasses.replace(cfg, inputs=inputs), InputStack(prep.stack, paths, prep.headers), prep


def identity_cards(header: fits.Header) -> list[tuple[str, object, str]]:
    """The MEGARA identifying cards of a frame header, as ``(key, value, comment)``."""
    return [(key, header[key], header.comments[key]) for key in IDENTITY_CARDS if key in header]


def stamp_products(products: dict, first_header: fits.Header, prep: Preprocessed) -> None:
    """Give every product the MEGARA identity of the first frame and a note of the preprocessing.

    The crmasks product keeps its own UUID; the combined images get a new
    one (they are new images) and the HISTORY notes.
    """
    for hdul in products.values():
        stamp_hdulist(hdul, first_header, prep)


def stamp_hdulist(hdul: fits.HDUList, first_header: fits.Header, prep: Preprocessed) -> fits.HDUList:
    """:func:`stamp_products` for one product (an HDUList); returns it."""
    if not isinstance(hdul, fits.HDUList):
        return hdul  # a CSV table
    hdr = hdul[0].header
    for key, value, comment in identity_cards(first_header):
        hdr[key] = (value, comment)
    if "UUID" not in hdr:
        hdr["UUID"] = (str(uuidlib.uuid4()), "Identifier of this image")
    hdr["MEGPROF"] = (prep.profile, "MEGARA profile used to preprocess")
    for key, card in (("master_bias", "MBIASUID"), ("master_dark", "MDARKUID"), ("master_bpm", "MBPMUID")):
        hdr[card] = (prep.calibrations.get(key, "none"), f"UUID of the {key} applied")
    for line in prep.notes:
        hdr.add_history(line)
    return hdul
