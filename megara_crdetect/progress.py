"""Progress of the long steps: a rich progress bar on a terminal, plain log lines otherwise.

Every long step reports through one callable, ``progress(step, done, total)``
(the protocol of :func:`megara_crdetect.core.pipeline.compute_crmasks`, the
runner's writing and the review module's figures and PDF pages).
:class:`ProgressReporter` is that callable for the command line.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["ProgressReporter"]

_log = logging.getLogger("megara_crdetect")


class ProgressReporter:
    """``progress(step, done, total)`` for people: a bar per step on a terminal, log lines otherwise.

    Parameters
    ----------
    stream : file-like, optional
        Where the bar is drawn (default ``sys.stderr``).
    live : bool, optional
        Draw bars (default: when ``stream`` is a terminal).  Otherwise an
        INFO log line is written when a step starts, at every quarter and
        when it ends.

    Notes
    -----
    A step's bar (rich) lives from its first report to ``done >= total``,
    so log lines between steps are never drawn over.  :meth:`close` ends an
    unfinished bar (interrupted run).
    """

    def __init__(self, stream=None, live: bool | None = None):
        self.stream = stream or sys.stderr
        self.live = bool(getattr(self.stream, "isatty", lambda: False)()) if live is None else live
        self._bar = None
        self._task = None
        self._step = None
        self._quarter: dict[str, int] = {}

    def __call__(self, step: str, done: int, total: int) -> None:
        if self.live:
            self._draw(step, done, total)
        else:
            self._log(step, done, total)

    def _log(self, step: str, done: int, total: int) -> None:
        quarter = 4 * done // max(total, 1)
        if step not in self._quarter or quarter > self._quarter[step]:
            self._quarter[step] = quarter
            _log.info("%s: %d/%d (%d%%)", step, done, total, 100 * done // max(total, 1))
        if done >= total:
            self._quarter.pop(step, None)

    def _draw(self, step: str, done: int, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        if self._step != step:
            self.close()
            self._bar = Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=Console(file=self.stream, force_terminal=True),
                                 redirect_stdout=False, redirect_stderr=False)
            self._bar.start()
            self._task, self._step = self._bar.add_task(step, total=total), step
        self._bar.update(self._task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        """End the current bar, if any."""
        if self._bar is not None:
            self._bar.stop()
        self._bar, self._task, self._step = None, None, None
