"""Read back the markdown tables a benchmark writes, to check the numbers in them."""

from __future__ import annotations

import math


def rows(report: str, first_column: str) -> list[dict[str, str]]:
    """The rows of the table whose header starts with ``| first_column |``, as column -> cell."""
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_column} |"))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    assert set(lines[start + 1]) <= set("|-"), "a markdown table has a separator line"
    out = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        out.append(dict(zip(header, cells, strict=True)))
    return out


def number(cell: str) -> float:
    """The leading number of a cell ('8.63 ± 0.12' -> 8.63), which must be finite."""
    value = float(cell.split()[0])
    assert math.isfinite(value), cell
    return value


def is_ratio(cell: str, numerator: str, denominator: str) -> bool:
    """Whether ``cell`` is numerator / denominator, allowing for each printed to 2 decimals."""
    top, bottom = number(numerator), number(denominator)
    ratio = top / bottom
    rounding = 0.005 + ratio * (0.005 / top + 0.005 / bottom) + 1e-9
    return abs(number(cell) - ratio) <= rounding
