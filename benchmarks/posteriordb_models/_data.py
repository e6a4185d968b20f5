"""Reading a posterior's ``data.json`` from the project's copy."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def read(folder: Path) -> dict:
    return json.loads((folder / "data.json").read_text())


def tensor(values, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)
