"""The Gaussian rules' defaults do not depend on the data's units (a metamorphic test).

Rescaling the data, the prior's scale and the noise by c rescales the exact posterior of a
conjugate model by c. Every default of the IVON and VON rules (IVON's clip radius, the starting
precision, its cap and floor) is measured in units of the prior's scale, so with the same seed a
fit in units of c takes the very steps of the fit in units of one, times c: the fitted means and
scales agree to floating-point rounding, and both are the exact (mean-field) posterior.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.prior_scale import prior_scale, robust_scale
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.core import latent_layout
from tests.scenarios import LinearRegression, NormalNormal, linear_regression

STEPS = 40  # enough for the clip to bind and the precision to move: the steps differ before


def in_units(c: float) -> LinearRegression:
    s = linear_regression(num_data=50, dim=2)
    return LinearRegression(s.X, s.y * c, prior_scale=s.prior_scale * c, noise=s.noise * c)


def fit_linear_regression(rule: str, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The guide's mean and scale of w after STEPS default steps, in units of one."""
    s = in_units(c)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(s.model)
    blr = pb.BLR(s.model, guide, rule_from_name(rule, lr=0.1))
    for _ in range(STEPS):
        blr.step(s.X, s.y)
    return guide.locs.w.detach() / c, guide.scales.w.detach() / c


@pytest.mark.parametrize("rule", ["ivon", "von"])
@pytest.mark.parametrize("c", [1e8, 1e-8])
def test_a_fit_in_other_units_is_the_rescaled_fit(rule, c):
    # Before the scale-aware defaults, IVON's absolute clip of 0.1 held the mean at 1e8 units
    # (16 posterior sd off after 3000 steps) and bound at 1 but never at 1e-8, and VON's
    # precision started at the guide's init_scale of 0.1 in any units.
    loc, scale = fit_linear_regression(rule, c)
    unit_loc, unit_scale = fit_linear_regression(rule, 1.0)
    # The same steps times c: equal up to the rounding of a few hundred float64 operations.
    torch.testing.assert_close(loc, unit_loc, rtol=1e-9, atol=1e-9 * unit_scale.min().item())
    torch.testing.assert_close(scale, unit_scale, rtol=1e-9, atol=0)
    # The fits in units of one reach the exact answer: tests/blr/test_fixed_points_gaussian.py.


@pytest.mark.parametrize("c", [1e8, 1e-8])
def test_the_normal_mean_under_ivon_in_other_units(c):
    base = torch.linspace(-1.0, 3.0, 20, dtype=torch.float64)
    fits = []
    for units in (1.0, c):
        s = NormalNormal(base * units, prior_scale=2.0 * units, noise=1.0 * units)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoDiagonalNormal(s.model)
        pb.BLR(s.model, guide, pb.IVON(lr=0.1)).fit(s.y, num_steps=STEPS, progress=False)
        fits.append((guide.loc.detach() / units, guide.scale.detach() / units))
    torch.testing.assert_close(fits[1][0], fits[0][0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fits[1][1], fits[0][1], rtol=1e-9, atol=0)


def test_the_prior_scale_is_in_the_priors_units():
    s, big = in_units(1.0), in_units(1e8)
    guide = AutoNormal(s.model)
    guide(s.X, s.y)
    layout = latent_layout(guide.prototype_trace)
    unit = prior_scale(s.model, layout, (s.X, s.y), {}, like=s.X)
    scaled = prior_scale(big.model, layout, (big.X, big.y), {}, like=s.X)
    torch.testing.assert_close(scaled / 1e8, unit, rtol=1e-12, atol=0)
    # 128 draws: the IQR's relative sd is 1.17 / sqrt(128) = 10%; 4 sd is 41%.
    assert ((unit - 1.0).abs() < 0.41).all()


def test_a_point_mass_has_no_scale():
    draws = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
    scale = robust_scale(draws)
    assert torch.isnan(scale[0]) and scale[1] == pytest.approx(1.0 / 1.3489795003921634)


def test_a_prior_without_a_sampler_has_no_scale():
    def proper(y):
        mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    def improper(y):
        mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor(0.5, dtype=torch.float64)
    guide = AutoNormal(proper)
    guide(y)
    layout = latent_layout(guide.prototype_trace)  # the same layout: one real site "mu"
    assert prior_scale(proper, layout, (y,), {}, like=y) is not None
    assert prior_scale(improper, layout, (y,), {}, like=y) is None  # the stepper: unit scale


def test_a_tempered_prior_has_its_tempered_scale():
    # poutine.scale(model, c) makes the prior's density p^c, whose Gaussian sd is s / sqrt(c): a
    # model of prior scale sqrt(2) tau under poutine.scale(2) has the scale of tau (the same log
    # joint up to a constant as the data duplicated). It read sqrt(2) tau from the prior's draws.
    # Both sides make the same draws (a fixed seed), so they agree up to rounding.
    s = in_units(1.0)
    wide = LinearRegression(s.X, s.y, prior_scale=s.prior_scale * 2**0.5, noise=s.noise)
    guide = AutoNormal(s.model)
    guide(s.X, s.y)
    layout = latent_layout(guide.prototype_trace)
    unit = prior_scale(s.model, layout, (s.X, s.y), {}, like=s.X)
    tempered = prior_scale(pyro.poutine.scale(wide.model, 2.0), layout, (s.X, s.y), {}, like=s.X)
    torch.testing.assert_close(tempered, unit, rtol=1e-12, atol=0)


def test_a_prior_scaled_per_element_has_a_scale_per_coordinate():
    # A tensor scale weighs each element of a plate: each coordinate's scale is s_i / sqrt(c_i).
    def tempered(weights):
        def model():
            with pyro.plate("groups", 3), pyro.poutine.scale(scale=weights):
                pyro.sample("z", dist.Normal(torch.zeros(3, dtype=torch.float64), 2.0))

        return model

    like = torch.zeros((), dtype=torch.float64)
    plain = tempered(torch.ones(3, dtype=torch.float64))
    guide = AutoNormal(plain)
    guide()
    layout = latent_layout(guide.prototype_trace)
    unit = prior_scale(plain, layout, (), {}, like=like)
    weights = torch.tensor([1.0, 4.0, 16.0], dtype=torch.float64)
    scaled = prior_scale(tempered(weights), layout, (), {}, like=like)
    torch.testing.assert_close(scaled, unit / weights.sqrt(), rtol=1e-12, atol=0)
