"""The distributed benchmark's smoke run: torchrun on 1 and 2 CPU processes, finite rates and
losses, and every rank ending with the same posterior (checked inside the benchmark)."""

import math

from benchmarks import distributed


def test_distributed_smoke(capsys):
    results = distributed.main(smoke=True)
    assert "| 2 processes, 128 each (strong scaling) |" in capsys.readouterr().out
    assert [r["world_size"] for r in results.values()] == [1, 2, 2]
    for result in results.values():
        assert math.isfinite(result["loss"]) and result["loss"] > 0
        assert 0 < result["steps_per_second"] < 1e5
