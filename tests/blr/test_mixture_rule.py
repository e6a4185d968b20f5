"""BLR mixture rule on the 2-D Beta-Binomial model of Lin, Khan & Schmidt (2019): the KL to the
quadrature posterior falls as the number of components grows."""

import pyro
import pyro.distributions as dist
import torch

import pyro_blr as pb

D = torch.float64
# Overdispersed binomial counts; Beta-Binomial likelihood, Gamma priors on (a, b).
N = torch.tensor(
    [20.0, 20, 20, 19, 19, 18, 18, 17, 20, 20, 20, 20, 19, 19, 18, 18, 25, 24, 23, 20], dtype=D
)
K = torch.tensor([0.0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 4, 5], dtype=D)


def model(n, k):
    a = pyro.sample("a", dist.Gamma(torch.tensor(1.0, dtype=D), 0.1))
    b = pyro.sample("b", dist.Gamma(torch.tensor(1.0, dtype=D), 0.1))
    with pyro.plate("data", len(n)):
        pyro.sample("k", dist.BetaBinomial(a, b, total_count=n), obs=k)


def log_evidence_by_quadrature() -> float:
    """log Z on a 401 x 401 grid over (log a, log b), which holds all the posterior mass."""
    u = torch.linspace(-3, 5, 401, dtype=D)
    v = torch.linspace(-1, 7, 401, dtype=D)
    U, V = torch.meshgrid(u, v, indexing="ij")
    log_joint = dist.Gamma(1.0, 0.1).log_prob(U.exp()) + dist.Gamma(1.0, 0.1).log_prob(V.exp())
    log_joint = log_joint + U + V  # the Jacobian of (log a, log b)
    likelihood = dist.BetaBinomial(U.exp()[..., None], V.exp()[..., None], total_count=N)
    log_joint = log_joint + likelihood.log_prob(K).sum(-1)
    top = log_joint.max()
    mass = torch.trapezoid(torch.trapezoid((log_joint - top).exp(), v, dim=1), u)
    return float(mass.log() + top)


def test_kl_to_the_posterior_decreases_with_the_number_of_components():
    # Measured: KL 0.82, 0.37, 0.10, 0.04 for K = 1, 2, 4, 8. Each KL = log Z - ELBO has the
    # ELBO's Monte Carlo standard error (20000 draws, < 0.01); consecutive KLs must differ by more
    # than four of them combined.
    log_z = log_evidence_by_quadrature()
    kls, errors = [], []
    for k in (1, 2, 4, 8):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = pb.AutoMixture(model, num_components=k, init_scale=0.3)
        blr = pb.BLR(model, guide, pb.MixtureRule(lr=lambda t: 0.2 / (1 + t / 100), mc_samples=16))
        blr.fit(N, K, num_steps=500, progress=False)
        estimate = pb.log_evidence(model, guide, N, K, method="elbo", num_particles=20000)
        kls.append(log_z - estimate.value)
        errors.append(estimate.stderr)
    assert kls[0] > 0.5  # a single Gaussian in (log a, log b) misses the skew
    for i in range(len(kls) - 1):
        assert kls[i + 1] < kls[i] - 4 * (errors[i] ** 2 + errors[i + 1] ** 2) ** 0.5
    assert kls[-1] > -4 * errors[-1]  # still a KL: not below zero beyond its error
