"""The "Your optimizer is a Bayesian learning rule" tutorial runs in its smoke mode and its numbers
make sense."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_optimizer_is_blr_smoke(capsys):
    out = load("optimizer_is_blr").main(smoke=True, plot=False)
    assert "largest difference, BLR vs torch.optim" in capsys.readouterr().out
    # Part 1: the BLR's limits and torch.optim agree to float64 round-off after 100 steps
    # (measured at most 1.1e-15) on parameters that moved (measured 0.22 to 1.6).
    assert set(out["equal"]) == {"SGD, momentum 0.9", "RMSprop", "Adam"}
    for name, row in out["equal"].items():
        assert row["difference"] < 1e-12 and row["moved"] > 0.1, name
    # Part 2: 200 steps already give Vadam a posterior that the optimizer lacks: a higher mean log
    # predictive density in every held-out region (measured 0.63 / 0.65 / -88 against 0.58 /
    # 0.55 / -138), predictive spread beyond the noise sd 0.1 everywhere (measured 0.15 to 0.17),
    # and 90% intervals that cover the held-out points inside the clusters (measured 0.96 against
    # the point estimate's 0.76; 96 points there, so a binomial sd of 0.03 around 0.9).
    adam, vadam = out["fits"]["Adam (optimizer)"], out["fits"]["Vadam: Adam(perturb=True)"]
    for region in adam:
        assert vadam[region]["log_density"] > adam[region]["log_density"], region
        assert vadam[region]["sd"] > 0.12, region
        assert adam[region]["sd"] == pytest.approx(0.1, rel=1e-12), region  # the noise alone
    inside = "inside the clusters"
    assert vadam[inside]["coverage"] > 0.8 > adam[inside]["coverage"]
