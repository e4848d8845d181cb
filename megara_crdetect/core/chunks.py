"""Element-wise maps over whole frames, a chunk of values at a time (no frame-sized temporaries)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["CHUNK", "map_in_chunks"]

#: Values per chunk: its temporaries are a few MB, and a chunk is long enough for NumPy's loops.
CHUNK = 1 << 20


def map_in_chunks(func: Callable[[np.ndarray], np.ndarray], values: np.ndarray, dtype, chunk: int = CHUNK
                  ) -> np.ndarray:
    """``func(values)`` as an array of ``dtype`` and the shape of ``values``, ``chunk`` values at a time.

    ``func`` must be element-wise (each output value depends on its own input
    value only); its temporaries are then those of one chunk, and the result
    equals ``func(values).astype(dtype)`` bit for bit.
    """
    values = np.asarray(values)
    out = np.empty(values.shape, dtype=dtype)
    flat_in, flat_out = values.reshape(-1), out.reshape(-1)
    for s in range(0, flat_in.size, chunk):
        flat_out[s:s + chunk] = func(flat_in[s:s + chunk])
    return out
