"""The BLR on an HMM whose hidden chain is enumerated along ``pyro.markov`` (Pyro's HMM tutorial
shape: ``x_t ~ Categorical(probs_x[x_{t-1}])`` marked ``infer={"enumerate": "parallel"}``, with
continuous transition and emission parameters), against the same model with the chain summed
out by a forward algorithm written here and handed to Pyro as a ``pyro.factor``."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal, init_to_value
from torch.distributions import biject_to

import pyro_blr as pb
from pyro_blr.core import GaussianGuide, latent_layout
from pyro_blr.core.enumeration import enumerated_log_joint

D = torch.float64
# Two sequences of six steps from three well separated levels (time along the last axis).
YS = torch.tensor([[-2.1, -1.7, 0.3, 0.1, 2.4, 1.8], [1.9, 2.2, -0.2, -1.9, -2.3, 0.2]], dtype=D)
CONCENTRATION = 2.0 * torch.eye(3, dtype=D) + 1.0  # sticky rows, an interior mode
PRIOR_LOCS = torch.tensor([-2.0, 0.0, 2.0], dtype=D)
CONTINUOUS = ["probs_x", "locs", "scale"]


def priors(ys):
    probs_x = pyro.sample("probs_x", dist.Dirichlet(CONCENTRATION).to_event(1))
    locs = pyro.sample("locs", dist.Normal(PRIOR_LOCS, 1.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(ys.new_zeros(()), 1.0))
    return probs_x, locs, scale


def hmm(ys):
    """Three hidden states on a chain started in state 0, Gaussian emissions."""
    probs_x, locs, scale = priors(ys)
    with pyro.plate("sequences", ys.shape[0], dim=-1):
        x = 0
        for t in pyro.markov(range(ys.shape[1])):
            x = pyro.sample(f"x_{t}", dist.Categorical(probs_x[x]), infer={"enumerate": "parallel"})
            pyro.sample(f"y_{t}", dist.Normal(locs[x], scale), obs=ys[:, t])


def forward(probs_x, locs, scale, ys):
    r"""The forward algorithm: :math:`\log \sum_{x_{1:T}} \prod_t p(x_t \mid x_{t-1})\,
    p(y_t \mid x_t)` per sequence, summed over sequences."""
    emission = dist.Normal(locs, scale).log_prob(ys[..., None])  # (sequences, T, 3)
    alpha = probs_x[0].log() + emission[:, 0]
    for t in range(1, ys.shape[1]):
        alpha = torch.logsumexp(alpha[:, :, None] + probs_x.log(), 1) + emission[:, t]
    return torch.logsumexp(alpha, -1).sum()


def hand_summed(ys):
    """The same model with the chain summed out by :func:`forward`."""
    probs_x, locs, scale = priors(ys)
    pyro.factor("ys", forward(probs_x, locs, scale, ys))


# A sticky start by the mode the fits reach (from uniform rows, Newton meets a saddle first).
START = {
    "probs_x": 0.2 + 0.4 * torch.eye(3, dtype=D),
    "locs": PRIOR_LOCS.clone(),
    "scale": torch.tensor(0.5, dtype=D),
}


def fresh(values):
    """Copies: AutoNormal's loc of a real site is the very tensor it was given, which the fit
    then updates in place (as Pyro's optimizers do)."""
    return {name: value.clone() for name, value in values.items()}


def fit(model, guide_class, rule, steps):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    exposed = poutine.block(model, expose=CONTINUOUS)
    guide = guide_class(exposed, init_loc_fn=init_to_value(values=fresh(START)))
    pb.BLR(model, guide, rule).fit(YS, num_steps=steps, progress=False, check=False)
    return guide


def unconstrained_log_joint(u):
    """The hand-summed log joint in the guide's coordinates: each site mapped to its support by
    ``biject_to`` (as Pyro's autoguides map them), plus the log-Jacobians."""
    supports = [dist.Dirichlet(CONCENTRATION).support, dist.Normal(0.0, 1.0).support]
    supports.append(dist.LogNormal(0.0, 1.0).support)
    pieces = [u[:6].reshape(3, 2), u[6:9], u[9]]
    values, log_det = [], 0.0
    for support, piece in zip(supports, pieces, strict=True):
        transform = biject_to(support)
        value = transform(piece)
        log_det = log_det + transform.log_abs_det_jacobian(piece, value).sum()
        values.append(value)
    probs_x, locs, scale = values
    prior = dist.Dirichlet(CONCENTRATION).log_prob(probs_x).sum()
    prior = prior + dist.Normal(PRIOR_LOCS, 1.0).log_prob(locs).sum()
    prior = prior + dist.LogNormal(0.0, 1.0).log_prob(scale)
    return prior + forward(probs_x, locs, scale, YS) + log_det


def laplace():
    """The mode of the hand-summed model, found by Newton's method from the fits' start (the
    step halved while it raises the loss, as far from the mode the Hessian is indefinite),
    and the Hessian of the negative log joint there."""
    transform = biject_to(dist.Dirichlet(CONCENTRATION).support)
    u = torch.cat(
        [transform.inv(START["probs_x"]).flatten(), START["locs"], START["scale"].log()[None]]
    )
    neg = lambda v: -unconstrained_log_joint(v)  # noqa: E731
    for _ in range(100):
        grad = torch.autograd.functional.jacobian(neg, u)
        step = torch.linalg.solve(torch.autograd.functional.hessian(neg, u), grad)
        while not neg(u - step) <= neg(u) and step.abs().max() > 1e-15:
            step = step / 2
        u = u - step
        if step.abs().max() < 1e-14:
            break
    return u, torch.autograd.functional.hessian(neg, u)


def read(guide):
    loc, precision = GaussianGuide(guide, latent_layout(guide.prototype_trace)).read()
    return loc.detach(), precision.detach()


def test_the_forward_algorithm_is_the_enumerated_log_joint():
    # Guards the comparisons below: the two models are one density (1e-10 on ~30 nats).
    pyro.set_rng_seed(0)
    values = {"probs_x": dist.Dirichlet(CONCENTRATION).sample(), "locs": PRIOR_LOCS / 2}
    values["scale"] = torch.tensor(0.7, dtype=D)
    by_hand = poutine.trace(poutine.condition(hand_summed, values)).get_trace(YS).log_prob_sum()
    found = enumerated_log_joint(hmm, (YS,), {}, 1, values)
    assert abs(float(found - by_hand)) < 1e-10


@pytest.mark.parametrize("guide_class", [AutoMultivariateNormal, AutoNormal])
def test_newton_on_the_chain_lands_on_the_laplace_optimum_of_the_hand_summed_model(guide_class):
    # Newton (the delta method) has a deterministic fixed point: the mode of the marginal log
    # joint, with the Hessian there as precision (its diagonal for a diagonal guide), both
    # computed above from the forward algorithm alone. Reached in 11 steps from START (after
    # one step-back); 20 leave room. 1e-8 is round-off on unit-scale numbers.
    loc, precision = read(fit(hmm, guide_class, pb.Newton(lr=1.0), 20))
    mode, hessian = laplace()
    assert torch.linalg.eigvalsh(hessian).min() > 0  # a mode, not a saddle
    torch.testing.assert_close(loc, mode, rtol=0, atol=1e-8)
    expected = hessian if guide_class is AutoMultivariateNormal else hessian.diagonal()
    torch.testing.assert_close(precision, expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(
    "guide_class, rule",
    [(AutoMultivariateNormal, pb.VON(lr=0.5, ess=12)), (AutoNormal, pb.VON(lr=0.5, ess=12))],
    ids=["von-full", "von-diagonal"],
)
def test_von_on_the_chain_equals_von_on_the_hand_summed_model(guide_class, rule):
    # VON's fixed point is an expectation under q, reached through Monte Carlo draws: the same
    # seed gives both models the same draws, so the fits agree to round-off (1e-8). ``ess``:
    # the automatic start's cap reads a count of data from the observed sites (the largest
    # one: 2 for the chain, 1 for the factor), so both are given the 12 observations.
    got = read(fit(hmm, guide_class, rule, 6))
    expected = read(fit(hand_summed, guide_class, rule, 6))
    for found, wanted in zip(got, expected, strict=True):
        torch.testing.assert_close(found, wanted, rtol=1e-8, atol=1e-8)


def test_log_evidence_of_the_chain_agrees_with_the_hand_summed_model():
    guide = fit(hmm, AutoMultivariateNormal, pb.Newton(lr=1.0), 9)
    for method in ("elbo", "iwae"):
        estimates = []
        for seed, model in [(1, hmm), (2, hand_summed), (1, hand_summed)]:
            pyro.set_rng_seed(seed)
            estimates.append(pb.log_evidence(model, guide, YS, method=method, num_particles=50))
        enumerated, independent, same_draws = estimates
        # Independent draws: the difference of two estimates has sd sqrt(se1^2 + se2^2); four
        # of them bound it with a failure rate below 1e-4 (normal approximation).
        stderr = (enumerated.stderr**2 + independent.stderr**2) ** 0.5
        assert 0 < stderr < 1.0  # a guide near the posterior: the comparison has power
        assert abs(enumerated.value - independent.value) < 4 * stderr
        # The same draws: one density, so one estimate to round-off.
        assert abs(enumerated.value - same_draws.value) < 1e-8
