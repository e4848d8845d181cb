"""The Median-Minimum (MM) diagnostic diagram, simulated and real.

For every pixel the MM diagram places ``x = min2d`` against
``y = target - min2d`` (``target`` is median2d for MEDIANCR, mean2d for
MEANCRT and exposure *k* for CRMASK*k*).  Noise alone puts pixels below a
boundary that grows with ``x``; cosmic-ray pixels lie above it.

The reference implementation histograms ``(x, y)`` in 100 linear bins over the
whole dynamic range, so all faint pixels share its first column and the
boundary there is set by brighter pixels (about 15 sigma above the noise).
Here the diagram is built in noise-normalised coordinates:

* every pixel gets a noise scale ``u = sigma(max(min2d, floor))`` with
  ``sigma(x) = sqrt(max(x, 0) + rnoise**2)`` and ``floor`` the median of
  median2d over the 8 neighbours (:func:`noise_scale`).  min2d alone
  fluctuates downwards by about one sigma, and such a fluctuation both raises
  ``median - min`` and lowers ``sigma(min2d)``: normalising by it puts a heavy
  noise tail exactly where faint coincident hits lie.  The simulations use the
  same floor and their own min2d.  When the simulated exposures are not
  equivalent (offsets, flux factors), their expected deterministic spread
  ``max_k lam_k - min_k lam_k`` is added in quadrature (:func:`inflate`): the
  few pixels on the flanks of bright lines, whose exposures differ by many
  sigma without any cosmic ray, then get their own columns instead of setting
  the boundary of the faint background they share a noise level with;
* columns are bins of ``u`` holding the same number of pixels (so the "one
  simulated pixel above" rule gives every pixel the same false-alarm
  probability);
* the row coordinate is ``t = (target - min2d) / u``.

Everything else keeps its documented meaning: the simulated exposures are
drawn from the (cleaned) median with the detector noise model, flux factors
and offsets; the boundary point of every column is the level above which one
simulated pixel is expected over all ``mm_nsimulations`` sets; the boundary is
a spline through those points with ``mm_knots_splfit`` knots, pushed upwards
``mm_niter_boundary_extension`` times with weights
``mm_weight_boundary_extension**iteration``, or a piecewise line through the
fixed points.  Each target gets its own boundary from its own simulated
diagram.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .chunks import CHUNK, map_in_chunks
from .locallevel import NEIGHBOURS
from .noise import NoiseSampler, sigma
from .sortnet import select
from .stack import low_mean, median_of_stack

__all__ = ["DiagramGrid", "SimulatedDiagrams", "local_reference", "noise_floor", "noise_scale", "make_grid",
           "simulate_diagrams", "inflate",
           "real_histogram", "column_quantile",
           "boundary_points", "target_names", "trim_histogram", "single_expectations"]

_log = logging.getLogger(__name__)

N_COLUMNS = 100
T_STEP = 0.1
T_MAX = 300.0


@dataclass(frozen=True)
class DiagramGrid:
    """Bins of the normalised diagram.

    Columns are bins of the noise scale ``u`` holding (nearly) the same number of
    real pixels each, so that the "one simulated pixel above" rule of
    :func:`boundary_points` gives every pixel the same false-alarm probability
    (with equal-width columns the crowded faint columns would get a much
    stricter boundary than the sparse bright ones).  A fine uniform grid of
    ``u`` and a lookup table map a value to its column in O(1).

    Attributes
    ----------
    rnoise_e : float
        Readout noise (electrons) defining ``sigma(x)``.
    u_edges : ndarray
        Column edges in ``u`` (electrons).
    t_edges : ndarray
        Row edges in ``t = (target - min2d) / u`` (uniform).
    fine_edges : ndarray
        Uniform fine grid of ``u``; ``lut[i]`` is the column of fine bin ``i``.
    lut : ndarray of int32
    """

    rnoise_e: float
    u_edges: np.ndarray
    t_edges: np.ndarray
    fine_edges: np.ndarray
    lut: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        """(number of columns, number of rows)."""
        return len(self.u_edges) - 1, len(self.t_edges) - 1

    @property
    def u_centres(self) -> np.ndarray:
        """Column centres."""
        return 0.5 * (self.u_edges[1:] + self.u_edges[:-1])

    def x_of_u(self, u: np.ndarray) -> np.ndarray:
        """Signal ``x`` (electrons, >= 0) whose noise is ``u``."""
        return np.maximum(np.asarray(u, dtype=float) ** 2 - self.rnoise_e**2, 0.0)

    def column_index(self, u: np.ndarray, chunk: int = CHUNK, dtype=np.int32) -> np.ndarray:
        """Column (``dtype``, clipped to the grid) of noise values ``u``, ``chunk`` values at a time."""
        nfine = len(self.fine_edges) - 1
        scale = np.float32(nfine / (self.fine_edges[-1] - self.fine_edges[0]))

        def columns(part: np.ndarray) -> np.ndarray:
            f = (part - np.float32(self.fine_edges[0])) * scale
            np.clip(f, 0, nfine - 1, out=f)
            return self.lut[f.astype(np.int32)]

        return map_in_chunks(columns, u, dtype, chunk)

    def row_index(self, t: np.ndarray) -> np.ndarray:
        """Row (int32, clipped to the grid) of normalised values ``t``."""
        nrow = self.shape[1]
        r = t * np.float32(1.0 / (self.t_edges[1] - self.t_edges[0]))
        np.clip(r, 0, nrow - 1, out=r)
        return r.astype(np.int32)

    def cell_index(self, u: np.ndarray, t: np.ndarray) -> np.ndarray:
        """Flat cell index ``column * n_rows + row`` of normalised points."""
        idx = self.column_index(u) * np.int32(self.shape[1])
        idx += self.row_index(t)
        return idx


#: Rows worked on at a time by the sorting network (its planes stay in the cache).
NETWORK_ROWS = 32


def _neighbour_rank(padded: np.ndarray, rank: int) -> np.ndarray:
    """Value of ``rank`` (0-based, ascending) among the 8 neighbours of the inner pixels of ``padded``.

    A sorting network of minima and maxima (:func:`~megara_crdetect.core.sortnet.select`): exact,
    whatever the values (finite).
    """
    ny, nx = padded.shape[0] - 2, padded.shape[1] - 2
    return select([padded[1 + dy:1 + dy + ny, 1 + dx:1 + dx + nx] for dy, dx in NEIGHBOURS], rank)


def local_reference(image: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    """Median of the 8 neighbours of every pixel (the pixel itself excluded; edges replicated).

    The upper middle of the 8 values (``scipy.ndimage.median_filter``'s
    choice), selected by a sorting network on blocks of rows, in row bands on
    ``workers`` threads: exactly ndimage's values, several times faster.
    Images with non-finite values go to ndimage itself.
    """
    image = np.asarray(image, dtype=np.float32)
    if not np.isfinite(image).all():
        footprint = np.ones((3, 3), dtype=bool)
        footprint[1, 1] = False
        return ndimage.median_filter(image, footprint=footprint, mode="nearest")
    padded = np.pad(image, 1, mode="edge")
    out = np.empty_like(image)
    starts = range(0, image.shape[0], NETWORK_ROWS)

    def rows(a: int) -> None:
        b = min(a + NETWORK_ROWS, image.shape[0])
        out[a:b] = _neighbour_rank(padded[a:b + 2], 4)

    nthreads = max(1, min(workers or os.cpu_count() or 1, len(starts)))
    if nthreads == 1:
        for a in starts:
            rows(a)
    else:
        with ThreadPoolExecutor(nthreads) as pool:
            list(pool.map(rows, starts))
    return out


def noise_floor(median2d: np.ndarray, *, workers: int | None = None) -> np.ndarray:
    """Signal floor of the noise scale: median of median2d over the 8 neighbours."""
    return local_reference(median2d, workers=workers)


def inflate(u: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    """Add (in quadrature, in place) the expected deterministic spread of the exposures to ``u``."""
    if spread is not None:
        u *= u
        u += spread * spread
        np.sqrt(u, out=u)
    return u


def noise_scale(min2d: np.ndarray, floor: np.ndarray, rnoise_e: float) -> np.ndarray:
    """Noise scale ``u = sigma(max(min2d, floor))`` of every pixel (float32).

    ``floor`` (:func:`noise_floor`) comes from the neighbours only, so that a
    downward fluctuation of min2d does not shrink the scale of the pixel it
    belongs to; ``min2d`` keeps the scale of an isolated real feature (hot
    pixel, line peak) that the neighbours do not have.  The simulations
    compute ``u`` in exactly the same way from their own min2d and the same
    fixed floor, so the real and simulated diagrams stay comparable.
    """
    return sigma(np.maximum(min2d, floor), rnoise_e)


def make_grid(noise: np.ndarray, rnoise_e: float, *, n_columns: int = N_COLUMNS, n_fine: int = 4096,
              max_samples: int = 2_000_000) -> DiagramGrid:
    """Grid covering the noise scales ``u`` of the pixels, with equally populated columns.

    The columns span ``u`` from the readout noise to the largest value; their
    edges are quantiles of ``u`` (on a fine uniform grid of 4096 bins; a fine
    bin is never split, so fewer columns result when most pixels share a fine
    bin).  Rows span ``t`` in [0, 300] in steps of 0.1.
    """
    r = float(rnoise_e)
    flat = np.asarray(noise).ravel()
    u = flat[:: max(1, flat.size // max_samples)]
    u_lo = r if r > 0 else float(u.min(initial=0.0))
    u_hi = float(flat.max(initial=0.0))
    if u_hi <= u_lo:
        u_hi = u_lo + 1.0
    u_hi += (u_hi - u_lo) * 1e-6
    fine_edges = np.linspace(u_lo, u_hi, n_fine + 1)
    counts, _ = np.histogram(u, bins=fine_edges)
    cum = np.cumsum(counts) / max(counts.sum(), 1)
    lut = np.minimum((cum * n_columns - 1e-9).astype(np.int64), n_columns - 1)
    lut = np.maximum.accumulate(np.concatenate([[0], lut[:-1]]))  # column of each fine bin (by its lower edge)
    used, lut = np.unique(lut, return_inverse=True)
    first = np.searchsorted(lut, np.arange(len(used)))
    u_edges = np.concatenate([fine_edges[first], [fine_edges[-1]]])
    t_edges = np.arange(0.0, T_MAX + T_STEP / 2, T_STEP)
    return DiagramGrid(r, u_edges, t_edges, fine_edges, lut.astype(np.int32))


def target_names(n_images: int) -> list[str]:
    """Names of the diagrams: ``median``, ``mean`` and ``exposure1..N``."""
    return ["median", "mean"] + [f"exposure{k}" for k in range(1, n_images + 1)]


@dataclass
class SimulatedDiagrams:
    """Accumulated simulated histograms, one per target.

    Attributes
    ----------
    grid : DiagramGrid
    hist : dict of str to ndarray, shape (n_columns, n_rows), int64
        Counts over all simulations.
    nsim : int
        Number of simulated sets.
    npix : int
        Pixels per simulated exposure.
    check : dict of str to ndarray
        Counts of the ``n_check`` independent check sets.
    n_check : int
        Number of check sets.
    """

    grid: DiagramGrid
    hist: dict[str, np.ndarray]
    nsim: int
    npix: int = 0
    check: dict[str, np.ndarray] = field(default_factory=dict)
    n_check: int = 0


def _targets_of(z: np.ndarray, lo: np.ndarray) -> list[np.ndarray]:
    """Simulated target images minus min2d, in the order of :func:`target_names`."""
    out = [median_of_stack(z) - lo, z.mean(axis=0, dtype=np.float32) - lo]
    out.extend(zk - lo for zk in z)
    return out


def _simulate_block(expected: np.ndarray, noise: np.ndarray, rows: slice, *, rnoise_e: float, n_low: int,
                    nsim: int, n_check: int, grid: DiagramGrid, seed: np.random.SeedSequence,
                    exact: bool, hist: np.ndarray, spread: np.ndarray | None = None,
                    raw_factors: np.ndarray | None = None, nbinom_shape: float | None = None) -> None:
    """Add the histograms of one block of rows to ``hist`` (2, n_targets, ncells).

    ``hist[0]`` collects the fitting sets, ``hist[1]`` the check sets.
    """
    rng = np.random.default_rng(seed)
    if raw_factors is None:
        samplers = [NoiseSampler(lam, rnoise_e, exact=exact, nbinom_shape=nbinom_shape) for lam in expected[:, rows]]
    else:  # draw the raw exposure f_k * E_k with its own noise, then normalise it like the real one
        samplers = [NoiseSampler(lam * np.float32(f), rnoise_e, exact=exact, nbinom_shape=nbinom_shape)
                    for lam, f in zip(expected[:, rows], raw_factors)]
    n = len(samplers)
    shape = samplers[0].lam.shape
    nrow = np.int32(grid.shape[1])
    z = np.empty((n,) + shape, dtype=np.float32)
    floor = noise[rows]
    spread = None if spread is None else spread[rows]
    for isim in range(nsim + n_check):
        for k, sampler in enumerate(samplers):
            sampler.draw(rng, out=z[k])
            if raw_factors is not None:
                z[k] /= np.float32(raw_factors[k])
        lo = low_mean(z, n_low)
        u = noise_scale(lo, floor, rnoise_e)
        scales = [(grid.column_index(u) * nrow, np.float32(1.0) / u)]
        if spread is not None:  # the median keeps the plain scale, the other targets the inflated one
            u = inflate(u, spread)
            scales.append((grid.column_index(u) * nrow, np.divide(np.float32(1.0), u, out=u)))
        out = hist[int(isim >= nsim)]
        for j, y in enumerate(_targets_of(z, lo)):
            base, inv = scales[min(j, len(scales) - 1)]
            y *= inv
            idx = grid.row_index(y)
            idx += base
            if n_low > 1:  # min2d is a mean: a target may lie below it
                np.maximum(idx, 0, out=idx)
            np.add.at(out[j], idx.ravel(), 1)  # counted in place: no cell-sized array per block and target


def simulate_diagrams(expected: np.ndarray, noise: np.ndarray, *, rnoise_e: float, n_coincidences: int, nsim: int,
                      grid: DiagramGrid, seed: int | None, n_check: int = 2, block_rows: int = 64,
                      workers: int | None = None, spread: np.ndarray | None = None,
                      raw_factors: np.ndarray | None = None, exact: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      nbinom_shape: float | None = None) -> SimulatedDiagrams:
    """Simulate ``nsim`` sets of exposures and histogram their MM diagrams.

    Parameters
    ----------
    expected : ndarray, shape (N, ny, nx), float32
        Expected signal of every simulated exposure (electrons), already
        including flux factors and offsets.
    noise : ndarray, shape (ny, nx), float32
        Fixed signal floor of the noise scale (:func:`noise_floor` of the real
        data); each simulation computes ``u`` with :func:`noise_scale`.
    rnoise_e : float
        Readout noise (electrons).
    n_coincidences : int
        ``min2d`` is the mean of the ``N - n_coincidences`` lowest values.
    nsim : int
        Number of simulated sets (``mm_nsimulations``).
    n_check : int
        Extra, independent simulated sets kept apart (``check`` histograms) to
        measure the false-positive rate of the boundary out of sample: counted
        on the sets it was fitted to, the rate would be underestimated.
    grid : DiagramGrid
        Bins (see :func:`make_grid`).
    seed : int or None
        ``mm_seed``.  The image is split in blocks of ``block_rows`` rows, each
        with its own random stream spawned from the seed, so the result does
        not depend on ``workers``.
    workers : int, optional
        Threads (default: number of cores).
    exact : bool
        Exact Poisson deviates instead of the fast sampler (see
        :mod:`megara_crdetect.core.noise`).
    spread : ndarray, shape (ny, nx), optional
        Expected deterministic spread of the exposures (offsets, flux
        factors), added in quadrature to the simulated ``u`` of the mean and
        exposure diagrams exactly as to the real one (:func:`inflate`); the
        median diagram keeps the plain scale.
    raw_factors : ndarray, shape (N,), optional
        Flux factors already divided out of the real exposures
        (``apply_flux_factor_to: original``): simulated exposure k is drawn
        with expectation ``f_k * expected[k]`` and its noise, then divided by
        ``f_k``, so the fainter exposures are noisier after normalisation, as
        in the real data.
    progress : callable, optional
        Called as ``progress(done, total)`` after every block.
    nbinom_shape : float, optional
        Negative-binomial photon noise of this shape (``mm_photon_distribution:
        nbinom``) instead of Poisson.

    Returns
    -------
    SimulatedDiagrams
    """
    n, ny, _ = expected.shape
    n_low = n - n_coincidences
    blocks = [slice(r, min(r + block_rows, ny)) for r in range(0, ny, block_rows)]
    seeds = np.random.SeedSequence(seed).spawn(len(blocks))
    workers = workers or os.cpu_count() or 1
    ncells = int(np.prod(grid.shape))
    queue = iter(range(len(blocks)))
    lock = threading.Lock()
    done = [0]

    def worker() -> np.ndarray:
        # one accumulator per thread; blocks are taken in turn from a shared queue
        hist = np.zeros((2, n + 2, ncells), dtype=np.int64)
        while True:
            with lock:
                i = next(queue, None)
            if i is None:
                return hist
            _simulate_block(expected, noise, blocks[i], rnoise_e=rnoise_e, n_low=n_low, nsim=nsim, n_check=n_check,
                            grid=grid, seed=seeds[i], exact=exact, hist=hist, spread=spread,
                            raw_factors=raw_factors, nbinom_shape=nbinom_shape)
            with lock:
                done[0] += 1
                if progress is not None:
                    progress(done[0], len(blocks))

    nthreads = max(1, min(workers, len(blocks)))
    with ThreadPoolExecutor(max_workers=nthreads) as pool:
        futures = [pool.submit(worker) for _ in range(nthreads)]
        total = sum(f.result() for f in futures)
    hists = total.reshape(2, n + 2, *grid.shape)
    names = target_names(n)
    return SimulatedDiagrams(grid, dict(zip(names, hists[0])), nsim, npix=expected[0].size,
                             check=dict(zip(names, hists[1])), n_check=n_check)


def real_histogram(noise: np.ndarray, min2d: np.ndarray, target: np.ndarray, grid: DiagramGrid) -> np.ndarray:
    """Histogram of the real pixels on the normalised grid (n_columns, n_rows)."""
    idx = grid.cell_index(noise, (target - min2d) / noise)
    return np.bincount(idx.ravel(), minlength=int(np.prod(grid.shape))).reshape(grid.shape)


def column_quantile(hist: np.ndarray, grid: DiagramGrid, fraction: float) -> np.ndarray:
    """Per column, the ``t`` level above which ``fraction`` of the simulated pixels lie."""
    totals = hist.sum(axis=1)
    cum = np.cumsum(hist, axis=1)
    goal = (1.0 - fraction) * totals
    j = np.argmax(cum >= goal[:, None], axis=1)
    level = grid.t_edges[np.minimum(j + 1, len(grid.t_edges) - 1)]
    return np.where(totals > 0, level, 0.0)


def boundary_points(hist: np.ndarray, grid: DiagramGrid) -> tuple[np.ndarray, np.ndarray]:
    """Per column, the level above which one simulated pixel is expected.

    For a column holding ``T`` simulated pixels (summed over all
    simulations) the point is the ``t`` where the cumulative count reaches
    ``T - 1``, interpolated linearly inside its bin.  Columns with fewer than
    two pixels give no point.

    Returns
    -------
    u, t : ndarray
        Column centres and boundary levels of the populated columns.
    """
    totals = hist.sum(axis=1)
    keep = np.flatnonzero(totals >= 2)
    cum = np.cumsum(hist[keep], axis=1)
    goal = (totals[keep] - 1)[:, None]
    j = np.argmax(cum >= goal, axis=1)
    rows = np.arange(len(keep))
    below = np.where(j > 0, cum[rows, j - 1], 0)
    inbin = hist[keep, j]
    frac = np.where(inbin > 0, (goal[:, 0] - below) / np.maximum(inbin, 1), 0.0)
    step = grid.t_edges[1] - grid.t_edges[0]
    t = grid.t_edges[j] + frac * step
    return grid.u_centres[keep], t


# -- #16: numina 0.40's options of the simulated diagram ---------------------------------------------


def trim_histogram(hist: np.ndarray, grid: DiagramGrid, *, min_neighbors: int = 0,
                   y_max_e: float = 0.0) -> np.ndarray:
    """A simulated histogram without isolated bins and above a top (numina 0.40's options).

    Parameters
    ----------
    hist : ndarray, shape (n_columns, n_rows)
        Simulated counts.
    grid : DiagramGrid
    min_neighbors : int
        ``mm_hist2d_min_neighbors``: a non-empty bin with fewer non-empty
        bins among its 8 neighbours (outside = empty) is emptied.
    y_max_e : float
        ``mm_ydiag_max`` in electrons: counts of rows whose lower edge
        ``t * u`` (column centre ``u``) lies above it are left out, as
        simulated pixels above the top of the reference's diagram are;
        0 keeps everything.

    Returns
    -------
    ndarray
        ``hist`` itself when nothing is to be done, else a trimmed copy.
    """
    if min_neighbors <= 0 and y_max_e <= 0:
        return hist
    out = hist.copy()
    if min_neighbors > 0:
        filled = hist > 0
        kernel = np.ones((3, 3), dtype=np.int32)
        kernel[1, 1] = 0
        count = ndimage.convolve(filled.astype(np.int32), kernel, mode="constant", cval=0)
        out[filled & (count < min_neighbors)] = 0
    if y_max_e > 0:
        y_low = grid.u_centres[:, None] * grid.t_edges[None, :-1]
        out[y_low > y_max_e] = 0
    return out


def single_expectations(stack: np.ndarray, stats, noise: np.ndarray,
                        flagged_median: np.ndarray | None = None, *, limit_sigma: float = 5.0) -> np.ndarray:
    """Expected signal of each simulated exposure from the exposure itself (``mm_synthetic: single``).

    Each exposure is pre-cleaned: where it stands more than ``limit_sigma``
    noise sigmas above median2d (a cosmic ray of that exposure) or where the
    auxiliary detector's confirmed flags on the median lie
    (``flagged_median``, a bool map), min2d replaces it.  The exposure's own
    noise is then part of the expectation, as in numina 0.40's single-image
    simulations.
    """
    out = np.empty(stack.shape, dtype=np.float32)
    for k in range(stack.shape[0]):
        hit = (stack[k] - stats.median2d) > np.float32(limit_sigma) * noise
        if flagged_median is not None:
            hit |= flagged_median
        out[k] = np.where(hit, stats.min2d, stack[k])
    np.maximum(out, 0, out=out)
    return out
