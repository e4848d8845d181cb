"""Interactive review (``interactive: true``) in real matplotlib windows.

:func:`make_review` returns the ``review`` callback of
:func:`~megara_crdetect.core.pipeline.compute_crmasks`; it is called with the
partial result once MEDIANCR is known and returns the MEDIANCR mask to keep.

1. ``diagnostic_histogram2d`` window (MM methods): look at the simulated and
   real diagrams and the boundary.
2. ``diagnostic_mediancr`` window: zoom in panel (a) zooms (b) too and limits
   the markers of panel (c) to the pixels inside the view; (c) and (d) zoom
   together; keys ``0``..``9`` show mean2d (0) or exposure k in panel (d).
3. With ``verify_cr: true``: one window per CR event, ``y`` keep, ``n``
   reject, ``a`` accept all remaining.

Keys in every window: ``q`` continue, ``x`` abort (exit status 1, nothing
written), ``?`` print the keys.  Closing a window counts as ``q`` (``a`` in
the verification window).

Without a display (no ``DISPLAY`` / ``WAYLAND_DISPLAY`` on Linux, a
non-interactive matplotlib backend such as ``MPLBACKEND=Agg``, or ``CI`` set)
one warning is logged and MEDIANCR is returned unchanged: the run goes on and
writes the review files (``mediancr_regions.reg``, ``review_edits.yaml``...).

The key handlers are small methods bound to the figure's
``key_press_event``, so tests drive them with real key events on Agg figures.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserAbort
from . import diagrams
from .events import ReviewData
from .pages import CRPage

__all__ = ["make_review", "run_review", "no_display_reason", "DiagramKeys", "VerifyKeys", "DIAGRAM_HELP",
           "VERIFY_HELP"]

_log = logging.getLogger(__name__)

DIAGRAM_HELP = """keys: q = continue, x = abort (nothing is written), ? = this help
      0 = mean2d in panel (d), 1..9 = exposure k in panel (d)
      zoom / pan with the toolbar: zooming panel (a) zooms (b) and filters the markers of (c)"""
VERIFY_HELP = """keys: y (or Enter) = keep this cosmic ray, n = remove it from MEDIANCR,
      a = accept all remaining, x = abort (nothing is written), ? = this help"""

_NON_INTERACTIVE = {"agg", "cairo", "pdf", "pgf", "ps", "svg", "template", "module://matplotlib_inline.backend_inline"}


class DiagramKeys:
    """Keys of the diagram windows: ``q`` continue, ``x`` abort, ``?`` help, digits for panel (d).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        The window's figure; the handler is connected to its ``key_press_event``.
    panels : MediancrPanels, optional
        Panels of ``diagnostic_mediancr`` (digits and zoom linking need them).
    """

    def __init__(self, fig, panels: diagrams.MediancrPanels | None = None):
        self.fig, self.panels = fig, panels
        self.outcome: str | None = None
        self.cid = fig.canvas.mpl_connect("key_press_event", self.on_key)
        fig.review_keys = self  # matplotlib keeps only a weak reference to bound-method callbacks
        if panels is not None:
            ax_a = panels.ax["a"]
            ax_a.callbacks.connect("xlim_changed", panels.filter_c_to_view)
            ax_a.callbacks.connect("ylim_changed", panels.filter_c_to_view)

    @property
    def finished(self) -> bool:
        """Whether the user closed the step (``q`` or ``x``)."""
        return self.outcome is not None

    def on_key(self, event) -> None:
        """Dispatch one key press."""
        key = event.key
        if key == "q":
            self.outcome = "continue"
        elif key == "x":
            self.outcome = "abort"
        elif key == "?":
            print(DIAGRAM_HELP, flush=True)
        elif key is not None and len(key) == 1 and key.isdigit():
            self.show_d(int(key))

    def show_d(self, k: int) -> None:
        """Panel (d): mean2d (0) or exposure k."""
        if self.panels is None:
            return
        if self.panels.show_d(k):
            self.fig.canvas.draw_idle()
        else:
            print(f"no exposure {k}: use 0..{0 if self.panels.data.stack is None else self.panels.data.stack.shape[0]}",
                  flush=True)


class VerifyKeys:
    """Keys of the ``verify_cr`` window: ``y`` keep, ``n`` reject, ``a`` accept the rest, ``x`` abort.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure holding a :class:`~megara_crdetect.review.pages.CRPage`.
    page : CRPage
        The page that shows one CR event at a time.
    """

    def __init__(self, fig, page: CRPage):
        self.fig, self.page = fig, page
        self.n = len(page.data.events)
        self.keep = np.ones(self.n, dtype=bool)
        self.index = 0
        self.outcome: str | None = None if self.n else "done"
        self.cid = fig.canvas.mpl_connect("key_press_event", self.on_key)
        fig.review_keys = self  # matplotlib keeps only a weak reference to bound-method callbacks
        if self.n:
            self._show()

    @property
    def finished(self) -> bool:
        """Whether every event was answered (or ``a`` / ``x`` was pressed)."""
        return self.outcome is not None

    def _show(self) -> None:
        self.page.draw_event(self.index, prompt="keep this cosmic ray? y = yes, n = no, a = accept all "
                                                "remaining, x = abort, ? = help")
        self.fig.canvas.draw_idle()

    def _answer(self, keep: bool) -> None:
        self.keep[self.index] = keep
        self.index += 1
        if self.index >= self.n:
            self.outcome = "done"
        else:
            self._show()

    def on_key(self, event) -> None:
        """Dispatch one key press."""
        if self.finished:
            return
        key = event.key
        if key in ("y", "enter"):
            self._answer(True)
        elif key == "n":
            self._answer(False)
        elif key == "a":
            self.outcome = "done"
        elif key == "x":
            self.outcome = "abort"
        elif key == "?":
            print(VERIFY_HELP, flush=True)

    def reduced(self, mediancr: np.ndarray) -> np.ndarray:
        """MEDIANCR without the rejected events."""
        rejected = np.flatnonzero(~self.keep) + 1
        if rejected.size == 0:
            return mediancr
        return mediancr & ~np.isin(self.page.data.events.labels, rejected)


# ---------------------------------------------------------------------------
# the review flow (testable with Agg figures and scripted key events)
# ---------------------------------------------------------------------------

NewFigure = Callable[..., object]
Wait = Callable[[object, object], None]


def run_review(result, cfg, *, stack: np.ndarray | None, new_figure: NewFigure, wait: Wait,
               close: Callable[[object], None] = lambda fig: None) -> np.ndarray:
    """Show the review windows one after the other and return the MEDIANCR mask to keep.

    Parameters
    ----------
    result : CRMaskResult
        Partial result (MEDIANCR known).
    cfg : RunConfig
        Run configuration.
    stack : ndarray, optional
        Exposures in electrons (panel (d) and the cut-outs).
    new_figure : callable
        ``new_figure(figsize, title, constrained)`` returns an empty figure
        (pyplot window, or Agg figure in tests), with the constrained layout
        engine if ``constrained``.
    wait : callable
        ``wait(fig, keys)`` returns when ``keys.finished`` (or the window was
        closed).
    close : callable
        Called with each figure when its step is over.

    Raises
    ------
    UserAbort
        Key ``x`` in any window.
    """
    data = ReviewData(result, cfg.rnoise_e, stack)
    p = cfg.params
    if result.diagrams is not None:
        fig = new_figure((13, 10), "MM diagnostic diagram (q continue, x abort, ? help)", True)
        diagrams.histogram_figure(fig, data)
        _step(fig, DiagramKeys(fig), wait, close)
    fig = new_figure((13, 10), "MEDIANCR detections (q continue, x abort, ? help, 0-9 panel d)", True)
    panels = diagrams.mediancr_figure(fig, data, threshold_e=p.threshold_e(cfg.inputs.gain, cfg.rnoise_e))
    _step(fig, DiagramKeys(fig, panels), wait, close)
    if not (p.verify_cr and len(data.events)):
        return result.mediancr
    fig = new_figure((11, 6), "verify cosmic rays (y keep, n reject, a accept all, x abort)", False)
    page = CRPage(fig, data, semiwindow=p.semiwindow, color_scale=p.color_scale, use_lamedian=p.use_lamedian)
    keys = _step(fig, VerifyKeys(fig, page), wait, close)
    n_out = int(np.count_nonzero(~keys.keep))
    _log.info("verify_cr: %d of %d cosmic-ray events removed from MEDIANCR", n_out, keys.n)
    return keys.reduced(result.mediancr)


def _step(fig, keys, wait: Wait, close):
    wait(fig, keys)
    close(fig)
    if keys.outcome == "abort":
        raise UserAbort("key x in the review window")
    return keys


# ---------------------------------------------------------------------------
# real windows
# ---------------------------------------------------------------------------


def _backend_is_interactive(name: str) -> bool:
    name = name.lower()
    if name in _NON_INTERACTIVE:
        return False
    try:
        from matplotlib.backends import BackendFilter, backend_registry

        return name in backend_registry.list_builtin(BackendFilter.INTERACTIVE) or name.startswith("module://")
    except ImportError:  # matplotlib < 3.9
        from matplotlib import rcsetup

        return name in [b.lower() for b in rcsetup.interactive_bk]


def no_display_reason() -> str | None:
    """Why no window can be shown here (None if windows can be shown)."""
    import matplotlib

    if os.environ.get("CI"):
        return "running under CI"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "no display (DISPLAY and WAYLAND_DISPLAY are not set)"
    chosen = matplotlib.rcParams._get_backend_or_none()  # None: not chosen yet (pyplot picks one)
    if chosen is not None and not _backend_is_interactive(chosen):
        return f"the matplotlib backend '{chosen}' is not interactive"
    import matplotlib.pyplot as plt

    backend = plt.get_backend()
    if not _backend_is_interactive(backend):
        return f"the matplotlib backend '{backend}' is not interactive"
    return None


def _pyplot_figure(figsize: tuple[float, float], title: str, constrained: bool):
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=figsize, layout="constrained" if constrained else None)
    manager = fig.canvas.manager
    if manager is not None:
        manager.set_window_title(title)
    return fig


def _pyplot_wait(fig, keys) -> None:
    closed = []
    fig.canvas.mpl_connect("close_event", lambda event: closed.append(True))
    fig.show()
    while not keys.finished and not closed:
        fig.canvas.start_event_loop(0.1)
    if not keys.finished:  # window closed
        keys.outcome = "done" if isinstance(keys, VerifyKeys) else "continue"


def _pyplot_close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _load_stack(cfg, base_dir: str | Path | None) -> np.ndarray | None:
    from ..errors import InputError
    from ..io import read_images, to_electrons

    try:
        inputs = read_images(cfg.inputs.images, base_dir=base_dir or ".", extnum=cfg.inputs.extnum)
    except InputError as exc:
        _log.warning("review: the exposures cannot be read again (%s); panel (d) shows mean2d only", exc)
        return None
    return to_electrons(inputs.data, gain=cfg.inputs.gain, bias=cfg.inputs.bias)


def make_review(cfg, *, base_dir: str | Path | None = None, stack: np.ndarray | None = None
                ) -> Callable[[object], np.ndarray]:
    """The ``review`` callback of :func:`~megara_crdetect.core.pipeline.compute_crmasks`.

    Parameters
    ----------
    cfg : RunConfig
        Run configuration (``cfg.params.verify_cr``, ``semiwindow``...).
    base_dir : path-like, optional
        Folder of the parameter file, to read the exposures again for the
        review windows (default: the current folder).
    stack : ndarray, optional
        The exposures in electrons, if the caller has them.

    Returns
    -------
    callable
        ``review(result) -> MEDIANCR`` (boolean mask to keep).
    """

    def review(result) -> np.ndarray:
        reason = no_display_reason()
        if reason is not None:
            _log.warning("interactive: true but %s: no review windows; see mediancr_regions.reg, "
                         "mediancr_candidates.csv and review_edits.yaml instead", reason)
            return result.mediancr
        import matplotlib

        exposures = stack if stack is not None else _load_stack(cfg, base_dir)
        # 'q' is ours (continue): matplotlib's own 'q' (close the window) is switched off meanwhile
        quit_keys = [k for k in matplotlib.rcParams["keymap.quit"] if k != "q"]
        with matplotlib.rc_context({"keymap.quit": quit_keys}):
            return run_review(result, cfg, stack=exposures, new_figure=_pyplot_figure, wait=_pyplot_wait,
                              close=_pyplot_close)

    return review
