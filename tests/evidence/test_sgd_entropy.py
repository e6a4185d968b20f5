"""sgd_evidence on a quadratic log joint, where every step has a closed form."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from torch.distributions import MultivariateNormal

import pyro_blr as pb
from tests.scenarios import linear_regression

# step * largest curvature = 0.37: every gradient step is invertible
STEP, CHAINS, STEPS, SCALE = 0.002, 64, 60, 0.5


def replay_chains(s, seed, precond=None):
    """The chains sgd_evidence runs, in closed form: theta_t - m = (I - beta P H)^t theta_0'."""
    pyro.set_rng_seed(seed)
    poutine.trace(s.model).get_trace(s.X, s.y)  # sgd_evidence traces the model first
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


def test_bad_arguments():
    s = linear_regression()
    with pytest.raises(ValueError, match="hessian must be 'exact' or 'hutchinson'"):
        pb.sgd_evidence(s.model, s.X, s.y, hessian="lanczos")
    with pytest.raises(ValueError, match="step_size must be positive"):
        pb.sgd_evidence(s.model, s.X, s.y, step_size=0.0)


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
