"""Pyro's own example models, unchanged, under the BLR: each runs as Pyro's SVI runs it, or is
refused with an error that names the site or argument at fault and the fix.

The models are Pyro's, verbatim, in ``pyro_examples.py`` (their sources named there); only the
data are made up (small, seeded), since the tests cannot download Pyro's data.
"""

import logging
from functools import partial

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from tests.reliability.pyro_examples import (
    SparseGammaDEF,
    basic_model,
    basic_model_with_message,
    dataset,
    mu0,
    only_sigma_one,
    simulate,
    time_measurement_sigma,
)
from tests.reliability.pyro_examples import model as inclined_plane


def growth_counts():
    # Alpha and Delta counts of 200 sequences a time bin, Delta growing in logit space.
    time = torch.arange(8.0) * dataset["time_step_days"] / 5.5
    delta = (200 * torch.sigmoid(0.4 * time - 4.0)).round()
    return torch.stack([200 - delta, delta], -1)


def fitted(model, make_driver):
    """The guide's parameters after five steps from seed 0 (the model's data bound in by
    ``functools.partial``, as the tutorial passes them)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model, init_scale=0.01)
    make_driver(model, guide).fit(num_steps=5, progress=False)
    return {n: p.detach().clone() for n, p in guide.named_parameters()}


DRIVERS = {
    "von": lambda model, guide: pb.BLR(model, guide, pb.VON(lr=0.5)),
    "ivon-defaults": lambda model, guide: pb.BLR(model, guide),
}


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_the_logistic_growth_tutorial_fits_with_its_bare_assert(driver):
    # A bare assert raised an empty AssertionError under the plate probe, whose first message
    # line did not exist (IndexError). It must fall back to vmap exactly as the same model with
    # a message on its assert does: the same seed gives the same guide, bit for bit.
    counts = growth_counts()
    bare = fitted(partial(basic_model, counts), driver)
    with_message = fitted(partial(basic_model_with_message, counts), driver)
    assert bare.keys() == with_message.keys()
    for name, value in bare.items():
        assert torch.isfinite(value).all(), name
        assert torch.equal(value, with_message[name]), name


def test_the_real_reason_of_a_fallback_is_logged(caplog):
    # The reason the plate was not taken is the assert's own line, not an empty message.
    counts = growth_counts()
    model = partial(basic_model, counts)
    pyro.clear_param_store()
    with caplog.at_level(logging.INFO, logger="pyro_blr.core.log_joint"):
        pb.BLR(model, AutoNormal(model)).step()
    assert "plate: AssertionError at pyro_examples.py" in caplog.text
    assert "assert probs.shape == (T, L)" in caplog.text


def test_the_sparse_gamma_def_runs_on_float64_data_as_svi_does():
    # Following the float64 advice (x.double()) on a model whose priors are float32 constants
    # crashed the vectorization probe ("Double did not match Float": the loop's value was
    # float32, the plate's float64). It runs in float32, as SVI runs it, and says why the data's
    # float64 does not reach the fit, naming a latent site and the fix.
    sgdef = SparseGammaDEF()
    sgdef.top_width, sgdef.mid_width, sgdef.bottom_width, sgdef.image_size = 4, 3, 2, 5
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((6, 5), 2.0), generator=gen).double()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(sgdef.model)
    with pytest.warns(UserWarning, match="latent site 'w_top' is float32"):
        losses = pb.BLR(sgdef.model, guide).fit(x, num_steps=3, progress=False).losses
    assert all(np.isfinite(losses))
    assert all(torch.isfinite(p).all() for p in guide.parameters())


def test_a_float32_prior_with_float64_data_gets_the_exact_posterior():
    # The minimal case: mu ~ N(0, 1) from a float32 constant, y float64. Newton with lr=1 on
    # this conjugate model is the exact posterior N(sum y / (n + 1), 1 / (n + 1)) in one step,
    # to float32 round-off (1e-5); IVON's defaults and VON take steps without a dtype crash.
    prior_loc = torch.tensor(0.0)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(prior_loc, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.5, 1.5, 2.5, 1.0], dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoMultivariateNormal(model)
    with pytest.warns(UserWarning, match="observed site 'y' holds float64 data"):
        pb.BLR(model, guide, pb.Newton(lr=1.0)).step(y)
    posterior = guide.get_posterior()
    assert posterior.mean.dtype == torch.float32  # the guide follows the latents, as in SVI
    torch.testing.assert_close(posterior.mean.double(), y.sum()[None] / 5, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        posterior.covariance_matrix.double(), torch.full((1, 1), 0.2, dtype=torch.float64)
    )
    for make in DRIVERS.values():
        pyro.clear_param_store()
        guide = AutoNormal(model)
        with pytest.warns(UserWarning):
            losses = make(model, guide).fit(y, num_steps=3, progress=False).losses
        assert all(np.isfinite(losses))


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_the_inclined_plane_simulator_is_refused_naming_the_site(driver):
    # mu.numpy() inside the simulator: torch's "Can't call numpy() on Tensor that requires
    # grad" at the first step became an error naming the site and what the BLR needs.
    torch.manual_seed(2)
    observed_data = torch.tensor(
        [simulate(torch.tensor(mu0), noise_sigma=time_measurement_sigma) for _ in range(3)]
    )
    pyro.clear_param_store()
    guide = AutoNormal(inclined_plane)
    with pytest.raises(ValueError, match="cannot be differentiated in latent site 'mu'") as info:
        driver(inclined_plane, guide).fit(observed_data, num_steps=2, progress=False)
    assert "steps on the gradient" in str(info.value)
    assert "pyro.infer.Importance" in str(info.value)


# ---------------------------------------------------------------- the data (finding 4)
def regression(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def regression_data(dtype=torch.float32, num_data=30, num_features=3):
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(num_data, num_features, generator=gen, dtype=dtype)
    y = X.sum(-1) + 0.5 * torch.randn(num_data, generator=gen, dtype=dtype)
    return X, y


def params_of(guide):
    return {n: p.detach().clone() for n, p in guide.named_parameters()}


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_a_model_that_changes_its_input_in_place_is_refused_naming_it(driver):
    # "X /= 2" compounds over the many model runs of a step (torch: "one of the variables
    # needed for gradient computation has been modified by an inplace operation"); refused at
    # set-up naming the argument, with the user's data restored.
    def halving(X, y):
        X /= 2.0
        regression(X, y)

    X, y = regression_data()
    original = X.clone()
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="the model changes its argument 'X' in place"):
        driver(halving, AutoNormal(halving)).fit(X, y, num_steps=2, progress=False)
    assert torch.equal(X, original)


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_float64_data_after_a_float32_set_up_is_refused_naming_the_argument(driver):
    # Torch's "expected m1 and m2 to have the same dtype" became an error naming X, the two
    # dtypes and the fix; the guide is left as the first step wrote it.
    X, y = regression_data()
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    blr = driver(regression, guide)
    blr.step(X, y)
    before = params_of(guide)
    with pytest.raises(ValueError, match="argument 'X' is float64, but it was float32") as info:
        blr.step(X.double(), y.double())
    assert "new guide" in str(info.value)
    assert all(torch.equal(p, before[n]) for n, p in params_of(guide).items())


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_float64_data_for_a_guide_set_up_in_float32_is_refused_naming_the_argument(driver):
    # The guide was set up by SVI on float32 data; a new driver stepped with float64 data met
    # torch's "addmv input tensors must have the same dtype" at its set-up.
    X, y = regression_data()
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    pyro.infer.SVI(regression, guide, pyro.optim.Adam({"lr": 0.01}), pyro.infer.Trace_ELBO()).step(
        X, y
    )
    before = params_of(guide)
    with pytest.raises(ValueError, match="argument 'X' is float64, but the guide's parameters"):
        driver(regression, guide).step(X.double(), y.double())
    assert all(torch.equal(p, before[n]) for n, p in params_of(guide).items())


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_data_with_another_feature_count_is_refused_naming_the_argument(driver):
    X, y = regression_data()
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    blr = driver(regression, guide)
    blr.step(X, y)
    before = params_of(guide)
    X4, _ = regression_data(num_features=4)
    with pytest.raises(ValueError, match=r"argument 'X' of shape \(30, 4\), \(30, 3\) at set-up"):
        blr.step(X4, y)
    assert all(torch.equal(p, before[n]) for n, p in params_of(guide).items())


def test_another_number_of_rows_still_steps():
    # Only the first dimension may change (a minibatch, new data of the same columns).
    X, y = regression_data()
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    blr = pb.BLR(regression, guide, pb.VON(lr=0.5))
    blr.step(X, y)
    assert np.isfinite(blr.step(X[:10], y[:10]))


@pytest.mark.parametrize("driver", DRIVERS.values(), ids=DRIVERS.keys())
def test_numpy_inputs_the_model_fails_on_are_refused_naming_the_argument(driver):
    # torch.zeros(..., dtype=X.dtype) with a NumPy X: torch's "argument 'dtype' must be
    # torch.dtype" became an error naming X and the fix (SVI fails on it too).
    X, y = regression_data()
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    with pytest.raises(TypeError, match="argument 'X' is a NumPy array") as info:
        driver(regression, guide).fit(X.numpy(), y.numpy(), num_steps=2, progress=False)
    assert "torch.as_tensor" in str(info.value)


def test_numpy_inputs_a_model_converts_fit_as_tensors_do():
    def converting(X, y):
        regression(torch.as_tensor(X), torch.as_tensor(y))

    X, y = regression_data()
    fits = []
    for data in ((X.numpy(), y.numpy()), (X, y)):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(converting)
        pb.BLR(converting, guide).fit(*data, num_steps=3, progress=False)
        fits.append(params_of(guide))
    assert all(torch.equal(p, fits[1][n]) for n, p in fits[0].items())


# ---------------------------------------------------------------- set-up failures (finding 5)
def test_a_bare_assert_the_set_up_probe_fails_reports_its_line():
    # The model accepts only sigma = 1 (the guide's start), so the probe particles fail it; the
    # AssertionError had no message at all. It names the assert's line.
    strict = only_sigma_one
    pyro.clear_param_store()
    with pytest.raises(AssertionError, match=r"assert abs\(float\(sigma\) - 1.0\) < 1e-6"):
        pb.BLR(strict, AutoNormal(strict)).fit(torch.tensor(0.3), num_steps=2, progress=False)
