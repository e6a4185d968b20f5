"""arviz_compat: NumPy conversion, PSIS of either ArviZ generation, from_dict feature detection."""

import sys
import types

import numpy as np
import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
import pyro_blr.diagnostics.arviz as arviz_module
from pyro_blr.diagnostics import arviz_compat
from pyro_blr.diagnostics.arviz_compat import (
    MIN_PSIS_SAMPLES,
    from_dict,
    import_arviz,
    psis_smooth,
    to_numpy,
)
from tests.scenarios import linear_regression

az = import_arviz()


def _installed_psislw():
    """The installed ArviZ's own PSIS of log importance ratios: ``az.psislw`` (0.x), or
    ``arviz_stats``' psislw, which takes a log-likelihood and smooths its negation (1.x). Bound
    at import, so that a test replacing ``arviz_stats`` in ``sys.modules`` does not reach it."""
    if hasattr(az, "psislw"):
        return az.psislw
    from arviz_stats.base import array_stats

    return lambda log_ratios: array_stats.psislw(-log_ratios)


reference_psislw = _installed_psislw()


def test_to_numpy_detaches_and_moves_to_the_cpu():
    value = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True) * 2
    array = to_numpy(value)
    assert isinstance(array, np.ndarray) and array.dtype == np.float64
    np.testing.assert_array_equal(array, [2.0, 4.0])
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32  # NumPy lacks bf16
    assert to_numpy(np.arange(3)).tolist() == [0, 1, 2]


def test_to_inference_data_converts_every_array_with_to_numpy(monkeypatch):
    # On a GPU every tensor must go through .detach().cpu(): count the conversions. Four draws
    # groups of one variable each (w; log_p, log_q; y; y), the observed data and one coordinate.
    seen = []

    def spy(value):
        seen.append(value)
        return to_numpy(value)

    monkeypatch.setattr(arviz_module, "to_numpy", spy)
    s = linear_regression()
    pyro.set_rng_seed(0)
    guide = AutoNormal(s.model)
    idata = pb.to_inference_data(s.model, guide, s.X, s.y, num_samples=30, psis=True)
    assert len(seen) == 7 and all(torch.is_tensor(v) for v in seen)
    assert idata.posterior["w"].shape == (1, 30, 3)


def test_psis_smooth_matches_arviz_and_is_normalized():
    ratios = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    smoothed, khat = psis_smooth(ratios)
    expected, expected_khat = reference_psislw(ratios.numpy() - ratios.numpy().max())
    np.testing.assert_allclose(smoothed, expected - np.logaddexp.reduce(expected), atol=1e-12)
    assert khat == pytest.approx(float(expected_khat), abs=1e-12)
    assert np.exp(smoothed).sum() == pytest.approx(1.0, abs=1e-12)


def test_psis_smooth_refuses_too_few_draws_and_never_reports_minus_infinity():
    with pytest.raises(ValueError, match=f"at least {MIN_PSIS_SAMPLES} log ratios"):
        psis_smooth(torch.randn(MIN_PSIS_SAMPLES - 1))
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        psis_smooth(torch.tensor([float("nan")] + [0.0] * 30))
    # Equal ratios (the guide is the posterior): uniform weights, k-hat 0, not -inf.
    smoothed, khat = psis_smooth(torch.full((MIN_PSIS_SAMPLES,), -3.0))
    assert khat == 0.0
    np.testing.assert_allclose(smoothed, -np.log(MIN_PSIS_SAMPLES))
    # A -inf ratio is a zero weight, not an error.
    ratios = torch.randn(100, generator=torch.Generator().manual_seed(1))
    ratios[0] = -float("inf")
    smoothed, khat = psis_smooth(ratios)
    assert smoothed[0] == -np.inf and np.isfinite(khat)


def test_psis_falls_back_to_arviz_stats_when_az_psislw_is_gone(monkeypatch):
    # An ArviZ 1.x namespace has no psislw; arviz_stats' psislw takes a log-likelihood (it
    # negates its input). A stand-in built on the installed ArviZ's PSIS of log ratios checks
    # the sign convention (under ArviZ 1.x the real path is test_psis_smooth_matches_arviz).
    legacy = reference_psislw
    calls = []

    def psislw(ary, r_eff=1, axis=-1):
        calls.append(ary)
        return legacy(-ary)

    array_stats = types.SimpleNamespace(psislw=psislw)
    monkeypatch.setitem(sys.modules, "arviz_stats", types.ModuleType("arviz_stats"))
    base = types.ModuleType("arviz_stats.base")
    base.array_stats = array_stats
    monkeypatch.setitem(sys.modules, "arviz_stats.base", base)
    monkeypatch.setattr(arviz_compat, "import_arviz", lambda: types.SimpleNamespace())
    ratios = torch.randn(500, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    smoothed, khat = psis_smooth(ratios)
    monkeypatch.undo()
    expected, expected_khat = psis_smooth(ratios)
    assert len(calls) == 1 and (calls[0] >= 0).all()  # minus the ratios shifted to max 0
    np.testing.assert_allclose(smoothed, expected, atol=1e-12)
    assert khat == pytest.approx(expected_khat, abs=1e-12)


def test_psis_without_any_psis_function_names_what_to_install(monkeypatch):
    monkeypatch.setattr(arviz_compat, "import_arviz", lambda: types.SimpleNamespace())
    monkeypatch.setitem(sys.modules, "arviz_stats", None)  # import fails
    monkeypatch.setitem(sys.modules, "arviz_stats.base", None)  # even when 1.x imported it
    with pytest.raises(ImportError, match="pip install arviz-stats"):
        psis_smooth(torch.randn(100))


def test_from_dict_uses_the_arviz_1_call_when_groups_are_not_keywords(monkeypatch):
    received = {}

    def from_dict_1x(data, *, coords=None, dims=None, attrs=None):
        received.update(data=data, coords=coords, dims=dims, attrs=attrs)
        return "tree"

    monkeypatch.setattr(
        arviz_compat, "import_arviz", lambda: types.SimpleNamespace(from_dict=from_dict_1x)
    )
    groups = {"posterior": {"x": np.zeros((1, 4))}, "log_likelihood": {}}
    assert from_dict(groups, {"c": [0]}, {"x": []}, {"note": 1}) == "tree"
    # the empty group is left out, as ArviZ 0.x leaves it out
    assert received["data"] == {"posterior": groups["posterior"]}
    assert received["attrs"] == {"/": {"note": 1}}
    monkeypatch.undo()
    idata = from_dict(groups, {}, {}, {"note": 1})  # the installed ArviZ (0.x here)
    assert idata.attrs["note"] == 1 and idata.posterior["x"].shape == (1, 4)
