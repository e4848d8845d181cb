"""Command-line shell: ``numina-crmasks PARAMS.yaml`` (also ``megara-crmasks``).

The shell only translates: arguments and YAML into a validated configuration,
files into arrays, results into files.  User errors print one line
``error: ...`` on stderr and exit with status 2, with nothing written.

Exit status: 0 success, 1 aborted by the user (key ``x``), 2 invalid input,
3 internal error (run with ``--log-level DEBUG`` to see the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import yaml

from . import __version__
from .config import parse_run_config
from .errors import ConfigError, InputError, UserAbort

__all__ = ["main", "TerminalProgress"]

_log = logging.getLogger("megara_crdetect")


class TerminalProgress:
    """Progress of long steps: a live counter on a terminal, silent in logs."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()

    def __call__(self, step: str, done: int, total: int) -> None:
        if not self.live:
            return
        end = "\n" if done >= total else ""
        self.stream.write(f"\r  {step}: {done}/{total} ({100 * done // max(total, 1)}%){end}")
        self.stream.flush()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="numina-crmasks",
        description="Detect and repair cosmic rays that survive the median of N >= 3 exposures "
                    "(megara-crdetect; the numina reference stays available as python -m numina.array.crmasks).")
    p.add_argument("params", nargs="?", help="YAML parameter file (see the README)")
    p.add_argument("--output_dir", "--output-dir", default=".", help="folder for the products (created)")
    p.add_argument("--log-level", default="INFO", type=str.upper,
                   choices=["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], help="logging level")
    p.add_argument("--crmasks", metavar="FILE", help="re-apply the masks of FILE instead of detecting them")
    p.add_argument("--example", type=int, choices=[1, 2, 3, 4],
                   help="write the simulated data and parameters of the guide's example N into --output_dir, "
                        "then run it")
    p.add_argument("--no-figures", action="store_true", help="do not write the diagnostic figures")
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
    if args.no_figures:
        return None
    from .review.figures import start_figures
    return start_figures


def _check_output_dir(path: str) -> None:
    """The output folder must be a folder we can write into (or creatable)."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise InputError(f"--output_dir = '{path}': exists and is not a folder")
    parent = next((p for p in [out, *out.parents] if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"--output_dir = '{path}': '{parent}' is not writable")


def _execute(args) -> int:
    from .runner import run

    _check_output_dir(args.output_dir)
    if args.example is not None:
        from .examples import write_example
        _log.info("writing example %d into %s", args.example, args.output_dir)
        params_path = write_example(args.example, args.output_dir)
    elif args.params is None:
        raise InputError("give a parameter file (numina-crmasks PARAMS.yaml) or --example N")
    else:
        params_path = Path(args.params)
    cfg = parse_run_config(_load_yaml(params_path))
    _log.info("megara-crdetect %s: %s, crmethod %s", __version__, params_path, cfg.params.crmethod)
    review = None
    if cfg.params.interactive:
        from .review.interactive import make_review
        review = make_review(cfg, base_dir=params_path.parent)
    outcome = run(cfg, base_dir=params_path.parent, output_dir=args.output_dir, crmasks_file=args.crmasks,
                  progress=TerminalProgress(), figures=_figure_writer(args), review=review)
    for path in outcome.files:
        _log.debug("wrote %s", path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the program; returns the exit status."""
    args = _parser().parse_args(argv)
    _configure_logging(args.log_level)
    try:
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
    except Exception as exc:  # noqa: BLE001 - last resort: one line, traceback only on request
        _log.debug("internal error", exc_info=True)
        print(f"internal error: {type(exc).__name__}: {exc} (run with --log-level DEBUG for details)",
              file=sys.stderr)
        return 3


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
