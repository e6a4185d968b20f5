"""The categorical family of mixture weights: closed-form inverse and probabilities."""

import torch

from pyro_blr.families import Categorical

D = torch.float64


def test_closed_form_inverse_matches_the_mean_parameters():
    family = Categorical(4)
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=D)
    eta = family.natural_params(probs)
    torch.testing.assert_close(family.mean_params(eta), probs[:-1], rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(family.from_mean(probs[:-1]), eta, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(family.probs(eta), probs, rtol=1e-14, atol=1e-14)
    assert not family.matches(torch.distributions.Categorical(probs))
