"""Diagnostics and review products (figures, region files, interactive mode)."""
