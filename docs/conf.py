"""Sphinx configuration of the jaxce documentation (``python -m sphinx -W -b html docs out``)."""

from __future__ import annotations

import importlib.metadata

project = "jaxce"
author = "the jaxce authors"
copyright = "2026, the jaxce authors"
release = importlib.metadata.version("jaxce")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

# Markdown pages and notebooks both go through myst-nb; notebooks/ is a link to the
# repository's notebooks folder, so the executed notebooks are the ones users open.
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints", "README.md"]
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Every notebook and every code cell of a page runs on each build; a failing cell (an assert
# on a claim of the text) fails the build.
nb_execution_mode = "force"
nb_execution_raise_on_error = True
nb_execution_timeout = 300
nb_merge_streams = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "sphinx_book_theme"
html_title = "jaxce"
html_static_path = ["_static"]
html_theme_options = {
    "repository_url": "https://github.com/jaxce/jaxce",
    "use_repository_button": True,
    "show_toc_level": 2,
}
