"""The built documentation site (``make docs``): pages render with their figures, and screenshots of
the landing page and a tutorial page taken in a headless browser show them.

``make docs`` builds ``build/docs`` and then runs this file with ``CROWDLEARN_DOCS_BUILT=1``: the
site and a headless Chromium (Debian's ``chromium``, installed by ``.ci/run``) must then be there.
In the ordinary suite (``make test`` runs before ``make docs``) the tests skip when the site has not
been built or Chromium is missing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "build" / "docs"
SHOTS = ROOT / "build" / "docs-screenshots"
REQUIRED = os.environ.get("CROWDLEARN_DOCS_BUILT") == "1"
PAGES = {"landing": "index.html",
         "tutorial": "_generated/tutorials/01_fleet_simulation.html"}
API_PAGE = "_generated/api/crowdlearn.registry.html"
# what must never reach a rendered page: Markdown left unparsed, a failed cell, a Sphinx error
WIDTH, HEIGHT = 1280, 4000
RAW = ["```", "Traceback (most recent call last)", "CellExecutionError", "System Message",
       "ERROR/", "{figure}", "{include}", "{toctree}", "{automodule}",
       ".. py:", ".. automodule", "{func}`", ":func:`"]


def _site(page: str) -> Path:
    path = SITE / page
    if not path.is_file():
        if REQUIRED:
            pytest.fail(f"{path} was not built (run `make docs`)")
        pytest.skip("the documentation site is not built (make docs)")
    return path


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if REQUIRED:
            pytest.fail("no headless browser: apt-get install chromium (.ci/run does)")
        pytest.skip("chromium is not installed")
    return exe


def _text(html: str) -> str:
    """The page's visible text and attributes, without code listings (which may hold anything)."""
    html = re.sub(r"<(script|style)\b.*?</\1>", "", html, flags=re.S)
    return re.sub(r'<div class="highlight[^"]*">.*?</div>', "", html, flags=re.S)


@pytest.mark.parametrize("name", PAGES)
def test_page_has_figures_and_no_raw_markup(name):
    page = _site(PAGES[name])
    html = page.read_text()
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert images, f"{page}: no figure"
    for src in images:
        if not src.startswith("data:"):
            target = (page.parent / src).resolve()
            assert target.is_file() and target.stat().st_size > 1000, f"{page}: broken {src}"
    visible = _text(html)
    for raw in RAW:
        assert raw not in visible, f"{page}: {raw!r} in the rendered page"


def test_api_page_is_rendered_with_cross_references():
    """autodoc's output is parsed as reST: object entries with anchors, roles resolved to links."""
    html = _site(API_PAGE).read_text()
    for raw in RAW[4:]:
        assert raw not in _text(html), raw
    assert 'id="crowdlearn.registry.Protocol"' in html
    assert 'id="crowdlearn.registry.get"' in html
    config = (SITE / "_generated" / "configuration.html").read_text()
    assert 'href="api/crowdlearn.registry.html#module-crowdlearn.registry"' in config


def test_every_protocol_and_notebook_has_its_page():
    _site("index.html")
    from crowdlearn import registry
    for name in registry.names():
        html = (SITE / "protocols" / f"{name}.html").read_text()
        assert "A recorded run" in html, name
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        html = (SITE / "_generated" / "tutorials" / f"{nb.stem}.html").read_text()
        assert "cell_output" in html, f"{nb.name}: rendered without outputs"


@pytest.mark.parametrize("name", PAGES)
def test_screenshot_shows_the_page(name):
    page = _site(PAGES[name])
    exe = _chromium()
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    # root (CI) needs --no-sandbox; nothing is fetched: the page and its assets are local files
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", page.as_uri()],
                          capture_output=True, text=True, timeout=180)
    assert shot.is_file(), f"no screenshot: {proc.stderr[-2000:]}"
    import matplotlib.image as mpimg
    pixels = mpimg.imread(shot)[..., :3]
    assert pixels.shape[:2] == (HEIGHT, WIDTH)
    # not blank: the page's text and figures give many distinct colours and dark pixels
    grey = pixels.mean(axis=2)
    assert (grey < 0.5).mean() > 0.005, "screenshot has almost no dark (text) pixels"
    assert len(np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50
    # its figures are on screen: plots are the only large colourful areas of a page (text is
    # grey, code is sparse colour on a pale background); a page of text and code (the sweep
    # how-to, measured: 2 such tiles) has few 100x100 tiles with over 5 % saturated pixels,
    # the landing page with its sequence diagram 17, the tutorial 36
    colourful = (pixels.max(axis=2) - pixels.min(axis=2)) > 0.25
    tiles = colourful[:HEIGHT // 100 * 100, :WIDTH // 100 * 100].reshape(
        HEIGHT // 100, 100, WIDTH // 100, 100).mean(axis=(1, 3))
    assert (tiles > 0.05).sum() >= 8, f"no figure visible in {shot}"
