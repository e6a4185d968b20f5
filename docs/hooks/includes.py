"""mkdocs hook: include a Markdown results file under the page's own heading.

Pages include the tables that ``benchmarks/`` and ``examples/`` write with pymdownx.snippets
(``--8<-- "benchmarks/results/x.md"``). Each such file starts with its own H1, so a page with
several includes had several H1s and a contents list that stopped at the first. Before Markdown is
rendered, :func:`include_markdown` inlines every ``.md`` snippet that stands on its own line outside
a code fence: the file's leading H1 is dropped where the page already gives the section a heading
(the page's heading names it) and its other headings move below that heading's level. Snippets of
other files (the examples' source inside a code fence) are left to pymdownx.snippets.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

__all__ = ["include_markdown", "on_page_markdown", "shift_headings"]

_INCLUDE = re.compile(r'^--8<--\s+"(?P<path>[^"]+\.md)"\s*$')
_HEADING = re.compile(r"^(?P<hashes>#{1,6})(?P<rest>\s.*)?$")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _headings(lines: list[str]) -> list[tuple[int, int]]:
    """``(line index, level)`` of every ATX heading outside code fences."""
    found, fenced = [], False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (heading := _HEADING.match(line)):
            found.append((i, len(heading["hashes"])))
    return found


def shift_headings(markdown: str, level: int) -> str:
    """``markdown`` placed under a heading of ``level`` (0: at the top of a page).

    Under a heading (``level >= 1``) a leading H1 is dropped, being that heading's duplicate,
    and every other heading moves down by ``level - 1`` (an H2 under an H2 becomes an H3), at
    most to H6.
    At the top of a page the text is unchanged.
    """
    if level < 1:
        return markdown
    lines = markdown.split("\n")
    headings = _headings(lines)
    drop = None
    first_text = next((i for i, line in enumerate(lines) if line.strip()), None)
    if headings and headings[0] == (first_text, 1):
        drop = first_text
    for i, old in headings:
        if i != drop:
            rest = _HEADING.match(lines[i])["rest"] or ""
            lines[i] = "#" * min(6, old + level - 1) + rest
    if drop is not None:
        del lines[drop]
    return "\n".join(lines).strip("\n") + "\n"


def include_markdown(markdown: str, read: Callable[[str], str]) -> str:
    """Inline every ``--8<-- "file.md"`` line of ``markdown`` that is outside a code fence.

    Args:
        markdown: a page's Markdown.
        read: returns the text of a path as written in the snippet line (relative to the root);
            raises ``FileNotFoundError`` for a missing file, which fails the build.

    Returns:
        The page with each included file shifted under the heading it follows
        (:func:`shift_headings`).
    """
    lines = markdown.split("\n")
    heading_at = dict(_headings(lines))
    out, level, fenced = [], 0, False
    for i, line in enumerate(lines):
        if _FENCE.match(line):
            fenced = not fenced
        if i in heading_at:
            level = heading_at[i]
        include = None if fenced else _INCLUDE.match(line.strip())
        if include:
            out.append(shift_headings(read(include["path"]), level))
        else:
            out.append(line)
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    """mkdocs event: inline the page's Markdown includes, read relative to the project root."""
    root = Path(config["config_file_path"]).parent
    return include_markdown(markdown, lambda path: (root / path).read_text(encoding="utf-8"))
