"""Reading the input exposures and writing products atomically.

Inputs are opened read-only and copied once into a float32 stack; they are
never modified.  Outputs are first written into a hidden staging folder inside
the output directory and moved into place only when every product of the run
has been written (:class:`OutputStage`), so a failed or aborted run leaves no
partial product behind.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .errors import InputError

__all__ = ["InputStack", "read_images", "stack_images", "to_electrons", "warn_if_raw_looking", "OutputStage"]

_log = logging.getLogger(__name__)


@dataclass
class InputStack:
    """Exposures read from disk.

    Attributes
    ----------
    data : ndarray, shape (N, ny, nx), float32
        The pixel values as stored in the files (ADU).
    paths : list of Path
        Resolved file names.
    headers : list of astropy.io.fits.Header
        Header of the HDU read from each file.
    checksums : list of str
        SHA-256 (hex) of the bytes of each file.
    """

    data: np.ndarray
    paths: list[Path]
    headers: list[fits.Header]
    checksums: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        """``images[k] = 'name'`` of every exposure (for messages)."""
        return [f"images[{k}] = '{p.name}'" for k, p in enumerate(self.paths)]


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _image_data(label: str, hdu, extnum: int) -> np.ndarray:
    """The data of an image HDU; a truncated or corrupt data unit is an InputError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # astropy warns before failing on a truncated file
            return np.asarray(hdu.data)
    except (OSError, ValueError, TypeError, Warning) as exc:
        raise InputError(f"{label}: HDU {extnum} cannot be read: the file is truncated or corrupt "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None


def _open_hdu(index: int, path: Path, extnum: int) -> tuple[np.ndarray, fits.Header]:
    label = f"images[{index}] = '{path.name}'"
    if not path.exists():
        raise InputError(f"{label}: file not found ({path})")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hdul = fits.open(path, mode="readonly", memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{label}: cannot be read as FITS ({exc})") from None
    truncated = [str(w.message) for w in caught if "truncated" in str(w.message)]
    for w in caught:
        if "truncated" not in str(w.message):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    with hdul:
        if truncated:
            raise InputError(f"{label}: the file is truncated or corrupt ({truncated[0]})")
        if extnum >= len(hdul):
            raise InputError(f"extnum = {extnum}: '{path.name}' has only {len(hdul)} HDU(s), "
                             f"numbered 0..{len(hdul) - 1}")
        hdu = hdul[extnum]
        data = _image_data(label, hdu, extnum) if hdu.is_image else None
        if data is None or data.ndim == 0:
            raise InputError(f"extnum = {extnum}: HDU {extnum} of '{path.name}' holds no image data")
        if data.ndim != 2:
            raise InputError(f"{label}: HDU {extnum} is {data.ndim}-D; a 2-D image is needed")
        return data, hdu.header.copy()


def stack_images(items: Iterable[tuple[str, np.ndarray]], count: int, *, what: str = "exposures") -> np.ndarray:
    """Copy ``(label, 2-D array)`` pairs into one float32 stack, one at a time.

    Shared by the command line and the numina recipe so that both report a
    size mismatch with the same words.  Non-finite pixels are kept (they are
    bad pixels of their exposure, see :mod:`megara_crdetect.badpixels`).

    Parameters
    ----------
    items : iterable of (str, ndarray)
        Label used in messages (e.g. ``"images[1] = 'b.fits'"``) and data;
        may be a generator that opens each file only when its turn comes.
    count : int
        Number of items.
    what : str
        Plural noun for the messages.

    Raises
    ------
    InputError
        Shapes that differ.
    """
    stack, first = None, None
    for k, (label, data) in enumerate(items):
        if stack is None:
            stack, first = np.empty((count,) + data.shape, dtype=np.float32), label
        elif data.shape != stack.shape[1:]:
            raise InputError(f"{label} is {data.shape[1]} x {data.shape[0]} (NAXIS1 x NAXIS2) but {first} is "
                             f"{stack.shape[2]} x {stack.shape[1]}; all {what} must have the same size")
        stack[k] = data
    return stack


def read_images(paths: Sequence[str | os.PathLike], *, base_dir: str | os.PathLike = ".",
                extnum: int = 0) -> InputStack:
    """Read N exposures into one float32 stack.

    Parameters
    ----------
    paths : sequence of path-like
        File names; relative ones are taken relative to ``base_dir``.
    base_dir : path-like
        Folder of the parameter file.
    extnum : int
        HDU number holding the image.

    Returns
    -------
    InputStack

    Raises
    ------
    InputError
        Missing, unreadable or truncated file, missing HDU, non 2-D data or
        shapes that differ (with the file name).
    """
    base = Path(base_dir)
    resolved = [(base / p) if not Path(p).is_absolute() else Path(p) for p in paths]
    headers = []

    def items():
        for k, path in enumerate(resolved):
            data, header = _open_hdu(k, path, extnum)
            headers.append(header)
            _log.debug("read %s [%d]: %s", path, extnum, data.shape)
            yield f"images[{k}] = '{path.name}'", data

    with ThreadPoolExecutor(1) as pool:  # hashlib releases the GIL: the checksums overlap with the reading
        checksums = pool.map(file_sha256, [p for p in resolved if p.is_file()])
        stack = stack_images(items(), len(resolved))
        return InputStack(stack, resolved, headers, list(checksums))


def to_electrons(data: np.ndarray, *, gain: float, bias: float) -> np.ndarray:
    """Subtract the bias and apply the gain, in place: ``(data - bias) * gain``.

    Parameters
    ----------
    data : ndarray, float32
        Stack in ADU (modified in place and returned).
    gain : float
        Electrons per ADU.
    bias : float
        Bias level in ADU.
    """
    if not bias and gain == 1.0:
        warn_if_raw_looking(data)
    if bias:
        data -= np.float32(bias)
    if gain != 1.0:
        data *= np.float32(gain)
    return data


def _names(names: Sequence[str], limit: int = 8) -> str:
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


#: Level of the darkest pixels (ADU) above which data with bias 0 and gain 1 look raw (#15).
RAW_LEVEL = 100.0


def warn_if_raw_looking(data: np.ndarray) -> float:
    """Log a warning when frames given with ``bias: 0, gain: 1`` look raw (a bias pedestal).

    Bias-subtracted data have their darkest pixels near 0; raw frames have them
    at the bias level (hundreds of ADU).  The level is the 1st percentile of
    a sparse sample of the stack.

    Returns
    -------
    float
        The level found.
    """
    sample = data[:, ::7, ::7]
    level = float(np.percentile(sample, 1)) if sample.size else 0.0
    if level >= RAW_LEVEL:
        _log.warning("the frames look raw: even their darkest pixels are at %.0f ADU (a bias level?), but bias = 0 "
                     "and gain = 1; give bias and gain (rnoise in ADU), or, for raw MEGARA frames, master_bias", level)
    return level


class OutputStage:
    """Write a set of products completely or not at all.

    Files are written into a hidden staging folder inside ``output_dir``;
    :meth:`commit` moves them into place (``os.replace``, atomic per file on
    one file system).  Leaving the ``with`` block with an exception removes
    the staging folder and everything in it.

    Examples
    --------
    >>> with OutputStage(tmpdir) as stage:              # doctest: +SKIP
    ...     hdul.writeto(stage.path("crmasks.fits"))
    ...     stage.commit()
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.output_dir = Path(output_dir)
        self._staging: Path | None = None
        self.written: list[Path] = []

    def __enter__(self) -> OutputStage:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=".megara-crdetect-", dir=self.output_dir))
        return self

    @property
    def directory(self) -> Path:
        """The staging folder (files written here are moved by :meth:`commit`)."""
        if self._staging is None:
            raise RuntimeError("OutputStage used outside its with-block")
        return self._staging

    def path(self, name: str) -> Path:
        """Where to write the product ``name`` now (inside the staging folder)."""
        return self.directory / name

    def commit(self, *, own: Sequence[str] = (), keep: Iterable[str | os.PathLike] = ()) -> list[Path]:
        """Move every staged file into the output directory.

        Parameters
        ----------
        own : sequence of str
            Glob patterns of the files this program writes (e.g.
            ``combined_*.fits``): a file of the output directory matching one,
            but not written by this run, is a product of an earlier run and is
            removed, so that no stale figure or table stays beside the new
            products.  Files matching no pattern are never touched.
        keep : iterable of path-like
            Files never removed (the inputs of this run, e.g. a ``--crmasks``
            file or a parameter file in the output folder).
        """
        staged = sorted(self._staging.iterdir())
        names = {item.name for item in staged}
        kept = {Path(p).resolve() for p in keep}
        replaced = sorted(n for n in names if (self.output_dir / n).exists())
        stale = sorted(p for p in self.output_dir.iterdir()
                       if p.name not in names and p.is_file() and p.resolve() not in kept
                       and any(fnmatch.fnmatchcase(p.name, pattern) for pattern in own))
        for item in staged:
            target = self.output_dir / item.name
            os.replace(item, target)
            self.written.append(target)
        for path in stale:
            path.unlink()
        if replaced:
            _log.info("replaced %d earlier file(s) of the same name in %s: %s", len(replaced), self.output_dir,
                      _names(replaced))
        if stale:
            _log.info("removed %d earlier product(s) that this run did not make: %s", len(stale),
                      _names([p.name for p in stale]))
        return self.written

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._staging is not None:
            shutil.rmtree(self._staging, ignore_errors=True)
            self._staging = None
