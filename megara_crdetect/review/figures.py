"""Write every diagnostic figure and review file of a run (``write_figures``).

Called by :func:`megara_crdetect.runner.run` as ``figures(result, stack_e,
cfg, stage)`` after the masks are computed; everything is written into the
run's staging folder, so the figures appear together with the products or not
at all.  PNG figures use matplotlib's object API with the Agg canvas (no
pyplot, no display); the multi-page PDFs are written by
:mod:`~megara_crdetect.review.lightpdf` (see :mod:`~megara_crdetect.review.pages`).

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

import io
import logging
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from matplotlib import rc_context

from ..memory import release_free_memory
from . import diagrams, extras, pages, regions, warmup
from ._plot import DPI, agg_figure
from .events import ReviewData, near_misses

__all__ = ["write_figures", "start_figures", "warm_up", "write_review_files", "review_data"]

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


#: Titles at a fixed height: matplotlib otherwise places every title above the axis's tick labels, which
#: lays out every tick once more before drawing (10 % of a PNG); no figure has labels on its top axis.
PNG_RC = {"axes.titley": 1.0}


def _save_png(path: Path, build: Callable, figsize: tuple[float, float], adjust: dict) -> None:
    fig = agg_figure(figsize)
    fig.subplots_adjust(**adjust)
    with rc_context(PNG_RC):
        build(fig)
    # zlib level 1: 1.6x faster than 3 (itself 2.5x faster than the default 6), files ~10 % larger
    fig.savefig(path, format="png", dpi=DPI, pil_kwargs={"compress_level": 1})


def _atomic(path: Path, write: Callable[[Path], object]):
    """``write(part)`` into a hidden ``.<name>.part`` beside ``path``, renamed to ``path`` once complete.

    A figure that fails half-way (or whose process is killed) never appears
    under its real name; the part file is removed on an error
    (:func:`_remove_parts` clears those of a killed process).  A writer may
    write nothing (e.g. no problematic pixels).
    """
    part = path.with_name(f".{path.name}{PART}")
    try:
        out = write(part)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    if part.exists():
        os.replace(part, path)
    return out


#: Suffix of a figure being written.
PART = ".part"


def _remove_parts(directory: Path) -> list[str]:
    """Remove half-written figures (a figure process killed while writing); returns their names."""
    names = []
    for part in directory.glob(f".*{PART}"):
        part.unlink(missing_ok=True)
        names.append(part.name[1:-len(PART)])
    return names


def write_review_files(data: ReviewData, directory: Path, params) -> list[str]:
    """``mediancr_regions.reg``, ``mediancr_candidates.csv`` and ``review_edits.yaml``."""
    ev = data.events
    st = data.stats
    _atomic(directory / "mediancr_regions.reg", lambda p: p.write_text(regions.ds9_regions(ev)))
    _atomic(directory / "mediancr_candidates.csv",
            lambda p: p.write_text(regions.candidates_csv(ev, st.median2d, st.min2d)))
    near = []
    if data.margin is not None:
        extra = st.max2d > params.mm_minimum_max2d_rnoise * data.rnoise_e
        for r, c in near_misses(data.margin, data.result.mediancr, extra=extra):
            near.append((int(c) + 1, int(r) + 1, float(data.t[r, c]), float(data.margin[r, c])))
    _atomic(directory / "review_edits.yaml", lambda p: p.write_text(regions.review_edits_yaml(ev, near=near)))
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


#: Estimated CPU seconds of the files (measured on the guide's examples, 2016 x 1596 pixels), used
#: to start the longest first: a PNG per square inch of figure, a page of each PDF.
PNG_COST, CR_PAGE_COST, PROBLEMATIC_PAGE_COST = 0.007, 0.003, 0.002


def _figure_jobs(data: ReviewData, cfg, stage, progress: Progress | None):
    """(name, estimated seconds, job) of every file: PNGs, the two PDFs, the review files.

    Every job writes its file(s) under a temporary name and renames them when complete.
    """
    p = cfg.params
    jobs = [(name, PNG_COST * size[0] * size[1], lambda name=name, build=build, size=size, adjust=adjust: _atomic(
        stage.path(name), lambda part: _save_png(part, build, size, adjust)))
        for name, build, size, adjust in _png_jobs(data, cfg)]
    # pages: at most one per MEDIANCR pixel (the events are found in the figure process, not here)
    npages = pages.n_pages(int(np.count_nonzero(data.result.mediancr)), p.maxplots)
    jobs.append(("mediancr_identified_cr.pdf", CR_PAGE_COST * npages, lambda: _atomic(
        stage.path("mediancr_identified_cr.pdf"), lambda part: pages.write_cr_pdf(
            part, data, maxplots=p.maxplots, semiwindow=p.semiwindow, color_scale=p.color_scale,
            use_lamedian=p.use_lamedian, progress=progress)[0])))
    nprob = pages.n_pages(int(np.count_nonzero(data.result.problematic)), p.maxplots)
    jobs.append(("problematic_pixels.pdf", PROBLEMATIC_PAGE_COST * nprob, lambda: _atomic(
        stage.path("problematic_pixels.pdf"), lambda part: pages.write_problematic_pdf(
            part, data, maxplots=p.maxplots, semiwindow=p.semiwindow, color_scale=p.color_scale,
            progress=progress))))
    jobs.append(("review files", 0.05, lambda: write_review_files(data, stage.directory, p)))
    return jobs


def _run_jobs(jobs, strict: bool = False) -> dict[str, float]:
    """Run ``(name, cost, job)`` items; a failing figure is logged and skipped (re-raised if ``strict``)."""
    timings = {}
    for name, _, job in jobs:
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            out = job()
        except Exception as exc:  # noqa: BLE001 - a diagnostic must not lose the products
            if strict:
                raise
            _log.error("could not write %s: %s: %s", name, type(exc).__name__, exc)
            _log.debug("figure failure", exc_info=True)
            continue
        timings[name] = time.perf_counter() - t1
        _log.debug("%s: %.2f s (CPU %.2f s)", name, timings[name], time.process_time() - c1)
        if name == "mediancr_identified_cr.pdf":
            timings["pages"] = out
    return timings


class _Queue:
    """Jobs handed out one at a time, longest first, to the figure processes (shared memory counters).

    A process that finishes a file takes the next one, so the processes end
    together whatever the estimates were.
    """

    def __init__(self, ctx, n: int):
        self.n = n
        self._lock = ctx.Lock()
        self._counts = ctx.RawArray("i", 2)  # next job to hand out, jobs finished

    def claim(self) -> int | None:
        """Index of the next job to run, None when all are taken."""
        with self._lock:
            k = self._counts[0]
            if k >= self.n:
                return None
            self._counts[0] = k + 1
            return k

    def finished(self) -> None:
        with self._lock:
            self._counts[1] += 1

    @property
    def done(self) -> int:
        """Jobs finished (read without the lock: a process killed while holding it must not block the
        caller)."""
        return self._counts[1]


def start_figures(result, stack_e: np.ndarray, cfg, stage, *, progress: Progress | None = None,
                  processes: int | None = None) -> Callable[[], None]:
    """Start writing the figures in background processes; returns ``wait()``.

    ``processes`` (default: cores, at most 2) forked processes take the files
    one at a time, longest (estimated) first, while the caller goes on
    (writing the combined images); ``wait()`` joins them and reports
    ``progress("figures", done, total)`` per file.  The processes are forked
    at once: the per-pixel quantities of the review (events, margins) are
    computed in them, not in the caller.  Forked children share the
    exposures and the result without copies; they draw with matplotlib and
    NumPy only (no OpenMP, which is not fork-safe).  Without ``fork`` (or
    with one core) everything is written before returning.
    """
    t0 = time.perf_counter()
    data = review_data(result, stack_e, cfg)
    n = processes if processes is not None else min(2, os.cpu_count() or 1)
    if n <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        _run_jobs(_figure_jobs(data, cfg, stage, progress))
        return lambda: None
    jobs = sorted(_figure_jobs(data, cfg, stage, None), key=lambda job: -job[1])
    warmup.finish()  # no thread may be importing while we fork
    release_free_memory()  # a forked child counts every resident page of ours in its own resident memory
    ctx = multiprocessing.get_context("fork")
    queue = _Queue(ctx, len(jobs))
    procs = []
    with warnings.catch_warnings():  # Python >= 3.12 warns about fork in a process that has threads
        warnings.simplefilter("ignore", DeprecationWarning)
        for _ in range(min(n, len(jobs))):
            proc = ctx.Process(target=_child, args=(jobs, queue), daemon=True)
            proc.start()
            procs.append(proc)
    _log.info("figures: %d files in %d background processes", len(jobs), len(procs))

    def wait() -> None:
        reported = -1
        while True:
            alive = [proc for proc in procs if proc.exitcode is None]
            done = queue.done
            if progress is not None and done != reported:
                progress("figures", done, len(jobs))
                reported = done
            if not alive:
                break
            alive[0].join(0.2)
        if any(proc.exitcode for proc in procs):
            _log.error("a figure process ended with status %s; some figures are missing",
                       ", ".join(str(proc.exitcode) for proc in procs if proc.exitcode))
        removed = _remove_parts(stage.directory)
        if removed:
            _log.error("removed half-written figures: %s", ", ".join(sorted(removed)))
        _log.info("figures written in %.1f s (in the background)", time.perf_counter() - t0)

    wait.processes = procs  # the figure processes (tests stop them half-way)
    return wait


def warm_up() -> None:
    """What :func:`warmup.start` runs in its thread (imports done there, not in every figure process)."""
    from astropy.visualization import ZScaleInterval

    ZScaleInterval().get_limits(np.linspace(0.0, 1.0, 100))
    fig = agg_figure((2, 2), dpi=20)
    ax = fig.add_subplot()
    ax.imshow(np.zeros((2, 2)))
    ax.plot([1, 2], [1, 2], "+", label="x")
    ax.set_yscale("symlog", linthresh=10.0)
    ax.set_title("x")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    pages.warm_up()


def _child(jobs, queue: _Queue) -> None:  # pragma: no cover - runs in a forked process
    timings = {}
    try:
        while (index := queue.claim()) is not None:
            timings.update(_run_jobs([jobs[index]]))
            queue.finished()
        cpu = os.times()
        _log.debug("figure process: %s; CPU user %.2f s, system %.2f s", ", ".join(
            f"{v:.0f} pages" if k == "pages" else f"{k} {v:.1f} s" for k, v in timings.items()),
            cpu.user, cpu.system)
    finally:
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
