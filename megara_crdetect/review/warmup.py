"""Start loading the figure machinery early, in a thread (``start``), while the detection runs.

The figure processes are forked from this process once the masks exist
(:func:`~megara_crdetect.review.figures.start_figures`): what is imported
and initialised here (matplotlib, its PDF backend and font list, astropy's
zscale) they inherit instead of each loading it again, and the loading
overlaps with the detection instead of delaying the figures.  This module
imports nothing heavy itself, so ``start`` returns at once.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["start", "finish"]

_log = logging.getLogger(__name__)
_thread: threading.Thread | None = None


def start() -> None:
    """Start the warm-up thread (once).  Not for the interactive review, whose pyplot windows live in
    the main thread: call :func:`finish` before opening them."""
    global _thread
    if _thread is None:
        _thread = threading.Thread(target=_run, name="figures-warm-up", daemon=True)
        _thread.start()


def _run() -> None:
    try:
        from .figures import warm_up

        warm_up()
    except Exception:  # noqa: BLE001 - only a head start; the figures report their own errors
        _log.debug("figure warm-up failed", exc_info=True)


def finish() -> None:
    """Wait until the warm-up (if started) is over; before forking, no thread may be importing."""
    if _thread is not None:
        _thread.join()
