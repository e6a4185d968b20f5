"""What every example shares around its computation: the ``--smoke`` flag, where its table and
figure go, a markdown table, and a PNG saved with matplotlib's Agg backend (no display needed).

Tables go to ``examples/results/<name>.md`` and figures to ``docs/assets/<name>.png``, which the
tutorial pages include. A smoke run (a few steps, for the tests) prints its table and writes
nothing.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
ASSETS = Path(__file__).resolve().parents[1] / "docs" / "assets"


def parser(doc: str, smoke_help: str) -> argparse.ArgumentParser:
    """A command line described by the first line of ``doc``, with a ``--smoke`` flag."""
    out = argparse.ArgumentParser(description=doc.splitlines()[0])
    out.add_argument("--smoke", action="store_true", help=smoke_help)
    return out


def smoke_flag(doc: str, smoke_help: str) -> bool:
    """Parse the command line of an example whose only option is ``--smoke``."""
    return parser(doc, smoke_help).parse_args().smoke


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """The lines of a markdown table; cells are written with ``str`` (format them beforehand)."""

    def line(cells: Sequence[Any]) -> str:
        return "| " + " | ".join(str(cell) for cell in cells) + " |"

    return [line(header), "|---" * len(header) + "|", *(line(row) for row in rows)]


def report(lines: list[str], name: str, smoke: bool, folder: Path = RESULTS) -> str:
    """Print the report; unless ``smoke``, also write it to ``folder/<name>.md``."""
    text = "\n".join(lines)
    print(text)
    if not smoke:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.md").write_text(text + "\n")
    return text


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (files only, works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, name: str, dpi: int = 110, folder: Path = ASSETS, **options: Any) -> Path:
    """Save ``fig`` as ``folder/<name>.png`` (``options`` go to ``savefig``) and close it."""
    path = folder / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **options)
    pyplot().close(fig)
    return path
