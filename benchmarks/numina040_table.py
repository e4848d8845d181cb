"""One Markdown table, ours vs numina 0.40 per crmethod and set, from ``quality.py --crmethod M --json F`` runs.

Usage::

    python benchmarks/numina040_table.py [--compact] RESULT.json [RESULT.json ...]

``--compact``: one row per set and crmethod, each cell "ours | numina 0.40".

Columns: wall time and peak RSS of each program (same run, same data), MEDIANCR recall of the
spoiled median pixels (plain median more than 5 sigma above the truth), far false flags (MEDIANCR
pixels more than 2 px from any cosmic-ray deposit above 1 sigma) and the residual cosmic-ray pixels
(> 5 sigma) of the ``mediancr`` and ``meancr2`` combinations.  A program that did not finish shows
its exit status.  CPU time (user + system, from GNU time's report in ``ours.log``/``ref.log`` of the
run's work folder ``w_<set>_<crmethod>`` beside the JSON file, when present) is the fairer speed figure
on a loaded machine, where wall time mostly measures waiting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = ("wall [s]", "CPU [s]", "peak RSS [MB]", "recall", "far false", "res. mediancr", "res. meancr2")


def cpu_seconds(log: Path) -> float | None:
    """User + system time of a run from GNU time's report in its log."""
    if not log.exists():
        return None
    total = None
    for line in log.read_text(errors="replace").splitlines():
        if "User time (seconds)" in line or "System time (seconds)" in line:
            total = (total or 0.0) + float(line.split()[-1])
    return total


def _cells(r: dict | None, cpu: float | None) -> list[str]:
    if r is None:
        return ["not run"] + [""] * (len(COLUMNS) - 1)
    if r.get("status") != 0:
        return [f"failed (exit {r.get('status')})"] + [""] * (len(COLUMNS) - 1)
    rss = r.get("peak_rss_mb")
    return [f"{r['wall_s']:.1f}", "-" if cpu is None else f"{cpu:.1f}", "-" if rss is None else f"{rss:.0f}", f"{r['recall_harmful']:.4f}",
            str(r["far_false_flags"]), str(r["residuals_mediancr"]), str(r["residuals_meancr2"])]


def table(paths: list[Path]) -> str:
    """The Markdown table of the given JSON results (one row per program)."""
    lines = ["| set | crmethod | program | " + " | ".join(COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for path in paths:
        doc = json.loads(path.read_text())
        workdir = path.parent / f"w_{path.stem}"
        for prog, label in (("ours", "ours"), ("ref", "numina 0.40")):
            res = doc["results"].get(prog)
            shape = tuple(doc.get("shape", (1596, 2016)))
            where = doc["set"] if shape == (1596, 2016) else f"{doc['set']} ({shape[0]} x {shape[1]})"
            lines.append(f"| {where} | {doc.get('crmethod', 'mm_lacosmic')} | {label} | "
                         + " | ".join(_cells(res, cpu_seconds(workdir / f"{prog}.log"))) + " |")
    return "\n".join(lines)


def _order(path: Path) -> tuple:
    doc = json.loads(path.read_text())
    methods = ("lacosmic", "mm_lacosmic", "deepcr", "mm_deepcr", "mmcosmic", "pycosmic", "mm_pycosmic", "conn",
               "mm_conn")
    sets = ("equivalent", "flux", "offsets")
    method = doc.get("crmethod", "mm_lacosmic")
    return (sets.index(doc["set"]) if doc["set"] in sets else 9, methods.index(method) if method in methods else 99)


def compact(paths: list[Path]) -> str:
    """One row per set and crmethod, each cell ``ours | numina 0.40`` (ours alone where numina did not run)."""
    lines = ["| set | crmethod | " + " | ".join(COLUMNS) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for path in sorted(paths, key=_order):
        doc = json.loads(path.read_text())
        workdir = path.parent / f"w_{path.stem}"
        cells = {prog: _cells(doc["results"].get(prog), cpu_seconds(workdir / f"{prog}.log"))
                 for prog in ("ours", "ref")}
        ref_ran = doc["results"].get("ref") is not None
        if ref_ran and doc["results"]["ref"].get("status") != 0:
            row = [f"{o} \\| {cells['ref'][0] if i == 0 else '-'}" for i, o in enumerate(cells["ours"])]
        elif ref_ran:
            row = [f"{o} \\| {r}" for o, r in zip(cells["ours"], cells["ref"])]
        else:
            row = cells["ours"]
        lines.append(f"| {doc['set']} | {doc.get('crmethod', 'mm_lacosmic')} | " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--compact":
        print(compact([Path(p) for p in args[1:]]))
    else:
        print(table([Path(p) for p in args]))
