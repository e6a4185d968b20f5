"""The categorical family of mixture weights (closed-form inverse and probabilities) and of
one-hot latents (closed forms against the shared autograd maps, Gumbel-max draws, the stand-in
site on the simplex the BLR runs the model on)."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_blr.families import FAMILIES, Categorical, ExpFamily, OneHotCategorical, family_for_site
from pyro_blr.families.relaxation import OneHotSite, one_hot_site, relax_binary_sites

D = torch.float64


def test_closed_form_inverse_matches_the_mean_parameters():
    family = Categorical(4)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
    eta = family.natural_params(probs)
    torch.testing.assert_close(family.mean_params(eta), probs[:-1], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(family.from_mean(probs[:-1]), eta, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(family.probs(eta), probs, rtol=1e-14, atol=1e-14)
    assert not family.matches(torch.distributions.Categorical(probs))


def test_one_hot_closed_forms_match_the_log_normalizer():
    family = OneHotCategorical()
    eta = torch.tensor([[-3.0, 0.5], [0.0, 0.0], [2.0, 7.0]], dtype=D)
    generic = ExpFamily.mean_params(family, eta)  # autograd of A
    torch.testing.assert_close(family.mean_params(eta), generic, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(family.fisher(eta), ExpFamily.fisher(family, eta))
    torch.testing.assert_close(family.from_mean(family.mean_params(eta)), eta)
    probs = family.probs(eta)
    torch.testing.assert_close(family.entropy(eta), dist.OneHotCategorical(probs).entropy())
    torch.testing.assert_close(family.natural_params(family.params(eta)["logits"]), eta)
    assert FAMILIES["one_hot_categorical"].discrete


def test_argmax_of_relaxed_draws_is_an_exact_categorical_draw():
    family = OneHotCategorical()
    torch.manual_seed(0)
    eta = torch.tensor([[1.0, -0.5], [-2.0, 0.3]], dtype=D).expand(40000, 2, 2)
    x, log_x = family.relaxed_draws(eta, 0.05)
    torch.testing.assert_close(x.sum(-1), torch.ones(40000, 2, dtype=D))
    torch.testing.assert_close(log_x.exp(), x)
    freq = torch.nn.functional.one_hot(log_x.argmax(-1), 3).to(D).mean(0)
    # 40000 draws: each frequency's sd is at most 0.0025; 5 sd
    torch.testing.assert_close(freq, family.probs(eta[0]), rtol=0, atol=0.0125)


def test_one_hot_sites_take_the_one_hot_family_and_run_on_the_simplex():
    prior = dist.OneHotCategorical(torch.tensor([0.2, 0.3, 0.5], dtype=D))
    relaxed = one_hot_site(prior.expand((4,)).to_event(1))
    assert family_for_site({"name": "z", "fn": relaxed}) is FAMILIES["one_hot_categorical"]
    with pytest.raises(ValueError, match="family 'dirichlet' does not fit site 'z'"):
        family_for_site({"name": "z", "fn": relaxed}, "dirichlet")  # a simplex, but discrete
    point = torch.tensor([0.1, 0.6, 0.3], dtype=D)
    torch.testing.assert_close(OneHotSite(prior).log_prob(point), (point * prior.logits).sum())

    def model():
        return pyro.sample("z", prior)

    conditioned = pyro.poutine.condition(relax_binary_sites(model, ["z"]), {"z": point})
    trace = pyro.poutine.trace(conditioned).get_trace()
    torch.testing.assert_close(trace.log_prob_sum(), (point * prior.logits).sum())


def test_one_hot_fisher_stays_positive_definite_where_a_probability_rounds_to_one():
    # pi = (1 - 1e-17.., e^-45, e^-40): diag(mu) - mu mu^T cancels to 0 in its first entry
    family = OneHotCategorical()
    eta = torch.tensor([40.0, -5.0], dtype=D)
    probs = family.probs(eta)
    assert probs[0] == 1.0  # rounded
    fisher = family.fisher(eta)
    exact = probs[0] * (probs[1] + probs[2])
    torch.testing.assert_close(fisher[0, 0], exact, rtol=1e-14, atol=0)
    assert torch.linalg.cholesky_ex(fisher).info == 0
