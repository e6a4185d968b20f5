"""Rewrite a docstring's reStructuredText markup as the Markdown the docs site renders.

The package's docstrings are Google style with reStructuredText inline markup (Sphinx roles,
``literal`` spans, ``.. math::`` blocks, ``| ...`` line blocks under "References:"). mkdocstrings
renders docstrings as Markdown, where that markup shows raw. :func:`rst_to_markdown` converts a
docstring's text before griffe parses it (see ``griffe_rst.py``), so the source keeps one convention
and the site renders it:

- ``:math:`x``` becomes ``\\(x\\)`` and a ``.. math::`` block becomes ``\\[ ... \\]`` display maths
  (``pymdownx.arithmatex`` in generic mode, typeset by the vendored KaTeX), a multi-line one
  (``&``, ``\\\\``) inside ``aligned`` as Sphinx does;
- ``:class:``, ``:func:``, ``:mod:``, ``:meth:``, ``:attr:``, ``:data:``, ``:obj:``, ``:exc:``
  roles become optional autorefs cross-references: a link where the target is documented on the
  site, the name in code otherwise (mkdocs-autorefs decides at render time, so a reference to an
  undocumented object never breaks the strict build);
- a double-backtick ``literal`` becomes a single-backtick code span;
- ``| ...`` line blocks become a bulleted list, bare URLs in them links;
- a list item's continuation indented to its text (reST) moves to four spaces past the marker
  (Markdown), so that a maths block or paragraph inside the item stays in it;
- a paragraph ending in ``::`` (a reST literal block) ends in ``:``;
- an ``Example:`` section header becomes ``Examples:``, the header griffe parses as examples
  (it reads ``Example:`` as an admonition, whose ``>>>`` lines Markdown shows as nested quotes).

Fenced code blocks and doctest lines are left alone. The function is pure: no griffe, no mkdocs.

References:
    | Sphinx's Python domain roles and the math directive
      https://www.sphinx-doc.org/en/master/usage/domains/python.html
    | pymdownx.arithmatex, generic mode https://facelessuser.github.io/pymdown-extensions/
    | mkdocs-autorefs, optional references https://mkdocstrings.github.io/autorefs/
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable

__all__ = ["CROSSREF_ROLES", "role_to_markdown", "rst_to_markdown"]

CROSSREF_ROLES = ("class", "func", "mod", "meth", "attr", "data", "obj", "exc", "const")
"""The Sphinx Python-domain roles rewritten as cross-references."""

# One pass over the text: a double-backtick literal or a role, whichever starts first, so that a
# literal's content is never read as a role and a role's content never as a literal.
_INLINE = re.compile(
    r"``(?P<literal>[^`]|[^`].*?[^`])``(?!`)"
    r"|:(?:py:)?(?P<role>[a-z]+):`(?P<body>[^`]+)`",
    re.DOTALL,
)
_ALIGNED = re.compile(r"(?<!\\)&|\\\\")  # an alignment mark or a line break in a maths block
_MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*(?P<rest>.*)$")
_LINE_BLOCK = re.compile(r"^(?P<indent>[ \t]*)\|(?: (?P<text>.*))?$")
_FENCE = re.compile(r"^[ \t]*(```|~~~)")
_DOCTEST = re.compile(r"^[ \t]*(>>>|\.\.\.)( |$)")
_LIST_ITEM = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>[*+-]|\d+[.)]) +(?=\S)")
_EXAMPLE_HEADER = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$")
_URL = re.compile(r"(?<![<(\"'])(?P<url>https?://[^\s<>()]+[^\s<>().,;:])")
_EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$", re.DOTALL)


def _indent_of(line: str) -> int:
    return len(line) - len(line.lstrip())


def _is_table_row(line: str) -> bool:
    """A Markdown table row (``| a | b |``), which is no reST line block."""
    stripped = line.strip()
    return len(stripped) > 1 and stripped.endswith("|")


def role_to_markdown(role: str, body: str, resolve: Callable[[str], str | None] | None) -> str:
    """The Markdown for one Sphinx role.

    Args:
        role: the role's name without colons (``"math"``, ``"class"``, ...).
        body: the text between the role's backticks.
        resolve: maps a name as written (``"Target"``, ``"pyro_blr.BLR.fit"``) to the full
            identifier of the object it names, or ``None`` where it cannot; ``None`` keeps names
            as written.

    Returns:
        Inline maths ``\\(body\\)`` for ``:math:``; for a cross-reference role, an optional
        autorefs reference whose title is the name in code; for any other role, the body in code.
    """
    if role == "math":
        return "\\(" + body.strip() + "\\)"
    text = " ".join(body.split())
    if role not in CROSSREF_ROLES:
        return f"`{text}`"
    explicit = _EXPLICIT_TITLE.match(text)
    if explicit:
        title, target = explicit["title"], explicit["target"]
    else:
        target = text.lstrip("~!")
        title = target.rsplit(".", 1)[-1] if text.startswith("~") else target
    if text.startswith("!"):
        return f"`{title}`"
    target = target.lstrip(".")
    identifier = (resolve(target) if resolve else None) or target
    return (
        f'<autoref identifier="{html.escape(identifier)}" optional>'
        f"<code>{html.escape(title, quote=False)}</code></autoref>"
    )


def _inline(text: str, resolve: Callable[[str], str | None] | None) -> str:
    def replace(match: re.Match) -> str:
        if match["literal"] is not None:
            literal = match["literal"]
            return f"`{literal}`" if "`" not in literal else f"`` {literal} ``"
        return role_to_markdown(match["role"], match["body"], resolve)

    return _INLINE.sub(replace, text)


def _reindent_lists(lines: list[str]) -> list[str]:
    """Move list items' continuation lines from reST's indentation to Markdown's.

    reST indents an item's further lines to the column of its text (two spaces after ``* ``);
    Python-Markdown wants four spaces past the marker's own indentation, or the lines after a blank
    line fall out of the list.
    """
    out, item = [], None  # item: (indent of the marker, column of the item's text)
    for line in lines:
        marker = _LIST_ITEM.match(line)
        if marker:
            item = (len(marker["indent"]), marker.end())
        elif item and line.strip():
            indent = _indent_of(line)
            if indent <= item[0]:
                item = None
            elif indent >= item[1]:
                line = " " * (item[0] + 4 + indent - item[1]) + line.lstrip()
        out.append(line)
    return out


def _math_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """The display maths for the ``.. math::`` directive at ``lines[start]``, and the next index."""
    head = _MATH_DIRECTIVE.match(lines[start])
    indent = head["indent"]
    body = [head["rest"]] if head["rest"].strip() else []
    end = start + 1
    while end < len(lines) and (
        not lines[end].strip() or _indent_of(lines[end]) > len(indent.expandtabs())
    ):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():  # blank lines after belong to the text
        end -= 1
    body += lines[start + 1 : end]
    # Equations separated by blank lines are separate displays, as reST renders them.
    groups: list[list[str]] = [[]]
    for line in body:
        if line.strip():
            groups[-1].append(line.strip())
        elif groups[-1]:
            groups.append([])
    out: list[str] = []
    for group in (g for g in groups if g):
        if _ALIGNED.search("\n".join(group)) and not any("\\begin" in line for line in group):
            # Sphinx aligns a multi-line equation (``&``, ``\\``) in a split environment.
            group = ["\\begin{aligned}", *group, "\\end{aligned}"]
        out += ["", indent + "\\[", *(indent + line for line in group), indent + "\\]"]
    return [*out, ""], end


def _line_block(lines: list[str], start: int) -> tuple[list[str], int]:
    """A bulleted list for the ``| ...`` line block at ``lines[start]``, and the next index."""
    indent = _LINE_BLOCK.match(lines[start])["indent"]
    items: list[str] = []
    end = start
    while end < len(lines):
        line = lines[end]
        block = _LINE_BLOCK.match(line)
        if block and block["indent"] == indent and not _is_table_row(line):
            items.append((block["text"] or "").strip())
        elif line.strip() and _indent_of(line) > len(indent) and items:
            items[-1] += " " + line.strip()  # a continuation line of the item above
        else:
            break
        end += 1
    out = [indent + "- " + _URL.sub(r"<\g<url>>", item) for item in items if item]
    return out, end


def rst_to_markdown(text: str, resolve: Callable[[str], str | None] | None = None) -> str:
    r"""Rewrite a docstring's reStructuredText markup as Markdown (see the module docstring).

    Args:
        text: a docstring, as ``inspect.cleandoc`` or griffe gives it.
        resolve: maps a cross-referenced name as written to its full identifier, or ``None``;
            without it names are kept as written (a full path still links).

    Returns:
        The docstring with every role, literal, maths block, line block and ``::`` rewritten;
        Google-style section headers and indentation unchanged.

    Example:
        >>> print(rst_to_markdown(":math:`x^2` with ``lr``, see :func:`!f`."))
        \(x^2\) with `lr`, see `f`.
    """
    lines = _reindent_lists(text.split("\n"))
    out: list[str] = []
    chunk: list[str] = []  # ordinary lines, converted together (roles may span lines)

    def flush() -> None:
        if chunk:
            out.extend(_inline("\n".join(chunk), resolve).split("\n"))
            chunk.clear()

    i, fenced = 0, False
    while i < len(lines):
        line = lines[i]
        if _FENCE.match(line):
            flush()
            fenced = not fenced
            out.append(line)
        elif fenced or _DOCTEST.match(line):
            flush()
            out.append(line)
        elif _MATH_DIRECTIVE.match(line):
            flush()
            block, i = _math_block(lines, i)
            out.extend(block)
            continue
        elif _LINE_BLOCK.match(line) and not _is_table_row(line):
            flush()
            block, i = _line_block(lines, i)
            if out and out[-1].strip() and _indent_of(out[-1]) >= _indent_of(line):
                out.append("")  # a list after a paragraph needs a blank line; not after a header
            out.extend(_inline("\n".join(block), resolve).split("\n"))
            continue
        else:
            if header := _EXAMPLE_HEADER.match(line):
                line = header["indent"] + "Examples:"
            elif line.rstrip().endswith("::"):
                stripped = line.rstrip()[:-2].rstrip()
                line = stripped + ":" if stripped.strip() else ""
            chunk.append(line)
        i += 1
    flush()
    # Collapse the blank lines a maths block added next to existing ones; strip the ends.
    result = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", "\n".join(out))
    return result.strip("\n")
