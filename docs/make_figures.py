"""Make the pictures of the README and the docs (docs/_static/*.png) from our own code.

``python docs/make_figures.py [--real DIR] [--demo DIR]``

* ``before_after.png``: three real 100 s WHT/ISIS exposures (``/work/shared/data/real/wht_isis``,
  frames r2701253/55/57) with a real cosmic-ray track, cut from the 1800 s exposure r2701242 of the
  same night (its excess over r2701244, same pointing), added to two of them at the same place: the
  median keeps it, ``combined_mediancr`` (through :func:`megara_crdetect.detect`) repairs it.
* ``thumb_*.png`` and ``gallery_*.png``: the diagnostic figures of ``numina-crmasks --example 1``
  (run into ``--demo``, default a temporary folder), reduced.

The reduction of the raw ISIS frames (per-column overscan median, rows 1-4096) is the one of
tests/test_real_frames.py and of the tutorial (docs/tutorial.md).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy import ndimage

HERE = Path(__file__).resolve().parent
STATIC = HERE / "_static"
REAL = HERE.parents[1] / "shared" / "data" / "real" / "wht_isis"
TRIPLET = ("r2701253.fit.gz", "r2701255.fit.gz", "r2701257.fit.gz")
GAIN, RNOISE = 0.98, 4.2  # e-/ADU (header), ADU (measured from frame differences)
ROWS = slice(1500, 2012)  # 512 of the 4096 science rows: enough around the chosen place, fast
PLACE = (300, 478)  # (row in the crop, column): on the flank of the standard star's trace

_log = logging.getLogger("make_figures")


def reduced(path: Path, rows: slice = slice(0, 4096)) -> np.ndarray:
    """Raw ISIS frame -> bias-subtracted ADU (per-column median of rows 4110-4190), rows 1-4096."""
    with fits.open(path) as hdul:
        data = hdul[1].data.astype(np.float32)
    return (data[:4096] - np.median(data[4109:4190], axis=0))[rows]


def real_track(real: Path, min_pixels: int = 12) -> np.ndarray:
    """A real cosmic-ray track: the excess of r2701242 over r2701244 on one elongated hit (ADU)."""
    a, b = reduced(real / "r2701242.fit.gz"), reduced(real / "r2701244.fit.gz")
    diff = a - b
    noise = 1.4826 * np.median(np.abs(diff - np.median(diff)))
    labels, n = ndimage.label(diff > 8 * noise, structure=np.ones((3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(diff), labels, index=np.arange(1, n + 1))
    best = None
    for k in np.argsort(sizes)[::-1]:
        sl = ndimage.find_objects((labels == k + 1).astype(int))[0]
        h, w = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if sizes[k] >= min_pixels and max(h, w) <= 25 and max(h, w) >= 2.5 * min(h, w) and sl[1].start > 5:
            best = (k + 1, sl)
            break
    label, sl = best
    grown = ndimage.binary_dilation(labels[sl] == label, np.ones((3, 3)))
    track = np.where(grown, diff[sl], 0).astype(np.float32)
    _log.info("track: %d pixels, peak %.0f ADU, from r2701242 rows %d-%d, columns %d-%d",
              grown.sum(), track.max(), sl[0].start + 1, sl[0].stop, sl[1].start + 1, sl[1].stop)
    return track


def before_after(real: Path, out: Path) -> dict:
    import megara_crdetect as mcr

    stack = np.stack([reduced(real / name, ROWS) for name in TRIPLET])
    track = real_track(real)
    r0, c0 = PLACE
    h, w = track.shape
    for k in (0, 1):  # the same hit in two of the three exposures
        stack[k, r0:r0 + h, c0:c0 + w] += track
    masks = mcr.detect(list(stack), gain=GAIN, rnoise=RNOISE)
    median, repaired = masks.combine("median"), masks.combine("mediancr")
    box = (slice(r0 - 20, r0 + h + 20), slice(c0 - 25, c0 + w + 25))
    hit = np.zeros(stack.shape[1:], bool)
    hit[r0:r0 + h, c0:c0 + w] = track > 0
    caught = int((masks.mediancr & hit).sum())
    _log.info("MEDIANCR: %d pixels in all, %d of the %d track pixels", masks.mediancr.sum(), caught, hit.sum())
    _two_panels(median.data[box], repaired.data[box], out)
    return {"track_pixels": int(hit.sum()), "caught": caught, "mediancr": int(masks.mediancr.sum())}


def _two_panels(left: np.ndarray, right: np.ndarray, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from matplotlib.colors import AsinhNorm

    sky = np.median(right)
    noise = 1.4826 * np.median(np.abs(right - sky))
    # asinh stretch: linear over the sky noise, compressed up to the star's trace
    norm = AsinhNorm(linear_width=3 * noise, vmin=sky - 3 * noise, vmax=np.percentile(right, 99.5))
    h, w = left.shape
    fig = Figure(figsize=(6.4, 6.4 * 0.46 * h / w / 0.98 + 0.35), dpi=100)
    FigureCanvasAgg(fig)
    top = 1 - 0.3 / fig.get_figheight()
    for k, (img, title) in enumerate(((left, "median of 3 exposures"), (right, "combined_mediancr"))):
        ax = fig.add_axes((0.01 + 0.5 * k, 0.01, 0.48, top - 0.02))
        ax.imshow(img, origin="lower", cmap="gray", norm=norm, interpolation="nearest")
        ax.set_title(title, fontsize=11)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.savefig(out)


def thumbnails(demo: Path) -> None:
    """Reduced copies of the figures of example 1 (thumb_*: 320 px wide, gallery_*: 800 px)."""
    from PIL import Image

    names = {"histogram2d": "diagnostic_histogram2d.png", "mediancr": "diagnostic_mediancr.png",
             "meancr": "diagnostic_meancr.png", "crmask1": "diagnostic_crmask1.png"}
    for tag, name in names.items():
        with Image.open(demo / name) as img:
            for prefix, width in (("thumb", 320), ("gallery", 800)):
                if prefix == "thumb" and tag not in ("histogram2d", "mediancr"):
                    continue
                small = img.convert("RGB").resize((width, round(img.height * width / img.width)),
                                                  Image.LANCZOS)
                # a 128-colour palette: a quarter of the bytes, no visible loss on these plots
                small.quantize(128).save(STATIC / f"{prefix}_{tag}.png", optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", type=Path, default=REAL)
    parser.add_argument("--demo", type=Path, help="output folder of --example 1 (run if missing)")
    parser.add_argument("--skip-thumbnails", action="store_true", help="only before_after.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    STATIC.mkdir(exist_ok=True)
    print(before_after(args.real, STATIC / "before_after.png"))
    if args.skip_thumbnails:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        demo = args.demo or Path(tmp) / "demo"
        if not (demo / "diagnostic_histogram2d.png").exists():
            exe = Path(sys.executable).with_name("numina-crmasks")
            subprocess.run([str(exe), "--example", "1", "--output_dir", str(demo)], check=True)
        thumbnails(demo)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
