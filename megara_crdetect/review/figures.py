"""Write every diagnostic figure and review file of a run (``write_figures``).

Called by :func:`megara_crdetect.runner.run` as ``figures(result, stack_e,
cfg, stage)`` after the masks are computed; everything is written into the
run's staging folder, so the figures appear together with the products or not
at all.  Figures use matplotlib's object API with the Agg canvas (no pyplot,
no display).

Files (all in the output folder):

``diagnostic_histogram2d.png``
    MM methods: simulated and real diagrams of the median, boundary points,
    fits and final boundary, in normalised and in classic axes.
``diagnostic_mediancr.png``
    MEDIANCR detections in the MM diagram and on median2d / mean2d.
``diagnostic_meancr.png``, ``diagnostic_crmask<k>.png``
    Diagrams of mean2d and of exposure k with their boundaries and the
    MEANCRT / CRMASKk pixels.
``mediancr_identified_cr.pdf``
    One page per CR event (``maxplots``, ``semiwindow``, ``color_scale``).
``problematic_pixels.pdf``
    Only when some pixels are masked in every exposure.
``image_number_at_median_position.png``, ``flux_factor<k>.png``
    ``flux_factor: auto``.
``xyoffset_crosscorr_<k>.png``
    ``mm_crosscorr_region`` given.
``mediancr_regions.reg``, ``mediancr_candidates.csv``, ``review_edits.yaml``
    Review without blocking: ds9 regions, one row per CR event, and the
    manual-edit lists of the parameter file with every candidate commented.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import diagrams, extras, pages, regions
from ._plot import DPI, agg_figure
from .events import ReviewData, near_misses

__all__ = ["write_figures", "start_figures", "write_review_files", "review_data"]

_log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]


def review_data(result, stack_e: np.ndarray | None, cfg) -> ReviewData:
    """The shared :class:`ReviewData` of a run (``cfg`` is a RunConfig)."""
    return ReviewData(result, cfg.rnoise_e, stack_e)


#: Margins of the PNG figures (a fixed layout: the constrained layout engine
#: draws every figure twice and doubles the time).
WIDE = dict(left=0.06, right=0.97, bottom=0.1, top=0.88, wspace=0.22)
GRID = dict(left=0.06, right=0.97, bottom=0.06, top=0.92, wspace=0.22, hspace=0.25)
MAX_PIXELS = 1000


def _save_png(path: Path, build: Callable, figsize: tuple[float, float], adjust: dict) -> None:
    fig = agg_figure(figsize)
    fig.subplots_adjust(**adjust)
    build(fig)
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})  # 2.5x faster than the default 6, smaller


def write_review_files(data: ReviewData, directory: Path, params) -> list[str]:
    """``mediancr_regions.reg``, ``mediancr_candidates.csv`` and ``review_edits.yaml``."""
    ev = data.events
    st = data.stats
    (directory / "mediancr_regions.reg").write_text(regions.ds9_regions(ev))
    (directory / "mediancr_candidates.csv").write_text(regions.candidates_csv(ev, st.median2d, st.min2d))
    near = []
    if data.margin is not None:
        extra = st.max2d > params.mm_minimum_max2d_rnoise * data.rnoise_e
        for r, c in near_misses(data.margin, data.result.mediancr, extra=extra):
            near.append((int(c) + 1, int(r) + 1, float(data.t[r, c]), float(data.margin[r, c])))
    (directory / "review_edits.yaml").write_text(regions.review_edits_yaml(ev, near=near))
    return ["mediancr_regions.reg", "mediancr_candidates.csv", "review_edits.yaml"]


def _png_jobs(data: ReviewData, cfg) -> list[tuple[str, Callable, tuple[float, float], dict]]:
    """(file name, builder, figure size, margins) of every PNG of the run."""
    res, p = data.result, cfg.params
    jobs = []
    if res.diagrams is not None:
        jobs.append(("diagnostic_histogram2d.png", lambda f: diagrams.histogram_figure(f, data), (13, 10),
                     dict(GRID, right=0.99)))
    thr = p.threshold_e(cfg.inputs.gain, cfg.rnoise_e)
    jobs.append(("diagnostic_mediancr.png", lambda f: diagrams.mediancr_figure(
        f, data, threshold_e=thr, max_pixels=MAX_PIXELS), (13, 10), GRID))
    b = res.boundaries or {}
    jobs.append(("diagnostic_meancr.png", lambda f: diagrams.target_figure(
        f, data, target=data.stats.mean2d, mask=res.meancrt, boundary=b.get("mean"),
        title=f"mean2d - min2d diagram and MEANCRT ({int(res.meancrt.sum())} pixels)",
        ylabel=diagrams.t_label("mean2d"), image_title="mean2d", max_pixels=MAX_PIXELS), (13, 5.5), WIDE))
    if data.stack is not None:
        for k in range(data.stack.shape[0]):
            jobs.append((f"diagnostic_crmask{k + 1}.png", lambda f, k=k: diagrams.target_figure(
                f, data, target=data.stack[k], mask=res.crmasks[k], boundary=b.get(f"exposure{k + 1}"),
                title=f"exposure {k + 1} - min2d diagram and CRMASK{k + 1} ({int(res.crmasks[k].sum())} pixels)",
                ylabel=diagrams.t_label(f"exposure{k + 1}"), image_title=f"exposure {k + 1}",
                max_pixels=MAX_PIXELS), (13, 5.5), WIDE))
    jobs += extras.png_jobs(data, cfg, max_pixels=MAX_PIXELS)
    return jobs


def _figure_jobs(data: ReviewData, cfg, stage, progress: Progress | None):
    """(name, estimated seconds, job) of every file: PNGs, the two PDFs, the review files."""
    p = cfg.params
    jobs = [(name, 4.0, lambda name=name, build=build, size=size, adjust=adjust: _save_png(
        stage.path(name), build, size, adjust)) for name, build, size, adjust in _png_jobs(data, cfg)]
    npages = pages.n_pages(len(data.events), p.maxplots)
    jobs.append(("mediancr_identified_cr.pdf", 0.2 * npages, lambda: pages.write_cr_pdf(
        stage.path("mediancr_identified_cr.pdf"), data, maxplots=p.maxplots, semiwindow=p.semiwindow,
        color_scale=p.color_scale, use_lamedian=p.use_lamedian, progress=progress)[0]))
    jobs.append(("problematic_pixels.pdf", 1.0, lambda: pages.write_problematic_pdf(
        stage.path("problematic_pixels.pdf"), data, maxplots=p.maxplots, semiwindow=p.semiwindow,
        color_scale=p.color_scale, progress=progress)))
    jobs.append(("review files", 0.5, lambda: write_review_files(data, stage.directory, p)))
    return jobs


def _run_jobs(jobs, strict: bool = False) -> dict[str, float]:
    """Run ``(name, cost, job)`` items; a failing figure is logged and skipped (re-raised if ``strict``)."""
    timings = {}
    for name, _, job in jobs:
        t1 = time.perf_counter()
        try:
            out = job()
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not lose the products
            if strict:
                raise
            _log.error("could not write %s: %s: %s", name, type(exc).__name__, exc)
            _log.debug("figure failure", exc_info=True)
            continue
        timings[name] = time.perf_counter() - t1
        if name == "mediancr_identified_cr.pdf":
            timings["pages"] = out
    return timings


def _share(data: ReviewData) -> None:
    """Compute the lazy quantities every figure needs once, before the processes fork (shared pages)."""
    data.events, data.margin, data.columns  # noqa: B018 - cached properties


def _split(jobs, n: int) -> list[list]:
    """Longest job first to the least loaded of ``n`` groups."""
    groups, load = [[] for _ in range(n)], [0.0] * n
    for job in sorted(jobs, key=lambda j: -j[1]):
        k = load.index(min(load))
        groups[k].append(job)
        load[k] += job[1]
    return [g for g in groups if g]


def start_figures(result, stack_e: np.ndarray, cfg, stage, *, progress: Progress | None = None,
                  processes: int | None = None) -> Callable[[], None]:
    """Start writing the figures in background processes; returns ``wait()``.

    The files are split between ``processes`` (default: cores, at most 2)
    forked processes, longest first, while the caller goes on (writing the
    combined images); ``wait()`` joins them.  Forked children share the
    exposures and the result without copies; they draw with matplotlib and
    NumPy only (no OpenMP, which is not fork-safe).  Without ``fork`` (or
    with one core) everything is written before returning.  Progress is
    reported per file finished, not per page.
    """
    t0 = time.perf_counter()
    data = review_data(result, stack_e, cfg)
    _share(data)
    n = processes if processes is not None else min(2, os.cpu_count() or 1)
    jobs = _figure_jobs(data, cfg, stage, None)
    if n <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        _run_jobs(_figure_jobs(data, cfg, stage, progress))
        return lambda: None
    ctx = multiprocessing.get_context("fork")
    procs = []
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        for group in _split(jobs, n):
            proc = ctx.Process(target=_child, args=(group,), daemon=True)
            proc.start()
            procs.append(proc)
    _log.info("figures: %d files in %d background processes", len(jobs), len(procs))

    def wait() -> None:
        for k, proc in enumerate(procs):
            proc.join()
            if progress is not None:
                progress("figures", k + 1, len(procs))
            if proc.exitcode:
                _log.error("a figure process ended with status %s; some figures are missing", proc.exitcode)
        _log.info("figures written in %.1f s (in the background)", time.perf_counter() - t0)

    return wait


def _child(jobs) -> None:  # pragma: no cover - runs in a forked process
    timings = _run_jobs(jobs)
    _log.debug("figure process: %s", ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    os._exit(0)  # no atexit handlers / finalisers of the parent's objects in the child


def write_figures(result, stack_e: np.ndarray, cfg, stage, *, progress: Progress | None = None,
                  strict: bool = False) -> dict[str, float]:
    """Write the diagnostic figures and review files of a run into ``stage.directory``.

    Parameters
    ----------
    result : CRMaskResult
        Result of :func:`~megara_crdetect.core.pipeline.compute_crmasks`.
    stack_e : ndarray, shape (N, ny, nx)
        Exposures in electrons (bias subtracted).
    cfg : RunConfig
        Run configuration (``cfg.params`` for ``maxplots``, ``semiwindow``,
        ``color_scale``...).
    stage : OutputStage
        Where to write (``stage.path(name)``).
    progress : callable, optional
        ``progress(step, done, total)`` for the per-CR pages.
    strict : bool
        Re-raise errors of single figures (tests); by default a failing figure
        is logged and skipped, so the science products are still written.

    Returns
    -------
    dict
        Seconds spent on each file written (``pages`` key: per-CR pages).
    """
    t0 = time.perf_counter()
    data = review_data(result, stack_e, cfg)
    timings = _run_jobs(_figure_jobs(data, cfg, stage, progress), strict=strict)
    total = time.perf_counter() - t0
    n = timings.get("pages", 0)
    png = sum(v for k, v in timings.items() if k.endswith(".png"))
    per_page = timings.get("mediancr_identified_cr.pdf", 0.0) / n if n else 0.0
    _log.info("figures: %d PNG in %.1f s, %d CR pages (%.3f s/page), total %.1f s",
              sum(k.endswith(".png") for k in timings), png, n, per_page, total)
    timings["total"] = total
    timings["pages"] = n
    return timings
