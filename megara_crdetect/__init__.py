"""megara-crdetect: detect and repair cosmic rays that survive a median combination.

The package finds the pixels hit by cosmic rays in two or more of N >= 3
equivalent exposures (those a plain median keeps) and the cosmic rays of every
single exposure, using the Median-Minimum diagnostic diagram (MMcosmic) and
L.A.Cosmic (LAcosmic), and writes corrected combinations with their variance
and exposure map.

Python interface: :func:`detect` returns a :class:`CRMasks`, whose
:meth:`CRMasks.combine` gives an :class:`astropy.nddata.CCDData`::

    import megara_crdetect as mcr
    masks = mcr.detect(["a.fits", "b.fits", "c.fits"], gain=1.25, rnoise=3.4)
    clean = masks.combine("mediancr")
"""

__version__ = "0.1.0"

__all__ = ["detect", "CRMasks", "ConfigError", "InputError", "__version__"]

_LAZY = {"detect": "api", "CRMasks": "api", "ConfigError": "errors", "InputError": "errors"}


def __getattr__(name: str):
    # imported on first use: the command line and numina's DRP loader import this package
    # and must not pay for astropy.nddata and the detection code
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
