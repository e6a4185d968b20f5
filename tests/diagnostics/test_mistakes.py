"""Common mistakes in calling a diagnostic get a message that names the fix: the data of an
observed site left out, and the model and guide passed in each other's place."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.diagnostics.mistakes import check_call


def regression(x, y=None):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)


def classifier(x, labels=None):
    """A discrete observation under a name that is not the argument's."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("obs", dist.Bernoulli(logits=w * x), obs=labels)


def hand_guide(x, y=None):
    loc = pyro.param("loc", torch.tensor(0.0))
    pyro.sample("w", dist.Normal(loc, 1.0))


X = torch.linspace(-1, 1, 10)
Y = 2 * X
LABELS = (X > 0).float()


def fitted(model, guide_class, *args):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    pb.BLR(model, guide, pb.VON(lr=0.5)).fit(*args, num_steps=2, progress=False)
    return guide


ENTRIES = {
    "to_inference_data": lambda m, g, *a: pb.to_inference_data(m, g, *a, num_samples=40),
    "psis_diagnostic": lambda m, g, *a: pb.psis_diagnostic(m, g, *a, num_samples=40),
    "loo_sensitivity": lambda m, g, *a: pb.loo_sensitivity(m, g, *a),
}


@pytest.mark.parametrize("entry", list(ENTRIES))
@pytest.mark.parametrize("guide_class", [AutoNormal, AutoMultivariateNormal])
def test_data_left_out_names_the_argument(entry, guide_class):
    guide = fitted(regression, guide_class, X, Y)
    with pytest.raises(ValueError, match=rf"{entry}: site 'y' is sampled.*argument 'y' is None"):
        ENTRIES[entry](regression, guide, X)


def test_data_left_out_before_any_fit_is_refused():
    # An autoguide that has not run builds itself on the call, with 'y' as a latent site it
    # samples: without the check the result is a posterior over the data, silently.
    pyro.clear_param_store()
    guide = AutoNormal(regression)
    with pytest.raises(ValueError, match=r"site 'y' is sampled.*pass the data"):
        pb.to_inference_data(regression, guide, X, num_samples=40)


def test_discrete_data_left_out_is_not_taken_for_enumeration():
    # Before: "discrete site 'obs' ... TraceEnum_ELBO"; the argument is named unlike the site.
    guide = fitted(classifier, AutoNormal, X, LABELS)
    with pytest.raises(ValueError, match=r"site 'obs'.*\['labels'\] are None.*pass the data"):
        pb.to_inference_data(classifier, guide, X, num_samples=40)


@pytest.mark.parametrize("entry", list(ENTRIES))
def test_autoguide_passed_as_the_model(entry):
    guide = fitted(regression, AutoMultivariateNormal, X, Y)
    with pytest.raises(ValueError, match=rf"first argument is a guide.*{entry}\(model, guide"):
        ENTRIES[entry](guide, regression, X, Y)


def test_hand_written_guide_passed_as_the_model():
    pyro.clear_param_store()
    with pytest.raises(ValueError, match=r"the guide observes site 'y'.*obs= belongs to the model"):
        pb.to_inference_data(hand_guide, regression, X, Y, num_samples=40)


def test_right_call_passes_and_keeps_the_rng():
    # A None argument that carries no data (every site the guide misses is observed) passes,
    # and the check leaves the random number generator where it was.
    def model(x, y, scale=None):
        regression(x, y)

    guide = fitted(model, AutoNormal, X, Y)
    state = torch.get_rng_state()
    check_call(model, guide, (X, Y), {}, "demo")
    assert torch.equal(torch.get_rng_state(), state)
    idata = pb.to_inference_data(model, guide, X, Y, num_samples=40)
    assert idata.posterior["w"].shape == (1, 40)


def test_a_global_parameter_the_caller_may_fix_is_not_refused():
    # obs=theta with theta=None: the caller lets the model infer theta; the guide samples it.
    def model(x, y, theta=None):
        theta = pyro.sample("theta", dist.Normal(0.0, 1.0), obs=theta)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(theta * x, 1.0), obs=y)

    guide = fitted(model, AutoNormal, X, Y)
    idata = pb.to_inference_data(model, guide, X, Y, num_samples=40)
    assert idata.posterior["theta"].shape == (1, 40)
