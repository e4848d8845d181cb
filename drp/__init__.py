"""numina plug-in of megara-crdetect (installed as ``megara_crdetect.drp``).

The DRP registers the pseudo-instrument **MEGARACR** (entry point group
``numina.pipeline.1``) with one observing mode, ``MegaraCrDetection``, whose
recipe (:class:`megara_crdetect.drp.recipes.crdetect.MegaraCrDetection`) runs the same
detection as the ``numina-crmasks`` command line.  A name of its own keeps it
independent of megaradrp, which registers ``MEGARA``: numina keeps only one
DRP per instrument name, and which one wins is not deterministic.

This module imports nothing heavy: numina imports it (and ``loader`` and
``datamodel``) every time it lists the installed DRPs.
"""

from __future__ import annotations

from megara_crdetect import __version__

__all__ = ["__version__", "INSTRUMENT", "MODE"]

#: Instrument name of the DRP (``instrument:`` of the observation results).
INSTRUMENT = "MEGARACR"
#: Key of the observing mode (``mode:`` of the observation results).
MODE = "MegaraCrDetection"
