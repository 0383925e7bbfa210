"""Sphinx configuration of the outlier_dask documentation.

Built offline in CI with warnings as errors::

    sphinx-build -W -b html docs docs/_build/html

The Markdown pages are read by myst-parser; the parameter table is made at build time from
:class:`outlier_dask.parameters.OutlierParameters` by the local extension
``_ext/parameter_table.py``, so it cannot drift from the code.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))
# The package itself, when the docs are built from a checkout without installing it.
sys.path.insert(1, str(HERE.parent))
# jwst/stpipe look for CRDS parameter files on import of a step; the build must stay offline.
os.environ.setdefault("STPIPE_DISABLE_CRDS_STEPPARS", "True")
os.environ.setdefault("CRDS_MODE", "local")

import outlier_dask  # noqa: E402

project = "outlier_dask"
author = "outlier_dask developers"
copyright = "outlier_dask developers"  # noqa: A001 - Sphinx's name
release = outlier_dask.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "parameter_table",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
# Keep "--option" and quotes as typed: the pages are full of command lines.
smartquotes = False

# numpydoc-style docstrings, read by napoleon (no extra package needed).
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
# No intersphinx: the build must not reach the network.

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = f"outlier_dask {release}"
html_static_path: list[str] = []
