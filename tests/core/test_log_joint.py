"""The negative log joint against Pyro's own trace, its three evaluation modes, and the check
that picks one."""

import logging

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal

from pyro_blr.core import (
    VECTORIZATIONS,
    choose_vectorization,
    derivatives,
    latent_layout,
    log_joint,
    neg_log_joint,
)
from tests.scenarios import constrained_model, linear_regression

D = torch.float64


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=D)
    return x, 2 * x + torch.randn(2, 5, generator=gen, dtype=D)


def layout_of(model, *args):
    pyro.clear_param_store()  # a guide of another test's model would lend its parameters
    guide = AutoDiagonalNormal(model)
    guide(*args)
    return latent_layout(guide.prototype_trace, poutine.trace(model).get_trace(*args))


def test_neg_log_joint_matches_pyro_trace(data):
    guide = AutoDiagonalNormal(constrained_model)
    guide(*data)
    model_trace = poutine.trace(constrained_model).get_trace(*data)
    layout = latent_layout(guide.prototype_trace, model_trace)
    assert layout.max_plate_nesting == 2
    theta = torch.randn(4, layout.dim, dtype=torch.float64)
    ours = neg_log_joint(constrained_model, layout, theta, data)
    assert ours.shape == (4,)
    for s in range(4):
        values, log_det = {}, 0.0
        for site, unconstrained in guide._unpack_latent(theta[s]):
            value = torch.distributions.biject_to(site["fn"].support)(unconstrained)
            transform = torch.distributions.biject_to(site["fn"].support)
            log_det = log_det + transform.log_abs_det_jacobian(unconstrained, value).sum()
            values[site["name"]] = value
        trace = poutine.trace(poutine.condition(constrained_model, values)).get_trace(*data)
        expected = -(trace.log_prob_sum() + log_det)
        torch.testing.assert_close(ours[s], expected, rtol=1e-12, atol=1e-12)


def test_subsampled_plate_is_scaled_like_pyro():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 10, subsample_size=4) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    y = torch.arange(10.0)
    guide = AutoDiagonalNormal(model)
    guide(y)
    layout = latent_layout(guide.prototype_trace, poutine.trace(model).get_trace(y))
    theta = torch.tensor([[0.3]])
    pyro.set_rng_seed(3)
    ours = neg_log_joint(model, layout, theta, (y,))
    pyro.set_rng_seed(3)
    trace = poutine.trace(poutine.condition(model, {"mu": theta[0, 0]})).get_trace(y)
    torch.testing.assert_close(ours[0], -trace.log_prob_sum())
    idx = trace.nodes["data"]["value"]
    manual = dist.Normal(0.0, 1.0).log_prob(theta[0, 0])
    manual = manual + 10 / 4 * dist.Normal(theta[0, 0], 1.0).log_prob(y[idx]).sum()
    torch.testing.assert_close(ours[0], -manual)


def test_minibatch_gradient_is_unbiased_for_the_full_data_gradient():
    full = linear_regression(num_data=20)
    mini = linear_regression(num_data=20, subsample_size=5)
    guide = AutoDiagonalNormal(full.model)
    guide(full.X, full.y)
    layout = latent_layout(
        guide.prototype_trace, poutine.trace(full.model).get_trace(full.X, full.y)
    )
    theta = torch.randn(1, layout.dim, dtype=torch.float64)

    def gradient(model):
        return derivatives(lambda t: neg_log_joint(model, layout, t, (full.X, full.y)), theta).grad[
            0
        ]

    exact = gradient(full.model)
    draws = torch.stack([gradient(mini.model) for _ in range(4000)])
    stderr = draws.std(0) / 4000**0.5
    assert ((draws.mean(0) - exact).abs() < 4 * stderr).all()
    assert (draws.std(0) > 0).all()  # the minibatches really differ


@pytest.mark.parametrize("mode", ["vmap", "loop"])
def test_every_mode_agrees_with_the_plate_on_a_broadcasting_model(data, mode):
    # Constrained sites (log-Jacobians), nested plates and a deterministic site; float64.
    layout = layout_of(constrained_model, *data)
    theta = torch.randn(4, layout.dim, dtype=D)
    plate = neg_log_joint(constrained_model, layout, theta, data, vectorize="plate")
    other = neg_log_joint(constrained_model, layout, theta, data, vectorize=mode)
    assert other.shape == (4,)
    torch.testing.assert_close(other, plate, rtol=1e-12, atol=1e-12)
    # log_joint takes constrained values with the particles first, in the same three ways.
    values = {}
    log_det = torch.zeros(4, dtype=D)
    for site, raw in zip(layout.sites, layout.unpack(theta).values(), strict=True):
        raw = raw.reshape((4, *site.shape))
        values[site.name] = site.transform(raw)
        jacobian = site.transform.log_abs_det_jacobian(raw, values[site.name])
        log_det = log_det + jacobian.reshape(4, -1).sum(-1)
    batch_dims = {s.name: len(s.shape) - s.event_dim for s in layout.sites}
    for vectorize in VECTORIZATIONS:
        joint = log_joint(constrained_model, values, batch_dims, 2, data, vectorize=vectorize)
        torch.testing.assert_close(-(joint + log_det), plate, rtol=1e-12, atol=1e-12)


def broadcasting(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal((X * w).sum(-1), 0.5), obs=y)


def matmul(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def unpacking(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    a, b, c = w
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(a * X[:, 0] + b * X[:, 1] + c * X[:, 2], 0.5), obs=y)


def item(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    scale = 0.5 + abs(w[0].item())  # a Python float: neither a plate nor vmap can carry it
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, scale), obs=y)


def control_flow(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    mean = X @ w if w[0] > 0 else -(X @ w)  # data-dependent Python control flow
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


@pytest.mark.parametrize(
    "model, expected",
    [
        (broadcasting, "plate"),
        (matmul, "vmap"),
        (unpacking, "vmap"),
        (item, "loop"),
        (control_flow, "loop"),
    ],
    ids=["broadcasting", "X@w", "a,b,c=w", ".item()", "if w[0] > 0"],
)
def test_choose_vectorization_picks_the_fastest_mode_that_matches_the_loop(model, expected):
    s = linear_regression()
    layout = layout_of(model, s.X, s.y)
    probe = torch.randn(3, layout.dim, dtype=D)
    mode = choose_vectorization(model, layout, probe, (s.X, s.y))
    assert mode == expected
    # Whatever it picked gives the loop's numbers on fresh particles.
    theta = torch.randn(5, layout.dim, dtype=D)
    torch.testing.assert_close(
        neg_log_joint(model, layout, theta, (s.X, s.y), vectorize=mode),
        neg_log_joint(model, layout, theta, (s.X, s.y), vectorize="loop"),
        rtol=1e-10,
        atol=1e-10,
    )


def test_unpacking_never_takes_the_plate_even_when_the_plate_runs():
    # With as many particles as coordinates, "a, b, c = w" unpacks the particle dimension and
    # runs under a plate, computing another model; the probe must catch it.
    s = linear_regression()
    layout = layout_of(unpacking, s.X, s.y)
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        probe = torch.randn(3, layout.dim, generator=gen, dtype=D)
        assert choose_vectorization(unpacking, layout, probe, (s.X, s.y)) != "plate"


def test_a_fallback_is_logged_with_its_reason(caplog):
    s = linear_regression()
    layout = layout_of(item, s.X, s.y)
    with caplog.at_level(logging.INFO, logger="pyro_blr.core.log_joint"):
        choose_vectorization(item, layout, torch.randn(3, layout.dim, dtype=D), (s.X, s.y))
    assert "particles evaluated one by one" in caplog.text and "vmap:" in caplog.text


def test_a_model_error_propagates_from_the_loop():
    s = linear_regression()
    layout = layout_of(matmul, s.X, s.y)

    def broken(X, y):
        matmul(X, y)
        raise RuntimeError("the model itself fails")

    with pytest.raises(RuntimeError, match="the model itself fails"):
        choose_vectorization(broken, layout, torch.randn(3, layout.dim, dtype=D), (s.X, s.y))


def test_a_latent_site_the_values_do_not_cover_is_refused():
    s = linear_regression()
    layout = layout_of(matmul, s.X, s.y)

    def extra(X, y):
        matmul(X, y)
        pyro.sample("extra", dist.Normal(0.0, 1.0))  # not in the layout

    with pytest.raises(ValueError, match="latent site 'extra' was not given a value"):
        theta = torch.zeros(2, layout.dim, dtype=D)
        neg_log_joint(extra, layout, theta, (s.X, s.y), vectorize="loop")


def test_an_unknown_mode_is_refused():
    s = linear_regression()
    layout = layout_of(matmul, s.X, s.y)
    with pytest.raises(ValueError, match="vectorize must be one of"):
        neg_log_joint(matmul, layout, torch.zeros(2, 3, dtype=D), (s.X, s.y), vectorize="jit")


def scalar_only(X, y):
    """A model that refuses the plate's particle dimension with an empty AssertionError, as a
    bare ``assert w.shape == ()`` raises it (pytest would give an assert in this file a
    message, so it is raised by hand)."""
    w = pyro.sample("w", dist.Normal(torch.zeros((), dtype=X.dtype), 1.0))
    if w.shape != ():
        raise AssertionError
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(w * X[:, 0], 0.5), obs=y)


def test_an_assertion_without_a_message_falls_back_and_logs_its_line(caplog):
    # The plate's empty AssertionError had no first line to log (IndexError); the probe falls
    # back to vmap and logs the line that raised.
    s = linear_regression()
    layout = layout_of(scalar_only, s.X, s.y)
    with caplog.at_level(logging.INFO, logger="pyro_blr.core.log_joint"):
        mode = choose_vectorization(
            scalar_only, layout, torch.randn(3, layout.dim, dtype=D), (s.X, s.y)
        )
    assert mode == "vmap"
    assert "plate: AssertionError at test_log_joint.py" in caplog.text
    assert "raise AssertionError" in caplog.text


def test_a_model_error_without_a_message_gets_its_line():
    s = linear_regression()
    layout = layout_of(matmul, s.X, s.y)
    armed = []

    def refusing(X, y):
        matmul(X, y)
        if armed:
            raise AssertionError

    armed.append(True)
    with pytest.raises(AssertionError, match=r"the model raised AssertionError at .*raise Assert"):
        choose_vectorization(refusing, layout, torch.randn(3, layout.dim, dtype=D), (s.X, s.y))


def float32_prior(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), 1.0))  # float32 whatever y is
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_float32_latents_with_float64_data_give_one_dtype_in_every_mode():
    # The plate summed float64 terms into float64, the loop into float32, and comparing them
    # raised "Double did not match Float". Every mode gives the latent vector's dtype (as the
    # gradient has), with the same numbers: float32 round-off, 1e-5.
    y = torch.tensor([0.5, 1.5, 2.5], dtype=D)
    layout = layout_of(float32_prior, y)
    theta = torch.randn(3, layout.dim)
    assert choose_vectorization(float32_prior, layout, theta, (y,)) == "plate"
    exact = neg_log_joint(float32_prior, layout, theta, (y,), vectorize="loop")
    for mode in VECTORIZATIONS:
        value = neg_log_joint(float32_prior, layout, theta, (y,), vectorize=mode)
        assert value.dtype == torch.float32, mode
        torch.testing.assert_close(value, exact, rtol=1e-5, atol=1e-5)
