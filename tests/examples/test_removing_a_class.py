"""The removing-a-class tutorial runs in its smoke mode and its numbers hold."""

import math

from tests.scenarios import load_example


def test_removing_a_class_smoke(capsys):
    out = load_example("removing_a_class").main(smoke=True)
    assert "drop of p(own class)" in capsys.readouterr().out
    assert math.isnan(out["noise"])  # the noise floor's extra training is not in a smoke run
    # 250 IVON steps classify the digits (measured 0.958; chance is 0.1).
    assert out["accuracy"] > 0.9
    [(removed, r)] = out["results"].items()
    assert removed == 8
    # The estimate points where retraining goes (measured: correlation 0.97 over the 3600 test
    # probabilities, RMSE 0.030 against an RMS change of 0.112, the drop of p(8) on the test
    # eights 0.837 predicted, 0.864 retrained), at a small part of a retraining's cost
    # (0.12 against 3.0 CPU s).
    assert r["correlation"] > 0.9
    assert r["rmse"] < 0.5 * r["actual_rms"]
    assert r["own_drop_actual"] > 0.5
    assert abs(r["own_drop_predicted"] - r["own_drop_actual"]) < 0.1
    assert r["estimate_seconds"] < 0.2 * r["retrain_seconds"]
