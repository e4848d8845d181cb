"""Recipes of the MEGARACR DRP.

This package stays light on purpose: numina imports it whenever it loads the
DRP (it looks for an optional ``configs.yaml`` here with ``pkgutil.get_data``,
which imports the package), for instance in ``numina show-instruments``.  The
recipe itself, which imports the whole detection code, lives in
:mod:`megara_crdetect.drp.recipes.crdetect` and is imported only when used.
"""

from __future__ import annotations

__all__ = ["MegaraCrDetection"]


def __getattr__(name: str):
    if name == "MegaraCrDetection":
        from .crdetect import MegaraCrDetection

        return MegaraCrDetection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
