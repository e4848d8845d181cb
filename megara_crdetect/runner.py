"""One complete run: read the exposures, detect, build and write every product.

Shared by the command-line shell and (for building the products) the numina
recipe.  The detection itself happens in the pure core
(:func:`megara_crdetect.core.pipeline.compute_crmasks`); here are only the
translations between files and arrays.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import megara
from .config import RunConfig, check_against_data
from .core.pipeline import COMBINATIONS, CRMaskResult, Detector, apply_crmasks, compute_crmasks
from .io import InputStack, OutputStage, read_images, to_electrons
from .products import (combined_hdulist, cr_table_csv, crmasks_hdulist, problematic_csv,
                       read_crmasks)

__all__ = ["RunOutcome", "run", "detector_of", "detect", "iter_combinations", "build_combinations",
           "build_products"]

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
                      combinations=COMBINATIONS):
    """Yield ``(file name, HDUList)`` of every combination, one at a time.

    The combinations are always built from the exposures divided by their flux
    factors (whatever ``apply_flux_factor_to`` said for the detection), so
    that all the exposures are equivalent.  Writing each one before the next
    is built keeps a single combination in memory.
    """
    factors = np.asarray(masks.flux_factors, dtype=np.float32)
    if np.any(factors != 1):
        stack_e = stack_e / factors[:, None, None]
    det = detector_of(cfg)
    for name in combinations:
        use_la = cfg.params.use_lamedian and name not in ("mean", "median", "min")
        combined = apply_crmasks(stack_e, masks, name, rnoise_e=det.rnoise_e, use_lamedian=use_la,
                                 local_median=cfg.params.pixels_to_be_replaced_by_local_median)
        yield f"combined_{name}.fits", combined_hdulist(name, combined, masks_uuid=masks_uuid, detector=det,
                                                        images=images, extnum=cfg.inputs.extnum,
                                                        flux_factors=masks.flux_factors)


def build_combinations(stack_e: np.ndarray, masks, cfg: RunConfig, *, masks_uuid: str, images,
                       combinations=COMBINATIONS) -> dict:
    """HDULists of every combination (see :func:`iter_combinations`), all in memory."""
    return dict(iter_combinations(stack_e, masks, cfg, masks_uuid=masks_uuid, images=images,
                                  combinations=combinations))


def detect(stack_e: np.ndarray, cfg: RunConfig, *, images, progress=None, review=None
           ) -> tuple[CRMaskResult, dict]:
    """Detect and build the mask products in memory.

    Parameters
    ----------
    stack_e : ndarray, shape (N, ny, nx), float32
        Exposures in electrons (not modified).
    cfg : RunConfig
        Validated configuration.
    images : sequence of str
        Names of the exposures (recorded in the headers).
    progress, review : callable, optional
        See :func:`~megara_crdetect.core.pipeline.compute_crmasks`.

    Returns
    -------
    result : CRMaskResult
    products : dict
        File name -> astropy HDUList (``crmasks.fits``) or CSV text
        (``mediancr_identified.csv``, ``problematic_pixels.csv``).
    """
    det = detector_of(cfg)
    result = compute_crmasks(stack_e, cfg.params, detector=det, progress=progress, review=review)
    _log_summary(result)
    masks = crmasks_hdulist(result, cfg.params, det, images, extnum=cfg.inputs.extnum)
    return result, {"crmasks.fits": masks,
                    "mediancr_identified.csv": cr_table_csv(result.mediancr, result.mediancr_codes),
                    "problematic_pixels.csv": problematic_csv(result.problematic, result.crmasks)}


def build_products(stack_e: np.ndarray, cfg: RunConfig, *, images, progress=None, review=None
                   ) -> tuple[CRMaskResult, dict]:
    """:func:`detect` plus every combination, all in memory (the numina recipe returns them at once)."""
    result, products = detect(stack_e, cfg, images=images, progress=progress, review=review)
    uuid = products["crmasks.fits"][0].header["UUID"]
    products.update(build_combinations(stack_e, result, cfg, masks_uuid=uuid, images=images))
    return result, products


def write_product(stage: OutputStage, name: str, product) -> None:
    """Write one product (HDUList or text) into the staging folder."""
    if isinstance(product, str):
        stage.path(name).write_text(product)
    else:
        product.writeto(stage.path(name))


def _load(cfg: RunConfig, base_dir: Path) -> tuple[InputStack, np.ndarray]:
    inputs = read_images(cfg.inputs.images, base_dir=base_dir, extnum=cfg.inputs.extnum)
    check_against_data(cfg.params, inputs.data.shape[1:], inputs.data.shape[0])
    stack = to_electrons(inputs.data, gain=cfg.inputs.gain, bias=cfg.inputs.bias)
    return inputs, stack


def run(cfg: RunConfig, *, base_dir: str | Path = ".", output_dir: str | Path = ".",
        crmasks_file: str | Path | None = None, progress=None,
        figures: Callable[..., None] | None = None, review=None) -> RunOutcome:
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
        into the stage (the review module); skipped when None.
    review : callable, optional
        Interactive review of MEDIANCR (see
        :func:`~megara_crdetect.core.pipeline.compute_crmasks`).
    """
    t0 = time.perf_counter()
    raw = megara.load_raw(cfg, Path(base_dir))  # raw MEGARA frames: megaradrp preprocesses them (#15)
    if raw is not None:
        cfg, inputs, prep = raw
        stack = inputs.data
        check_against_data(cfg.params, stack.shape[1:], stack.shape[0])
    else:
        inputs, stack = _load(cfg, Path(base_dir))
    images = [str(p) for p in inputs.paths]
    with OutputStage(output_dir) as stage:
        if crmasks_file is not None:
            masks = read_crmasks(crmasks_file, stack.shape[0], stack.shape[1:])
            _log.info("re-applying the masks of %s", crmasks_file)
            result, uuid = None, masks.uuid
            products = {}
        else:
            result, products = detect(stack, cfg, images=images, progress=progress, review=review)
            masks, uuid = result, products["crmasks.fits"][0].header["UUID"]
            if figures is not None:
                figures(result, stack, cfg, stage, progress=progress)
        combos = iter_combinations(stack, masks, cfg, masks_uuid=uuid, images=images)
        items = itertools.chain(_drain(products), combos)
        if raw is not None:  # the MEGARA identity and what was done, in every product
            items = ((name, megara.stamp_hdulist(p, prep.headers[0], prep)) for name, p in items)
        _write_overlapped(stage, items)
        files = stage.commit()
    _log.info("wrote %d files to %s in %.1f s", len(files), output_dir, time.perf_counter() - t0)
    return RunOutcome(result, files)


def _drain(products: dict):
    """Yield and forget the items of ``products`` (a product written is no longer held)."""
    for name in list(products):
        yield name, products.pop(name)


def _write_overlapped(stage: OutputStage, products) -> None:
    """Write ``(name, product)`` pairs, each in a thread while the next one is being built.

    At most one product waits to be written, so at most two are in memory;
    file output releases the GIL, so building and writing overlap.
    """
    with ThreadPoolExecutor(1) as pool:
        pending = None
        for name, product in products:
            if pending is not None:
                pending.result()
            pending = pool.submit(write_product, stage, name, product)
            del product
        if pending is not None:
            pending.result()


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
