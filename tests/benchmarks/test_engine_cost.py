"""The engine-cost benchmark's smoke run: every row of issue 27's table, each with numbers.

The peers (``ivon-opt``, NumPyro) are benchmark-only: their rows are skipped where the peer is
not installed, and the SVI + Adam rows always run.
"""

import math

import pytest

from benchmarks import engine_cost


def check(rows: list[dict], names: list[str]) -> None:
    """Each row is there once, in the table too, and every figure is finite and positive."""
    assert [r["row"] for r in rows] == names
    lines = engine_cost.table(rows)
    assert len(lines) == 2 + len(names)
    for name, line in zip(names, lines[2:], strict=True):
        assert line.startswith(f"| {name} |") and ("| met |" in line or "| missed |" in line)
    for r in rows:
        for value in (*r["ours"], *r["peer"], r["ratio"], r["wall ratio"]):
            assert math.isfinite(value) and value > 0, r
        assert r["met"] is engine_cost.GOALS[r["row"]][1](r)


def test_logistic_rows():
    names = list(engine_cost.GOALS)[2:5]
    check(engine_cost.logistic_rows(smoke=True), names)


def test_ivon_rows():
    pytest.importorskip("ivon")
    rows = engine_cost.ivon_rows(smoke=True)
    check(rows, list(engine_cost.GOALS)[:2])
    for r in rows:  # both fits moved from the common start, to finite test errors
        assert math.isfinite(r["rmse_pb"]) and math.isfinite(r["rmse_ivon"])
        assert r["rmse_pb"] != r["rmse_start"] and r["rmse_ivon"] != r["rmse_start"]


@pytest.mark.slow  # JAX's import and one compilation of NumPyro's update: 6-8 s of CPU
def test_breast_cancer_rows():
    pytest.importorskip("numpyro")
    pytest.importorskip("sklearn")
    rows = engine_cost.breast_cancer_rows(smoke=True)
    check(rows, list(engine_cost.GOALS)[5:])


def test_every_goal_has_a_row():
    """The three parts together give exactly the table's rows, in its order."""
    assert list(engine_cost.GOALS) == [
        "IVON step, MLP ~1e4 weights, vs ivon-opt",
        "IVON step, MLP ~2.7e5 weights, vs ivon-opt",
        "VON step, AutoNormal, N=1e4 D=1000, vs SVI + Adam",
        "VOGN step, AutoNormal, N=1e4 D=1000, vs SVI + Adam",
        "VON step, AutoMultivariateNormal, N=1e4 D=1000, vs SVI + Adam",
        "VON step, breast cancer D=31, vs jitted NumPyro",
        "VON time to 1 nat, breast cancer, vs jitted NumPyro",
    ]
