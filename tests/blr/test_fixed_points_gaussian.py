"""Tests that search: every Gaussian rule lands on the natural parameters its fixed point claims.

On a conjugate model the negative log joint is quadratic, :math:`\\ell(\\theta) = \\tfrac12
\\theta^\\top \\Lambda \\theta - b^\\top\\theta + c`, and the BLR's fixed point for
:math:`q = \\mathcal N(m, S^{-1})` is :math:`\\mathbb E_q[\\nabla\\ell] = 0,\\ S = \\mathbb
E_q[\\nabla^2\\ell]`: for a full-covariance guide the exact posterior (:math:`S = \\Lambda`,
:math:`Sm = b`), for a diagonal one the mean-field optimum (:math:`S = \\operatorname{diag}
\\Lambda`, :math:`m = \\Lambda^{-1} b`, so :math:`Sm = \\operatorname{diag}(\\Lambda)\\,
\\Lambda^{-1}b`). The tests compare the natural parameters themselves, the precision :math:`S` and
:math:`Sm`, read from the guide, with these closed forms.

Estimators exact on a quadratic (the exact Hessian, antithetic pairs for the gradient, the
delta method) are held to 1e-8 relative; IVON's gradient-only curvature carries Monte Carlo
noise, and its tolerance is derived from that noise. ``"vogn"`` claims another fixed point (the
empirical Fisher's): see tests/blr/test_vogn.py.
"""

import pyro
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.core import GaussianGuide, latent_layout
from tests.scenarios import linear_regression, normal_normal

DIAGONAL = [AutoNormal, AutoDiagonalNormal]


def scenario(name):
    """(model, args, Lambda, b) of a conjugate model, float64."""
    if name == "linear_regression":
        s = linear_regression(num_data=20, dim=3)
        b = s.X.T @ s.y / s.noise**2
        return s.model, (s.X, s.y), s.posterior_precision, b
    s = normal_normal(num_data=8)
    precision = torch.tensor([[s.posterior_precision]], dtype=torch.float64)
    b = torch.tensor([s.posterior_mean * s.posterior_precision], dtype=torch.float64)
    return s.model, (s.y,), precision, b


def exact_natural(precision: torch.Tensor, b: torch.Tensor, diagonal: bool):
    """The fixed point's precision and precision times mean."""
    mean = torch.linalg.solve(precision, b)
    if diagonal:
        d = precision.diagonal()
        return d, d * mean
    return precision, b


def fitted_natural(guide):
    """The guide's precision and precision times mean, read as the rules read them."""
    loc, precision = GaussianGuide(guide, latent_layout(guide.prototype_trace)).read()
    eta = precision * loc if precision.dim() == 1 else precision @ loc
    return precision.detach(), eta.detach()


def fit(name, guide_class, rule, lr, steps, **options):
    model, args, precision, b = scenario(name)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = guide_class(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=lr, **options))
    for _ in range(steps):
        blr.step(*args)
    diagonal = guide_class is not AutoMultivariateNormal
    return fitted_natural(guide), exact_natural(precision, b, diagonal), precision


def assert_natural_close(fitted, exact, precision, rtol):
    """Both natural parameters within ``rtol`` of the exact ones, on the scale of each
    coordinate's precision (Sm is measured against S times one posterior sd)."""
    (s, eta), (s_exact, eta_exact) = fitted, exact
    d = precision.diagonal()
    scale = d if s.dim() == 1 else d.sqrt()[:, None] * d.sqrt()[None, :]
    assert ((s - s_exact).abs() <= rtol * scale).all(), (s, s_exact)
    assert ((eta - eta_exact).abs() <= rtol * d.sqrt()).all(), (eta, eta_exact)


@pytest.mark.parametrize("name", ["linear_regression", "normal_normal"])
@pytest.mark.parametrize("guide_class", [*DIAGONAL, AutoMultivariateNormal])
def test_von_lands_on_the_exact_natural_parameters(name, guide_class):
    # Exact Hessians and antithetic gradients are exact on a quadratic: the only error left is
    # the contraction of the mean's iteration, (1 - lr * lambda_min(S^-1 Lambda))^steps (a
    # damped Jacobi iteration for a diagonal guide), below 1e-8 after 150 steps here.
    fitted, exact, precision = fit(name, guide_class, "von", lr=0.5, steps=150)
    assert_natural_close(fitted, exact, precision, rtol=1e-8)


@pytest.mark.parametrize("name", ["linear_regression", "normal_normal"])
@pytest.mark.parametrize("guide_class", [*DIAGONAL, AutoMultivariateNormal])
def test_newton_lands_on_the_exact_natural_parameters(name, guide_class):
    # Full covariance: lr=1 is the exact posterior in one step. Diagonal: the precision is
    # diag(Lambda) after one step at lr=1; the mean is then a damped Jacobi iteration on
    # Lambda m = b at lr 0.5.
    if guide_class is AutoMultivariateNormal:
        fitted, exact, precision = fit(name, guide_class, "newton", lr=1.0, steps=1)
    else:
        fitted, exact, precision = fit(name, guide_class, "newton", lr=0.5, steps=80)
    assert_natural_close(fitted, exact, precision, rtol=1e-8)


@pytest.mark.parametrize("name", ["linear_regression", "normal_normal"])
@pytest.mark.parametrize("guide_class", DIAGONAL)
def test_ivon_lands_on_the_mean_field_natural_parameters(name, guide_class):
    # The mean: antithetic pairs make the gradient estimate exact on a quadratic, so it is zero
    # at the exact mean whatever h is. The momentum (heavy ball, beta1 = 0.9) contracts the
    # error by sqrt(beta1) a step at best: from about 10 sd, 300 steps leave 10 * 0.9^150 =
    # 1.4e-6 sd; 1e-5 sd is allowed.
    # The precision: h starts at the expected Hessian (hess_init="auto", exact here) and then
    # averages the gradient-only estimate, unbiased for diag(Lambda), with weights
    # (1 - beta2) beta2^k: after T = 300 steps its deviation has sd (1 - beta2) sqrt(T) = 1.7%
    # of one estimate's. One antithetic pair's estimate has variance 2 Lambda_ii^2 +
    # sum_j!=i Lambda_ij^2 s_i / s_j, at most 3 Lambda_ii^2 here; 16 pairs (mc_samples=32)
    # make its relative sd sqrt(3 / 16) = 0.43, so h's is 0.75%: 4 sd is 3%. The positivity
    # term's bias, (1 - beta2) / 2 * Var / h, is 1e-4 of h.
    (s, eta), (s_exact, eta_exact), precision = fit(
        name, guide_class, "ivon", lr=0.5, steps=300, mc_samples=32
    )
    torch.testing.assert_close(s, s_exact, rtol=0.03, atol=0)
    sd = torch.linalg.inv(precision).diagonal().sqrt()
    torch.testing.assert_close(eta / s, eta_exact / s_exact, rtol=0, atol=1e-5 * sd.min())


@pytest.mark.parametrize("rule", ["von", "newton"])
@pytest.mark.parametrize("guide_class", [*DIAGONAL, AutoMultivariateNormal])
def test_a_reused_hessian_leaves_the_fixed_point_where_it_was(rule, guide_class):
    # hessian_every=3 computes the (constant) Hessian every third step: the same fixed point,
    # reached by the same contraction as above.
    fitted, exact, precision = fit(
        "linear_regression", guide_class, rule, lr=0.5, steps=150, hessian_every=3
    )
    assert_natural_close(fitted, exact, precision, rtol=1e-8)
