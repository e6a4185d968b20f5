"""The built docs site: no raw reST, maths offline, public names only, one H1 a page.

Builds the site as CI does (``mkdocs build --strict``) into a temporary folder, about 30 s, so the
test is marked slow (CI runs it with ``-m slow``).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAW_REST = (":math:", ":class:", ":func:", ":mod:", ":meth:", ":attr:", ":data:", ".. math::")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if shutil.which("mkdocs") is None and not Path(sys.executable).with_name("mkdocs").exists():
        pytest.fail("mkdocs is not installed: pip install -e '.[dev]'")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return out


def _pages(site: Path) -> dict[str, str]:
    return {
        str(path.relative_to(site)): path.read_text(encoding="utf-8")
        for path in sorted(site.rglob("*.html"))
    }


def test_no_page_shows_raw_rest(site):
    found = [
        f"{name}: {pattern!r} x{html.count(pattern)}"
        for name, html in _pages(site).items()
        for pattern in RAW_REST
        if pattern in html
    ]
    index = (site / "search" / "search_index.json").read_text(encoding="utf-8")
    found += [f"search index: {pattern!r}" for pattern in RAW_REST if pattern in index]
    assert not found, "\n".join(found)


def test_maths_is_typeset_offline(site):
    assert (site / "vendor" / "katex" / "katex.min.js").stat().st_size > 100_000
    assert list((site / "vendor" / "katex" / "fonts").glob("KaTeX_Main-Regular.woff2"))
    pages = _pages(site)
    with_maths = [name for name, html in pages.items() if 'class="arithmatex"' in html]
    assert "api/blr/index.html" in with_maths and "concepts/blr/index.html" in with_maths
    for name, html in pages.items():
        assert "cdn.jsdelivr" not in html, name
        external = re.findall(r'<(?:script|link)[^>]+(?:src|href)="(https?://[^"]+)"', html)
        assert not [url for url in external if url.endswith((".js", ".css"))], (name, external)
        if name in with_maths:
            assert re.search(r'<script src="[^"]*vendor/katex/katex\.min\.js"', html), name


KATEX_CHECK = r"""
const katex = require(process.argv[1] + "/vendor/katex/katex.min.js");
const fs = require("fs"), path = require("path");
const unescape = (s) => s.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&quot;/g, '"')
  .replace(/&#39;/g, "'").replace(/&amp;/g, "&");
const walk = (d) => fs.readdirSync(d).flatMap((f) => {
  const p = path.join(d, f);
  return fs.statSync(p).isDirectory() ? walk(p) : p.endsWith(".html") ? [p] : [];
});
let count = 0;
for (const file of walk(process.argv[1])) {
  const re = /<(span|div) class="arithmatex">([\s\S]*?)<\/\1>/g;
  for (const m of fs.readFileSync(file, "utf8").matchAll(re)) {
    count++;
    const tex = unescape(m[2]).trim().slice(2, -2);
    try { katex.renderToString(tex, { displayMode: m[1] === "div", throwOnError: true }); }
    catch (e) { console.log(path.relative(process.argv[1], file) + ": " + e.message); }
  }
}
console.log("formulas: " + count);
"""


def test_every_formula_typesets(site):
    """Every formula on the site parses in the vendored KaTeX (which would show it in red)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed: the check runs the vendored KaTeX")
    run = subprocess.run(
        [node, "-e", KATEX_CHECK, str(site)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr
    *errors, count = run.stdout.strip().split("\n")
    assert int(count.removeprefix("formulas: ")) > 500
    assert not errors, "\n".join(errors)


def test_api_pages_list_public_names_only(site):
    html = (site / "api" / "blr" / "index.html").read_text(encoding="utf-8")
    ids = re.findall(r'<h[1-6] id="([^"]+)"', html)
    assert "pyro_blr.BLR" in ids and "pyro_blr.BLR.fit" in ids and "pyro_blr.IVON" in ids
    internals = [i for i in ids if i.endswith(("MAX_STEP_BACKS", "EXACT_START_MAX_DIM", ".KEPT"))]
    assert not internals
    assert not [i for i in ids if "fit_end." in i or "step_back." in i]


def test_every_page_has_one_h1_and_benchmarks_list_their_sections(site):
    pages = _pages(site)
    several = {name: html.count("<h1") for name, html in pages.items() if html.count("<h1") > 1}
    assert not several
    benchmarks = pages["benchmarks/index.html"]
    sections = re.findall(r'<h2 id="([^"]+)"', benchmarks)
    toc = set(re.findall(r'<a href="#([^"]+)" class="md-nav__link"', benchmarks))
    assert len(sections) >= 12 and set(sections) <= toc


def test_a_returns_section_is_one_item(site):
    # Griffe splits a Returns text at each line unless told it is one item (mkdocs.yml).
    html = (site / "api" / "diagnostics" / "index.html").read_text(encoding="utf-8")
    cell = re.search(r"<td[^>]*>((?:(?!</td>).)*ArviZ 0\.x(?:(?!</td>).)*)</td>", html, re.DOTALL)
    assert cell and "copied to the CPU" in cell.group(1)


def test_quickstart_shows_its_output(site):
    html = (site / "tutorials" / "quickstart" / "index.html").read_text(encoding="utf-8")
    # The printed figures, not the print statements of the included source.
    assert re.search(r"ELBO reached by BLR: -?\d+\.\d\d", html)
    assert re.search(r"ELBO reached by SVI \+ Adam: -?\d+\.\d\d", html)
