"""Sphinx configuration of the crowdlearn documentation site (``make docs``).

The site is built from this folder: the hand-written pages (``index.md``, ``howto/``,
``protocols.md``, ``design.md``, ``benchmarks.md``, ``experiments/``) and the pages that
``_ext/crowdlearn_docs.py`` generates into ``_generated/`` at every build (the configuration
reference from the registry, the API reference from ``__all__``, the protocol pages with their
message diagrams, the tutorials from the executed notebooks).  See ``docs/design.md``,
"Documentation site".
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

project = "crowdlearn"
author = "the crowdlearn authors"
copyright = "the crowdlearn authors"

extensions = [
    "myst_nb",                 # MyST Markdown + Jupyter notebooks (includes myst_parser)
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",     # NumPy-style docstrings
    "sphinx.ext.mathjax",
    "crowdlearn_docs",         # the generated pages (see the module's docstring)
]

# _generated/protocols/*_run.md are included by the protocol pages, not pages of their own
exclude_patterns = ["_build", "experiments/data", "**/.ipynb_checkpoints",
                    "_generated/protocols"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 4          # [text](page.md#a-heading) links resolve
# experiment pages written by benchmark scripts use H4 under H2 (a style choice, not a defect)
# ref.python: "more than one target found" for the one-letter shape names of NumPy-style type
# fields (``(n, d)``), resolved fuzzily against every attribute called ``d``; not references
suppress_warnings = ["myst.header", "ref.python"]

# notebooks arrive executed (tests/test_notebooks.py's copies, or executed by the extension):
# myst-nb never executes, it renders the outputs stored in the copies
nb_execution_mode = "off"
nb_merge_streams = True

# no default "members": Sphinx 9 then ignores a directive's explicit :members: list
autodoc_default_options = {"undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_ivar = True       # "Attributes" as fields: autodoc documents the attributes themselves

html_theme = "alabaster"
html_title = "crowdlearn"
html_static_path = []
html_theme_options = {"description": "fleets of phones that learn together", "page_width": "1100px"}
