"""SGD, RMSprop and Adam as exact limits of the Bayesian learning rule (Khan & Rue 2023, Table 1):
the rule under pb.BLR and torch.optim on the same loss take the same 100 steps on a small network,
and the perturbed (Bayesian) version gives a posterior scale that the optimizer lacks.

The loss: the model's negative log joint, ell(theta) = -log p(y | theta) - log p(theta), the MAP
loss. The Normal(0, PRIOR) prior enters torch.optim as its coupled weight_decay = 1 / PRIOR**2
(the prior's gradient theta / PRIOR**2; its constant does not move a step), so torch's loss is the
likelihood's alone: the prior is accounted for, not removed. In float64 the two runs differ by the
order of their floating-point operations only (the model's gradient through vmap or a loop against
a plain backward); after 100 steps they agree to 1e-10 relative (measured: about 1e-14).
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoNormal, init_to_value

import pyro_blr as pb
from pyro_blr.blr.rules.adam import Adam
from pyro_blr.blr.rules.rmsprop import RMSprop
from pyro_blr.blr.rules.sgd import SGD

D = torch.float64
N, IN, HIDDEN = 40, 3, 4
PRIOR, NOISE = 2.0, 0.3
STEPS = 100
RTOL, ATOL = 1e-10, 1e-12  # float64 round-off accumulated over 100 steps (measured ~1e-14)


def data(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, IN, generator=gen, dtype=D)
    y = torch.sin(x @ torch.tensor([1.0, -0.5, 0.3], dtype=D)) + 0.1 * torch.randn(
        N, generator=gen, dtype=D
    )
    return x, y


def network(theta, x):
    hidden = torch.tanh(x @ theta["w1"] + theta["b1"])
    return hidden @ theta["w2"] + theta["b2"]


def model(x, y):
    """A one-hidden-layer tanh network written X @ w, Normal prior, Normal likelihood."""
    zero = x.new_zeros(())
    theta = {
        "w1": pyro.sample("w1", dist.Normal(zero, PRIOR).expand([IN, HIDDEN]).to_event(2)),
        "b1": pyro.sample("b1", dist.Normal(zero, PRIOR).expand([HIDDEN]).to_event(1)),
        "w2": pyro.sample("w2", dist.Normal(zero, PRIOR).expand([HIDDEN]).to_event(1)),
        "b2": pyro.sample("b2", dist.Normal(zero, PRIOR)),
    }
    f = pyro.deterministic("f", network(theta, x))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(f, NOISE), obs=y)


def start(seed=1):
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w1": (IN, HIDDEN), "b1": (HIDDEN,), "w2": (HIDDEN,), "b2": ()}
    return {k: 0.5 * torch.randn(s, generator=gen, dtype=D) for k, s in shapes.items()}


def run_blr(rule, guide_class=AutoNormal, steps=STEPS):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = data()
    guide = guide_class(model, init_loc_fn=init_to_value(values=start()))
    blr = pb.BLR(model, guide, rule)
    for _ in range(steps):
        blr.step(x, y)
    return guide


def run_torch(make_optimizer, steps=STEPS):
    x, y = data()
    theta = {k: v.clone().requires_grad_() for k, v in start().items()}
    optimizer = make_optimizer(list(theta.values()))
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -dist.Normal(network(theta, x), NOISE).log_prob(y).sum()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in theta.items()}


DECAY = 1 / PRIOR**2
CASES = {
    "sgd": (
        SGD(lr=1e-3),
        lambda p: torch.optim.SGD(p, lr=1e-3, weight_decay=DECAY),
    ),
    "sgd-momentum": (
        SGD(lr=5e-4, momentum=0.9),
        lambda p: torch.optim.SGD(p, lr=5e-4, momentum=0.9, weight_decay=DECAY),
    ),
    "sgd-nesterov": (
        SGD(lr=5e-4, momentum=0.8, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=5e-4, momentum=0.8, nesterov=True, weight_decay=DECAY),
    ),
    "rmsprop": (
        RMSprop(lr=3e-3),
        lambda p: torch.optim.RMSprop(p, lr=3e-3, weight_decay=DECAY),
    ),
    "rmsprop-momentum": (
        RMSprop(lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.5),
        lambda p: torch.optim.RMSprop(
            p, lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.5, weight_decay=DECAY
        ),
    ),
    "adam": (
        Adam(lr=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=DECAY),
    ),
    "adam-betas": (
        Adam(lr=5e-3, beta1=0.8, beta2=0.99, eps=1e-6),
        lambda p: torch.optim.Adam(p, lr=5e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=DECAY),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_rule_at_the_mean_takes_torch_optims_steps(case):
    rule, optimizer = CASES[case]
    guide = run_blr(rule)
    expected = run_torch(optimizer)
    fitted = guide.median()
    for name, value in expected.items():
        torch.testing.assert_close(fitted[name], value, rtol=RTOL, atol=ATOL)
    # moved far from the start: the comparison is not of two unmoved copies
    moved = max(float((expected[k] - v).abs().max()) for k, v in start().items())
    assert moved > 0.05, moved
    # the optimizer has no posterior: the guide's scale is the family's fixed covariance
    torch.testing.assert_close(guide.scales.w1, torch.full((IN, HIDDEN), 0.1, dtype=D), rtol=1e-15,
                               atol=0)  # fmt: skip


def test_a_flat_vector_guide_takes_the_same_steps():
    # AutoDiagonalNormal holds every site in one vector: the same 100 Adam steps as torch's
    rule, optimizer = CASES["adam"]
    fitted = run_blr(rule, AutoDiagonalNormal).median()
    for name, value in run_torch(optimizer).items():
        torch.testing.assert_close(fitted[name], value, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("rule_class", [Adam, RMSprop])
def test_the_perturbed_rule_gives_a_posterior_the_optimizer_lacks(rule_class):
    # Vadam: draws from N(m, 1 / (v_hat / N + delta)); the guide's scale becomes that posterior's
    # (N = 40 data found from the plate, delta = 1 / PRIOR**2 the Normal prior's curvature, exact)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x, y = data()
    guide = AutoNormal(model, init_loc_fn=init_to_value(values=start()))
    blr = pb.BLR(model, guide, rule_class(lr=1e-2, perturb=True))
    for _ in range(STEPS):
        blr.step(x, y)
    second = next(v for k, v in _flat(blr.state_dict()).items() if k.endswith("second_moment"))
    second = second / (1 - (0.999 if rule_class is Adam else 0.99) ** STEPS)
    scales = torch.cat([guide.scales.w1.reshape(-1), guide.scales.b1, guide.scales.w2,
                        guide.scales.b2.reshape(1)]).detach()  # fmt: skip
    expected = (second / N + 1 / PRIOR**2).rsqrt()
    torch.testing.assert_close(scales, expected, rtol=1e-12, atol=0)  # the softplus round trip
    # a posterior, not the starting scale: narrower than the prior where the data inform
    assert scales.max() < PRIOR and scales.min() < 0.5, scales
    assert not torch.allclose(scales, torch.full_like(scales, 0.1))
    # predictive uncertainty on held-out inputs, which the optimizer's point estimate lacks:
    # the network's spread under the posterior (200 draws: its std to about 5%)
    held_out = torch.linspace(-3, 3, 7, dtype=D)[:, None].expand(7, IN)
    draws = pyro.infer.Predictive(model, guide=guide, num_samples=200, return_sites=["f"])
    spread = draws(held_out, None)["f"].std(0).reshape(-1)
    assert (spread > 0.05).all(), spread
    # and it grows away from the data (x ~ N(0, 1)): far out at -3 and 3 more than at 0
    assert spread[[0, -1]].min() > 2 * spread[3], spread


def _flat(state, prefix=""):
    out = {}
    for key, value in state.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def local_model(y):
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
    with pyro.plate("data", len(y), subsample_size=2) as idx:
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])


@pytest.mark.parametrize("rule", [SGD(lr=0.1), RMSprop(), Adam(perturb=True)])
def test_latents_local_to_a_subsampled_plate_are_refused_naming_the_plate(rule):
    y = torch.arange(4, dtype=D)
    blr = pb.BLR(local_model, AutoNormal(local_model), rule)
    name = type(rule).__name__
    with pytest.raises(ValueError, match=rf"plate\(s\) \['data'\]: {name} keeps a history"):
        blr.step(y)


def test_the_perturbed_rule_refuses_a_prior_without_a_scale_naming_the_site():
    def improper(y):
        mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.arange(4, dtype=D)
    init = init_to_value(values={"mu": torch.tensor(0.5, dtype=D)})
    blr = pb.BLR(improper, AutoNormal(improper, init_loc_fn=init), Adam(perturb=True))
    with pytest.raises(ValueError, match=r"not positive at site\(s\) \['mu'\]"):
        blr.step(y)
    pyro.clear_param_store()
    pb.BLR(improper, AutoNormal(improper, init_loc_fn=init), Adam()).step(
        y
    )  # at the mean: MAP needs no prior


@pytest.mark.parametrize(
    "optimizer", [torch.optim.Adam, pyro.optim.Adam({"lr": 0.01})], ids=["torch", "pyro"]
)
def test_an_optimizer_in_the_rules_place_is_pointed_to_its_rule(optimizer):
    with pytest.raises(TypeError, match=r"SGD, RMSprop and Adam as rules .* pyro_blr.blr.rules"):
        pb.BLR(model, AutoNormal(model), optimizer)


def hierarchical(y):
    """A hierarchical prior over 120 coordinates: w_i ~ Normal(0, tau), tau ~ LogNormal(0, 1)."""
    tau = pyro.sample("tau", dist.LogNormal(y.new_zeros(()), 1.0))
    w = pyro.sample("w", dist.Normal(y.new_zeros(()), tau).expand([120]).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(w[:4].sum(), 1.0), obs=y)


def test_vadams_delta_is_the_priors_exact_curvature_for_a_hierarchical_prior():
    # above 64 coordinates one product per site: exact here (each w_i's prior reads tau, and
    # no prior reads two w's), against autograd's full Hessian of the prior's log density
    from pyro_blr.blr.steppers.gaussian_prior import prior_groups, prior_precision
    from pyro_blr.core import latent_layout

    y = torch.arange(4, dtype=D)
    trace = pyro.poutine.trace(hierarchical).get_trace(y)
    layout = latent_layout(trace)
    gen = torch.Generator().manual_seed(0)
    loc = 0.5 * torch.randn(layout.dim, generator=gen, dtype=D)
    groups = prior_groups(layout, trace)
    assert groups.unique().numel() == 2  # two products, not 121
    delta = prior_precision(hierarchical, (y,), {}, layout, "loop", loc, groups=groups)

    def prior_part(theta):  # -log p(log tau) - log p(w | tau), the Jacobian of exp included
        log_tau, w = theta[0], theta[1:]
        lp = dist.LogNormal(0.0, 1.0).log_prob(log_tau.exp()) + log_tau
        return -(lp + dist.Normal(0.0, log_tau.exp()).log_prob(w).sum())

    exact = torch.autograd.functional.hessian(prior_part, loc).diagonal()
    torch.testing.assert_close(delta, exact, rtol=1e-12, atol=1e-12)
