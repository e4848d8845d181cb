"""One complete run: read the exposures, detect, build and write every product.

Shared by the command-line shell and (for building the products) the numina
recipe.  The detection itself happens in the pure core
(:func:`megara_crdetect.core.pipeline.compute_crmasks`); here are only the
translations between files and arrays.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import megara
from .badpixels import BadPixels, check_levels, find_bad_pixels
from .errors import InputError
from .config import RunConfig, check_against_data
from .core.combine import problematic_pixels
from .core.pipeline import COMBINATIONS, CRMaskResult, Detector, apply_crmasks, compute_crmasks
from .dq import DQ_BITS, dq_summary
from .io import InputStack, OutputStage, read_images, to_electrons
from .memory import releasing_between_steps, share_one_arena
from .products import (OWN_PRODUCTS, combined_hdulist, cr_table_csv, crmasks_hdulist, problematic_csv,
                       read_crmasks)

__all__ = ["RunOutcome", "run", "detector_of", "detect", "find_masks", "mask_products", "iter_combinations",
           "build_combinations", "build_products", "bad_pixels_of", "run_dq"]

_log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """What a run produced: the result (None with ``--crmasks``) and the files written."""

    result: CRMaskResult | None
    files: list[Path]


def detector_of(cfg: RunConfig) -> Detector:
    """The :class:`Detector` of a run configuration."""
    return Detector(cfg.inputs.gain, cfg.inputs.rnoise, cfg.inputs.bias)


def iter_combinations(stack_e: np.ndarray, masks, cfg: RunConfig, *, masks_uuid: str, images,
                      combinations=COMBINATIONS, bad: BadPixels | None = None, headers=(), checksums=(),
                      dq: np.ndarray | None = None, workers: int = 1):
    """Yield ``(file name, HDUList)`` of every combination, one at a time.

    The combinations are always built from the exposures divided by their flux
    factors (whatever ``apply_flux_factor_to`` said for the detection), so
    that all the exposures are equivalent.  Writing each one before the next
    is built keeps a single combination in memory.  Bad input values
    (``bad.left_out``) are left out of their exposure; ``dq`` (the run's
    summary, :func:`run_dq`) becomes each combination's DQ plane.  ``workers``
    threads build each one, on bands of rows.
    """
    one = _combiner(stack_e, masks, cfg, masks_uuid=masks_uuid, images=images, bad=bad, headers=headers,
                    checksums=checksums, dq=dq, workers=workers)
    for name in combinations:
        yield one(name)


def _combiner(stack_e: np.ndarray, masks, cfg: RunConfig, *, masks_uuid: str, images, bad, headers, checksums,
              dq, workers: int = 1):
    """``name -> (file name, HDUList)`` of one combination (see :func:`iter_combinations`)."""
    factors = np.asarray(masks.flux_factors, dtype=np.float32)
    if np.any(factors != 1):
        stack_e = stack_e / factors[:, None, None]
    det = detector_of(cfg)
    exclude = None if bad is None else bad.left_out

    def one(name: str):
        use_la = cfg.params.use_lamedian and name not in ("mean", "median", "min")
        combined = apply_crmasks(stack_e, masks, name, rnoise_e=det.rnoise_e, use_lamedian=use_la,
                                 local_median=cfg.params.pixels_to_be_replaced_by_local_median, exclude=exclude,
                                 workers=workers)
        return f"combined_{name}.fits", combined_hdulist(name, combined, masks_uuid=masks_uuid, detector=det,
                                                         images=images, extnum=cfg.inputs.extnum,
                                                         flux_factors=masks.flux_factors, inputs=headers,
                                                         checksums=checksums, dq=dq, masks=masks,
                                                         dtype=cfg.params.dtype)

    return one


def build_combinations(stack_e: np.ndarray, masks, cfg: RunConfig, *, masks_uuid: str, images,
                       combinations=COMBINATIONS, workers: int | None = None, bad: BadPixels | None = None,
                       headers=(), checksums=(), dq: np.ndarray | None = None) -> dict:
    """HDULists of every combination (see :func:`iter_combinations`), all in memory.

    ``workers`` threads build them at the same time (default: cores; NumPy
    releases the GIL in the large array operations), in the order of
    ``combinations``; each is identical to a serial build.
    """
    one = _combiner(stack_e, masks, cfg, masks_uuid=masks_uuid, images=images, bad=bad, headers=headers,
                    checksums=checksums, dq=dq)
    workers = max(1, min(len(combinations), workers or os.cpu_count() or 1))
    if workers == 1:
        return dict(map(one, combinations))
    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, combinations))


def bad_pixels_of(stack_e: np.ndarray, cfg: RunConfig, labels) -> BadPixels:
    """Check a stack in electrons and find its bad input pixels (NaN/inf; >= ``la_satlevel``), filled in place.

    Also refuses images too small for the method (:func:`check_image_size`)
    and constant exposures, and warns about levels far below the bias (see
    :mod:`megara_crdetect.badpixels`).
    """
    check_image_size(cfg, stack_e.shape[1:])
    bad = find_bad_pixels(stack_e, detector_of(cfg).level_e(cfg.params.la_satlevel), labels)
    check_levels(stack_e, cfg.rnoise_e, labels, gain=cfg.inputs.gain)
    return bad


def check_image_size(cfg: RunConfig, shape) -> None:
    """Images must be large enough for L.A.Cosmic when it runs.

    L.A.Cosmic filters with 3 x 3 kernels and pads the image by mirroring
    ``la_padwidth`` pixels, which needs more than ``la_padwidth`` pixels
    along each axis.  The Median-Minimum method alone works on any size.
    """
    p = cfg.params
    need = max(3, p.la_padwidth + 1)
    ny, nx = shape
    if p.uses_la and min(ny, nx) < need:
        raise InputError(f"the images are {nx} x {ny} pixels (NAXIS1 x NAXIS2): L.A.Cosmic (crmethod: "
                         f"{p.crmethod}) needs at least {need} pixels along each axis (3 for its filters and "
                         f"more than la_padwidth = {p.la_padwidth} for its mirror padding); use crmethod: "
                         "mmcosmic or a smaller la_padwidth")


def _labels(images) -> list[str]:
    return [f"images[{k}] = '{Path(p).name}'" for k, p in enumerate(images)]


def _skipped(cfg: RunConfig, shape) -> np.ndarray:
    """Skipped regions (without the pixels re-enabled in them) and pixels ignored as cosmic rays."""
    p = cfg.params
    out = np.zeros(shape, dtype=bool)
    for x0, x1, y0, y1 in p.regions_to_be_skipped:
        out[y0 - 1:y1, x0 - 1:x1] = True
    for x, y in p.pixels_to_be_flagged_as_cr:
        out[y - 1, x - 1] = False
    for x, y in p.pixels_to_be_ignored_as_cr:
        out[y - 1, x - 1] = True
    return out


def run_dq(masks, cfg: RunConfig, bad: BadPixels | None, shape) -> np.ndarray:
    """The DQ summary of a run (``crmasks.fits``; each combination sets its own ``CR_REPAIRED``).

    ``CR_REPAIRED`` here: any mask (MEDIANCR, MEANCRT, a CRMASKk, MEANCR).
    With saved masks (``--crmasks``) their file's DQ is kept, but the input
    bits come from the exposures of this run.
    """
    input_bits = np.uint16(sum(DQ_BITS[k][0] for k in ("SATURATED", "BAD_INPUT", "NO_DATA")))
    kwargs = {} if bad is None else dict(
        saturated=bad.saturated, no_data=bad.no_data,
        bad_input=bad.nonfinite if bad.left_out is None else bad.left_out.any(axis=0))
    saved = getattr(masks, "dq", None)
    if saved is not None:
        return (saved & ~input_bits) | dq_summary(shape, **kwargs)
    crs = masks.mediancr | masks.meancrt | np.any(masks.crmasks, axis=0) | masks.meancr
    local = [(y - 1, x - 1) for x, y, _, _ in cfg.params.pixels_to_be_replaced_by_local_median]
    return dq_summary(shape, cosmic_rays=crs, problematic=problematic_pixels(masks.crmasks),
                      bad_rows=getattr(masks, "bad_rows", ()), bad_columns=getattr(masks, "bad_columns", ()),
                      skipped=_skipped(cfg, shape), local_median=local, **kwargs)


def detect(stack_e: np.ndarray, cfg: RunConfig, *, images, progress=None, review=None, bad: BadPixels | None = None,
           headers=(), checksums=(), workers: int | None = None) -> tuple[CRMaskResult, dict]:
    """Detect and build the mask products in memory.

    Parameters
    ----------
    stack_e : ndarray, shape (N, ny, nx), float32
        Exposures in electrons (bad input values are replaced by fillers in
        place when ``bad`` is not given, see :func:`bad_pixels_of`); the
        detection's work space, its values put back bit for bit on return.
    cfg : RunConfig
        Validated configuration.
    images : sequence of str
        Names of the exposures (recorded in the headers).
    progress, review : callable, optional
        See :func:`~megara_crdetect.core.pipeline.compute_crmasks`.
    workers : int, optional
        Threads of the detection (default: one per core; the batch mode gives 1).
    bad : BadPixels, optional
        The bad input pixels, already found (and filled).
    headers, checksums : sequence, optional
        Headers of the exposures (the first one's identity and WCS are
        copied) and SHA-256 of the files.

    Returns
    -------
    result : CRMaskResult
    products : dict
        File name -> astropy HDUList (``crmasks.fits``) or CSV text
        (``mediancr_identified.csv``, ``problematic_pixels.csv``).
    """
    if bad is None:
        bad = bad_pixels_of(stack_e, cfg, _labels(images))
    result = find_masks(stack_e, cfg, progress=progress, review=review, bad=bad, workers=workers)
    return result, mask_products(result, cfg, images=images, bad=bad, headers=headers, checksums=checksums)


def find_masks(stack_e: np.ndarray, cfg: RunConfig, *, bad: BadPixels, progress=None, review=None,
               workers: int | None = None) -> CRMaskResult:
    """The detection of :func:`detect` (same parameters), without its products.

    The run's command line starts the figure processes between this and
    :func:`mask_products`: a forked process counts every page of its parent
    that is resident at the fork.
    """
    share_one_arena()  # the detection's threads reuse each other's freed memory (see megara_crdetect.memory)
    progress = releasing_between_steps(progress)  # and its steps' freed memory goes back to the system
    result = compute_crmasks(stack_e, cfg.params, detector=detector_of(cfg), progress=progress, review=review,
                             workers=workers, ignore=bad.ignore, work_in_place=True)
    _log_summary(result)
    return result


def mask_products(result: CRMaskResult, cfg: RunConfig, *, images, bad: BadPixels, headers=(), checksums=(),
                  dq: np.ndarray | None = None) -> dict:
    """The products of :func:`detect` (the masks file and the two tables) of a detection's result.

    ``dq``: the run's :func:`run_dq`, when the caller has it already (computed here otherwise).
    """
    if dq is None:
        dq = run_dq(result, cfg, bad, result.mediancr.shape)
    masks = crmasks_hdulist(result, cfg.params, detector_of(cfg), images, extnum=cfg.inputs.extnum,
                            inputs=headers, checksums=checksums, dq=dq)
    return {"crmasks.fits": masks,
            "mediancr_identified.csv": cr_table_csv(result.mediancr, result.mediancr_codes),
            "problematic_pixels.csv": problematic_csv(result.problematic, result.crmasks)}


def build_products(stack_e: np.ndarray, cfg: RunConfig, *, images, progress=None, review=None, headers=(),
                   checksums=()) -> tuple[CRMaskResult, dict]:
    """:func:`detect` plus every combination, all in memory (the numina recipe returns them at once)."""
    bad = bad_pixels_of(stack_e, cfg, _labels(images))
    result = find_masks(stack_e, cfg, progress=progress, review=review, bad=bad)
    dq = run_dq(result, cfg, bad, stack_e.shape[1:])
    products = mask_products(result, cfg, images=images, bad=bad, headers=headers, checksums=checksums, dq=dq)
    uuid = products["crmasks.fits"][0].header["UUID"]
    products.update(build_combinations(stack_e, result, cfg, masks_uuid=uuid, images=images, bad=bad,
                                       headers=headers, checksums=checksums, dq=dq))
    return result, products


def write_product(stage: OutputStage, name: str, product) -> None:
    """Write one product (HDUList or text) into the staging folder."""
    if isinstance(product, str):
        stage.path(name).write_text(product)
    else:
        product.writeto(stage.path(name))


def _load(cfg: RunConfig, base_dir: Path) -> tuple[InputStack, np.ndarray, BadPixels]:
    from .core.mldetect import check_extra

    check_extra(cfg.params.aux_method)  # #16: a missing [ml] extra is reported before any work
    inputs = read_images(cfg.inputs.images, base_dir=base_dir, extnum=cfg.inputs.extnum)
    check_against_data(cfg.params, inputs.data.shape[1:], inputs.data.shape[0])
    stack = to_electrons(inputs.data, gain=cfg.inputs.gain, bias=cfg.inputs.bias)
    bad = bad_pixels_of(stack, cfg, inputs.labels)
    return inputs, stack, bad


def run(cfg: RunConfig, *, base_dir: str | Path = ".", output_dir: str | Path = ".",
        crmasks_file: str | Path | None = None, progress=None,
        figures: Callable[..., None] | None = None, review=None, workers: int | None = None,
        keep=()) -> RunOutcome:
    """Run everything and write the products into ``output_dir`` (all or nothing).

    Parameters
    ----------
    cfg : RunConfig
        Validated configuration.
    base_dir : path-like
        Folder of the parameter file (image paths are relative to it).
    output_dir : path-like
        Created if missing.
    crmasks_file : path-like, optional
        Re-apply the masks of this file instead of detecting them again.
    progress : callable, optional
        Progress reporter for long steps.
    figures : callable, optional
        ``figures(result, stack_e, cfg, stage, progress=...)`` writes the diagnostic figures
        into the stage (the review module); skipped when None.  If it returns a callable
        (figures drawn in the background), that is called once the combinations are written.
    review : callable, optional
        Interactive review of MEDIANCR (see
        :func:`~megara_crdetect.core.pipeline.compute_crmasks`).
    workers : int, optional
        Threads of the detection (default: one per core; the batch mode gives 1 when
        several OBs share a machine).
    keep : iterable of path-like
        Files never removed from ``output_dir`` (e.g. the parameter file).
        Earlier products of ours (:data:`~megara_crdetect.products.OWN_PRODUCTS`)
        that this run does not write are removed, except the inputs and these.
    """
    t0 = time.perf_counter()
    progress = releasing_between_steps(progress)  # freed memory back to the system after every step
    raw = megara.load_raw(cfg, Path(base_dir))  # raw MEGARA frames: megaradrp preprocesses them (#15)
    if raw is not None:
        cfg, inputs, prep = raw
        stack = inputs.data
        check_against_data(cfg.params, stack.shape[1:], stack.shape[0])
        bad = bad_pixels_of(stack, cfg, inputs.labels)
    else:
        inputs, stack, bad = _load(cfg, Path(base_dir))
    images = [str(p) for p in inputs.paths]
    described = dict(headers=inputs.headers, checksums=inputs.checksums)
    with OutputStage(output_dir) as stage:
        pending = None
        if crmasks_file is not None:
            masks = read_crmasks(crmasks_file, stack.shape[0], stack.shape[1:])
            _log.info("re-applying the masks of %s", crmasks_file)
            result, uuid = None, masks.uuid
            dq = run_dq(masks, cfg, bad, stack.shape[1:])
            products = {}
        else:
            result = masks = find_masks(stack, cfg, progress=progress, review=review, bad=bad, workers=workers)
            if figures is not None:  # started before the products are built: forked figure processes hold less
                pending = figures(result, stack, cfg, stage, progress=progress)
            dq = run_dq(masks, cfg, bad, stack.shape[1:])
            products = mask_products(result, cfg, images=images, bad=bad, dq=dq, **described)
            uuid = products["crmasks.fits"][0].header["UUID"]
        combos = iter_combinations(stack, masks, cfg, masks_uuid=uuid, images=images, bad=bad, dq=dq,
                                   workers=workers or os.cpu_count() or 1, **described)
        items = itertools.chain(_drain(products), combos)
        if raw is not None:  # the MEGARA identity and what was done, in every product
            items = ((name, megara.stamp_hdulist(p, prep.headers[0], prep)) for name, p in items)
        total = len(products) + len(COMBINATIONS)
        _write_overlapped(stage, items, progress=progress, total=total)
        if callable(pending):  # figures drawn in the background while the combinations were written
            pending()
        inputs_used = [*inputs.paths, *([crmasks_file] if crmasks_file is not None else []), *keep]
        files = stage.commit(own=OWN_PRODUCTS, keep=inputs_used)
    _log.info("wrote %d files to %s in %.1f s", len(files), output_dir, time.perf_counter() - t0)
    return RunOutcome(result, files)


def _drain(products: dict):
    """Yield and forget the items of ``products`` (a product written is no longer held)."""
    for name in list(products):
        yield name, products.pop(name)


def _write_overlapped(stage: OutputStage, products, *, progress=None, total: int = 0) -> None:
    """Write ``(name, product)`` pairs, each in a thread while the next one is being built.

    At most one product waits to be written, so at most two are in memory;
    file output releases the GIL, so building and writing overlap.
    ``progress("writing products", done, total)`` after each one.
    """
    report = progress or (lambda *args: None)
    done = 0
    with ThreadPoolExecutor(1) as pool:
        pending = None
        report("writing products", 0, total)
        for name, product in products:
            if pending is not None:
                pending.result()
                done += 1
                report("writing products", done, max(total, done))
            pending = pool.submit(write_product, stage, name, product)
            del product
        if pending is not None:
            pending.result()
            done += 1
    report("writing products", done, done)


def _log_summary(result: CRMaskResult) -> None:
    c = result.counts
    _log.debug("detection steps [s]: %s", ", ".join(f"{k} {v:.2f}" for k, v in result.timings.items()))
    _log.info("MEDIANCR: %d pixels (MM only %d, LA only %d, both %d, pairs %d, user %d, dilation %d)",
              c.get("mediancr", 0), c.get("mediancr_mm", 0), c.get("mediancr_la", 0), c.get("mediancr_mm_la", 0),
              c.get("mediancr_pair", 0), c.get("mediancr_user", 0), c.get("mediancr_dilation", 0))
    _log.info("MEANCRT: %d pixels; CRMASK: %s; MEANCR: %d; problematic: %d", c.get("meancrt", 0),
              ", ".join(str(c[k]) for k in sorted(c) if k.startswith("crmask")), c.get("meancr", 0),
              c.get("problematic", 0))
    if np.any(result.flux_factors != 1):
        _log.info("flux factors: %s", ", ".join(f"{f:.4f}" for f in result.flux_factors))
    if np.any(result.offsets != 0):
        _log.info("offsets (dx, dy): %s", ", ".join(f"({dx:+.3f}, {dy:+.3f})" for dx, dy in result.offsets))
