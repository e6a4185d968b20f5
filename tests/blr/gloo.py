"""Run a test's function on several ranks of a ``torch.distributed`` gloo group, spawned here.

``run_ranks(fn, *extra)`` spawns ``world`` processes that join one gloo group (a file store in a
temporary folder), call ``fn(rank, world, *extra)`` and save what it returns; the parent returns
the results in rank order, or fails the test naming ``fn`` when the ranks hang past ``timeout``.
``fn`` must be a module-level function (the spawned processes import its module by name).
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp

__all__ = ["run_ranks"]


def _worker(rank: int, world: int, init_file: str, out_dir: str, target: tuple, extra: tuple):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world
    )
    try:
        module, name = target
        result = getattr(importlib.import_module(module), name)(rank, world, *extra)
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def run_ranks(fn: Callable, *extra: Any, world: int = 2, timeout: float = 120) -> list[Any]:
    """Run ``fn(rank, world, *extra)`` in ``world`` spawned processes; their results."""
    target = (fn.__module__, fn.__name__)
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        context = mp.spawn(
            _worker, args=(world, init_file, tmp, target, extra), nprocs=world, join=False
        )
        deadline = time.monotonic() + timeout
        while not context.join(timeout=1):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                pytest.fail(f"{fn.__name__}: the ranks did not finish within {timeout} s (a hang)")
        return [torch.load(os.path.join(tmp, f"{r}.pt")) for r in range(world)]
