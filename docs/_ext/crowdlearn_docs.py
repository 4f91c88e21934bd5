"""The pages of the documentation site that are generated at every build, into ``docs/_generated/``.

* ``configuration.md``: :func:`crowdlearn.config.reference_markdown` (the registry's keys, their
  defaults and meanings), with docstring roles turned into MyST cross-references.
* ``api/<module>.md`` and ``api/index.md``: one ``automodule`` page per public module (a module of
  ``crowdlearn``, ``sim`` or ``slicenet`` that defines ``__all__``); a class or function of an
  ``__all__`` without a docstring is a build warning, so ``make docs`` fails.
* ``tutorials/<notebook>.ipynb``: the executed copies of ``notebooks/*.ipynb`` written by
  ``tests/test_notebooks.py`` (:mod:`executed_notebooks`); stale or missing copies are produced by
  running those tests for the notebooks concerned, so a page never shows old outputs.
* ``protocols/<name>_run.md`` and ``figures/``: for every registered protocol, a small recorded run
  (:mod:`protocol_figures`): the sequence diagram of its first round's messages, the picture of
  its fleet and network, and the table of message kinds and encoded sizes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import executed_notebooks
from sphinx.util import logging

logger = logging.getLogger(__name__)
DOCS = Path(__file__).resolve().parents[1]
ROOT = DOCS.parent
GEN = DOCS / "_generated"
PUBLIC_PACKAGES = ("crowdlearn", "sim", "slicenet")
ROLE = re.compile(r":(mod|func|class|meth|attr|data|exc|obj):`")


def myst_roles(text: str) -> str:
    """reST roles of docstrings (``:func:`x```) as MyST roles (``{func}`x```)."""
    return ROLE.sub(lambda m: "{" + m.group(1) + "}`", text)


def _write(path: Path, text: str) -> None:
    """Write only on change, so Sphinx re-reads only pages whose source changed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != text:
        path.write_text(text)


# ---------------------------------------------------------------- configuration reference
def configuration_page() -> None:
    from crowdlearn.config import reference_markdown
    _write(GEN / "configuration.md", "\n".join([
        "# Configuration reference", "",
        "Every key of a crowdlearn configuration (TOML file, `--set KEY=VALUE`, or "
        "`crowdlearn.config.from_dict`), with its default and meaning. This page is generated at "
        "build time from the protocol registry and the config schema "
        "({func}`crowdlearn.config.reference_markdown`), so it lists exactly what the code "
        "accepts. Units: seconds, bytes, Mbit/s where the key says `mbps`.", "",
        myst_roles(reference_markdown()), ""]))


# ---------------------------------------------------------------- API reference
def public_modules() -> list[str]:
    """Modules of the public packages that define ``__all__``, in name order."""
    out = []
    for pkg in PUBLIC_PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            if re.search(r"^__all__\s*[:=]", p.read_text(), re.M):
                parts = p.relative_to(ROOT).with_suffix("").parts
                out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(out)


def canonical_members(mods: list[str]) -> dict[str, tuple[list[str], list[tuple[str, str]]]]:
    """For every public module, the ``__all__`` names documented on its page and the re-exports.

    A class or function is documented in the module that defines it (``__module__``); a constant
    in the public module whose source assigns it.
    Every other name of an ``__all__`` is a re-export: ``(name, where, "obj" | "mod")``, with
    ``where`` the public module that documents it, the submodule itself, or the foreign module it
    comes from.  So each object has one entry
    (no duplicate descriptions, no ambiguous cross-references).
    """
    import importlib
    import inspect
    modules = {m: importlib.import_module(m) for m in mods}

    def assigns(m: str, name: str) -> bool:
        src = inspect.getsource(modules[m])
        return re.search(rf"^{re.escape(name)}\s*(:[^=\n]*)?=", src, re.M) is not None

    def home_of(name: str, m: str) -> str:
        """The public module whose source assigns ``name`` (a constant), else ``m``."""
        return next((o for o in mods if name in modules[o].__all__ and assigns(o, name)), m)

    out = {}
    for m in mods:
        own, elsewhere = [], []
        for name in modules[m].__all__:
            obj = getattr(modules[m], name)
            if isinstance(obj, types.ModuleType):          # a submodule: its own page
                elsewhere.append((name, obj.__name__, "mod"))
                continue
            if isinstance(obj, type) or callable(obj):
                where = getattr(obj, "__module__", None) or m
                # defined in a module without a page of its own: documented here
                if where.split(".")[0] in PUBLIC_PACKAGES and where not in modules:
                    where = m
            else:
                where = home_of(name, m)
            (own.append(name) if where == m else elsewhere.append((name, where, "obj")))
        out[m] = (own, elsewhere)
    return out


def api_pages() -> list[str]:
    mods = public_modules()
    for mod, (own, elsewhere) in canonical_members(mods).items():
        lines = [f"# `{mod}`", ""]
        if elsewhere:
            lines += ["Also exported here: " + ", ".join(
                f"{{py:mod}}`{name} <{where}>`" if kind == "mod" and where in mods
                else f"{{py:obj}}`{name} <{where}.{name}>`" if where in mods
                else f"`{name}` (from `{where}`)"
                for name, where, kind in elsewhere) + ".", ""]
        # autodoc writes reST: it must be parsed as reST, not as MyST Markdown
        lines += ["```{eval-rst}", f".. automodule:: {mod}"]
        if own:
            lines += [f"   :members: {', '.join(own)}", "   :undoc-members:",
                      "   :show-inheritance:"]
        lines += ["```", ""]
        _write(GEN / "api" / f"{mod}.md", "\n".join(lines))
    _write(GEN / "api" / "index.md", "\n".join([
        "# API reference", "",
        "Generated from the docstrings of every public module (one that declares `__all__`); "
        "a module page documents what its `__all__` exports and defines, and links what it "
        "re-exports.", "",
        "```{toctree}", ":maxdepth: 1", "", *mods, "```", ""]))
    return mods


def check_docstring(app, what, name, obj, options, lines) -> None:
    """A class or function exported by a public module's ``__all__`` must have a docstring."""
    if what not in ("class", "function", "exception"):
        return
    mod, _, attr = name.rpartition(".")
    module = sys.modules.get(mod)
    if module is None or attr not in getattr(module, "__all__", ()):
        return
    if str(getattr(obj, "__module__", "")).split(".")[0] not in PUBLIC_PACKAGES:
        return      # a re-export of another library's object (cryptography's InvalidTag)
    doc = getattr(obj, "__doc__", None) or ""
    # a dataclass without a docstring gets its signature as __doc__: that is not documentation
    if not "".join(lines).strip() or re.fullmatch(rf"{re.escape(attr)}\(.*\)", doc.strip(), re.S):
        logger.warning(f"{name}: exported in {mod}.__all__ without a docstring",
                       type="crowdlearn", subtype="docstring")


# ---------------------------------------------------------------- tutorials
def tutorial_pages() -> list[str]:
    notebooks = sorted(executed_notebooks.NOTEBOOKS_DIR.glob("*.ipynb"))
    code = executed_notebooks.code_digest()
    stale = [p for p in notebooks if executed_notebooks.fresh(p, code) is None]
    if stale:
        logger.info(f"executing {len(stale)} notebook(s) without a fresh executed copy: "
                    + ", ".join(p.name for p in stale))
        # the notebook tests are the one executor; they write the keyed copies
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               str(ROOT / "tests" / "test_notebooks.py"), "-k",
                               " or ".join(f"test_notebook_runs and {p.stem}" for p in stale)],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True)
        if proc.returncode != 0:
            logger.warning("executing the notebooks failed (tests/test_notebooks.py):\n"
                           + proc.stdout[-4000:] + proc.stderr[-2000:],
                           type="crowdlearn", subtype="notebook")
    names = []
    for p in notebooks:
        copy = executed_notebooks.fresh(p, code)
        if copy is None:
            logger.warning(f"{p.name}: no executed copy with current outputs",
                           type="crowdlearn", subtype="notebook")
            continue
        dst = GEN / "tutorials" / p.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.is_file() or dst.read_bytes() != copy.read_bytes():
            shutil.copyfile(copy, dst)
        names.append(p.stem)
    _write(GEN / "tutorials" / "index.md", "\n".join([
        "# Tutorials", "",
        "The notebooks of `notebooks/`, rendered with the outputs of their execution by the "
        "test suite (`tests/test_notebooks.py`, small sizes: `CROWDLEARN_NOTEBOOK_SMALL=1`) on "
        "the code of this build. Open them with JupyterLab to run them at full size "
        "(`pip install -e '.[notebooks]'`).", "",
        "```{toctree}", ":maxdepth: 1", "", *names, "```", ""]))
    return names


# ---------------------------------------------------------------- protocol runs and figures
def protocol_pages() -> None:
    """The recorded runs; a registered protocol without its page ``docs/protocols/<name>.md``
    (which includes ``_generated/protocols/<name>_run.md``) is a warning."""
    import protocol_figures
    for name in protocol_figures.generate(GEN):
        page = DOCS / "protocols" / f"{name}.md"
        if not page.is_file() or f"_generated/protocols/{name}_run.md" not in page.read_text():
            logger.warning(f"protocol {name!r} has no page docs/protocols/{name}.md including "
                           f"_generated/protocols/{name}_run.md", type="crowdlearn",
                           subtype="protocol")


def _prune(folder: Path, keep: set[str]) -> None:
    """Remove generated pages of modules or notebooks that no longer exist (orphans would warn)."""
    for p in folder.glob("*"):
        if p.suffix in (".md", ".ipynb") and p.stem not in keep | {"index"}:
            p.unlink()


def generate(app) -> None:
    GEN.mkdir(exist_ok=True)
    configuration_page()
    _prune(GEN / "api", set(api_pages()))
    protocol_pages()
    _prune(GEN / "tutorials", set(tutorial_pages()))


def setup(app):
    app.connect("builder-inited", generate)
    app.connect("autodoc-process-docstring", check_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
