"""The Target (pyro_blr.core.target): one model and one batch of data as l(theta), its
derivatives of every kind, built once per batch by the Gaussian stepper; a single particle runs
without vmap; finite checks fused into one."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

import pyro_blr as pb
from pyro_blr.core import (
    DataStamp,
    Target,
    all_finite,
    latent_layout,
    neg_log_joint,
)


def regression(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    s = pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=X.dtype), 1.0))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, s), obs=y)


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(20, 3, generator=g, dtype=torch.float64)
    y = X @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(
        20, generator=g, dtype=torch.float64
    )
    return X, y


def _target(mode="loop", weight_decay=0.0):
    X, y = _data()
    layout = latent_layout(pyro.poutine.trace(regression).get_trace(X, y))
    return Target.build(regression, (X, y), {}, layout, mode, weight_decay=weight_decay)


def _reference(target, theta_row):
    """l at one particle, as a function torch.autograd.functional can differentiate."""
    return (
        neg_log_joint(target.model, target.layout, theta_row[None], target.args, {}, "loop")[0]
        + 0.5 * target.weight_decay * theta_row.square().sum()
    )


@pytest.mark.parametrize("weight_decay", [0.0, 0.7])
def test_every_kind_of_derivative_equals_autograd_on_the_log_joint(weight_decay):
    target = _target(weight_decay=weight_decay)
    theta = torch.randn(2, target.layout.dim, generator=torch.Generator().manual_seed(1),
                        dtype=torch.float64)  # fmt: skip
    hessians = torch.stack(
        [torch.autograd.functional.hessian(lambda t: _reference(target, t), row) for row in theta]
    )
    grads = torch.stack(
        [torch.autograd.functional.jacobian(lambda t: _reference(target, t), row) for row in theta]
    )
    none = target.derivatives(theta, "none")
    assert none.hess is None
    torch.testing.assert_close(none.grad, grads, rtol=1e-10, atol=1e-10)
    full = target.derivatives(theta, "hessian")
    torch.testing.assert_close(full.hess, hessians, rtol=1e-10, atol=1e-10)
    diag = target.derivatives(theta, "diag")
    torch.testing.assert_close(diag.hess, hessians.diagonal(dim1=-2, dim2=-1), rtol=1e-10,
                               atol=1e-10)  # fmt: skip
    values = torch.stack([_reference(target, row) for row in theta])
    torch.testing.assert_close(target.neg_log_joint(theta), values, rtol=1e-12, atol=1e-12)


def priors(X, y):
    pyro.sample("w", dist.Normal(torch.zeros(X.shape[1], dtype=X.dtype), 1.0).to_event(1))
    pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=X.dtype), 1.0))


def test_the_ggn_kind_gives_per_datum_gradients_that_sum_to_the_data_part():
    target = _target()
    theta = torch.randn(2, target.layout.dim, generator=torch.Generator().manual_seed(2),
                        dtype=torch.float64)  # fmt: skip
    out = target.derivatives(theta, "ggn")
    rest = Target.build(priors, target.args, {}, target.layout, "loop")
    data_part = target.derivatives(theta, "none").grad - rest.derivatives(theta, "none").grad
    assert out.datum_grads.shape == (2, 20, target.layout.dim)
    torch.testing.assert_close(out.datum_grads.sum(1), data_part, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.grad, target.derivatives(theta, "none").grad)


def test_an_unknown_kind_is_refused_by_name():
    with pytest.raises(ValueError, match="kind must be one of"):
        _target().derivatives(torch.zeros(1, 4, dtype=torch.float64), "fisher")


def test_the_data_stamp_tells_the_same_batch_from_another_or_a_refilled_one():
    X, y = _data()
    target = _target()
    target = Target.build(regression, (X, y), {}, target.layout, "loop")
    assert target.matches((X, y), {})
    assert not target.matches((X, y.clone()), {})
    assert target.with_subsample({}).matches((X, y), {})
    y[0] += 1.0  # refilled in place: other data
    assert not target.matches((X, y), {})
    assert DataStamp.of((X,), {"y": y}).matches((X,), {"y": y})


def test_a_single_vmapped_particle_runs_without_vmap(monkeypatch):
    target = _target(mode="vmap")
    theta = torch.randn(1, target.layout.dim, dtype=torch.float64)
    loop = target.neg_log_joint(theta, "loop")

    def refuse(*args, **kwargs):
        raise AssertionError("vmap called for one particle")

    monkeypatch.setattr(torch.func, "vmap", refuse)
    torch.testing.assert_close(target.neg_log_joint(theta), loop, rtol=0, atol=0)
    with pytest.raises(AssertionError, match="vmap called"):  # two particles still vmap
        target.neg_log_joint(theta.expand(2, -1))


def test_the_gaussian_stepper_builds_its_target_once_per_batch_of_data(monkeypatch):
    X, y = _data()
    builds = []
    build = Target.build.__func__

    def counting(cls, *args, **kwargs):
        builds.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(Target, "build", classmethod(counting))
    pyro.clear_param_store()
    blr = pb.BLR(regression, AutoDiagonalNormal(regression), pb.IVON(lr=0.1))
    for _ in range(4):
        blr.step(X, y)
    assert len(builds) == 1
    for _ in range(3):
        blr.step(X.clone(), y.clone())  # other data objects each step
    assert len(builds) == 4


def test_a_fused_finite_check_finds_what_the_elementwise_one_finds():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        parts = [torch.randn(5, generator=g), torch.randn(3, 3, generator=g), None]
        k = int(torch.randint(0, 4, (), generator=g))
        if k < 2:  # put a NaN or an infinity somewhere
            parts[k].view(-1)[int(torch.randint(0, parts[k].numel(), (), generator=g))] = (
                float("nan") if k == 0 else -float("inf")
            )
        expected = all(bool(torch.isfinite(p).all()) for p in parts if p is not None)
        assert all_finite(*parts) == expected
    big = torch.full((4,), 3e38)  # finite elements whose sum overflows float32
    assert all_finite(big, -big.double())


def test_real_sites_cost_no_log_jacobian_and_constrained_ones_keep_theirs(monkeypatch):
    from torch.distributions.transforms import ComposeTransform

    target = _target()  # w is real (identity), s positive (exp)
    theta = torch.randn(3, target.layout.dim, dtype=torch.float64)
    expected = target.neg_log_joint(theta)

    original = ComposeTransform.log_abs_det_jacobian

    def refuse(self, x, y):
        if not self.parts:
            raise AssertionError("the identity's log-Jacobian was computed")
        return original(self, x, y)

    monkeypatch.setattr(ComposeTransform, "log_abs_det_jacobian", refuse)
    for mode in ("loop", "vmap"):
        torch.testing.assert_close(target.neg_log_joint(theta, mode), expected, rtol=0, atol=1e-12)
