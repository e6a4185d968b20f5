"""VonMises.rsample: gradients against closed forms and quadrature, samples against the CDF."""

import math
import threading

import numpy as np
import pytest
import scipy.special
import torch
from scipy import stats

from pyro_blr.distributions import GAUSSIAN_CONCENTRATION, VonMises, von_mises_cdf

N = 50_000


def bessel_ratio(kappa):
    return torch.special.i1e(kappa) / torch.special.i0e(kappa)


def per_sample_gradients(loc, kappa, f):
    """Pathwise gradients of f(z) in loc and kappa, one per draw (for means and SEs)."""
    locs = torch.full((N,), loc, dtype=torch.float64, requires_grad=True)
    kappas = torch.full((N,), kappa, dtype=torch.float64, requires_grad=True)
    z = VonMises(locs, kappas).rsample()
    return torch.autograd.grad(f(z).sum(), (locs, kappas))


def check(estimates, expected):
    """The mean of per-draw estimates is within four standard errors of the exact value."""
    mean, stderr = estimates.mean(), estimates.std() / math.sqrt(len(estimates))
    assert abs(float(mean) - expected) < 4 * float(stderr), (float(mean), expected, float(stderr))


@pytest.mark.parametrize("kappa", [0.5, 2.0, 20.0])
def test_gradients_match_the_closed_form_of_expected_cosine(kappa):
    # E[cos(z - a)] = A(kappa) cos(mu - a); A'(kappa) = 1 - A / kappa - A^2.
    loc, a = 0.7, -0.4
    k = torch.tensor(kappa, dtype=torch.float64)
    ratio = float(bessel_ratio(k))
    d_loc, d_kappa = per_sample_gradients(loc, kappa, lambda z: torch.cos(z - a))
    check(d_loc, -ratio * math.sin(loc - a))
    check(d_kappa, (1 - ratio / kappa - ratio**2) * math.cos(loc - a))


def test_gradients_match_finite_differences_of_a_quadrature_expectation():
    # f(z) = sin(z) + cos(2z) + sin(3z)^2, E_q[f] by 2000-point quadrature on [mu - pi, mu + pi).
    def f(z):
        return torch.sin(z) + torch.cos(2 * z) + torch.sin(3 * z) ** 2

    def expectation(loc, kappa):
        t = torch.linspace(-math.pi, math.pi, 20001, dtype=torch.float64)
        density = torch.exp(kappa * torch.cos(t)) / (
            2 * math.pi * torch.special.i0(torch.tensor(kappa, dtype=torch.float64))
        )
        return float(torch.trapezoid(density * f(loc + t), t))

    loc, kappa, h = 0.3, 1.5, 1e-5
    d_loc, d_kappa = per_sample_gradients(loc, kappa, f)
    check(d_loc, (expectation(loc + h, kappa) - expectation(loc - h, kappa)) / (2 * h))
    check(d_kappa, (expectation(loc, kappa + h) - expectation(loc, kappa - h)) / (2 * h))


@pytest.mark.parametrize("kappa", [0.3, 4.0, 80.0])
def test_samples_follow_the_distribution(kappa):
    # Kolmogorov-Smirnov against the quadrature CDF; p > 0.001 fails one seed in a thousand.
    k = torch.tensor(kappa, dtype=torch.float64)
    z = VonMises(torch.tensor(0.0, dtype=torch.float64), k).rsample((20000,))
    assert ((z >= -math.pi) & (z < math.pi)).all()
    result = stats.kstest(z.numpy(), lambda x: von_mises_cdf(torch.as_tensor(x), k).numpy())
    assert result.pvalue > 1e-3


def test_cdf_matches_scipy_to_float64_accuracy():
    # SciPy's series is exact for kappa < 50 (beyond, it switches to a normal approximation).
    x = torch.linspace(-3.14, 3.14, 41, dtype=torch.float64)
    for kappa in (0.1, 1.0, 10.0, 40.0):
        ours = von_mises_cdf(x, torch.tensor(kappa, dtype=torch.float64))
        torch.testing.assert_close(ours, torch.as_tensor(stats.vonmises.cdf(x.numpy(), kappa)),
                                   rtol=0, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("kappa", [100.0, 500.0])
def test_cdf_matches_arbitrary_precision_quadrature_for_large_kappa(kappa):
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 30
    norm = 2 * mpmath.pi * mpmath.besseli(0, kappa)
    for x in (-0.3, -0.05, 0.0, 0.02, 0.1, 2.0):
        exact = mpmath.quad(lambda t: mpmath.exp(kappa * mpmath.cos(t)) / norm, [-mpmath.pi, 0, x])
        ours = von_mises_cdf(torch.tensor(x, dtype=torch.float64), torch.tensor(kappa).double())
        assert abs(float(ours) - float(exact)) < 1e-12


def test_shapes_dtypes_and_expand():
    d = VonMises(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    z = d.rsample((5,))
    assert z.shape == (5, 3) and z.dtype == torch.float64
    assert isinstance(d.expand((2, 3)), VonMises) and d.expand((2, 3)).rsample().shape == (2, 3)
    assert d.has_rsample


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_matches_torch_and_has_finite_gradients_for_tiny_kappa(dtype):
    kappa = torch.tensor([1e-8, 1e-6, 1e-3, 1.0, 50.0, 3000.0], dtype=dtype, requires_grad=True)
    loc = torch.zeros_like(kappa, requires_grad=True)
    value = torch.tensor([3.0, -3.0, 0.5, 1.0, 0.1, 0.01], dtype=dtype)
    log_p = VonMises(loc, kappa).log_prob(value)
    k, z = kappa.detach().double().numpy(), value.double().numpy()
    exact = k * (np.cos(z) - 1) - np.log(2 * np.pi * scipy.special.i0e(k))
    assert np.allclose(
        log_p.detach().numpy(), exact, rtol=1e-6 if dtype == torch.float32 else 1e-12
    )
    log_p.sum().backward()
    # d/dkappa log p = cos(z - mu) - I1(kappa)/I0(kappa); torch's own log_prob gives NaN here.
    ratio = torch.special.i1e(kappa) / torch.special.i0e(kappa)
    expected = torch.cos(value) - ratio.detach()
    assert torch.isfinite(kappa.grad).all()
    assert torch.allclose(kappa.grad, expected, atol=1e-5 if dtype == torch.float32 else 1e-10)


def finishes(fn, seconds=60.0):
    """Run ``fn`` in a daemon thread; whether it returned within ``seconds`` (a hang fails the
    test instead of hanging the suite)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    return bool(result), (result[0] if result else None)


@pytest.mark.parametrize("kappa", [1e7, 1e8, 1e12, 1e20, 1e38, float("inf")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sampling_terminates_for_every_concentration(kappa, dtype):
    # torch's rejection sampler never returns from kappa ~ 1e17 on; ours switches to the
    # Gaussian limit above GAUSSIAN_CONCENTRATION. kappa = inf is refused under validation and
    # draws the mean direction without it.
    loc = torch.tensor(0.5, dtype=dtype)
    d = VonMises(loc, torch.tensor(kappa, dtype=dtype), validate_args=math.isfinite(kappa))
    done, draws = finishes(lambda: (d.rsample((1000,)), d.sample((1000,))))
    assert done
    for z in draws:
        assert z.dtype == dtype and torch.isfinite(z).all()
        assert (z - loc).abs().max() <= 10 / math.sqrt(kappa) + 1e-6


def test_zero_and_invalid_concentrations_terminate_without_validation():
    zero = VonMises(torch.tensor(0.0), torch.tensor(0.0), validate_args=False)
    done, z = finishes(lambda: zero.sample((20000,)))
    assert done and ((z >= -math.pi) & (z < math.pi)).all()
    # Uniform on the circle: the mean of cos z is 0 with standard error 1/sqrt(2 * 20000).
    assert abs(float(torch.cos(z).mean())) < 4 / math.sqrt(40000)
    for bad in (float("nan"), -1.0):
        d = VonMises(torch.tensor(0.0), torch.tensor(bad), validate_args=False)
        done, z = finishes(lambda d=d: d.rsample((3,)))
        assert done and torch.isnan(z).all()


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0])
def test_invalid_concentrations_are_refused_by_name(bad):
    with pytest.raises(ValueError, match="concentration"):
        VonMises(torch.tensor(0.0), torch.tensor(bad), validate_args=True)
    with pytest.raises(ValueError, match="loc"):
        VonMises(torch.tensor(float("inf")), torch.tensor(1.0), validate_args=True)


def test_large_concentrations_follow_the_gaussian_limit():
    # Above the threshold sqrt(kappa) (z - mu) is N(0, 1) to O(1/kappa) (module docstring); at
    # the threshold the rejection sampler draws it too. Kolmogorov-Smirnov, p > 0.001.
    torch.manual_seed(0)
    for kappa in (GAUSSIAN_CONCENTRATION, 1e9, 1e15):
        k = torch.tensor(kappa, dtype=torch.float64)
        z = VonMises(torch.tensor(0.0, dtype=torch.float64), k).rsample((20000,))
        assert stats.kstest((z * k.sqrt()).numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("kappa", [1e5, 1e6, 1e7, 1e9])
def test_float32_gradients_match_finite_differences_of_the_cdf_for_large_kappa(kappa):
    # dz/dkappa = -(dF/dkappa) / p at each float32 draw, against central differences of the
    # float64 quadrature CDF (step 1e-4 kappa: truncation error ~1e-8 relative). Measured
    # agreement 5e-8; tolerance 1e-5, far above float32 rounding and below any wrong branch
    # (the Gaussian limit is off by O(1/kappa) only where it is not used).
    torch.manual_seed(1)
    k = torch.tensor(kappa, requires_grad=True)
    z = VonMises(torch.tensor(0.0), k).rsample((8,))
    grads = torch.stack([torch.autograd.grad(zi, k, retain_graph=True)[0] for zi in z])
    x, k64, h = z.detach().double(), torch.tensor(kappa, dtype=torch.float64), 1e-4 * kappa
    log_p = -2 * k64 * torch.sin(x / 2) ** 2 - math.log(2 * math.pi) - torch.special.i0e(k64).log()
    dcdf = (von_mises_cdf(x, k64 + h) - von_mises_cdf(x, k64 - h)) / (2 * h)
    torch.testing.assert_close(grads.double(), -dcdf / log_p.exp(), rtol=1e-5, atol=0)
