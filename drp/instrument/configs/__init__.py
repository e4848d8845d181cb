"""Instrument configurations of MEGARACR, one ``instrument-<uuid>.json`` each.

numina keeps the configurations of every installed DRP in one store keyed by
file name, hence the uuid in the name.
"""
