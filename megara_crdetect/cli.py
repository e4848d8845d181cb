"""Command-line shell: ``numina-crmasks PARAMS.yaml`` (also ``megara-crmasks``).

The shell only translates: arguments and YAML into a validated configuration,
files into arrays, results into files.  User errors print one line
``error: ...`` on stderr and exit with status 2, with nothing written.

Exit status: 0 success, 1 aborted by the user (key ``x``), 2 invalid input,
3 internal error (run with ``--log-level DEBUG`` to see the traceback), 130
interrupted (SIGINT), 143 terminated (SIGTERM).  Only status 0 writes products.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path

import yaml

from . import __version__
from .config import parse_run_config
from .errors import ConfigError, InputError, Terminated, UserAbort
from .progress import ProgressReporter
from .review import warmup

__all__ = ["main", "ProgressReporter", "EXIT_STATUS"]

_log = logging.getLogger("megara_crdetect")

#: Exit status of every outcome (documented in --help and docs/products.md).
EXIT_STATUS = {"success": 0, "aborted by the user (key x)": 1, "invalid input": 2, "internal error": 3,
               "interrupted (SIGINT)": 130, "terminated (SIGTERM)": 143}


_EPILOG = """\
the parameter file (YAML; four keys are enough, every other key has a default):
  images: [exp1.fits, exp2.fits, exp3.fits]   # 3 or more, relative to the file's folder
  gain: 1.25                                   # e-/ADU
  rnoise: 3.4                                  # readout noise, ADU
  bias: 0                                      # ADU subtracted first
  requirements:                                # optional: crmethod, flux_factor, dilation, ...
    flux_factor: auto
  (every key: python -m megara_crdetect.config; a commented file with all of them:
   python -c "from megara_crdetect.config import params_yaml; print(params_yaml(['a.fits','b.fits','c.fits']))")

products (in --output_dir, all in electrons; written only if the whole run succeeds):
  combined_meancr2.fits    mean of the exposures without their cosmic rays, rest repaired: science
  combined_mediancr.fits   median with the cosmic rays that survive it repaired: robust
  combined_<name>.fits     also mean, median, min (no repair), meancrt, meancr; each with VARIANCE, MAP, DQ
  crmasks.fits             masks MEDIANCR, MEANCRT, CRMASK1..N, MEANCR, DQ (+ AUXCLEAN, CLEANMIN, RPMEDIAN)
  mediancr_identified.csv  one row per MEDIANCR pixel; problematic_pixels.csv: masked in every exposure
  figures and review files (unless --no-figures): diagnostic_*.png, mediancr_identified_cr.pdf,
  mediancr_candidates.csv, mediancr_regions.reg (ds9), review_edits.yaml

exit status:
  0 success, 1 aborted by the user (key x), 2 invalid input (one line "error: ..."; nothing written),
  3 internal error (--log-level DEBUG shows the traceback), 130 interrupted (SIGINT) by Ctrl-C,
  143 terminated (SIGTERM); nothing is written unless the status is 0

many parameter files at once, on Dask: numina-crmasks batch --help

examples:
  numina-crmasks --example 1 --output_dir demo     simulated data of the guide's example 1, then run it
  numina-crmasks params.yaml --output_dir out      your own data
  numina-crmasks params.yaml --crmasks out/crmasks.fits --output_dir out2   re-use masks

the numina reference stays available as: python -m numina.array.crmasks params.yaml
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="numina-crmasks", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Detect and repair the cosmic rays that survive the median of N >= 3 exposures, and "
                    "those of every exposure (megara-crdetect; also installed as megara-crmasks).")
    p.add_argument("params", nargs="?", metavar="PARAMS.yaml",
                   help="YAML parameter file (see 'the parameter file' below)")
    p.add_argument("--output_dir", "--output-dir", default=".", metavar="D",
                   help="folder for the products, created if missing (default: the current folder)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
                   help="logging level (default: %(default)s)")
    p.add_argument("--crmasks", metavar="FILE",
                   help="re-apply the masks of FILE (a crmasks.fits) instead of detecting them")
    p.add_argument("--example", type=int, choices=[1, 2, 3, 4], metavar="N",
                   help="write the simulated exposures and params_exampleN.yaml of the guide's example N "
                        "(1 equivalent, 2 piecewise boundary, 3 flux factors, 4 offsets) into --output_dir, "
                        "then run it")
    p.add_argument("--no-figures", action="store_true",
                   help="do not write the diagnostic figures and review files (default: write them)")
    p.add_argument("--record", action="store_true",
                   help="also write the console messages into <output_dir>/terminal_output.txt")
    p.add_argument("--echo", action="store_true", help="print the command line first")
    p.add_argument("--version", action="version", version=f"megara-crdetect {__version__}")
    return p


def _configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    _log.setLevel(level)


def _load_yaml(path: Path):
    if not path.exists():
        raise InputError(f"parameter file '{path}' not found")
    try:
        with path.open() as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InputError(f"'{path.name}' is not valid YAML{where}: {problem}") from None


def _figure_writer(args):
    return None if args.no_figures else _start_figures


def _start_figures(*args, **kwargs):
    """:func:`~megara_crdetect.review.figures.start_figures`, imported once the masks exist (matplotlib is
    loaded meanwhile by the warm-up thread, not by this one)."""
    from .review.figures import start_figures
    return start_figures(*args, **kwargs)


def _check_output_dir(path: str) -> None:
    """The output folder must be a folder we can write into (or creatable)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir = '{path}': exists and is not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--output_dir = '{path}': '{parent}' is not writable")


def _execute(args) -> int:
    from .memory import share_one_arena
    from .runner import run

    _check_output_dir(args.output_dir)
    share_one_arena()  # before any thread (the warm-up's) has an arena of its own
    if not args.no_figures:  # matplotlib loads in a thread while the inputs are read and the detection runs
        warmup.start()
    if args.example is not None:
        from .examples import write_example
        _log.info("writing example %d into %s", args.example, args.output_dir)
        params_path = write_example(args.example, args.output_dir)
    elif args.params is None:
        raise InputError("give a parameter file (numina-crmasks PARAMS.yaml) or --example N")
    else:
        params_path = Path(args.params)
    cfg = parse_run_config(_load_yaml(params_path))
    if cfg.params.debug:  # numina 0.40's debug: as --log-level DEBUG
        _log.setLevel(logging.DEBUG)
    _log.info("megara-crdetect %s: %s, crmethod %s", __version__, params_path, cfg.params.crmethod)
    review = None
    if cfg.params.interactive:
        from .review.interactive import make_review
        warmup.finish()  # pyplot windows in this thread: no matplotlib work in another one
        review = make_review(cfg, base_dir=params_path.parent)
    progress = ProgressReporter()
    try:
        outcome = run(cfg, base_dir=params_path.parent, output_dir=args.output_dir, crmasks_file=args.crmasks,
                      progress=progress, figures=_figure_writer(args), review=review, keep=[params_path])
    finally:
        progress.close()
    for path in outcome.files:
        _log.debug("wrote %s", path)
    return 0


def _record(args) -> logging.Handler | None:
    """``--record``: a handler keeping the console messages for ``terminal_output.txt``."""
    if not args.record:
        return None
    import io

    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(logging.getLogger().handlers[0].formatter)
    logging.getLogger().addHandler(handler)
    return handler


def _write_record(handler: logging.Handler | None, output_dir: str, status: int) -> None:
    if handler is None or status != 0:
        return
    logging.getLogger().removeHandler(handler)
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    (Path(output_dir) / "terminal_output.txt").write_text(handler.stream.getvalue())


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_exception():
    """SIGTERM raises :class:`Terminated` in the main thread while the run lasts (so the staging
    folder is removed on the way out, as with Ctrl-C)."""
    try:
        previous = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: leave the signal alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the program; returns the exit status (see :data:`EXIT_STATUS`)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["batch"]:  # numina-crmasks batch ... (issue #18): many OBs on Dask
        from .batch import main as batch_main
        return batch_main(argv[1:])
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    if args.echo:
        print("$ numina-crmasks " + " ".join(sys.argv[1:] if argv is None else argv), flush=True)
    record = _record(args)
    status = _main(args)
    _write_record(record, args.output_dir, status)
    return status


def _main(args) -> int:
    try:
        with _sigterm_as_exception():
            return _execute(args)
    except (ConfigError, InputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except UserAbort as exc:
        print(f"aborted: {exc or 'by the user'}; nothing was written", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing was written", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM); nothing was written", file=sys.stderr)
        return 143
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only on request
        _log.debug("internal error", exc_info=True)
        print(f"internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
