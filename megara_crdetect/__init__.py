"""megara-crdetect: detect and repair cosmic rays that survive a median combination.

The package finds the pixels hit by cosmic rays in two or more of N >= 3
equivalent exposures (those a plain median keeps) and the cosmic rays of every
single exposure, using the Median-Minimum diagnostic diagram (MMcosmic) and
L.A.Cosmic (LAcosmic), and writes corrected combinations with their variance
and exposure map.
"""

__version__ = "0.1.0"
