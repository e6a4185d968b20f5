"""Per-datum gradients: equal to one autograd pass per datum, scaled as the model scales the
minibatch, over every data plate and each observed site outside a plate."""

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

import pyro_blr.core.per_datum as per_datum_module
from pyro_blr.core import data_plates, latent_layout, neg_log_joint, per_datum_gradients
from pyro_blr.core.datum_jacobian import (
    FORWARD_MIN_DATA,
    reproduces,
    rows_by_batched_backward,
    rows_by_forward_mode,
    rows_by_one_datum_runs,
)
from pyro_blr.core.per_datum import datum_terms, per_datum_jacobian

D = torch.float64


def model(X, y, subsample=None):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.zeros((), dtype=D), 1.0))
    with pyro.plate("data", len(y), subsample=subsample, dim=-2) as idx:
        with pyro.plate("outputs", 3, dim=-1):  # three observations per datum
            pyro.sample("y", dist.Normal((X[idx] @ w)[:, None], sigma), obs=y[idx])


def test_per_datum_gradients_equal_one_pass_per_datum():
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(10, 2, generator=gen, dtype=D), torch.randn(10, 3, generator=gen, dtype=D)
    idx = torch.tensor([1, 4, 7, 8])
    trace = poutine.trace(model).get_trace(X, y, idx)
    layout = latent_layout(trace)
    assert data_plates(trace) == ((("data", -2, 10, ("y",)),), ())
    theta = torch.randn(2, layout.dim, generator=gen, dtype=D)
    out = per_datum_gradients(model, layout, theta, (X, y, idx), {})
    assert out.scale.tolist() == [10 / 4] * 4 and out.datum_grads.shape == (2, 4, layout.dim)
    for s in range(2):
        t = theta[s].clone().requires_grad_(True)
        for k, i in enumerate(idx):  # datum i's three terms, scaled by N/B as the plate scales
            term = -2.5 * dist.Normal(X[i] @ t[:2], t[2].exp()).log_prob(y[i]).sum()
            (expected,) = torch.autograd.grad(term, t)
            torch.testing.assert_close(out.datum_grads[s, k], expected, atol=1e-12, rtol=0)
    value = neg_log_joint(model, layout, theta, (X, y, idx), {}, "loop")
    torch.testing.assert_close(out.value, value, atol=1e-12, rtol=0)
    for s in range(2):
        t = theta[s : s + 1].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(
            neg_log_joint(model, layout, t, (X, y, idx), {}, "loop").sum(), t
        )
        torch.testing.assert_close(out.grad[s], expected[0], atol=1e-12, rtol=0)


def two_plates(y, z):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("a", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    with pyro.plate("b", 4, subsample=torch.tensor([0, 2])), poutine.scale(scale=0.5):
        pyro.sample("z", dist.Normal(mu, 1.0), obs=z)


def nested(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", y.shape[1]), pyro.plate("features", 2):  # features at dim -2
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def unplated(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("y", dist.Normal(mu, 1.0).expand([3]).to_event(1), obs=y)


def test_every_data_plate_is_data_scaled_as_the_model_scales_it():
    y, z = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([-1.0, 1.0])
    trace = poutine.trace(two_plates).get_trace(y, z)
    plates, unplated_sites = data_plates(trace)
    assert [(p.name, p.size, p.sites) for p in plates] == [("a", 3, ("y",)), ("b", 4, ("z",))]
    assert unplated_sites == ()
    out = per_datum_gradients(two_plates, latent_layout(trace), torch.zeros(1, 1), (y, z), {})
    # d/dmu of -log N(x | mu, 1) at mu = 0 is -x; plate b's terms scaled by 4/2 * 0.5 = 1.
    expected = torch.tensor([-1.0, -2.0, -3.0, 1.0, -1.0])
    torch.testing.assert_close(out.datum_grads[0, :, 0], expected)
    assert out.scale.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    torch.testing.assert_close(out.grad[0, 0], expected.sum())  # the prior's gradient is 0 here


def test_the_data_are_the_outermost_plate_and_unplated_data_are_refused():
    y = torch.arange(10.0).reshape(2, 5)
    trace = poutine.trace(nested).get_trace(y)
    (plate,), _ = data_plates(trace)
    assert (plate.name, plate.size) == ("data", 5)  # not the features, though they are at -2
    out = per_datum_gradients(nested, latent_layout(trace), torch.zeros(1, 1), (y,), {})
    torch.testing.assert_close(out.datum_grads[0, :, 0], -y.sum(0))  # per datum, both features
    trace = poutine.trace(unplated).get_trace(torch.zeros(3))
    with pytest.raises(
        ValueError, match=r"observed site\(s\) \['y'\] lie in no vectorized pyro\.plate"
    ):
        per_datum_gradients(
            unplated, latent_layout(trace), torch.zeros(1, 1), (torch.zeros(3),), {}
        )


def by_indices(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    with pyro.plate("data", len(y)) as idx:  # subsampled by the caller, as the BLR does
        pyro.sample("y", dist.Normal(X[idx] @ w, 1.0), obs=y[idx])
        pyro.sample("z", dist.Normal(2 * X[idx, 0] * w[1], 1.0), obs=y[idx])  # a second site


def fixed_minibatch(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    with pyro.plate("data", len(y), subsample_size=3) as idx:  # Pyro refuses one datum
        pyro.sample("y", dist.Normal(X[idx] @ w, 1.0), obs=y[idx])


def whole_data(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    with pyro.plate("data", len(y)):  # reads X and y whole, not through the plate's indices
        pyro.sample("y", dist.Normal(X @ w, 1.0), obs=y)


def with_a_param(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    s = pyro.param("s", torch.tensor(1.5, dtype=D), constraint=dist.constraints.positive)
    with pyro.plate("data", len(y)) as idx:  # the runs read a model parameter too
        pyro.sample("y", dist.Normal(X[idx] @ w, s), obs=y[idx])


def whole_data_with_a_param(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    s = pyro.param("s", torch.tensor(1.5, dtype=D), constraint=dist.constraints.positive)
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(X @ w, s), obs=y)


def noisy_inputs(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    with pyro.plate("data", len(y)):  # a random draw inside: no torch.func transform runs it
        pyro.sample("y", dist.Normal((X + 0 * torch.randn_like(X)) @ w, 1.0), obs=y)


@pytest.mark.parametrize(
    "model, one_datum, forward",
    [
        (by_indices, True, True),
        (fixed_minibatch, False, True),
        (whole_data, False, True),
        (with_a_param, True, True),
        (whole_data_with_a_param, False, True),
        (noisy_inputs, False, False),
    ],
)
def test_every_way_to_the_per_datum_gradients_agrees_with_a_loop(model, one_datum, forward):
    gen = torch.Generator().manual_seed(0)
    X, y = torch.randn(6, 2, generator=gen, dtype=D), torch.randn(6, generator=gen, dtype=D)
    pyro.clear_param_store()
    subsample = {"data": torch.tensor([0, 2, 5])} if model in (by_indices, fixed_minibatch) else {}
    trace = poutine.trace(poutine.condition(model, data=subsample)).get_trace(X, y)
    layout = latent_layout(trace)
    theta = torch.randn(2, layout.dim, generator=gen, dtype=D)
    out = per_datum_gradients(model, layout, theta, (X, y), {}, subsample)
    row = theta[0].clone().requires_grad_(True)
    per_datum, scale, _, _, run = datum_terms(model, layout, row, (X, y), {}, subsample)
    expected = torch.stack([torch.autograd.grad(t, row, retain_graph=True)[0] for t in per_datum])
    torch.testing.assert_close(out.datum_grads[0], expected, atol=1e-12, rtol=0)
    assert not out.datum_grads.requires_grad  # not tied to a model parameter's graph

    def terms(t, minibatch):
        return datum_terms(model, layout, t, (X, y), {}, minibatch)[:2]

    # Runs on one datum: only for a model that reads its data through the plate's indices
    # without a fixed subsample_size.
    indices = run.nodes["data"]["value"]
    rows = rows_by_one_datum_runs(terms, row, "data", indices, {})
    assert (rows is not None and reproduces(rows, per_datum, scale, row)) == one_datum
    if one_datum:
        torch.testing.assert_close(rows[0] * scale[:, None], expected, atol=1e-12, rtol=0)
    # Forward mode: any model without random draws.
    rows = rows_by_forward_mode(terms, row, subsample, chunk=1)
    assert (rows is not None) == forward
    if forward:
        torch.testing.assert_close(rows, expected, atol=1e-12, rtol=0)


def test_the_one_datum_check_allows_the_rounding_of_gradients_that_cancel():
    # At a full-batch mode the per-datum gradients cancel in their sum; float32 runs on one
    # datum each round them differently from the whole run. The check's tolerance scales with
    # the terms summed, so a relative error of 1e-7 in each passes where an error the size of
    # a term does not.
    theta = torch.ones(1, requires_grad=True)
    x = torch.tensor([1e4, -1e4, 3.0])
    per_datum, scale = x * theta, torch.ones(3)
    rounded = x * (1 + torch.tensor([1e-7, -1e-7, 0.0]))
    assert reproduces((rounded[:, None], x), per_datum, scale, theta)
    wrong = x + torch.tensor([0.0, 0.0, 30.0])  # one datum's gradient 30 off (x 11)
    assert not reproduces((wrong[:, None], x), per_datum, scale, theta)


def test_a_model_reading_its_data_whole_gets_forward_mode_on_a_large_minibatch(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    num_data = FORWARD_MIN_DATA + 88  # more data than coordinates: forward mode's ground
    X = torch.randn(num_data, 2, generator=gen, dtype=D)
    y = torch.randn(num_data, generator=gen, dtype=D)
    layout = latent_layout(poutine.trace(whole_data).get_trace(X, y))
    theta = torch.randn(1, layout.dim, generator=gen, dtype=D)
    row = theta[0].clone().requires_grad_(True)
    per_datum = datum_terms(whole_data, layout, row, (X, y), {}, {})[0]

    def quadratic(*args):
        raise AssertionError("the batched backward pass was taken")

    monkeypatch.setattr(per_datum_module, "rows_by_batched_backward", quadratic)
    out = per_datum_gradients(whole_data, layout, theta, (X, y), {})
    expected = rows_by_batched_backward(per_datum, row)
    torch.testing.assert_close(out.datum_grads[0], expected, atol=1e-12, rtol=0)


def test_the_rest_hessian_is_that_of_the_priors_and_log_jacobians():
    # N(0, 1) weights, and sigma ~ LogNormal(0, 1) sampled as log sigma, whose prior density
    # times the log-Jacobian is N(0, 1) in log sigma: the rest's Hessian is the identity.
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randn(10, 2, generator=gen, dtype=D), torch.randn(10, 3, generator=gen, dtype=D)
    idx = torch.tensor([1, 4, 7, 8])
    layout = latent_layout(poutine.trace(model).get_trace(X, y, idx))
    theta = torch.randn(2, layout.dim, generator=gen, dtype=D)
    out = per_datum_gradients(model, layout, theta, (X, y, idx), {}, rest_hessian=True)
    for s in range(2):
        rest = lambda t: datum_terms(model, layout, t, (X, y, idx), {}, {})[2]  # noqa: E731
        expected = torch.autograd.functional.hessian(rest, theta[s])
        torch.testing.assert_close(out.rest_hess[s], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(out.rest_hess, torch.eye(3, dtype=D).expand(2, 3, 3))


NUMPY_RNG = np.random.default_rng(0)


def whole_data_numpy_noise(X, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
    noise = torch.as_tensor(NUMPY_RNG.normal(0.0, 0.5, X.shape))  # unseen by torch.func
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal((X + noise) @ w, 1.0), obs=y)


def test_a_rerun_that_sees_other_data_is_refused():
    # Forward mode reruns the model; numpy's draws differ between runs, so its rows belong
    # to another run than the gradient's: the sum check sends the model to the batched pass.
    gen = torch.Generator().manual_seed(3)
    num_data = FORWARD_MIN_DATA + 88
    X = torch.randn(num_data, 2, generator=gen, dtype=D)
    y = torch.randn(num_data, generator=gen, dtype=D)
    layout = latent_layout(poutine.trace(whole_data_numpy_noise).get_trace(X, y))
    row = torch.randn(layout.dim, generator=gen, dtype=D).requires_grad_(True)
    split = datum_terms(whole_data_numpy_noise, layout, row, (X, y), {}, {})
    jac, way = per_datum_jacobian(whole_data_numpy_noise, layout, row, (X, y), {}, {}, split)
    assert way == "batched backward"
    expected = rows_by_batched_backward(split.per_datum, row)
    torch.testing.assert_close(jac, expected, atol=0, rtol=0)


def test_data_in_a_sequential_subsampled_plate_are_refused_naming_the_plate():
    # One site per datum in `for i in pyro.plate(..., subsample_size=B)`: no batch dimension
    # holds the data. The refusal used to name only this minibatch's sites.
    y = torch.arange(10.0, dtype=D)

    def sequential(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=D), 1.0))
        for i in pyro.plate("data", len(y), subsample_size=4):
            pyro.sample(f"y_{i}", dist.Normal(mu, 1.0), obs=y[i])

    trace = poutine.trace(sequential).get_trace(y)
    subsample = {"data": trace.nodes["data"]["value"]}
    with pytest.raises(ValueError, match=r"lie in the sequential plate\(s\) \['data'\]"):
        per_datum_gradients(
            sequential, latent_layout(trace), torch.zeros(1, 1, dtype=D), (y,), {}, subsample
        )
