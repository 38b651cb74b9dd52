"""Sphinx configuration of the sbnnumba documentation site (``python -m sphinx -W -b html docs docs/_build/html``)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))
import sbnnumba  # noqa: E402

project = "sbnnumba"
author = "The sbnnumba developers"
copyright = "2026, The sbnnumba developers"
version = release = sbnnumba.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",  # MathJax served from the site itself: formulas render without a network
    "numpydoc",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "experiments/README.md"]
templates_path = ["_templates"]

myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

autosummary_generate = True
# Members defined in each module only (not the names a package re-exports): one description per object.
autodoc_default_options = {"members": True, "ignore-module-all": True, "show-inheritance": True}
autodoc_typehints = "none"  # numpydoc renders the types from the docstrings
numpydoc_show_class_members = False
numpydoc_xref_param_type = False

html_theme = "pydata_sphinx_theme"
html_title = f"sbnnumba {release}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2}
html_static_path = []
