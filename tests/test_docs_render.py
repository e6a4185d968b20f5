"""The docs' build-time conversions: reST docstrings to Markdown, public names, included results.

The converters live under ``docs/hooks`` (they are part of the docs build, not of the package);
these tests run them on synthetic text with exact expected output and on every real docstring of
``pyro_blr``, as griffe loads it for the site.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import griffe
import markdown
import pytest

ROOT = Path(__file__).resolve().parents[1]
HOOKS = ROOT / "docs" / "hooks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, HOOKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rst_markdown = _load("rst_markdown")
includes = _load("includes")
rst_to_markdown = rst_markdown.rst_to_markdown

ROLE = re.compile(r":(?:py:)?(?:math|class|func|mod|meth|attr|data|obj|exc|const):`")


def _autoref(identifier: str, title: str) -> str:
    return f'<autoref identifier="{identifier}" optional><code>{title}</code></autoref>'


# --- exact conversions --------------------------------------------------------------------------


def test_inline_math_literal_and_roles():
    text = (
        "The step :math:`g/h` with ``lr``; see :func:`~pyro_blr.log_evidence`, "
        ":class:`pyro_blr.BLR`, :meth:`the fit <pyro_blr.BLR.fit>` and :data:`!NOT_LINKED`."
    )
    assert rst_to_markdown(text) == (
        "The step \\(g/h\\) with `lr`; see "
        + _autoref("pyro_blr.log_evidence", "log_evidence")
        + ", "
        + _autoref("pyro_blr.BLR", "pyro_blr.BLR")
        + ", "
        + _autoref("pyro_blr.BLR.fit", "the fit")
        + " and `NOT_LINKED`."
    )


def test_roles_and_literals_spanning_lines_and_nesting():
    # A role broken over two lines, a literal holding a backtick, a literal holding a role's text.
    text = (
        ":math:`\\log q(z) - \\log\\lvert\n\\det L\\rvert` and ``a `b` c`` and "
        "``see :func:`f` here``"
    )
    assert rst_to_markdown(text) == (
        "\\(\\log q(z) - \\log\\lvert\n\\det L\\rvert\\) and `` a `b` c `` and "
        "`` see :func:`f` here ``"
    )


def test_two_literals_on_a_line_stay_apart():
    text = "halving (``k`` = 1, 2, ...), up to :data:`MAX` times; resets ``k``."
    assert rst_to_markdown(text) == (
        "halving (`k` = 1, 2, ...), up to " + _autoref("MAX", "MAX") + " times; resets `k`."
    )


def test_resolver_gives_the_identifier_and_the_title_stays_as_written():
    resolve = {"Target": "pyro_blr.core.target.Target"}.get
    assert rst_to_markdown("the :class:`Target`", resolve) == "the " + _autoref(
        "pyro_blr.core.target.Target", "Target"
    )


def test_math_block_becomes_display_maths_one_per_equation():
    text = (
        "The bound\n\n.. math::\n    a = b\n        + c,\n\n    d = e\n\nafter.\n\n"
        "Args:\n    x: with\n\n        .. math:: y = z\n\n        more."
    )
    assert rst_to_markdown(text) == (
        "The bound\n\n\\[\na = b\n+ c,\n\\]\n\n\\[\nd = e\n\\]\n\nafter.\n\n"
        "Args:\n    x: with\n\n        \\[\n        y = z\n        \\]\n\n        more."
    )


def test_list_items_keep_their_maths_and_paragraphs():
    # reST indents an item's text by two; Markdown needs four, or the display falls out of it.
    text = (
        'Methods:\n\n* ``"quadratic"``: closed form,\n  with :math:`b`,\n\n  .. math::\n'
        '      x = y\n\n  exact when quadratic.\n\n* ``"none"``: nothing.\n\nAfter.'
    )
    assert rst_to_markdown(text) == (
        'Methods:\n\n* `"quadratic"`: closed form,\n    with \\(b\\),\n\n    \\[\n    x = y\n'
        '    \\]\n\n    exact when quadratic.\n\n* `"none"`: nothing.\n\nAfter.'
    )
    html = markdown.markdown(
        rst_to_markdown(text),
        extensions=["pymdownx.arithmatex"],
        extension_configs={"pymdownx.arithmatex": {"generic": True}},
    )
    assert html.count("<li>") == 2 and '<div class="arithmatex">' in html.split("</li>")[0]


def test_multi_line_math_block_is_aligned_as_sphinx_does():
    text = ".. math::\n    g &\\leftarrow a, \\\\\n    h &\\leftarrow b\n\n.. math:: a \\& b"
    assert rst_to_markdown(text) == (
        "\\[\n\\begin{aligned}\ng &\\leftarrow a, \\\\\nh &\\leftarrow b\n\\end{aligned}\n\\]\n\n"
        "\\[\na \\& b\n\\]"
    )


def test_reference_line_block_becomes_a_list_with_links():
    text = (
        "References:\n"
        "    | The Bayesian Learning Rule (Khan & Rue, 2023) https://arxiv.org/abs/2107.04562\n"
        "    | Variational Learning is Effective (Shen et al., 2024)\n"
        "      https://arxiv.org/abs/2402.17641 (Algorithm 1)\n"
        "\n"
        "Args:"
    )
    assert rst_to_markdown(text) == (
        "References:\n"
        "    - The Bayesian Learning Rule (Khan & Rue, 2023) <https://arxiv.org/abs/2107.04562>\n"
        "    - Variational Learning is Effective (Shen et al., 2024)"
        " <https://arxiv.org/abs/2402.17641> (Algorithm 1)\n"
        "\n"
        "Args:"
    )


def test_line_block_after_a_paragraph_gets_its_blank_line():
    assert rst_to_markdown("See:\n| a\n| b") == "See:\n\n- a\n- b"


def test_tables_code_and_doctests_are_left_alone():
    text = (
        "| support | family |\n|---|---|\n| real | Normal |\n\n"
        "```python\nx = ``y`` :math:`z`\n```\n\n"
        "Example:\n    >>> f(``a``)  # :math:`b`\n    1"
    )
    assert rst_to_markdown(text) == text.replace("Example:", "Examples:")


def test_literal_block_marker():
    text = "a lazy layer of :class:`~pyro_blr.AutoFlow`::\n\n    guide = f()\n\nor by itself::"
    assert rst_to_markdown(text) == (
        "a lazy layer of " + _autoref("pyro_blr.AutoFlow", "AutoFlow") + ":\n\n    guide = f()\n\n"
        "or by itself:"
    )


def test_module_doctests():
    result = doctest.testmod(rst_markdown)
    assert result.attempted > 0 and result.failed == 0


# --- every real docstring -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def package():
    extension = griffe.load_extensions(f"{HOOKS / 'griffe_rst.py'}:RstToMarkdown")
    return griffe.load("pyro_blr", extensions=extension, search_paths=[str(ROOT)])


@pytest.fixture(scope="module")
def raw_package():
    return griffe.load("pyro_blr", search_paths=[str(ROOT)])


def _docstrings(module: griffe.Object):
    for obj in [module, *module.members.values()]:
        if obj.is_alias:
            continue
        if obj is not module and (obj.is_module or obj.is_class):
            yield from _docstrings(obj)
        elif obj.docstring is not None:
            yield obj.path, obj.docstring.value


def _docstring_objects(module: griffe.Object):
    for obj in [module, *module.members.values()]:
        if obj.is_alias:
            continue
        if obj is not module and (obj.is_module or obj.is_class):
            yield from _docstring_objects(obj)
        elif obj.docstring is not None:
            yield obj.path, obj.docstring


def _outside_code(text: str) -> str:
    """``text`` without fenced blocks and doctest lines (which keep their markup by design)."""
    kept, fenced = [], False
    for line in text.split("\n"):
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and not line.lstrip().startswith((">>>", "...")):
            kept.append(line)
    return "\n".join(kept)


def _rendered_texts(docstring: griffe.Docstring):
    """The Markdown texts mkdocstrings renders from a parsed Google docstring, one per piece."""
    for section in docstring.parse("google"):
        value = section.value
        if isinstance(value, str):
            yield value
        elif isinstance(value, griffe.DocstringAdmonition):
            yield value.contents
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, tuple):  # examples: (kind, text)
                    if item[0] == griffe.DocstringSectionKind.text:
                        yield item[1]
                elif getattr(item, "description", None):
                    yield item.description


def _conversion_problems(path: str, raw: str, docstring: griffe.Docstring) -> list[str]:
    md = markdown.Markdown(
        extensions=["pymdownx.arithmatex"],
        extension_configs={"pymdownx.arithmatex": {"generic": True}},
    )
    problems = []
    before = _outside_code(raw)
    after = _outside_code(docstring.value)
    if ROLE.search(after) or ".. math::" in after:
        problems.append(f"{path}: raw reST left")
    roles = len(re.findall(r":math:`", before))
    displays = len(re.findall(r"^\s*\.\. math::", before, re.MULTILINE))
    inline = after.count("\\(")
    if inline != roles:
        problems.append(f"{path}: {roles} :math: roles became {inline} inline maths")
    # Every formula survives Markdown, rendered piece by piece as mkdocstrings renders the
    # parsed sections, as an arithmatex element (a block of several equations may split).
    html = "".join(md.reset().convert(text) for text in _rendered_texts(docstring))
    spans = html.count('<span class="arithmatex">')
    divs = html.count('<div class="arithmatex">')
    if spans != roles or divs < displays:
        problems.append(f"{path}: {roles}/{displays} maths rendered as {spans}/{divs}")
    return problems


def test_every_docstring_converts_completely(package, raw_package):
    raw = dict(_docstrings(raw_package))
    converted = {path: obj for path, obj in _docstring_objects(package)}
    assert len(converted) > 200 and converted.keys() == raw.keys()
    problems = []
    for path, docstring in converted.items():
        problems += _conversion_problems(path, raw[path], docstring)
    assert not problems, "\n".join(problems)


def test_short_names_resolve_in_their_scope(package):
    step_back = package["blr.step_back"].docstring.value
    assert _autoref("pyro_blr.blr.step_back.MAX_STEP_BACKS", "MAX_STEP_BACKS") in step_back
    # A re-exported name resolves to where it is defined, the identifier mkdocstrings registers.
    blr = package["blr.rules.ivon.ivon_update"].docstring.value
    assert _autoref("pyro_blr.blr.driver.BLR", "pyro_blr.BLR") in blr


def test_only_exported_names_are_public(package):
    assert package["blr.driver.BLR"].is_public
    assert package["blr.averaging.IterateAverage"].is_public  # exported by pyro_blr.blr
    assert package["blr.rules.RULES"].is_public  # exported by pyro_blr.blr.rules
    assert not package["blr.step_back.MAX_STEP_BACKS"].is_public
    assert not package["blr.ivon_start.EXACT_START_MAX_DIM"].is_public
    assert not package["blr.fit_end.raise_if_diverged"].is_public
    assert package["blr.driver.BLR.fit"].is_public  # class members keep the naming convention
    # An import is public only where a package exports it, not in every module that imports it.
    assert package["core.PARTICLE_PLATE"].is_public
    assert not package["core.checks.PARTICLE_PLATE"].is_public
    assert not package["blr.steppers.base.KEPT"].is_public  # listed in a plain module's __all__


# --- included results files ---------------------------------------------------------------------


def test_shift_headings():
    text = "# Title of the table\n\n| a |\n\n## boston\n\n```\n# not a heading\n```\n"
    assert includes.shift_headings(text, 2) == "| a |\n\n### boston\n\n```\n# not a heading\n```\n"
    assert includes.shift_headings(text, 0) == text


def test_benchmarks_page_has_one_h1_and_every_section():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    out = includes.include_markdown(page, lambda path: (ROOT / path).read_text())
    lines = _outside_code(out).split("\n")
    h1 = [line for line in lines if re.match(r"#\s", line)]
    h2 = [line for line in lines if re.match(r"##\s", line)]
    assert h1 == ["# Benchmarks"]
    assert [line for line in page.split("\n") if line.startswith("## ")] == h2
    assert "--8<--" not in out and len(h2) >= 12
    # The included files' own subsections sit below the page's sections.
    assert "### boston (506 × 13)" in out
