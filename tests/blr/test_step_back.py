"""Stepping back from a step that made the fit diverge (pyro_blr.blr.step_back).

The model: Poisson counts with log rate ``w * x``, ``x`` up to 30, in float32. From ``w = 0``
the first Newton-like step lands near ``w = 2.6``, where ``exp(w * x)`` overflows float32: the
log joint at the new particles is not finite, and without stepping back the fit stops there.
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal

import pyro_blr as pb
import pyro_blr.blr.step_back as step_back

X = torch.linspace(0.0, 30.0, 40)


def model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Poisson((w * x).exp()), obs=y)


@pytest.fixture
def counts():
    pyro.clear_param_store()
    generator = torch.Generator().manual_seed(0)
    return torch.poisson((0.1 * X).exp(), generator=generator)


def exact_posterior(y):
    """Mean and sd of w by quadrature (float64, 20001 points over +-0.05 of the mode)."""
    w = torch.linspace(0.05, 0.15, 20001, dtype=torch.float64)
    x, y = X.double(), y.double()
    log_p = dist.Normal(0.0, 1.0).log_prob(w)
    log_p = log_p + dist.Poisson((w[:, None] * x).exp()).log_prob(y).sum(-1)
    weights = (log_p - log_p.max()).exp()
    weights = weights / weights.sum()
    mean = (weights * w).sum()
    return float(mean), float((weights * (w - mean) ** 2).sum().sqrt())


def test_the_overflowing_step_is_retaken_smaller_and_the_fit_ends_at_the_posterior(counts):
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=1.0))
    with pytest.warns(RuntimeWarning, match=r"BLR step 2: the log joint is not finite .* half"):
        blr.fit(X, counts, num_steps=60, progress=False)
    assert blr.step_backs >= 1
    mean, sd = exact_posterior(counts)
    posterior = guide.get_posterior()
    # The posterior is Gaussian to within its skewness (the Poisson likelihood over 40 counts):
    # the Gaussian fit's mean lies within 0.1 sd of the exact mean and its sd within 5 %; the
    # average of 30 von iterates at lr 1 with 2 antithetic particles has Monte Carlo error far
    # below that (its mean's error is O(sd * skewness / sqrt(30))).
    assert abs(float(posterior.mean.detach()) - mean) < 0.1 * sd
    assert float(posterior.stddev.detach()) == pytest.approx(sd, rel=0.05)


def test_a_step_back_retakes_the_same_step_with_half_the_step_size(counts):
    # Newton is deterministic: stepping back at step 2 must leave exactly the state one
    # Newton step at lr 0.5 from the same start gives.
    guide = AutoDiagonalNormal(model, init_scale=0.1)
    blr = pb.BLR(model, guide, pb.Newton(lr=1.0))
    blr.step(X, counts)
    with pytest.warns(RuntimeWarning, match="not finite"):
        blr.step(X, counts)
    assert blr.stepped_back and blr.step_backs == 1
    stepped_back = (guide.loc.detach().clone(), guide.scale.detach().clone())

    pyro.clear_param_store()
    fresh = AutoDiagonalNormal(model, init_scale=0.1)
    pb.BLR(model, fresh, pb.Newton(lr=0.5)).step(X, counts)
    torch.testing.assert_close(stepped_back[0], fresh.loc.detach(), rtol=0, atol=0)
    torch.testing.assert_close(stepped_back[1], fresh.scale.detach(), rtol=0, atol=0)


def test_a_step_that_still_diverges_after_the_last_halving_raises_at_the_state_before(
    counts, monkeypatch
):
    monkeypatch.setattr(step_back, "MAX_STEP_BACKS", 0)  # no step may be retaken
    guide = AutoDiagonalNormal(model, init_scale=0.1)
    blr = pb.BLR(model, guide, pb.Newton(lr=1.0))
    guide(X, counts)
    start = guide.loc.detach().clone(), guide.scale.detach().clone()
    blr.step(X, counts)
    with pytest.raises(FloatingPointError, match=r"diverged even at lr=1 \(lr=1 halved 0 times\)"):
        blr.step(X, counts)
    assert torch.equal(guide.loc.detach(), start[0])
    assert torch.equal(guide.scale.detach(), start[1])


def test_the_average_leaves_out_the_iterate_that_was_stepped_back_from(counts):
    guide = AutoDiagonalNormal(model, init_scale=0.1)
    blr = pb.BLR(model, guide, pb.Newton(lr=1.0))
    average = pb.blr.IterateAverage(blr)
    blr.step(X, counts)
    average.update()  # the overflowing iterate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        blr.step(X, counts)
    average.update()  # the step back: the iterate above leaves the average
    assert average.count == 1
    now = blr.natural_state()
    for key, value in average.average().items():
        torch.testing.assert_close(value, now[key], rtol=0, atol=0)


def test_a_larger_loss_on_other_data_is_no_divergence():
    # 10 data, then 1000: the loss grows a hundredfold because the data did, not the step.
    pyro.clear_param_store()
    y = torch.linspace(-1.0, 1.0, 1000, dtype=torch.float64)

    def normal_mean(y):
        mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    blr = pb.BLR(normal_mean, AutoDiagonalNormal(normal_mean), pb.VON(lr=0.5))
    blr.step(y[:10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        blr.step(y)
    assert blr.step_backs == 0
    assert not any("half the step size" in str(w.message) for w in caught)


def test_minibatches_are_never_compared():
    # Each step scores another minibatch: one holding outliers has a loss far above the last
    # and must still be stepped on (stepping back from it biased the mean from 0.29 to -0.01).
    pyro.clear_param_store()
    y = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    y[:20] = 30.0

    def subsampled(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 10.0))
        with pyro.plate("data", len(y), subsample_size=20) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    pyro.set_rng_seed(1)
    blr = pb.BLR(subsampled, AutoDiagonalNormal(subsampled), pb.VON(lr=0.5))
    for _ in range(300):
        blr.step(y)
    assert blr.step_backs == 0


def test_data_refilled_in_place_is_other_data(counts):
    guide = AutoDiagonalNormal(model, init_scale=0.1)
    blr = pb.BLR(model, guide, pb.Newton(lr=1.0))
    data = counts.clone()
    blr.step(X, data)
    data[:] = data.flip(0)  # the same tensor, new contents: the losses do not compare
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(FloatingPointError):  # the overflow is this data's, not a step's
            blr.step(X, data)
    assert blr.step_backs == 0
    assert not any("half the step size" in str(w.message) for w in caught)


def test_a_restored_checkpoint_is_not_stepped_back_from():
    # The loss at a restored early state is far above the last step's: that is the
    # checkpoint, not a divergence (stepping back from it silently undid the restore).
    y = 50.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))

    def normal_mean(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 100.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    pyro.clear_param_store()
    guide = AutoDiagonalNormal(normal_mean)
    blr = pb.BLR(normal_mean, guide, pb.VON(lr=0.5))
    blr.step(y)
    early = blr.state_dict()
    for _ in range(30):
        blr.step(y)
    blr.load_state_dict(early, y)
    restored = float(guide.loc.detach())
    assert abs(restored - 50.0) > 10  # the early state, far from the posterior
    blr.step(y)
    assert not blr.stepped_back and blr.step_backs == 0


def test_model_parameters_wait_out_a_step_that_is_stepped_back_from(counts):
    # The ELBO gradient of a pyro.param at the overflowing guide is NaN: the parameter step is
    # skipped (Adam wrote NaN into it before), the next step steps back, and the fit goes on.
    def with_offset(x, y):
        b = pyro.param("b", torch.tensor(0.0))
        w = pyro.sample("w", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Poisson((w * x + b).exp()), obs=y)

    pyro.set_rng_seed(0)
    guide = AutoDiagonalNormal(with_offset)
    blr = pb.BLR(with_offset, guide, pb.VON(lr=1.0), model_optim=pyro.optim.Adam({"lr": 0.01}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the step-back warning and Pyro's NaN-gradient one
        blr.fit(X, counts, num_steps=40, progress=False)
    assert blr.step_backs >= 1
    assert torch.isfinite(pyro.param("b")).all()
    assert abs(float(guide.loc.detach()) - 0.1) < 0.02  # w near its posterior (0.10 at b = 0)


def test_a_parameter_whose_gradient_stays_nan_is_named():
    def bad_param(y):
        b = pyro.param("b", torch.tensor(0.0))
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu + 0.0 * b.sqrt(), 1.0), obs=y)

    pyro.clear_param_store()
    y = torch.zeros(3)
    pyro.param("b", torch.tensor(0.0))  # 0 * sqrt'(0) = 0 * inf: the gradient is NaN
    blr = pb.BLR(bad_param, AutoDiagonalNormal(bad_param), pb.VON(lr=0.5))
    with pytest.raises(FloatingPointError, match=r"parameter\(s\) \['b'\] is not finite two"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(3):
                blr.step(y)
