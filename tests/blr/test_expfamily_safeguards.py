"""The safeguards of the ``"expfamily"`` rule (pb.ExpFamilyRule on pb.AutoExpFamily): stepping
back from a step that made the fit diverge, and checkpoints that are the rule's state (each
site's natural parameters) plus the model's signature, resumed bit for bit and refused whole
when they do not fit."""

import io
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

import pyro_blr as pb

D = torch.float64
FLIPS = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0], dtype=D)
COUNTS = torch.tensor([3.0, 5.0, 2.0, 4.0], dtype=D)


def conjugate_model(flips, counts):
    """Beta-Bernoulli and Gamma-Poisson: each site's posterior is of its own family."""
    p = pyro.sample("p", dist.Beta(torch.tensor(2.0, dtype=D), 2.0))
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=D), 1.0))
    with pyro.plate("flips", len(flips)):
        pyro.sample("flip", dist.Bernoulli(p), obs=flips)
    with pyro.plate("counts", len(counts)):
        pyro.sample("count", dist.Poisson(rate), obs=counts)


# ------------------------------------------------------------------ step-back
X = torch.linspace(0.0, 30.0, 40)  # float32: exp(w * 30) overflows above w = 2.96


def poisson_model(x, y):
    w = pyro.sample("w", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Poisson((w * x).exp()), obs=y)


def counts():
    return torch.poisson((0.1 * X).exp(), generator=torch.Generator().manual_seed(0))


def exact_posterior(y):
    """Mean and sd of w by quadrature (float64, 20001 points over +-0.05 of the mode)."""
    w = torch.linspace(0.05, 0.15, 20001, dtype=D)
    log_p = dist.Normal(0.0, 1.0).log_prob(w)
    log_p = log_p + dist.Poisson((w[:, None] * X.double()).exp()).log_prob(y.double()).sum(-1)
    weights = (log_p - log_p.max()).exp()
    weights = weights / weights.sum()
    mean = (weights * w).sum()
    return float(mean), float((weights * (w - mean) ** 2).sum().sqrt())


def test_the_overflowing_step_is_retaken_smaller_and_the_fit_ends_at_the_posterior():
    # From w = 0 the first step (lr 1: a Newton step on the controlled gradient's local fit)
    # lands where exp(w * x) overflows float32 at the next draws; without stepping back the fit
    # raised at step 2 ("the log joint is not finite at site(s) ['y']").
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = counts()
    guide = pb.AutoExpFamily(poisson_model)
    blr = pb.BLR(poisson_model, guide, pb.ExpFamilyRule(lr=1.0, mc_samples=4))
    with pytest.warns(RuntimeWarning, match=r"BLR step 2: the log joint is not finite .* half"):
        blr.fit(X, y, num_steps=60, progress=False, check=False)
    assert blr.step_backs >= 1
    mean, sd = exact_posterior(y)
    fitted = guide.distributions(X, y)["w"]
    # The posterior is Gaussian to within its skewness (40 Poisson counts): the Normal fit's
    # mean lies within 0.1 sd of the exact mean and its sd within 5 % (as the Gaussian rules'
    # step-back test); the Monte Carlo error of the average of 30 iterates with 4 draws each is
    # far below that.
    assert abs(float(fitted.loc) - mean) < 0.1 * sd
    assert float(fitted.scale) == pytest.approx(sd, rel=0.05)


def test_a_step_back_retakes_the_same_step_with_half_the_step_size():
    # The driver steps back at step 2 to the state before step 1 and retakes step 1 from the
    # same estimates at lr 0.5: the natural parameters are then exactly (1 - 0.5) l0 + 0.5 l1'
    # where l1' = 2 l1 - l0 is the lr-1 target (the update is affine in lr).
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = counts()
    guide = pb.AutoExpFamily(poisson_model)
    blr = pb.BLR(poisson_model, guide, pb.ExpFamilyRule(lr=1.0, mc_samples=4))
    guide(X, y)
    start = guide.natural_params()["w"]
    blr.step(X, y)
    full = guide.natural_params()["w"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        blr.step(X, y)
    assert blr.stepped_back and blr.step_backs == 1
    state = blr.state_dict()["state"]["natural.w"]
    torch.testing.assert_close(state, 0.5 * start + 0.5 * full, rtol=1e-6, atol=0)


# ------------------------------------------------------------------ checkpoints
def saved(blr):
    buffer = io.BytesIO()
    torch.save(blr.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def params(guide):
    return {name: p.detach().clone() for name, p in guide.named_parameters()}


def test_the_checkpoint_is_the_natural_parameters_and_the_signature():
    pyro.clear_param_store()
    guide = pb.AutoExpFamily(conjugate_model)
    blr = pb.BLR(conjugate_model, guide, pb.ExpFamilyRule(lr=0.5, mc_samples=4))
    blr.step(FLIPS, COUNTS)
    state = saved(blr)["state"]
    entries = {k for k in state if not k.startswith("signature.")}
    assert entries == {"natural.p", "natural.rate"}
    for name, eta in guide.natural_params().items():
        torch.testing.assert_close(state[f"natural.{name}"], eta, rtol=1e-12, atol=0)
    assert "signature.family.beta.p" in state and "signature.family.gamma.rate" in state


def test_a_resumed_fit_equals_the_uninterrupted_one_bit_for_bit():
    def run(steps, checkpoint=None, rng=None):
        pyro.clear_param_store()
        pyro.set_rng_seed(7)  # a resumed guide starts elsewhere, then takes the checkpoint
        guide = pb.AutoExpFamily(conjugate_model, init_scale=0.3)
        blr = pb.BLR(conjugate_model, guide, pb.ExpFamilyRule(lr=0.3, mc_samples=4))
        if checkpoint is not None:
            blr.load_state_dict(checkpoint, FLIPS, COUNTS)
            torch.set_rng_state(rng)
        losses = [blr.step(FLIPS, COUNTS) for _ in range(steps)]
        return guide, blr, losses

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pb.AutoExpFamily(conjugate_model, init_scale=0.3)
    blr = pb.BLR(conjugate_model, guide, pb.ExpFamilyRule(lr=0.3, mc_samples=4))
    for _ in range(3):
        blr.step(FLIPS, COUNTS)
    checkpoint, rng = saved(blr), torch.get_rng_state()
    losses = [blr.step(FLIPS, COUNTS) for _ in range(3)]
    resumed, again, resumed_losses = run(3, checkpoint, rng)
    assert resumed_losses == losses
    assert again.num_steps == blr.num_steps == 6
    for name, value in params(guide).items():
        assert torch.equal(params(resumed)[name], value), name
    end, resumed_end = blr.state_dict()["state"], again.state_dict()["state"]
    for key, value in end.items():
        assert torch.equal(resumed_end[key], value), key


def fitted(model=conjugate_model, **guide_options):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = pb.AutoExpFamily(model, **guide_options)
    blr = pb.BLR(model, guide, pb.ExpFamilyRule(lr=0.5, mc_samples=4))
    blr.step(FLIPS, COUNTS)
    return guide, blr


def test_a_checkpoint_outside_a_family_domain_is_refused_naming_the_entry():
    guide, blr = fitted()
    checkpoint = saved(blr)
    checkpoint["state"]["natural.rate"] = checkpoint["state"]["natural.rate"].abs()  # rate < 0
    before = params(guide)
    with pytest.raises(ValueError, match=r"'natural.rate' holds natural parameters outside"):
        blr.load_state_dict(checkpoint, FLIPS, COUNTS)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name


def test_a_checkpoint_of_other_families_is_refused_naming_the_site():
    # A positive site's Gamma and LogNormal both have two natural parameters: loaded into the
    # other family, the numbers would mean something else.
    _, blr = fitted()
    guide, other = fitted(families={"rate": "lognormal"})
    before = params(guide)
    with pytest.raises(ValueError, match=r"site 'rate' has a gamma family there, a lognormal"):
        other.load_state_dict(saved(blr), FLIPS, COUNTS)
    for name, value in params(guide).items():
        assert torch.equal(value, before[name]), name
