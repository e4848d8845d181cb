"""A small multi-page PDF writer for the review pages: images, lines, markers and text.

The review PDFs have a hundred pages or more of the same few elements
(cut-out images, frames, boxes, a small diagram, titles).  Drawn with
matplotlib's PDF backend, every page walks ~200 artists and costs ~25 ms;
written here as PDF operators directly it costs ~1-2 ms.  Only what the
pages need is supported: 8-bit RGB images (drawn pixel for pixel, no
interpolation), polylines, rectangles, the markers of the detection
categories (``x + o s D .``), clipping to a rectangle, and text in the
standard PDF fonts Helvetica and Courier (no font file embedded; widths from
the Adobe font metrics shipped with matplotlib).

Coordinates are PDF points (1/72 inch) from the lower-left corner of the page.
"""

from __future__ import annotations

import math
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib import colors as mcolors
from matplotlib import get_data_path

__all__ = ["PdfWriter", "Page", "text_width", "rgb_image"]

#: The two fonts of the pages: PDF resource name and base font.
FONTS = {"sans": ("F1", "Helvetica"), "mono": ("F2", "Courier")}
#: Ascent and descent of both fonts, in units of the font size (Adobe metrics).
ASCENT, DESCENT = 0.718, 0.207


@lru_cache(maxsize=None)
def _helvetica_widths() -> dict[int, float]:
    """Advance widths (1/1000 of the size) of Helvetica, from its AFM file."""
    path = Path(get_data_path()) / "fonts" / "pdfcorefonts" / "Helvetica.afm"
    widths = {}
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.startswith("C "):
            fields = dict(f.strip().split(" ", 1) for f in line.split(";") if f.strip())
            code = int(fields["C"])
            if code >= 0:
                widths[code] = float(fields["WX"])
    return widths


def text_width(text: str, size: float, font: str = "sans") -> float:
    """Width in points of one line of ``text`` (latin-1 characters)."""
    if font == "mono":
        return 0.6 * size * len(text)
    w = _helvetica_widths()
    return sum(w.get(b, 556.0) for b in text.encode("latin-1", "replace")) * size / 1000.0


@lru_cache(maxsize=256)
def _rgb(color) -> tuple[float, float, float]:
    return mcolors.to_rgb(color)


def _colour_op(color, stroke: bool) -> str:
    r, g, b = _rgb(color)
    return f"{r:.3f} {g:.3f} {b:.3f} {'RG' if stroke else 'rg'}"


def rgb_image(values: np.ndarray, cmap, norm) -> np.ndarray:
    """Colour-map ``values`` as matplotlib's ``imshow`` would: (ny, nx, 3) uint8 on a white background."""
    rgba = cmap(norm(np.ma.masked_invalid(values)), bytes=True)
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:].astype(np.uint16)
    if np.any(alpha < 255):  # transparent (bad) values show the white page
        rgb = ((rgb * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


class Page:
    """The content of one page (see :meth:`PdfWriter.page`)."""

    def __init__(self, width: float, height: float):
        self.width, self.height = float(width), float(height)
        self.ops: list[str] = []
        self.images: list[np.ndarray] = []

    # -- graphics -------------------------------------------------------------------------------------------
    def image(self, rgb: np.ndarray, x: float, y: float, w: float, h: float) -> None:
        """Draw an (ny, nx, 3) uint8 image whose row 0 is at the bottom into the box ``(x, y, w, h)``."""
        self.images.append(rgb)
        self.ops.append(f"q {w:.3f} 0 0 {h:.3f} {x:.3f} {y:.3f} cm /I{len(self.images)} Do Q")

    def rect(self, x: float, y: float, w: float, h: float, *, color="black", lw: float = 0.8) -> None:
        """Outline of a rectangle."""
        self.ops.append(f"{lw:.2f} w {_colour_op(color, True)} {x:.2f} {y:.2f} {w:.2f} {h:.2f} re S")

    def polyline(self, xs, ys, *, color="black", lw: float = 1.0) -> None:
        """Connected line through the points (NaN points break it)."""
        parts, move = [], True
        for x, y in zip(np.asarray(xs, float), np.asarray(ys, float)):
            if not (math.isfinite(x) and math.isfinite(y)):
                move = True
                continue
            parts.append(f"{x:.2f} {y:.2f} {'m' if move else 'l'}")
            move = False
        if parts:
            self.ops.append(f"{lw:.2f} w 1 J 1 j {_colour_op(color, True)} " + " ".join(parts) + " S 0 J 0 j")

    def segments(self, segs, *, color="black", lw: float = 0.8) -> None:
        """Separate straight segments ``(x0, y0, x1, y1)``."""
        if len(segs):
            self.ops.append(f"{lw:.2f} w {_colour_op(color, True)} "
                            + " ".join(f"{a:.2f} {b:.2f} m {c:.2f} {d:.2f} l" for a, b, c, d in segs) + " S")

    def markers(self, xs, ys, *, marker: str, size: float, color, filled: bool = False, lw: float = 1.0) -> None:
        """Markers of ``size`` points (matplotlib's ``ms``) at the points."""
        xs, ys = np.asarray(xs, float).ravel(), np.asarray(ys, float).ravel()
        keep = np.isfinite(xs) & np.isfinite(ys)  # a NaN would make the page unreadable
        xs, ys = xs[keep], ys[keep]
        if xs.size == 0:
            return
        h = size / 2.0
        path = []
        for x, y in zip(xs, ys):
            if marker == "x":
                path.append(f"{x - h:.2f} {y - h:.2f} m {x + h:.2f} {y + h:.2f} l "
                            f"{x - h:.2f} {y + h:.2f} m {x + h:.2f} {y - h:.2f} l")
            elif marker == "+":
                path.append(f"{x - h:.2f} {y:.2f} m {x + h:.2f} {y:.2f} l {x:.2f} {y - h:.2f} m {x:.2f} {y + h:.2f} l")
            elif marker == "s":
                path.append(f"{x - h:.2f} {y - h:.2f} {size:.2f} {size:.2f} re")
            elif marker == "D":
                d = h * 1.2
                path.append(f"{x:.2f} {y - d:.2f} m {x + d:.2f} {y:.2f} l {x:.2f} {y + d:.2f} l {x - d:.2f} {y:.2f} l h")
            else:  # "o" (diameter size) or "." (a small filled dot)
                path.append(_circle(x, y, h if marker == "o" else h * 0.5))
        op = "B" if filled or marker == "." else "S"  # B: filled and outlined, as matplotlib's markers
        self.ops.append(f"{lw:.2f} w {_colour_op(color, True)} {_colour_op(color, False)} " + " ".join(path) + f" {op}")

    def clip(self, x: float, y: float, w: float, h: float) -> None:
        """Clip what follows to a rectangle, until :meth:`unclip`."""
        self.ops.append(f"q {x:.2f} {y:.2f} {w:.2f} {h:.2f} re W n")

    def unclip(self) -> None:
        self.ops.append("Q")

    # -- text -----------------------------------------------------------------------------------------------
    def text(self, x: float, y: float, text: str, *, size: float = 8.0, font: str = "sans", ha: str = "left",
             va: str = "baseline", color="black", rotation: int = 0, linespacing: float = 1.2) -> None:
        """Text at ``(x, y)``; several lines for ``\\n``.

        ``ha``: left, center, right; ``va``: baseline (of the last line), top,
        bottom, center.  ``rotation``: 0 or 90 (reading upwards; alignment
        then applies along and across the rotated line as for ``rotation_mode='anchor'``).
        """
        lines = text.split("\n")
        step = linespacing * size
        block = step * (len(lines) - 1)
        if va == "top":
            first = -ASCENT * size
        elif va == "bottom":
            first = DESCENT * size + block
        elif va == "center":
            first = block / 2 - (ASCENT - DESCENT) * size / 2
        else:
            first = block
        name = FONTS[font][0]
        out = [f"BT /{name} {size:.2f} Tf {_colour_op(color, False)}"]
        for k, line in enumerate(lines):
            w = text_width(line, size, font)
            dx = {"left": 0.0, "center": -w / 2, "right": -w}[ha]
            dy = first - k * step
            if rotation == 90:
                tx, ty = x - dy, y + dx
                out.append(f"0 1 -1 0 {tx:.2f} {ty:.2f} Tm")
            else:
                out.append(f"1 0 0 1 {x + dx:.2f} {y + dy:.2f} Tm")
            out.append(f"({_escape(line)}) Tj")
        out.append("ET")
        self.ops.append(" ".join(out))


def _circle(x: float, y: float, r: float) -> str:
    k = 0.5523 * r
    return (f"{x + r:.2f} {y:.2f} m {x + r:.2f} {y + k:.2f} {x + k:.2f} {y + r:.2f} {x:.2f} {y + r:.2f} c "
            f"{x - k:.2f} {y + r:.2f} {x - r:.2f} {y + k:.2f} {x - r:.2f} {y:.2f} c "
            f"{x - r:.2f} {y - k:.2f} {x - k:.2f} {y - r:.2f} {x:.2f} {y - r:.2f} c "
            f"{x + k:.2f} {y - r:.2f} {x + r:.2f} {y - k:.2f} {x + r:.2f} {y:.2f} c h")


class PdfWriter:
    """Write pages one at a time into a PDF file (``with PdfWriter(path) as pdf: pdf.add(page)``).

    Parameters
    ----------
    path : path-like
        Output file.
    compress_level : int
        zlib level of the content streams and images (1: fast).
    """

    def __init__(self, path, *, compress_level: int = 1):
        self._file = open(path, "wb")
        self._level = compress_level
        self._offsets: dict[int, int] = {}
        self._next = 5  # 1 catalog, 2 page tree, 3-4 fonts
        self._pages: list[int] = []
        self._file.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
        self._object(1, b"<< /Type /Catalog /Pages 2 0 R >>")
        for number, (_, base) in zip((3, 4), FONTS.values()):
            self._object(number, f"<< /Type /Font /Subtype /Type1 /BaseFont /{base} "
                                 "/Encoding /WinAnsiEncoding >>".encode())

    def __enter__(self) -> PdfWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def page(width: float, height: float) -> Page:
        """A new empty page of ``width`` x ``height`` points (add it with :meth:`add`)."""
        return Page(width, height)

    def _new(self) -> int:
        self._next += 1
        return self._next - 1

    def _object(self, number: int, body: bytes) -> None:
        self._offsets[number] = self._file.tell()
        self._file.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")

    def _stream(self, number: int, data: bytes, extra: str = "") -> None:
        packed = zlib.compress(data, self._level)
        self._object(number, f"<< {extra} /Filter /FlateDecode /Length {len(packed)} >>\nstream\n".encode()
                     + packed + b"\nendstream")

    def add(self, page: Page) -> None:
        """Write a page."""
        names = []
        for k, rgb in enumerate(page.images):
            number = self._new()
            ny, nx = rgb.shape[:2]
            self._stream(number, np.ascontiguousarray(rgb[::-1]).tobytes(),
                         f"/Type /XObject /Subtype /Image /Width {nx} /Height {ny} /ColorSpace /DeviceRGB "
                         "/BitsPerComponent 8 /Interpolate false")
            names.append(f"/I{k + 1} {number} 0 R")
        content = self._new()
        self._stream(content, "\n".join(page.ops).encode("latin-1", "replace"))
        number = self._new()
        xobjects = f" /XObject << {' '.join(names)} >>" if names else ""
        self._object(number, (f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {page.width:.2f} {page.height:.2f}] "
                              f"/Resources << /Font << /F1 3 0 R /F2 4 0 R >>{xobjects} >> "
                              f"/Contents {content} 0 R >>").encode())
        self._pages.append(number)

    def close(self) -> None:
        """Write the page tree, the cross-reference table and the trailer."""
        if self._file.closed:
            return
        kids = " ".join(f"{n} 0 R" for n in self._pages)
        self._object(2, f"<< /Type /Pages /Kids [{kids}] /Count {len(self._pages)} >>".encode())
        start = self._file.tell()
        size = self._next
        rows = [b"0000000000 65535 f \n"]
        rows += [b"%010d 00000 n \n" % self._offsets[n] if n in self._offsets else b"0000000000 65535 f \n"
                 for n in range(1, size)]
        self._file.write(b"xref\n0 %d\n" % size + b"".join(rows))
        self._file.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (size, start))
        self._file.close()
