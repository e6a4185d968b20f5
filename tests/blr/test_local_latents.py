"""Local latents under subsampling: natural-gradient stochastic VI with AutoNormal."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name

D = torch.float64
G, PER_GROUP, NOISE = 20, 4, 0.5


def grouped_data(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    effects = torch.randn(G, generator=gen, dtype=D)
    noise = NOISE * torch.randn(G, PER_GROUP, generator=gen, dtype=D)
    return 1.0 + effects[:, None] + noise


def random_effects(y, subsample=None, subsample_size=None):
    """y[g, j] ~ N(mu + b_g, NOISE^2), b_g ~ N(0, 1), mu ~ N(0, 25)."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    with pyro.plate("groups", G, subsample=subsample, subsample_size=subsample_size) as idx:
        b = pyro.sample("b", dist.Normal(y.new_zeros(()), 1.0))
        with pyro.plate("obs", PER_GROUP):
            pyro.sample("y", dist.Normal(mu + b, NOISE), obs=y[idx].T)


def exact_posterior(y):
    """The Gaussian posterior of (mu, b) and its mean-field sds (1 / sqrt of the precision's
    diagonal), which the mean-field optimum has; its means are the exact posterior means."""
    n = G * PER_GROUP
    design = torch.zeros(n, G + 1, dtype=D)
    design[:, 0] = 1
    design[torch.arange(n), 1 + torch.arange(G).repeat_interleave(PER_GROUP)] = 1
    precision = torch.diag(torch.tensor([1 / 25] + [1.0] * G, dtype=D))
    precision = precision + design.T @ design / NOISE**2
    mean = torch.linalg.solve(precision, design.T @ y.reshape(-1) / NOISE**2)
    return mean, precision.diagonal().rsqrt()


def fitted(guide):
    locs = torch.cat([guide.locs.mu.detach().reshape(1), guide.locs.b.detach()])
    scales = torch.cat([guide.scales.mu.detach().reshape(1), guide.scales.b.detach()])
    return locs, scales


def test_local_rows_get_their_exact_natural_gradient_step():
    # With mu held by a point-mass prior-free stand-in (here: mu observed), every group's b is
    # conjugate: one Newton step with lr=1 on a minibatch lands each drawn row on its exact
    # posterior, whatever the N/B scale of the minibatch (1e-10). The minibatches are given by
    # the user (subsample=), in turn, and must be honoured.
    y = grouped_data()
    conditioned = pyro.condition(random_effects, data={"mu": torch.tensor(1.0, dtype=D)})
    guide = AutoNormal(conditioned)
    blr = pb.BLR(conditioned, guide, pb.Newton(lr=1.0))
    for batch in torch.arange(G).reshape(4, 5):
        blr.step(y, subsample=batch)
    precision = 1.0 + PER_GROUP / NOISE**2
    mean = ((y - 1.0).sum(1) / NOISE**2) / precision
    torch.testing.assert_close(guide.locs.b.detach(), mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        guide.scales.b.detach(), torch.full((G,), precision**-0.5, dtype=D), rtol=1e-10, atol=0
    )


@pytest.mark.slow
def test_subsampled_fit_is_unbiased_for_the_full_batch_posterior():
    # Minibatches of 10 of 20 groups, a constant step and fit()'s iterate averaging: each run
    # ends within Monte Carlo noise of the exact posterior means (the mean-field optimum's
    # means); over 6 seeds the mean error of every coordinate is within 4 of its standard
    # errors (no bias). The Newton curvature is exact, so the scales are exact (1e-10).
    y = grouped_data()
    mean, sd = exact_posterior(y)
    errors = []
    for seed in range(6):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        guide = AutoNormal(random_effects)
        blr = pb.BLR(random_effects, guide, pb.Newton(lr=0.3))
        blr.fit(y, subsample_size=10, num_steps=1000, progress=False)
        locs, scales = fitted(guide)
        torch.testing.assert_close(scales, sd, rtol=1e-10, atol=0)
        errors.append((locs - mean) / sd)
    errors = torch.stack(errors)
    stderr = errors.std(0) / len(errors) ** 0.5
    assert (errors.mean(0).abs() < 4 * stderr).all(), (errors.mean(0), stderr)
    assert errors.abs().max() < 0.5  # each run within half a posterior sd


def test_ivon_refuses_local_latents_by_name():
    y = grouped_data()
    blr = pb.BLR(random_effects, AutoNormal(random_effects), pb.IVON())
    with pytest.raises(ValueError, match=r"local to the subsampled plate\(s\) \['groups'\]"):
        blr.step(y, subsample_size=5)


def test_a_full_covariance_guide_still_refuses_local_latents():
    from pyro.infer.autoguide import AutoMultivariateNormal

    y = grouped_data()
    guide = AutoMultivariateNormal(random_effects)
    with pytest.raises(ValueError, match="local to the subsampled plate 'groups'"):
        pb.BLR(random_effects, guide, pb.VON()).step(y, subsample_size=5)


def two_local_sites(y, subsample_size=5, tie_rows=False):
    """Two local sites per group (a scalar and a 2-vector) over one global: their rows do not
    interact, unless ``tie_rows`` adds a factor outside the plate on all the drawn rows."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 5.0))
    with pyro.plate("groups", G, subsample_size=subsample_size) as idx:
        b = pyro.sample("b", dist.Normal(y.new_zeros(()), 1.0))
        c = pyro.sample("c", dist.Normal(y.new_zeros(2), 1.0).to_event(1))
        mean = mu + b + c[..., 0] * c[..., 1] + torch.sinh(b * c[..., 1])
        with pyro.plate("obs", PER_GROUP):
            pyro.sample("y", dist.Normal(mean, NOISE), obs=y[idx].T)
    if tie_rows:
        pyro.factor("tie", -0.5 * (b.sum(-1) + c[..., 0].sum(-1)) ** 2)


@pytest.mark.parametrize("tie_rows", [False, True])
def test_the_grouped_hessian_diagonal_equals_the_full_one(tie_rows):
    # Local rows do not interact, so the Hessian's diagonal takes one product per coordinate of
    # a row (b; c's two) plus one per global, not one per minibatch coordinate. Where the model
    # ties rows together the check at the first step finds the cross terms and every step
    # computes the full Hessian. Both must step exactly as the full Hessian does (1e-12).
    y = grouped_data()
    runs = []
    for grouped in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(lambda y: two_local_sites(y, tie_rows=tie_rows))
        blr = pb.BLR(guide.model, guide, pb.VON(lr=0.3))
        blr.step(y)
        if not grouped:
            blr._stepper._groups = None
        for _ in range(5):
            blr.step(y)
        assert (blr._stepper._groups is not None) == (grouped and not tie_rows)
        runs.append({k: v.detach().clone() for k, v in pyro.get_param_store().items()})
    for key in runs[0]:
        torch.testing.assert_close(runs[0][key], runs[1][key], rtol=1e-12, atol=1e-12)


def tied_at_zero(y):
    """Rows tied by a site reading sum(z^2): the cross terms 8 z_i z_j vanish at z = 0, where
    Newton's first step evaluates, so the check must look elsewhere."""
    with pyro.plate("groups", G, subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx, 0])
    pyro.sample("s", dist.Normal((z**2).sum(-1), 0.5), obs=y.new_tensor(3.0))


def tied_beside_a_stiff_global(y):
    """Rows tied by a factor, next to a global whose curvature is 10^8: the check must compare
    each coordinate with its own curvature, not with the largest."""
    mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 10.0))
    big = 2.0 + 0.01 * torch.randn(20000, generator=torch.Generator().manual_seed(1), dtype=D)
    pyro.sample("big", dist.Normal(mu, 0.01).expand([20000]).to_event(1), obs=big)
    with pyro.plate("groups", G, subsample_size=5) as idx:
        z = pyro.sample("z", dist.Normal(y.new_zeros(()), 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx, 0])
    pyro.factor("tie", -5.0 * z.sum(-1) ** 2)


@pytest.mark.parametrize("model", [tied_at_zero, tied_beside_a_stiff_global])
@pytest.mark.parametrize("rule", ["newton", "von"])
def test_rows_tied_where_the_first_particles_hide_it_are_caught(model, rule):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, rule_from_name(rule, lr=0.3))
    blr.step(grouped_data())
    assert blr._stepper._groups is None


def test_a_checkpoint_of_the_default_rule_loads_into_a_driver_built_alike():
    # The guide's default rule on local latents is VON, decided at set-up: a new driver built
    # the same way (still reporting IVON before its first step) takes the checkpoint.
    import pyro_blr as pb

    def model(y):
        mu = pyro.sample("mu", pyro.distributions.Normal(0.0, 1.0))
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            z = pyro.sample("z", pyro.distributions.Normal(mu, 1.0))
            pyro.sample("y", pyro.distributions.Normal(z, 1.0), obs=y[idx])

    y = torch.arange(6.0)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    blr = pb.BLR(model, AutoNormal(model))
    blr.step(y)
    assert blr.rule_name == "von"
    state = blr.state_dict()
    fresh = pb.BLR(model, AutoNormal(model))
    fresh.load_state_dict(state)
    fresh.step(y)
    assert fresh.rule_name == "von" and fresh.num_steps == 2
