"""Instrument description of MEGARACR (package of the configuration files)."""
