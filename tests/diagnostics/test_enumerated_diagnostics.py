"""``pb.to_inference_data`` and ``pb.loo_sensitivity`` on models with enumerated discrete sites:
the sites are summed out of log p and of each datum's likelihood (checked against the model
summed by hand), and drawn from their exact conditional for the posterior and the predictive."""

import logging
import math

import arviz as az
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.ops.indexing import Vindex

import pyro_blr as pb
from pyro_blr.core.enumeration import enumerated_trace
from pyro_blr.diagnostics.marginal import marginal_mean
from tests.core.test_enumeration import (
    HMM_Y,
    SCALES,
    WEIGHTS,
    X,
    hmm,
    hmm_by_hand,
    mixture,
    mixture_by_hand,
)
from tests.evidence.test_enumeration import data as GMM_DATA
from tests.evidence.test_enumeration import model as gmm
from tests.evidence.test_enumeration import tutorial_summed_by_hand as gmm_summed

F64 = torch.float64
GMM_LATENTS = ("weights", "scale", "locs")  # Pyro's GMM tutorial, copied unchanged


def mixture_guide(model=mixture, data=X):
    """A full-Gaussian guide on the mixture's locations, built as Pyro advises (the assignment
    hidden), set near the data's two groups with a spread of 0.3."""
    guide = AutoMultivariateNormal(poutine.block(model, hide=["z"]))
    guide(data)
    with torch.no_grad():
        guide.loc.copy_(torch.tensor([-0.5, 2.5], dtype=F64))
        guide.scale.fill_(0.3)
    return guide


def mixture_vindex(x):
    """``mixture`` written to broadcast over a batch of locations (``Vindex``): the draws are
    evaluated in one run inside a particle plate."""
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(Vindex(loc)[..., z], SCALES[z]), obs=x)


BOTH = pytest.mark.parametrize(
    ("model", "mode"), [(mixture, "loop"), (mixture_vindex, "plate")], ids=["loop", "plate"]
)


def hand_pointwise(loc, x):
    """log sum_k w_k N(x_i; loc_k, s_k), per datum."""
    return dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(loc, SCALES)).log_prob(x)


@BOTH
def test_log_p_and_log_likelihood_are_the_hand_summed_marginals(model, mode, caplog):
    pyro.set_rng_seed(0)
    # 40 draws: ArviZ 1.x's loo needs a Pareto tail of at least 5 draws
    with caplog.at_level(logging.INFO, logger="pyro_blr.diagnostics.enumerated_draws"):
        idata = pb.to_inference_data(model, mixture_guide(model), X, num_samples=40)
    assert ("run one by one" in caplog.text) == (mode == "loop")
    locs = torch.as_tensor(idata.posterior["loc"].values).reshape(40, 2)
    log_p = torch.as_tensor(idata.sample_stats["log_p"].values).reshape(40)
    expected = torch.stack([mixture_by_hand(loc, X) for loc in locs])
    torch.testing.assert_close(log_p, expected, rtol=1e-12, atol=1e-12)
    log_lik = torch.as_tensor(idata.log_likelihood["x"].values).reshape(40, len(X))
    pointwise = torch.stack([hand_pointwise(loc, X) for loc in locs])
    torch.testing.assert_close(log_lik, pointwise, rtol=1e-12, atol=1e-12)
    assert idata.log_likelihood["x"].dims == ("chain", "draw", "data")
    loo = az.loo(idata, pointwise=True)  # the pointwise marginal is what az.loo needs
    assert math.isfinite(float(getattr(loo, "elpd_loo", getattr(loo, "elpd", math.nan))))


@pytest.fixture(scope="module", params=[mixture, mixture_vindex], ids=["loop", "plate"])
def repeated_draws(request):
    # 50 copies of each datum: the assignments are independent given loc, so 200 draws give
    # 10,000 assignments per datum
    copies, num, model = 50, 200, request.param
    data = X.repeat(copies)
    pyro.set_rng_seed(1)
    idata = pb.to_inference_data(model, mixture_guide(model, data), data, num_samples=num)
    locs = torch.as_tensor(idata.posterior["loc"].values).reshape(num, 2)
    z = torch.as_tensor(idata.posterior["z"].values).reshape(num, len(data))
    rep = torch.as_tensor(idata.posterior_predictive["x"].values).reshape(num, len(data))
    assert idata.posterior["z"].dims == ("chain", "draw", "data")
    return data, locs, z, rep, copies


def test_assignments_are_drawn_from_their_exact_conditional(repeated_draws):
    data, locs, z, _, copies = repeated_draws
    # p(z_i = 1 | x_i, loc_s) = w_1 N(x_i; loc_s1, s_1) / sum_k w_k N(x_i; loc_sk, s_k)
    joint = WEIGHTS.log() + dist.Normal(locs[:, None, :], SCALES).log_prob(data[None, :, None])
    exact = joint.softmax(-1)[..., 1]
    # each z_si - p_si has mean 0 and sd <= 0.5: the mean of 10,000 of them per datum has
    # sd <= 0.005; 4.5 sd is a false failure about once in 1e5 per datum
    gap = ((z == 1).double() - exact).reshape(-1, copies, len(X)).mean((0, 1))
    assert gap.abs().max() < 4.5 * 0.5 / math.sqrt(z.numel() / len(X))


def test_predictive_draws_from_the_component_drawn(repeated_draws):
    _, locs, z, rep, _ = repeated_draws
    # given (loc_s, z_si) the replicate is N(loc_s[z], s[z]): standardized, N(0, 1). Drawn from
    # another component (z from its prior, or not at all) the residuals would be bimodal, of
    # sd about 1.5 here. n = 48,000: the mean has sd 0.0046 (tolerance 4.5 sd), the variance
    # sd sqrt(2/n) = 0.0065 (tolerance 0.03, 4.6 sd).
    residual = (rep - locs.gather(1, z.long())) / SCALES[z.long()]
    assert residual.mean().abs() < 4.5 / math.sqrt(residual.numel())
    assert (residual.var() - 1).abs() < 0.03


@pytest.mark.parametrize("index", [lambda loc, z: loc[z], lambda loc, z: Vindex(loc)[..., z]])
def test_deterministic_sites_follow_the_drawn_assignment(index):
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            center = pyro.deterministic("center", index(loc, z))
            pyro.sample("x", dist.Normal(center, SCALES[z]), obs=x)

    pyro.set_rng_seed(2)
    idata = pb.to_inference_data(model, mixture_guide(model), X, num_samples=30)
    locs = torch.as_tensor(idata.posterior["loc"].values).reshape(30, 2)
    z = torch.as_tensor(idata.posterior["z"].values).reshape(30, len(X)).long()
    center = torch.as_tensor(idata.posterior["center"].values).reshape(30, len(X))
    torch.testing.assert_close(center, locs.gather(1, z), rtol=0, atol=0)
    assert idata.posterior["center"].dims == ("chain", "draw", "data")


def test_hmm_chain_is_sampled_and_its_observations_left_out_of_log_likelihood_by_name():
    names = [f"s_{t}" for t in range(len(HMM_Y))]
    guide = AutoMultivariateNormal(poutine.block(hmm, hide=names))
    pyro.set_rng_seed(3)
    match = r"site\(s\) \['y_0', 'y_1', 'y_2', 'y_3'\].*'y_0'.*depend on the same enumerated"
    with pytest.warns(UserWarning, match=match):
        idata = pb.to_inference_data(hmm, guide, HMM_Y, num_samples=5)
    assert set(names) <= set(idata.posterior.data_vars)
    # InferenceData.groups() (ArviZ 0.x) or DataTree.groups, paths from "/" (ArviZ 1.x)
    groups = idata.groups() if callable(idata.groups) else [g.strip("/") for g in idata.groups]
    assert "log_likelihood" not in groups  # no site has per-element terms
    trans = torch.as_tensor(idata.posterior["trans"].values).reshape(5, 3, 3)
    locs = torch.as_tensor(idata.posterior["locs"].values).reshape(5, 3)
    log_p = torch.as_tensor(idata.sample_stats["log_p"].values).reshape(5)
    expected = torch.stack([hmm_by_hand(t, m, HMM_Y) for t, m in zip(trans, locs, strict=True)])
    torch.testing.assert_close(log_p, expected, rtol=1e-10, atol=1e-10)


def test_enumerated_site_under_a_subsampled_plate_is_refused_by_name():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x), subsample_size=2) as idx:
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x[idx])

    with pytest.raises(ValueError, match=r"enumerated site\(s\) \['z'\].*without subsample_size"):
        pb.to_inference_data(model, mixture_guide(model), X, num_samples=10)


def test_sequential_enumeration_is_refused_by_name():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "sequential"})
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)

    with pytest.raises(ValueError, match=r"'z'.*'sequential'.*parallel"):
        pb.to_inference_data(model, mixture_guide(model), X, num_samples=10)


# ----------------------------------------------------------------------------- loo_sensitivity
# Two well-separated groups: every datum's log-likelihood is concave enough near the posterior
# mode that leaving it out keeps the precision positive definite.
LOO_W = torch.tensor([0.6, 0.4], dtype=F64)
_gen = torch.Generator().manual_seed(1)
_z = torch.rand(12, generator=_gen, dtype=F64) < 0.4
LOO_Y = torch.where(_z, 2.0, -1.0).to(F64) + 0.7 * torch.randn(12, generator=_gen, dtype=F64)


def local_mixture(y):
    """A two-component mixture, the assignment local to the data plate and enumerated."""
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=F64), 2.0).to_event(1))
    with pyro.plate("data", len(y)):
        k = pyro.sample("k", dist.Categorical(LOO_W), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(locs[k], 0.7), obs=y)


def local_mixture_vindex(y):
    """``local_mixture`` written to broadcast over a batch of locations (one run for many
    draws in the sampled predictive)."""
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=F64), 2.0).to_event(1))
    with pyro.plate("data", len(y)):
        k = pyro.sample("k", dist.Categorical(LOO_W), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(Vindex(locs)[..., k], 0.7), obs=y)


def local_mixture_summed(y):
    """The same model with the assignment summed out by hand (MixtureSameFamily)."""
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2, dtype=F64), 2.0).to_event(1))
    with pyro.plate("data", len(y)):
        mix = dist.MixtureSameFamily(dist.Categorical(LOO_W), dist.Normal(locs, 0.7))
        pyro.sample("y", mix, obs=y)


@pytest.fixture(scope="module")
def fitted_guides():
    """The enumerated mixture's guide at the Newton (delta-method) fixed point, and the same
    Gaussian as a guide of the hand-summed model."""
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(poutine.block(local_mixture, hide=["k"]))
    blr = pb.BLR(local_mixture, guide, pb.Newton(lr=1.0))
    for _ in range(25):
        blr.step(LOO_Y)
    summed = AutoMultivariateNormal(local_mixture_summed)
    summed(LOO_Y)
    with torch.no_grad():
        summed.loc.copy_(guide.loc)
        summed.scale.copy_(guide.scale)
        summed.scale_tril.copy_(guide.scale_tril)
    return guide, summed


@pytest.mark.parametrize(
    ("model", "predictive"),
    [(local_mixture, "quadratic"), (local_mixture, "sample"), (local_mixture_vindex, "sample")],
    ids=["quadratic", "sample-loop", "sample-plate"],
)
def test_loo_sensitivity_equals_the_hand_summed_model(fitted_guides, model, predictive):
    guide, summed = fitted_guides
    options = dict(predictive=predictive, num_samples=8)
    pyro.set_rng_seed(4)  # the same predictive draws for both
    got = pb.loo_sensitivity(model, guide, LOO_Y, **options)
    pyro.set_rng_seed(4)
    exact = pb.loo_sensitivity(local_mixture_summed, summed, LOO_Y, **options)
    assert got.plate == exact.plate == "data" and got.method == exact.method == predictive
    for field in got._fields:
        value = getattr(got, field)
        if torch.is_tensor(value):
            torch.testing.assert_close(value, getattr(exact, field), rtol=1e-8, atol=1e-8)
    assert torch.isfinite(got.prediction_error).all()


def test_marginal_mean_is_the_mixture_mean():
    loc = torch.tensor([-1.0, 2.0], dtype=F64)
    trace = enumerated_trace(mixture, (X,), {}, 1, {"loc": loc})
    mean = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), dist.Normal(loc, SCALES)).mean
    torch.testing.assert_close(marginal_mean(trace, "x", 1), mean.expand(len(X)))


def test_loo_sensitivity_refuses_an_enumerated_site_shared_by_every_datum():
    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)

    guide = mixture_guide(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0)).fit(X, num_steps=20, progress=False)
    with pytest.raises(ValueError, match=r"'x' depends on enumerated site 'z'.*outside plate"):
        pb.loo_sensitivity(model, guide, X)


def test_masked_and_scaled_sites_count_as_the_model_weighs_them():
    # poutine.mask and poutine.scale, as without enumeration: a masked-out datum has no term (0)
    # and the pointwise terms carry the scale. 'w' touches no enumerated site: its terms come
    # from its own density, which pointwise_log_likelihood leaves unmasked (masked here).
    keep = torch.tensor([True, False, True, True])

    def model(x):
        loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=F64), 10.0).to_event(1))
        with pyro.plate("data", len(x)), poutine.mask(mask=keep), poutine.scale(scale=2.0):
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
            pyro.sample("x", dist.Normal(loc[z], SCALES[z]), obs=x)
            pyro.sample("w", dist.Normal(loc[0], 1.0), obs=x)

    pyro.set_rng_seed(5)
    idata = pb.to_inference_data(model, mixture_guide(model), X, num_samples=5)
    locs = torch.as_tensor(idata.posterior["loc"].values).reshape(5, 2)
    x_terms = torch.stack([2.0 * hand_pointwise(loc, X) * keep for loc in locs])
    w_terms = torch.stack([2.0 * dist.Normal(loc[0], 1.0).log_prob(X) * keep for loc in locs])
    for name, exact in (("x", x_terms), ("w", w_terms)):
        found = torch.as_tensor(idata.log_likelihood[name].values).reshape(5, len(X))
        torch.testing.assert_close(found, exact, rtol=1e-12, atol=1e-12)
    prior = dist.Normal(torch.zeros(2, dtype=F64), 10.0).log_prob(locs).sum(-1)
    log_p = torch.as_tensor(idata.sample_stats["log_p"].values).reshape(5)
    expected = prior + x_terms.sum(-1) + w_terms.sum(-1)
    torch.testing.assert_close(log_p, expected, rtol=1e-12, atol=1e-12)


def test_loo_sensitivity_of_a_diagonal_guide_equals_the_hand_summed_model():
    # a diagonal guide takes the Newton step with the log joint's Hessian, the enumerated sites
    # summed out of it too
    pyro.set_rng_seed(0)
    guide = AutoNormal(poutine.block(local_mixture, hide=["k"]))
    blr = pb.BLR(local_mixture, guide, pb.Newton(lr=1.0))
    for _ in range(25):
        blr.step(LOO_Y)
    summed = AutoNormal(local_mixture_summed)
    summed(LOO_Y)
    with torch.no_grad():
        mine = dict(guide.named_parameters())
        for name, param in summed.named_parameters():
            param.copy_(mine[name])
    got = pb.loo_sensitivity(local_mixture, guide, LOO_Y, predictive="quadratic")
    exact = pb.loo_sensitivity(local_mixture_summed, summed, LOO_Y, predictive="quadratic")
    for field in got._fields:
        value = getattr(got, field)
        if torch.is_tensor(value):
            torch.testing.assert_close(value, getattr(exact, field), rtol=1e-8, atol=1e-8)


def test_pyros_gmm_tutorial_runs_unchanged_through_to_inference_data():
    # the tutorial's float32 model: the enumerated and hand-summed sums differ by round-off
    # (a few float32 ulps of values up to about 50); 1e-5 relative is about 80 ulps
    guide = AutoMultivariateNormal(poutine.block(gmm, expose=list(GMM_LATENTS)))
    pyro.set_rng_seed(0)
    idata = pb.to_inference_data(gmm, guide, GMM_DATA, num_samples=10)
    assert idata.posterior["assignment"].dims == ("chain", "draw", "data")
    log_p = torch.as_tensor(idata.sample_stats["log_p"].values).reshape(10)
    for s in range(10):
        values = {n: torch.as_tensor(idata.posterior[n].values[0, s]) for n in GMM_LATENTS}
        conditioned = poutine.condition(gmm_summed, data=values)
        exact = poutine.trace(conditioned).get_trace(GMM_DATA).log_prob_sum()
        torch.testing.assert_close(log_p[s], exact, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # 8 s: 40 Newton steps of the tutorial's model, then two leave-one-out runs
def test_pyros_gmm_tutorial_runs_unchanged_through_loo_sensitivity():
    # float32: the two sums differ by 2e-6 at most (measured) on values up to 18; 1e-5 is
    # about 5 float32 ulps of those values
    guide = AutoMultivariateNormal(poutine.block(gmm, expose=list(GMM_LATENTS)))
    pyro.set_rng_seed(0)
    blr = pb.BLR(gmm, guide, pb.Newton(lr=0.5))
    for _ in range(40):
        blr.step(GMM_DATA)
    summed = AutoMultivariateNormal(gmm_summed)
    summed(GMM_DATA)
    with torch.no_grad():
        mine = dict(guide.named_parameters())
        for name, param in summed.named_parameters():
            param.copy_(mine[name])
    got = pb.loo_sensitivity(gmm, guide, GMM_DATA, predictive="quadratic")
    exact = pb.loo_sensitivity(gmm_summed, summed, GMM_DATA, predictive="quadratic")
    for field in got._fields:
        value = getattr(got, field)
        if torch.is_tensor(value):
            torch.testing.assert_close(value, getattr(exact, field), rtol=1e-5, atol=1e-5)
