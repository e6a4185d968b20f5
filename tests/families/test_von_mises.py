"""The von Mises family: mean parameters are the Bessel ratio, large concentrations stay finite."""

import math

import pytest
import torch

from pyro_blr.families import ExpFamily, VonMisesFamily
from pyro_blr.families.von_mises import ASYMPTOTIC_CONCENTRATION, bessel_ratio

D = torch.float64


def test_mean_parameters_are_the_bessel_ratio():
    loc, kappa = torch.tensor([0.4, -2.0], dtype=D), torch.tensor([0.3, 5000.0], dtype=D)
    family = VonMisesFamily()
    mu = family.mean_params(family.natural_params(loc, kappa))
    ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
    expected = ratio.unsqueeze(-1) * torch.stack([loc.cos(), loc.sin()], -1)
    torch.testing.assert_close(mu, expected, rtol=1e-12, atol=1e-14)
    assert torch.isfinite(family.log_normalizer(family.natural_params(loc, kappa * 1e10))).all()


def test_the_bessel_ratio_matches_arbitrary_precision_for_every_concentration():
    # 1 - R and R' are differences of numbers near 1: both to 1e-9 relative (the direct branch
    # below 1000, 2.5e-11 measured at 500) and 1e-13 in the asymptotic branch.
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 60
    kappas = [0.01, 0.5, 5.0, 50.0, 500.0, 999.9, 1000.0, 1e4, 1e8, 1e20]
    gap, slope = bessel_ratio(torch.tensor(kappas, dtype=D))
    for k, g, s in zip(kappas, gap.tolist(), slope.tolist(), strict=True):
        k = mpmath.mpf(k)
        ratio = mpmath.besseli(1, k) / mpmath.besseli(0, k)
        exact_gap, exact_slope = 1 - ratio, 1 - ratio / k - ratio**2
        tol = 1e-13 if k >= ASYMPTOTIC_CONCENTRATION else 1e-9
        assert abs(float((g - exact_gap) / exact_gap)) < tol, float(k)
        assert abs(float((s - exact_slope) / exact_slope)) < tol, float(k)


def test_fisher_mean_and_entropy_are_the_closed_forms_of_the_log_normalizer():
    # At moderate kappa autograd of A is accurate: the closed forms must agree with it.
    family = VonMisesFamily()
    loc, kappa = torch.tensor([0.4, -2.0], dtype=D), torch.tensor([0.3, 12.0], dtype=D)
    eta = family.natural_params(loc, kappa)
    torch.testing.assert_close(family.fisher(eta), ExpFamily.fisher(family, eta))
    torch.testing.assert_close(family.mean_params(eta), ExpFamily.mean_params(family, eta))
    torch.testing.assert_close(family.entropy(eta), ExpFamily.entropy(family, eta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_huge_concentration_keeps_its_fisher_eigenvalues(dtype):
    # Finding: autograd's Fisher information lost its radial eigenvalue 1/(2 kappa^2) (float32
    # norm overflowed above 1.8e19; d/dkappa log I0e had the wrong sign from kappa ~ 1e8).
    family = VonMisesFamily()
    loc, kappa = 0.3, 1e10 if dtype == torch.float64 else 1e5
    eta = family.natural_params(torch.tensor(loc, dtype=dtype), torch.tensor(kappa, dtype=dtype))
    u = torch.tensor([math.cos(loc), math.sin(loc)], dtype=D)
    fisher = family.fisher(eta).double()
    radial, tangential = (
        u @ fisher @ u,
        torch.stack([-u[1], u[0]]) @ fisher @ torch.stack([-u[1], u[0]]),
    )
    assert float(radial) == pytest.approx(1 / (2 * kappa**2), rel=1e-3)
    assert float(tangential) == pytest.approx(1 / kappa, rel=1e-3)
    huge = torch.tensor([1e20, 3e19], dtype=dtype)
    assert torch.isfinite(family.log_normalizer(huge)).all()
    assert float(family.params(huge)["concentration"]) == pytest.approx(math.hypot(1e20, 3e19))


def test_concentrations_beyond_the_dtype_are_refused():
    family = VonMisesFamily()
    family.check_resolved(torch.tensor([2e5, 0.0]))  # float32: KL error (kappa eps)^2 < 1e-3
    family.check_resolved(torch.tensor([1e14, 0.0], dtype=D))
    with pytest.raises(FloatingPointError, match=r"float32 resolves.*pass float64 data"):
        family.check_resolved(torch.tensor([1e7, 0.0]))
    with pytest.raises(FloatingPointError, match="no floating-point type resolves it"):
        family.check_resolved(torch.tensor([1e20, 0.0], dtype=D))
