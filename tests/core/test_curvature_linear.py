"""Curvature linear in D (issue 27): the Hessian's diagonal without a D x D matrix (exact by
batched products for few coordinates, Hutchinson's estimate above), the full Hessian by chunks
of batched products, and per-datum gradients by reverse mode under vmap for a model that reads
its data whole."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.autograd.functional import hessian

import pyro_blr.core.autodiff as autodiff
from pyro_blr.core import latent_layout
from pyro_blr.core.autodiff import (
    EXACT_DIAGONAL_MAX,
    derivatives,
    exact_diagonal,
    hessian_diagonal_estimate,
    hessian_from_grad,
)
from pyro_blr.core.datum_jacobian import FORWARD_CHUNK, FORWARD_MIN_DATA, rows_by_batched_backward
from pyro_blr.core.per_datum import datum_terms, per_datum_gradients, per_datum_jacobian

F64 = torch.float64


def quadratic(dim: int, seed: int = 0):
    """l(t) = t'At/2 + b't with a dense, known Hessian A: (fn, A, b)."""
    gen = torch.Generator().manual_seed(seed)
    root = torch.randn(dim, dim, generator=gen, dtype=F64) / dim**0.5
    A = root @ root.T + torch.eye(dim, dtype=F64)
    b = torch.randn(dim, generator=gen, dtype=F64)

    def fn(t):
        return 0.5 * ((t @ A) * t).sum(-1) + t @ b

    return fn, A, b


def test_the_diagonal_mode_is_the_exact_diagonal_for_few_coordinates():
    fn, A, b = quadratic(EXACT_DIAGONAL_MAX)
    theta = torch.randn(3, EXACT_DIAGONAL_MAX, dtype=F64)
    out = derivatives(fn, theta, "diag")
    assert out.hess.shape == (3, EXACT_DIAGONAL_MAX)
    torch.testing.assert_close(out.hess, A.diagonal().expand(3, -1), atol=1e-12, rtol=0)
    torch.testing.assert_close(out.grad, theta @ A + b, atol=1e-12, rtol=0)
    assert torch.equal(out.hess, derivatives(fn, theta, "diag").hess)  # exact: no probes


def test_the_diagonal_mode_above_the_threshold_never_builds_the_full_hessian(monkeypatch):
    dim = EXACT_DIAGONAL_MAX + 1
    fn, _, _ = quadratic(dim)

    def full(*args, **kwargs):
        raise AssertionError("a D x D Hessian was built for the diagonal")

    monkeypatch.setattr(autodiff, "hessian_from_grad", full)
    monkeypatch.setattr(autodiff, "hessian_diagonal_from_grad", full)  # nor D products
    out = derivatives(fn, torch.randn(2, dim, dtype=F64), "diag")
    assert out.hess.shape == (2, dim)
    assert not exact_diagonal(dim) and exact_diagonal(EXACT_DIAGONAL_MAX)


def test_grouped_coordinates_keep_the_diagonal_exact_at_any_dimension():
    # 200 coordinates in 2 groups of non-interacting ones (a sum of per-coordinate terms
    # coupled only to coordinate 0): the exact grouped path, two products.
    dim = 200

    def fn(t):
        return (t[..., :1] * t[..., 1:] ** 3).sum(-1) + t[..., 0] ** 4

    groups = torch.ones(dim, dtype=torch.long)
    groups[0] = 0
    theta = torch.randn(2, dim, dtype=F64)
    out = derivatives(fn, theta, "diag", groups)
    expected = torch.stack([hessian(lambda t: fn(t[None])[0], row).diagonal() for row in theta])
    torch.testing.assert_close(out.hess, expected, atol=1e-10, rtol=0)


def test_hutchinson_is_unbiased_with_the_variance_it_states():
    # E[v (Hv)] = diag(H), Var = sum_{j != i} H_ij^2 per probe. With P probes the mean's error
    # is Normal with sd sqrt(Var / P); 6 sd on each of 100 coordinates fails with probability
    # below 100 * 2e-9. The sample variance over P = 4000 probes has relative sd
    # sqrt(2 / P) ~ 0.022 (at most, Rademacher sums have lighter tails): 15% is > 6 sd.
    dim, probes = 100, 4000
    fn, A, _ = quadratic(dim)
    gen = torch.Generator().manual_seed(0)
    theta = torch.randn(1, dim, dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(fn(theta).sum(), theta, create_graph=True)
    mean = hessian_diagonal_estimate(grad, theta, probes, gen)[0]
    variance = A.square().sum(-1) - A.diagonal().square()
    assert ((mean - A.diagonal()).abs() <= 6 * (variance / probes).sqrt()).all()
    # One probe each at many particles (the Hessian is the same at all): single-probe draws.
    theta = torch.randn(probes, dim, dtype=F64)
    singles = derivatives(fn, theta, "diag", generator=gen).hess
    ratio = singles.var(0) / variance
    assert ((ratio - 1).abs() < 0.15).all(), ratio.aminmax()


def test_hutchinson_is_exact_on_a_diagonal_hessian_and_zero_on_a_linear_function():
    theta = torch.randn(2, 300, dtype=F64)
    out = derivatives(lambda t: (t**4).sum(-1), theta, "diag")
    torch.testing.assert_close(out.hess, 12 * theta**2, atol=1e-10, rtol=1e-12)
    assert torch.equal(derivatives(lambda t: t.sum(-1), theta, "diag").hess,
                       torch.zeros(2, 300, dtype=F64))  # fmt: skip


def test_hutchinson_draws_from_the_generator_given():
    fn, _, _ = quadratic(80)
    theta = torch.randn(2, 80, dtype=F64)
    one = derivatives(fn, theta, "diag", generator=torch.Generator().manual_seed(3)).hess
    two = derivatives(fn, theta, "diag", generator=torch.Generator().manual_seed(3)).hess
    assert torch.equal(one, two)


@pytest.mark.parametrize("chunk_size", [1, 3, 13, 256])
def test_the_chunked_hessian_equals_a_loop_of_products(chunk_size):
    fn, _, _ = quadratic(13)

    def cubic(t):
        return fn(t) + (t**3).sum(-1) * t[..., 0]

    theta = torch.randn(2, 13, dtype=F64).requires_grad_(True)
    (grad,) = torch.autograd.grad(cubic(theta).sum(), theta, create_graph=True)
    chunked = hessian_from_grad(grad, theta, chunk_size)
    basis = torch.eye(13, dtype=F64)

    def row(s, e):
        return torch.autograd.grad(grad[s], theta, e, retain_graph=True)[0][s]

    loop = torch.stack([torch.stack([row(s, e) for e in basis]) for s in range(2)])
    torch.testing.assert_close(chunked, 0.5 * (loop + loop.mT), atol=1e-12, rtol=0)
    for s in range(2):
        torch.testing.assert_close(chunked[s], hessian(lambda t: cubic(t[None])[0],
                                                       theta[s].detach()))  # fmt: skip


def whole_data(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):  # reads X and y whole, not through the plate's indices
        pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)


def centred(X, y, centre):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):  # every datum reads all of `centre`: not per datum
        pyro.sample("y", dist.Bernoulli(logits=X @ w - centre.mean()), obs=y)


def logistic_data(num_data: int, dim: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=F64)
    y = torch.bernoulli(torch.sigmoid(X @ torch.randn(dim, generator=gen, dtype=F64)),
                        generator=gen)  # fmt: skip
    return X, y


def test_a_model_reading_its_data_whole_gets_reverse_mode_runs_on_each_datums_arguments():
    # More coordinates than forward mode batches in one pass: one batched backward pass over
    # runs on one datum's rows of X and y, where forward mode would take D products.
    X, y = logistic_data(FORWARD_MIN_DATA + 8, FORWARD_CHUNK + 16)
    layout = latent_layout(poutine.trace(whole_data).get_trace(X, y))
    row = (0.1 * torch.randn(layout.dim, dtype=F64)).requires_grad_(True)
    split = datum_terms(whole_data, layout, row, (X, y), {}, {})
    jac, way = per_datum_jacobian(whole_data, layout, row, (X, y), {}, {}, split)
    assert way == "one datum's arguments each"
    torch.testing.assert_close(jac, rows_by_batched_backward(split.per_datum, row),
                               atol=1e-12, rtol=0)  # fmt: skip


def test_the_runs_on_a_minibatch_read_its_rows_and_keyword_arguments():
    X, y = logistic_data(FORWARD_MIN_DATA + 100, FORWARD_CHUNK + 1, seed=1)

    def keyword(X, y=None):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0], subsample_size=FORWARD_MIN_DATA + 10) as idx:
            pyro.sample("y", dist.Bernoulli(logits=X[idx] @ w), obs=y[idx])

    subsample = {"data": torch.randperm(len(y))[: FORWARD_MIN_DATA + 10]}
    layout = latent_layout(poutine.trace(poutine.condition(keyword, data=subsample)).get_trace(
        X, y=y))  # fmt: skip
    theta = 0.1 * torch.randn(2, layout.dim, dtype=F64)
    out = per_datum_gradients(keyword, layout, theta, (X,), {"y": y}, subsample)
    row = theta[1].clone().requires_grad_(True)
    split = datum_terms(keyword, layout, row, (X,), {"y": y}, subsample)
    torch.testing.assert_close(out.datum_grads[1], rows_by_batched_backward(split.per_datum, row),
                               atol=1e-12, rtol=0)  # fmt: skip


def test_an_argument_that_is_not_per_datum_keeps_the_runs_on_whole_arguments_out():
    # `centre` has one entry per datum but every datum's term reads all of it: the runs on one
    # datum's rows change the terms, the check refuses them, and forward mode answers.
    X, y = logistic_data(FORWARD_MIN_DATA + 8, FORWARD_CHUNK + 16, seed=2)
    centre = torch.randn(len(y), dtype=F64) + 1.0
    layout = latent_layout(poutine.trace(centred).get_trace(X, y, centre))
    row = (0.1 * torch.randn(layout.dim, dtype=F64)).requires_grad_(True)
    split = datum_terms(centred, layout, row, (X, y, centre), {}, {})
    jac, way = per_datum_jacobian(centred, layout, row, (X, y, centre), {}, {}, split)
    assert way == "forward mode"
    torch.testing.assert_close(jac, rows_by_batched_backward(split.per_datum, row),
                               atol=1e-12, rtol=0)  # fmt: skip


def linear_regression(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def test_von_on_a_diagonal_guide_never_builds_a_full_hessian(monkeypatch):
    # The wiring of the Gaussian stepper: VON on AutoNormal above EXACT_DIAGONAL_MAX
    # coordinates takes Hutchinson's diagonal, neither D x D matrix nor D products a step.
    import pyro_blr as pb

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    X, _ = logistic_data(50, EXACT_DIAGONAL_MAX + 16)
    y = X @ torch.ones(X.shape[1], dtype=F64) + torch.randn(50, dtype=F64)
    guide = pyro.infer.autoguide.AutoNormal(linear_regression)
    blr = pb.BLR(linear_regression, guide, pb.VON(lr=0.1, hess_init=None))
    blr.step(X, y)  # set-up steps may check things with exact Hessians

    def quadratic_in_d(*args, **kwargs):
        raise AssertionError("VON on a diagonal guide computed D Hessian-vector products")

    monkeypatch.setattr(autodiff, "hessian_from_grad", quadratic_in_d)
    monkeypatch.setattr(autodiff, "hessian_diagonal_from_grad", quadratic_in_d)
    for _ in range(3):
        assert torch.isfinite(torch.tensor(blr.step(X, y)))


@pytest.mark.parametrize("scale", [[3.0, 3.0, 3.0], [1.0, 2.0, 3.0]])
def test_the_check_of_the_runs_weighs_each_row_by_its_scale(scale):
    # The check sums the rows as the model scales them, without forming the scaled rows where
    # the scale is one number: a row off by its size fails either way.
    from pyro_blr.core.datum_jacobian import reproduces

    theta = torch.ones(2, dtype=F64, requires_grad=True)
    x = torch.tensor([[1.0, -2.0], [3.0, 0.5], [-1.0, 4.0]], dtype=F64)
    scale = torch.tensor(scale, dtype=F64)
    per_datum = scale * (x * theta).sum(-1)  # unscaled rows x_i, terms x_i . theta
    values = (x * theta.detach()).sum(-1)
    assert reproduces((x, values), per_datum, scale, theta)
    wrong = x.clone()
    wrong[1, 0] += 1.0
    assert not reproduces((wrong, values), per_datum, scale, theta)


def test_von_steps_average_the_probe_noise_to_the_exact_diagonal():
    # VON's precision under Hutchinson's diagonal, on a Gaussian target with a dense Hessian A
    # (off-diagonal mass 10% of the diagonal's square): its fixed point is diag(A) up to the
    # Riemannian update's bias, (lr / 2) Var / A_ii^2 = 0.025 * 0.1 = 0.25%. The per-step
    # estimate's relative sd is sqrt(0.1) = 0.32; the precision's running average (weight lr)
    # has sd 0.32 sqrt(lr / 2) = 0.05, and its mean over 900 steps, about 45 independent
    # stretches of 1 / lr steps, has sd 0.0075: 4% is > 5 sd of the average plus the bias
    # (measured: 0.93% at most over the 80 coordinates, 0.25% on average; an estimator biased
    # by the rows' off-diagonal sums, H 1, would be off by about 20%).
    from pyro_blr.blr.rules.base import GaussianState
    from pyro_blr.blr.rules.von import von_update

    dim, lr = EXACT_DIAGONAL_MAX + 16, 0.05  # above the threshold: Hutchinson's estimate
    gen = torch.Generator().manual_seed(0)
    diag = 1.0 + 4.0 * torch.rand(dim, generator=gen, dtype=F64)
    noise = torch.randn(dim, dim, generator=gen, dtype=F64)
    off = (noise + noise.T) * (0.1 * diag.square().amin() / (2 * dim)) ** 0.5
    off.fill_diagonal_(0.0)
    A = torch.diag(diag) + off

    def fn(t):
        return 0.5 * ((t @ A) * t).sum(-1)

    state = GaussianState(torch.ones(dim, dtype=F64), torch.ones(dim, dtype=F64))
    precisions = []
    for step in range(1200):
        theta = state.loc + torch.randn(2, dim, generator=gen, dtype=F64) / state.precision.sqrt()
        out = derivatives(fn, theta, "diag", generator=gen)
        state = von_update(state, out.grad.mean(0), out.hess.mean(0), lr)
        if step >= 300:
            precisions.append(state.precision)
    average = torch.stack(precisions).mean(0)
    error = (average / diag - 1).abs()
    assert (error < 0.04).all(), error.max()
