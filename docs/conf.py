"""Sphinx configuration of the decoupled_optax docs (Sphinx, as optax and flax do).

Build (from the repository root, with the ``docs`` extra installed)::

  python -m sphinx -W --keep-going -b html docs docs/_build/html

``-W`` turns every warning into an error; ``ext/coverage_check.py`` fails the
build when a name of ``decoupled_optax.__all__`` has no API entry. Links to
jax, optax and flax use the small inventories in ``_inventories/`` (written by
``ext/make_inventories.py``), so the build needs no network.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(
  0, str(DOCS.parent)
)  # this checkout's decoupled_optax, before any install
sys.path.insert(0, str(DOCS / "ext"))

import decoupled_optax  # noqa: E402

project = "decoupled_optax"
author = "decoupled_optax authors"
copyright = "2026, decoupled_optax authors"  # noqa: A001 - Sphinx's name
release = decoupled_optax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.napoleon",
  "sphinx.ext.mathjax",
  "sphinx-mathjax-offline",  # MathJax shipped with the site: the math renders without a network
  "sphinx.ext.intersphinx",
  "sphinx.ext.viewcode",
  "coverage_check",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
  "_build",
  "ext",
  "_inventories",
  "api/generated/*.md",
]
templates_path = ["_templates"]

# Markdown pages: $...$ and $$...$$ math, ::: fences, heading anchors for links.
myst_enable_extensions = [
  "dollarmath",
  "amsmath",
  "colon_fence",
  "deflist",
]
myst_heading_anchors = 3

# API reference: one generated page per public name (api.rst's autosummary).
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# Offline intersphinx: the inventories are committed files, not URLs to download.
intersphinx_mapping = {
  "optax": (
    "https://optax.readthedocs.io/en/latest/",
    str(DOCS / "_inventories" / "optax.inv"),
  ),
  "jax": (
    "https://docs.jax.dev/en/latest/",
    str(DOCS / "_inventories" / "jax.inv"),
  ),
  "flax": (
    "https://flax.readthedocs.io/en/latest/",
    str(DOCS / "_inventories" / "flax.inv"),
  ),
}
intersphinx_timeout = 1

html_theme = "sphinx_book_theme"
html_title = f"decoupled_optax {release}"
html_theme_options = {
  "show_toc_level": 2,
  "use_download_button": False,
  "use_fullscreen_button": False,
}
html_static_path = ["_static"]
html_css_files = [
  "custom.css"
]  # wide tables wrap their cells instead of being cut off
