"""What every benchmark shares around its measurements: the command line (with ``--smoke``), the
line naming the machine and the command, where tables and figures go, and writing them.

Tables go to ``benchmarks/results/<name>.md`` (included by ``docs/benchmarks.md``), figures to
``docs/assets/<name>.png``. A smoke run (toy sizes, for the tests) prints its table and writes
nothing. The command line, the markdown table and the Agg figure helpers are the examples' own.
"""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

import pyro
import torch

from examples._report import ASSETS, markdown_table, parser, pyplot, save_figure

__all__ = [
    "ASSETS",
    "RESULTS",
    "command",
    "machine",
    "markdown_table",
    "parser",
    "pyplot",
    "report",
    "save_figure",
]

RESULTS = Path(__file__).resolve().parent / "results"


def command(name: str, smoke: bool) -> str:
    """The command that regenerates a benchmark's table."""
    return f"python -m benchmarks.{name}" + (" --smoke" if smoke else "")


def revision() -> str:
    """The pyro_blr that measures: its version and the git commit of the checkout (with
    "+ local changes" where ``pyro_blr/`` or ``benchmarks/`` differ from it), so that a results
    file says which API and code it was measured with."""
    try:
        version = metadata.version("pyro-blr")
    except metadata.PackageNotFoundError:
        version = "(not installed)"
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "pyro_blr", "benchmarks")
    except (OSError, subprocess.CalledProcessError):
        return f"pyro_blr {version}"
    return f"pyro_blr {version} at git {commit}" + (" + local changes" if dirty else "")


def machine(name: str, smoke: bool) -> str:
    """'Machine: ..., threads, versions. Command: `...`.', the first line under every title."""
    return (
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, pyro {pyro.__version__}, {revision()}. "
        f"Command: `{command(name, smoke)}`."
    )


def report(lines: list[str], name: str, smoke: bool, echo: bool = True) -> str:
    """Print the report (unless ``echo`` is false) and, unless ``smoke``, write it to
    ``benchmarks/results/<name>.md``."""
    text = "\n".join(lines)
    if echo:
        print(text)
    if not smoke:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"{name}.md").write_text(text + "\n")
    return text
