"""Steps per second of the distributed BLR on 1 and 2 CPU processes (gloo), through torchrun.

Runs ``examples/distributed_blr.py`` (IVON on a 20-64-1 BNN, 10⁵ data, each rank a minibatch
shard of ``BATCH`` rows a step) under ``torchrun --standalone --nproc_per_node=K``. Two
workloads: the same per-rank batch (weak scaling: K ranks see K times the data a step) and the
same global batch split across ranks (strong scaling). Each rank runs one thread.

Run: ``python -m benchmarks.distributed`` (writes benchmarks/results/distributed.md);
``--smoke`` runs a few steps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks._report import machine, markdown_table, parser, report

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "distributed_blr.py"


def launch(world: int, steps: int, batch: int) -> dict:
    """Run the example on ``world`` CPU processes; rank 0's result (all ranks agree)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", str(EXAMPLE)]  # fmt: skip
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
               "NUM_STEPS": str(steps), "BATCH": str(batch), "RESULT_DIR": out}  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
        if done.returncode:
            raise RuntimeError(f"torchrun failed:\n{done.stderr[-3000:]}")
        results = [json.loads(p.read_text()) for p in sorted(Path(out).glob("*.json"))]
    if len(results) != world:
        raise RuntimeError(f"expected {world} results, got {len(results)}")
    if len({r["checksum"] for r in results}) != 1:
        raise RuntimeError(f"the ranks ended with different posteriors: {results}")
    return min(results, key=lambda r: r["rank"])


def main(smoke: bool = False) -> dict[str, dict]:
    steps = 20 if smoke else 300
    load = os.getloadavg()[0]
    rows, results = [], {}
    for label, world, batch in [
        ("1 process, batch 256", 1, 256),
        ("2 processes, 256 each (weak scaling)", 2, 256),
        ("2 processes, 128 each (strong scaling)", 2, 128),
    ]:
        result = results[label] = launch(world, steps, batch)
        rate = result["steps_per_second"]
        data_rate = rate * world * batch
        rows.append((label, f"{rate:.1f}", f"{data_rate:,.0f}", f"{result['loss']:.4g}"))
    lines = [
        "# Distributed BLR on the CPU",
        "",
        f"{machine('distributed', smoke)} IVON on a 20-64-1 BNN with 10⁵ data, {steps} steps "
        "(the first 5 not timed), one thread per rank, gloo; every rank ends with the same "
        f"posterior (checked). Load average before the run: {load:.1f} on "
        f"{os.cpu_count()} cores: two ranks contend for the cores with whatever else runs, and "
        "for a model this small the all-reduce's latency outweighs the halved work.",
        "",
        *markdown_table(["run", "steps per second", "data per second", "final loss"], rows),
    ]
    report(lines, "distributed", smoke)
    return results


if __name__ == "__main__":
    main(parser(__doc__, "a few steps").parse_args().smoke)
