"""The vectorization benchmark's smoke run gives positive timings for every path."""

import math

from benchmarks import vectorization


def test_vectorization_smoke(capsys):
    times = vectorization.main(smoke=True)
    assert "| gradient | vmap |" in capsys.readouterr().out
    assert set(times) == {(m, h) for m in ("plate", "vmap", "loop") for h in (False, True)}
    assert all(math.isfinite(ms) and ms > 0 for ms in times.values())
