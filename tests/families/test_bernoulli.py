"""The Bernoulli family of binary latents: closed forms against the shared autograd maps, its
relaxed draws (exact Bernoulli when rounded, weights = the derivative of the draw) and the
binary stand-in site the BLR runs the model on."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_blr.families import FAMILIES, Bernoulli, ExpFamily, family_for_site
from pyro_blr.families.relaxation import BinarySite, binary_site, relax_binary_sites

D = torch.float64


def test_closed_forms_match_the_log_normalizer():
    family = Bernoulli()
    eta = torch.tensor([[-3.0], [0.0], [0.7], [5.0]], dtype=D)
    generic = ExpFamily.mean_params(family, eta)  # autograd of A
    torch.testing.assert_close(family.mean_params(eta), generic, rtol=1e-14, atol=1e-14)
    exact = ExpFamily.fisher(family, eta)
    torch.testing.assert_close(family.fisher(eta), exact, rtol=1e-13, atol=0)
    torch.testing.assert_close(family.from_mean(family.mean_params(eta)), eta)
    probs = torch.sigmoid(eta[..., 0])
    torch.testing.assert_close(family.entropy(eta), dist.Bernoulli(probs).entropy())
    torch.testing.assert_close(family.params(eta)["logits"], eta[..., 0])
    assert FAMILIES["bernoulli"].discrete and not FAMILIES["normal"].discrete


def test_rounded_relaxed_draws_are_exact_bernoulli_draws_and_weights_are_derivatives():
    family = Bernoulli()
    torch.manual_seed(0)
    eta = torch.tensor([-2.0, 0.3, 1.5], dtype=D).reshape(1, 3, 1).expand(40000, 3, 1)
    x, log_weight = family.relaxed_draws(eta, 0.05)
    freq = (x > 0.5).to(D).mean(0)
    p = torch.sigmoid(eta[0, :, 0])
    # 40000 draws: the frequency's sd is at most 0.0025; 5 sd
    torch.testing.assert_close(freq, p, rtol=0, atol=0.0125)
    leaf = eta[:5].clone().requires_grad_(True)
    torch.manual_seed(1)
    x, log_weight = family.relaxed_draws(leaf, 0.7)  # unsaturated: autograd sees the slope
    (derivative,) = torch.autograd.grad(x.sum(), leaf)
    torch.testing.assert_close(log_weight.exp(), derivative[..., 0], rtol=1e-12, atol=0)
    saturated, log_weight = family.relaxed_draws(torch.full((3, 1), 30.0, dtype=D), 1e-3)
    assert torch.equal(saturated, torch.ones(3, dtype=D)) and torch.isfinite(log_weight).all()


def test_median_quantiles_and_unresolved_logits():
    family = Bernoulli()
    eta = torch.tensor([[-0.2], [0.0], [0.4]])
    assert torch.equal(family.median(eta), torch.tensor([0.0, 0.0, 1.0]))
    q = family.quantile(eta, torch.tensor([0.1, 0.55, 0.99]))
    p = torch.sigmoid(eta[..., 0])
    assert torch.equal(q, (torch.tensor([0.1, 0.55, 0.99])[:, None] > 1 - p).float())
    with pytest.raises(FloatingPointError, match=r"beyond what torch\.float32 resolves"):
        family.check_resolved(torch.tensor([[120.0]]))
    family.check_resolved(torch.tensor([[120.0]], dtype=D))  # 1 - p = 8e-53 in float64


def test_binary_site_extends_the_bernoulli_and_picks_its_family():
    base = dist.Bernoulli(torch.tensor([0.2, 0.9], dtype=D))
    site_fn = binary_site(base.to_event(1))
    for value in (torch.zeros(2, dtype=D), torch.ones(2, dtype=D)):
        torch.testing.assert_close(site_fn.log_prob(value), base.log_prob(value).sum())
    assert isinstance(binary_site(base), BinarySite) and binary_site(dist.Poisson(1.0)) is None
    site = {"name": "z", "fn": site_fn}
    assert family_for_site(site).name == "bernoulli"
    with pytest.raises(ValueError, match="families that fit it: \\['bernoulli'\\]"):
        family_for_site(site, "beta")  # the unit interval, but another model
    beta_site = {"name": "u", "fn": dist.Beta(2.0, 2.0)}
    with pytest.raises(ValueError, match="family 'bernoulli' does not fit site 'u'"):
        family_for_site(beta_site, "bernoulli")


def test_relaxed_model_takes_values_in_the_unit_interval_under_validation():
    def model():
        with pyro.plate("p", 2):
            pyro.sample("z", dist.Bernoulli(torch.tensor(0.3, dtype=D)))
        pyro.sample("k", dist.Bernoulli(torch.tensor(0.5, dtype=D)), obs=torch.tensor(1.0, dtype=D))

    value = torch.tensor([0.25, 1.0], dtype=D)
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError):  # the model as written refuses a relaxed value
            conditioned = pyro.poutine.condition(model, {"z": value})
            pyro.poutine.trace(conditioned).get_trace().compute_log_prob()
        relaxed = pyro.poutine.condition(relax_binary_sites(model, ["z"]), {"z": value})
        trace = pyro.poutine.trace(relaxed).get_trace()
        trace.compute_log_prob()
    logit = torch.logit(torch.tensor(0.3, dtype=D))
    expected = value * logit - torch.nn.functional.softplus(logit)
    torch.testing.assert_close(trace.nodes["z"]["log_prob"], expected)
    assert trace.nodes["k"]["fn"].__class__ is dist.Bernoulli  # observed: untouched
