"""Sphinx configuration of the megara-crdetect documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (the test
tests/test_docs.py builds it with warnings as errors into a temporary folder).
The pages are Markdown (myst-parser); the API reference comes from the numpydoc
docstrings (autodoc + autosummary); the parameter reference (parameters.md) is
generated from the schema and kept in sync by tests/test_config.py.
"""

from __future__ import annotations

import megara_crdetect

project = "megara-crdetect"
author = "megara-crdetect developers"
copyright = "megara-crdetect developers, GPL-3.0-or-later"  # noqa: A001 - Sphinx setting
version = release = megara_crdetect.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_build/**", ".venv", "**/.ipynb_checkpoints"]
templates_path: list[str] = []

# Markdown: $...$ maths, ```{directive} blocks, heading anchors for #section links
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3
# pages of other chapters may link to files outside docs/ (scripts, obsresults/): not Sphinx documents
suppress_warnings = ["myst.xref_missing"]

# API reference: no stub files written into the source tree, no class-member tables to resolve
autosummary_generate = False
autodoc_member_order = "bysource"
autodoc_typehints = "none"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

html_theme = "alabaster"
html_static_path = ["_static"]
html_title = f"megara-crdetect {release}"
