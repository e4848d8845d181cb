"""Review products that never block a batch run: region file, candidate table, edits file.

* ``mediancr_regions.reg``: a ds9 region file (image coordinates = FITS
  pixels), one box per CR event, coloured by how it was found, labelled
  ``CR#i``; load it on ``combined_median.fits`` to inspect every event.
* ``mediancr_candidates.csv``: one row per CR event (position, size, pixels
  per method -- MM above the boundary, LA, both, pairs, user, dilation --, how
  far above the noise and above the MM boundary).
* ``review_edits.yaml``: the ``pixels_to_be_flagged_as_cr`` and
  ``pixels_to_be_ignored_as_cr`` lists of the parameter file with every
  candidate as a commented line; uncomment the lines to apply and paste them
  into the ``requirements`` block of the parameter file.

All functions return text; the caller writes the files.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from .events import EventTable

__all__ = ["DS9_COLOURS", "ds9_regions", "candidates_csv", "review_edits_yaml", "CSV_COLUMNS"]

#: ds9 colour of each event category.
DS9_COLOURS = {"la": "red", "mm": "blue", "both": "yellow", "pair": "cyan", "user": "magenta", "dilation": "white"}

CSV_COLUMNS = ("cr_number", "x_centre", "y_centre", "x_peak", "y_peak", "xmin", "xmax", "ymin", "ymax",
               "npix", "n_mm", "n_la", "n_both", "n_pair", "n_user", "n_dilation", "method", "t_max", "margin_max",
               "median_peak", "min2d_peak")


def _fmt(value: float, digits: int = 2) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.{digits}f}"


def ds9_regions(events: EventTable, *, title: str = "MEDIANCR") -> str:
    """ds9 region file: one box per event (1 px margin), colour by method, text ``CR#i``.

    Parameters
    ----------
    events : EventTable
        The CR events.
    title : str
        Name of the mask, for the header comment.

    Returns
    -------
    str
        Region file text (ds9 format 4.1, ``image`` coordinate system).
    """
    legend = ", ".join(f"{c} {k}" for k, c in DS9_COLOURS.items() if k != "dilation")
    lines = ["# Region file format: DS9 version 4.1",
             f"# megara-crdetect: {len(events)} cosmic-ray events of {title} ({legend}); "
             "image coordinates = FITS pixels",
             'global color=green dashlist=8 3 width=1 font="helvetica 10 normal roman" select=1 highlite=1 '
             "dash=0 fixed=0 edit=1 move=1 delete=1 include=1 source=1",
             "image"]
    for i in range(len(events)):
        xc = 0.5 * (events.xmin[i] + events.xmax[i])
        yc = 0.5 * (events.ymin[i] + events.ymax[i])
        w = events.xmax[i] - events.xmin[i] + 3
        h = events.ymax[i] - events.ymin[i] + 3
        colour = DS9_COLOURS[events.category(i)]
        lines.append(f"box({xc:.1f},{yc:.1f},{w},{h},0) # color={colour} text={{CR#{i + 1}}}")
    return "\n".join(lines) + "\n"


def candidates_csv(events: EventTable, median2d: np.ndarray, min2d: np.ndarray) -> str:
    """One row per CR event (see :data:`CSV_COLUMNS`; FITS coordinates, electrons).

    ``t_max`` is the largest ``(median2d - min2d) / u`` (u: noise scale) of the
    event, ``margin_max`` the largest height above the MM boundary in the same
    units (NaN without MM); ``median_peak`` / ``min2d_peak`` are the values at
    the peak pixel.
    """
    out = io.StringIO()
    out.write(",".join(CSV_COLUMNS) + "\n")
    for i in range(len(events)):
        r, c = events.y_peak[i] - 1, events.x_peak[i] - 1
        row = [str(i + 1), _fmt(events.x_centre[i]), _fmt(events.y_centre[i]), str(events.x_peak[i]),
               str(events.y_peak[i]), str(events.xmin[i]), str(events.xmax[i]), str(events.ymin[i]),
               str(events.ymax[i]), str(events.npix[i]), str(events.n_mm[i]), str(events.n_la[i]),
               str(events.n_both[i]), str(events.n_pair[i]), str(events.n_user[i]), str(events.n_dilation[i]),
               events.method(i), _fmt(events.t_max[i]), _fmt(events.margin_max[i]),
               _fmt(float(median2d[r, c]), 1), _fmt(float(min2d[r, c]), 1)]
        out.write(",".join(row) + "\n")
    return out.getvalue()


def _event_note(events: EventTable, i: int) -> str:
    margin = events.margin_max[i]
    extra = f", margin={margin:.1f}" if math.isfinite(margin) else ""
    return f"CR#{i + 1} {events.method(i)}, {events.npix[i]} px, t={events.t_max[i]:.1f}{extra}"


def _detected_pixels(events: EventTable, i: int) -> list[tuple[int, int]]:
    rows, cols, codes = events.pixels(i)
    keep = codes >= 2
    return [(int(c) + 1, int(r) + 1) for r, c in zip(rows[keep], cols[keep])]


def review_edits_yaml(events: EventTable, *, near: Sequence[tuple[int, int, float, float]] = (),
                      max_pixels_per_event: int = 50) -> str:
    """The manual-edit lists of the parameter file with every candidate commented out.

    Parameters
    ----------
    events : EventTable
        The CR events of MEDIANCR.
    near : sequence of (X, Y, t, margin)
        Pixels just below the MM boundary (FITS), offered for flagging.
    max_pixels_per_event : int
        At most this many pixels of one event in ``pixels_to_be_ignored_as_cr``.

    Returns
    -------
    str
        YAML text: a ``requirements:`` block with the two lists.  Uncommenting
        any of the ``#  - [X, Y]`` lines gives a valid ``requirements`` block.

    Notes
    -----
    ``pixels_to_be_ignored_as_cr`` lists every detected (not dilation-only)
    pixel of every event, so that uncommenting the lines of one event removes
    it completely (its dilation ring disappears with it).
    ``pixels_to_be_flagged_as_cr`` lists the peak pixel of every event (to
    keep it whatever parameters are used next) and the near misses.
    """
    head = ["# megara-crdetect review edits: uncomment the lines to apply (remove the leading '#',",
            "# keep the indentation) and paste the two lists into the requirements block of the",
            "# parameter file. Pixels are [X, Y] in FITS convention (first pixel [1, 1]).",
            f"# {len(events)} cosmic-ray events in MEDIANCR; see mediancr_candidates.csv, "
            "mediancr_regions.reg and mediancr_identified_cr.pdf.",
            "requirements:",
            "  # pixels to add to MEDIANCR: peak pixel of every event, then pixels just below the boundary",
            "  pixels_to_be_flagged_as_cr:"]
    flag = [f"  #  - [{events.x_peak[i]}, {events.y_peak[i]}]   # {_event_note(events, i)}"
            for i in range(len(events))]
    flag += [f"  #  - [{x}, {y}]   # near miss: t={t:.1f}, {-m:.2f} below the boundary (units of u)"
             for x, y, t, m in near]
    ignore = ["  # pixels to remove from MEDIANCR: every detected pixel of every event",
              "  pixels_to_be_ignored_as_cr:"]
    for i in range(len(events)):
        pix = _detected_pixels(events, i)
        shown = pix[:max_pixels_per_event]
        for j, (x, y) in enumerate(shown):
            note = _event_note(events, i) if j == 0 else f"CR#{i + 1} ({j + 1}/{len(pix)})"
            ignore.append(f"  #  - [{x}, {y}]   # {note}")
        if len(pix) > len(shown):
            ignore.append(f"  # ({len(pix) - len(shown)} more pixels of CR#{i + 1} not listed)")
    return "\n".join(head + flag + ignore) + "\n"
