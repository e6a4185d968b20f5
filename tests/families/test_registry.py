"""FAMILIES and family_for_site: supports pick families, overrides are checked against them."""

import pyro.distributions as dist
import pytest
import torch

from pyro_blr.distributions import VonMises
from pyro_blr.families import FAMILIES, family_for_site


def site(fn, name="x"):
    return {"name": name, "fn": fn}


@pytest.mark.parametrize(
    "fn, family",
    [
        (dist.Normal(0.0, 1.0), "normal"),
        (dist.Normal(torch.zeros(3), 1.0).to_event(1), "normal"),
        (dist.Gamma(2.0, 1.0), "gamma"),
        (dist.HalfCauchy(1.0), "gamma"),
        (dist.Exponential(1.0), "gamma"),
        (dist.Beta(2.0, 2.0), "beta"),
        (dist.Uniform(0.0, 1.0), "beta"),
        (dist.Dirichlet(torch.ones(4)), "dirichlet"),
        (dist.VonMises(0.0, 1.0), "von_mises"),
        (VonMises(torch.tensor(0.0), torch.tensor(1.0)), "von_mises"),
    ],
)
def test_supports_pick_their_family(fn, family):
    assert family_for_site(site(fn)) is FAMILIES[family]


def test_families_fitting_a_support_are_accepted_and_others_refused():
    positive = site(dist.Gamma(2.0, 1.0), "rate")
    assert family_for_site(positive, "lognormal").name == "lognormal"
    assert family_for_site(site(dist.Normal(0.0, 1.0)), "normal").name == "normal"
    for name in ("beta", "normal", "dirichlet", "von_mises"):
        with pytest.raises(ValueError, match=rf"family '{name}' does not fit site 'rate'"):
            family_for_site(positive, name)
    with pytest.raises(ValueError, match=r"families that fit it: \['beta'\]"):
        family_for_site(site(dist.Beta(1.0, 1.0), "p"), "gamma")
    with pytest.raises(ValueError, match="unknown family 'weibull' for site 'x'"):
        family_for_site(site(dist.Normal(0.0, 1.0)), "weibull")


@pytest.mark.parametrize(
    "fn", [dist.LKJCholesky(3, 1.0), dist.Uniform(0.0, 2.0), dist.Pareto(1.0, 2.0)]
)
def test_unsupported_supports_list_the_choices(fn):
    with pytest.raises(ValueError, match=r"no family for site 'L'.*families=\{'L': 'normal'\|"):
        family_for_site(site(fn, "L"))
