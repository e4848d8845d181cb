"""What a batch shows while it runs and when it ends.

On a terminal a rich progress bar of OBs (done / failed / running, elapsed,
estimated remaining); otherwise one log line per finished OB.  At the end a
summary table (OB, status, wall, MEDIANCR pixels, flux factors, offsets,
products), printed and written as CSV.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["LogReporter", "RichReporter", "make_reporter", "print_summary", "write_summary_csv",
           "summary_cells", "COLUMNS"]

_log = logging.getLogger("megara_crdetect.batch")

COLUMNS = ("OB", "status", "wall_s", "mediancr_pixels", "flux_factors", "offsets", "products", "message")


def _fmt_list(values, fmt: str) -> str:
    if not values:
        return ""
    return " ".join(fmt.format(v) for v in values)


def summary_cells(row: dict) -> dict:
    """The summary columns of one OB row as text."""
    offsets = row.get("offsets") or []
    moved = any(v != 0 for o in offsets for v in o)
    return {"OB": row["name"], "status": row["status"],
            "wall_s": "" if row.get("wall_s") is None else f"{row['wall_s']:.1f}",
            "mediancr_pixels": "" if row.get("mediancr") is None else str(row["mediancr"]),
            "flux_factors": _fmt_list(row.get("flux_factors"), "{:.4f}"),
            "offsets": " ".join(f"({dx:+.3f},{dy:+.3f})" for dx, dy in offsets) if moved else
            ("0" if offsets else ""),
            "products": str(len(row.get("products") or [])) if row["status"] in ("done", "skipped") else "",
            "message": row.get("message", "")}


def write_summary_csv(path: Path, rows: list[dict]) -> None:
    """Write the summary table as CSV (atomically); products are listed by name, ``;``-separated."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS)
    writer.writeheader()
    for row in rows:
        cells = summary_cells(row)
        cells["products"] = ";".join(row.get("products") or [])
        writer.writerow(cells)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def _status_line(row: dict) -> str:
    cells = summary_cells(row)
    if row["status"] == "failed":
        return f"OB {row['name']}: failed: {row['message']}"
    extra = f", MEDIANCR {cells['mediancr_pixels']} px" if cells["mediancr_pixels"] else ""
    wall = f" in {cells['wall_s']} s" if cells["wall_s"] else ""
    return f"OB {row['name']}: {row['status']}{wall}{extra}"


class LogReporter:
    """Plain log lines: one at the start, one per finished OB."""

    def __init__(self):
        self.total = self.done = self.failed = 0
        self.t0 = time.monotonic()

    def start(self, *, total: int, text: str, dashboard: str | None) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()

    def update(self, row: dict, running: int) -> None:
        self.done += 1
        if row["status"] == "skipped":
            return
        self.failed += row["status"] == "failed"
        elapsed = time.monotonic() - self.t0
        level = logging.WARNING if row["status"] == "failed" else logging.INFO
        _log.log(level, "[%d/%d, %d failed, %d running, %.0f s] %s", self.done, self.total, self.failed,
                 running, elapsed, _status_line(row))

    def tick(self, running: int) -> None:
        """Nothing to do between OBs in a log."""

    def close(self) -> None:
        """Nothing to close."""


class RichReporter:
    """A live progress bar of OBs on the terminal (rich)."""

    def __init__(self, stream=None):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.console = Console(file=stream or sys.stderr)
        self.progress = Progress(TextColumn("OBs"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("failed {task.fields[failed]}, running {task.fields[running]}"),
                                 TextColumn("elapsed"), TimeElapsedColumn(), TextColumn("left"),
                                 TimeRemainingColumn(), console=self.console, transient=False)
        self.task = None
        self.failed = 0

    def start(self, *, total: int, text: str, dashboard: str | None) -> None:
        self.progress.start()
        self.task = self.progress.add_task("OBs", total=total, completed=0, failed=0, running=0)

    def update(self, row: dict, running: int) -> None:
        if row["status"] == "failed":
            self.failed += 1
            self.console.print(f"[red]OB {row['name']} failed:[/red] {row['message']}", markup=True,
                               highlight=False)
        self.progress.update(self.task, advance=1, failed=self.failed, running=running)

    def tick(self, running: int) -> None:
        if self.task is not None:
            self.progress.update(self.task, running=running)

    def close(self) -> None:
        if self.task is not None:
            self.progress.update(self.task, running=0)
        self.progress.stop()


def make_reporter(stream=None):
    """A :class:`RichReporter` on a terminal, else a :class:`LogReporter`."""
    stream = stream or sys.stderr
    if hasattr(stream, "isatty") and stream.isatty():
        return RichReporter(stream)
    return LogReporter()


def print_summary(result, stream=None) -> None:
    """Print the summary table of a :class:`~megara_crdetect.batch.BatchResult`."""
    stream = stream or sys.stdout
    rows = [summary_cells(r) for r in result.rows]
    counts = {s: sum(r["status"] == s for r in result.rows) for s in ("done", "skipped", "failed", "not run")}
    tail = (f"{counts['done']} done, {counts['skipped']} up to date, {counts['failed']} failed"
            + (f", {counts['not run']} not run (interrupted)" if counts["not run"] else "")
            + f"; summary in {result.output_root / 'batch_summary.csv'}")
    if hasattr(stream, "isatty") and stream.isatty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title="megara-crdetect batch")
        for col in COLUMNS:
            table.add_column(col, overflow="fold")
        for cells in rows:
            table.add_row(*(cells[c] for c in COLUMNS))
        console = Console(file=stream)
        console.print(table)
        console.print(tail, highlight=False)
        return
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS[:-1]}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS[:-1]) + "  message"]
    for cells in rows:
        lines.append("  ".join(cells[c].ljust(widths[c]) for c in COLUMNS[:-1]) + "  " + cells["message"])
    print("\n".join(lines + [tail]), file=stream)
