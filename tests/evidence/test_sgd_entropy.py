"""sgd_evidence on a quadratic log joint, where every step has a closed form."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyro_blr as pb
from pyro_blr.core import latent_layout, neg_log_joint, plate_draws
from pyro_blr.evidence.minibatch import full_data_neg_log_joint, plate_cover
from pyro_blr.evidence.sgd_entropy import (
    gaussian_entropy,
    hutchinson_traces,
    langevin_entropy,
    log_det_expansion,
    step_log_det,
)
from tests.scenarios import impossible_counts, linear_regression

# step * largest curvature = 0.37: every gradient step is invertible
STEP, CHAINS, STEPS, SCALE = 0.002, 64, 60, 0.5


def replay_chains(s, seed, precond=None):
    """The chains sgd_evidence runs, in closed form: theta_t - m = (I - beta P H)^t theta_0'."""
    pyro.set_rng_seed(seed)
    # sgd_evidence's set-up runs of the model leave the generators where they were
    theta0 = SCALE * torch.randn(CHAINS, 3, dtype=torch.float64)
    precision, mean = s.posterior_precision, s.posterior_mean
    P = torch.eye(3, dtype=torch.float64) if precond is None else precond
    P = torch.diag(P) if P.dim() == 1 else P
    contraction = torch.eye(3, dtype=torch.float64) - STEP * P @ precision
    posterior = MultivariateNormal(mean, precision_matrix=precision)
    log_joint, theta = [], theta0
    for _ in range(STEPS + 1):
        log_joint.append(s.log_evidence + posterior.log_prob(theta))
        theta = mean + (theta - mean) @ contraction.T
    return torch.stack(log_joint), contraction


PRECONDITIONERS = {
    "identity": None,
    "vector": torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64),
    "matrix": torch.tensor(
        [[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64
    ),
}


@pytest.mark.parametrize("precond", PRECONDITIONERS.values(), ids=PRECONDITIONERS.keys())
def test_exact_entropy_matches_the_linear_map_step_by_step(precond):
    s = linear_regression()
    result = pb.sgd_evidence(s.model, s.X, s.y, num_chains=CHAINS, num_steps=STEPS,
                             step_size=STEP, hessian="exact", init_scale=SCALE,
                             preconditioner=precond)  # fmt: skip
    log_joint, contraction = replay_chains(s, 0, precond)
    entropy0 = 1.5 * math.log(2 * math.pi * math.e * SCALE**2)
    steps = torch.arange(STEPS + 1, dtype=torch.float64)
    entropy = entropy0 + steps * torch.linalg.slogdet(contraction).logabsdet
    torch.testing.assert_close(result.bound, log_joint.mean(1) + entropy, rtol=0, atol=1e-9)
    assert result.best == pytest.approx(float(result.bound.max()))
    assert result.best_step == int(result.bound.argmax())
    # A valid lower bound: never above log Z beyond four standard errors of the chain average.
    stderr = log_joint[result.best_step].std() / math.sqrt(CHAINS)
    assert result.best <= s.log_evidence + 4 * stderr


def test_hutchinson_agrees_with_exact_within_its_error():
    s = linear_regression()
    exact = pb.sgd_evidence(s.model, s.X, s.y, num_chains=CHAINS, num_steps=STEPS,
                            step_size=STEP, hessian="exact", init_scale=SCALE)  # fmt: skip
    pyro.set_rng_seed(0)
    probed = pb.sgd_evidence(s.model, s.X, s.y, num_chains=CHAINS, num_steps=STEPS,
                             step_size=STEP, hessian="hutchinson", init_scale=SCALE)  # fmt: skip
    B = STEP * s.posterior_precision
    eye = torch.eye(3, dtype=torch.float64)
    # Per step: the expansion's truncation error, and the Rademacher variance of v^T B v
    # (2 sum_{i != j} B_ij^2) and of |B v|^2 / 2, averaged over the chains.
    truncation = torch.linalg.slogdet(eye - B).logabsdet + B.trace() + 0.5 * (B @ B).trace()
    off = lambda M: (M - torch.diag(M.diagonal())).square().sum()  # noqa: E731
    variance = (2 * off(B) + 0.5 * off(B @ B)) / CHAINS
    difference = probed.bound[-1] - exact.bound[-1]
    expected = -STEPS * truncation
    assert abs(difference - expected) < 4 * math.sqrt(STEPS * variance)


def test_warns_when_the_step_is_too_large():
    s = linear_regression()
    with pytest.warns(UserWarning, match="not invertible"):
        pb.sgd_evidence(s.model, s.X, s.y, num_chains=2, num_steps=2, step_size=1.0,
                        hessian="exact")  # fmt: skip


@pytest.mark.parametrize(
    "options, message",
    [
        ({"hessian": "lanczos"}, "hessian must be 'exact' or 'hutchinson'"),
        ({"step_size": 0.0}, "step_size must be positive"),
        ({"step_size": -1e-3}, "step_size must be positive"),
        ({"num_chains": 0}, "num_chains must be a positive integer"),
        ({"num_chains": 2.0}, "num_chains must be a positive integer"),
        ({"num_steps": 0}, "num_steps must be a positive integer"),
        ({"num_steps": -5}, "num_steps must be a positive integer"),
        ({"num_probes": 0}, "num_probes must be a positive integer"),
        ({"temperature": -1.0}, "temperature must be non-negative"),
        ({"init_scale": 0.0}, "init_scale must be positive"),
        ({"init_loc": torch.zeros(2)}, r"init_loc must have shape \(3,\)"),
    ],
)
def test_bad_arguments(options, message):
    s = linear_regression()
    with pytest.raises(ValueError, match=message):
        pb.sgd_evidence(s.model, s.X, s.y, **options)


def test_an_impossible_likelihood_is_blamed_on_its_site():
    # y's log-likelihood is -inf; the latent 'scale' is positive, so a log-Jacobian term is
    # there too and must not be blamed.
    with pytest.raises(ValueError, match=r"step 0 the log density of site 'y' is -inf"):
        pb.sgd_evidence(impossible_counts, torch.ones(6), None, num_chains=2, num_steps=2)


@pytest.mark.parametrize("size", [5, 6])
def test_the_minibatch_cover_gives_the_full_data_log_joint(size):
    # B = 5 divides N = 20 (4 minibatches); B = 6 does not (N / gcd = 10 minibatches, each index
    # held 3 times): either way the average of the N/B-scaled runs is the full log joint.
    sub, full = linear_regression(subsample_size=size), linear_regression()
    trace = poutine.trace(sub.model).get_trace(sub.X, sub.y)
    layout = latent_layout(trace)
    theta = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    draws = plate_draws(trace, set())
    got = full_data_neg_log_joint(sub.model, layout, theta, (sub.X, sub.y), {}, "loop", draws)
    exact = neg_log_joint(full.model, layout, theta, (full.X, full.y), {}, "loop")
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)
    assert len(plate_cover(draws[0])) == 20 // math.gcd(20, size)


@pytest.mark.parametrize("size", [5, 2])
def test_minibatch_steps_keep_a_full_data_bound(size):
    # Stochastic gradient steps on minibatches of 5 or 2 of 20 (the entropy tracked with each
    # step's minibatch Hessian), the bound evaluated on the full data at every step. Started at
    # q0 = N(posterior mean, s^2 I), the first bound is q0's exact ELBO up to the chains' Monte
    # Carlo error (4 sigma; a minibatch estimate of it would be off by several nats), and no step
    # rises above log p(D) by more than that error.
    s, chains, scale = linear_regression(subsample_size=size), 200, 0.1
    precision, mean = s.posterior_precision, s.posterior_mean
    A = scale**2 * precision  # q0's covariance against the posterior's
    elbo = s.log_evidence - 0.5 * float(torch.trace(A) - 3 - torch.logdet(A))
    sigma = math.sqrt(0.5 * float(torch.trace(A @ A)) / chains)  # sd of the chains' mean of -l
    pyro.set_rng_seed(0)
    result = pb.sgd_evidence(s.model, s.X, s.y, num_chains=chains, num_steps=15,
                             step_size=0.001, hessian="exact", init_loc=mean,
                             init_scale=scale)  # fmt: skip
    assert abs(float(result.bound[0]) - elbo) < 4 * sigma
    assert float(result.bound.max()) < s.log_evidence + 4 * sigma
    assert result.best == float(result.bound.max())


def test_a_sequential_subsampled_plate_is_refused_by_name():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        for i in pyro.plate("data", len(y), subsample_size=2):
            pyro.sample(f"y_{i}", dist.Normal(mu, 1.0), obs=y[i])

    with pytest.raises(
        ValueError, match=r"sgd_evidence cannot draw the minibatches of plate 'data'.*sequential"
    ):
        pb.sgd_evidence(model, torch.zeros(6), num_chains=2, num_steps=2)


def test_step_log_det_is_the_log_determinant_of_the_step():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 3, generator=gen, dtype=torch.float64)
    hess = a @ a.mT  # positive definite, one per chain
    root = torch.linalg.cholesky(torch.tensor(
        [[1.0, 0.3, 0.0], [0.3, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=torch.float64))  # fmt: skip
    log_det, radius = step_log_det(hess, 0.05, root)
    step = torch.eye(3, dtype=torch.float64) - 0.05 * (root @ root.mT) @ hess  # I - beta P H
    torch.testing.assert_close(log_det, torch.linalg.det(step).abs().log())
    eigenvalues = torch.linalg.eigvals(0.05 * (root @ root.mT) @ hess).abs()
    torch.testing.assert_close(radius, eigenvalues.amax(-1))


def test_hutchinson_traces_are_unbiased():
    # 20000 Rademacher probes on a fixed symmetric B: each estimate within four standard errors,
    # the variances being 2 sum_{i != j} B_ij^2 (for v'Bv) and 2 sum_{i != j} (B^2)_ij^2
    # (for |Bv|^2 = v'B^2 v).
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    B = 0.1 * (a + a.mT)
    probes = [torch.randint(0, 2, (1, 4), generator=gen).double() * 2 - 1 for _ in range(20000)]
    trace, square, ratio = hutchinson_traces(lambda v: v @ B, probes)
    off = lambda M: (M - torch.diag(M.diagonal())).square().sum()  # noqa: E731
    assert abs(trace - B.trace()) < 4 * (2 * off(B) / 20000).sqrt()
    assert abs(square - (B @ B).trace()) < 4 * (2 * off(B @ B) / 20000).sqrt()
    assert ratio <= torch.linalg.eigvalsh(B).abs().max() + 1e-12  # never above the radius
    expansion = log_det_expansion(trace, square)
    assert float(expansion) == pytest.approx(float(-(trace + 0.5 * square)))


def test_langevin_entropy_is_exact_for_gaussians():
    # X ~ N(0, a I), Y ~ N(0, b I) in D dimensions: X + Y ~ N(0, (a + b) I), where the entropy
    # power inequality holds with equality.
    dim, a, b = 5, 0.3, 2.0
    bound = langevin_entropy(gaussian_entropy(dim, math.log(a)), gaussian_entropy(dim, math.log(b)),
                             dim)  # fmt: skip
    assert bound == pytest.approx(gaussian_entropy(dim, math.log(a + b)), abs=1e-12)
    assert langevin_entropy(1.0, -math.inf, dim) == pytest.approx(1.0)  # no noise, no change


def test_langevin_chains_keep_a_valid_bound():
    # SGLD noise keeps the chains spread out; the entropy-power inequality keeps the tracked
    # entropy a lower bound, so the bound stays below log Z (64 chains: four standard errors of
    # the chain average, whose sd is below 1.5 nats here, is 0.75).
    s = linear_regression()
    result = pb.sgd_evidence(s.model, s.X, s.y, num_chains=CHAINS, num_steps=200,
                             step_size=STEP, hessian="exact", init_scale=SCALE,
                             langevin=True)  # fmt: skip
    assert torch.isfinite(result.bound).all()
    assert result.best <= s.log_evidence + 0.75
    # Langevin dynamics at temperature 1 targets the posterior: the bound approaches log Z.
    assert result.bound[-1] > s.log_evidence - 3.0
