"""IVON in the data's units: the precision starts at the expected curvature (capped) or at ess
* hess_init, never at the guide's init scale; ess comes from the model's plates, and the options
are validated."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb
from pyro_blr.blr import ivon_start
from pyro_blr.blr.prior_scale import prior_scale
from pyro_blr.blr.rules import rule_from_name
from pyro_blr.core import latent_layout
from tests.scenarios import NormalNormal, load_example


def prior_precision(model, guide, *args):
    """1 / s_i^2 for the prior's robust scale s_i per coordinate: the unit of the auto start."""
    layout = latent_layout(guide.prototype_trace)
    return prior_scale(model, layout, args, {}, like=args[0]).pow(-2)


def first_precision(guide_kwargs=None, **options):
    """The guide's precision after one IVON step on y_i ~ N(mu, 1), 10 data, mu ~ N(0, 1)."""
    s = NormalNormal(torch.linspace(-1, 1, 10, dtype=torch.float64))
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(s.model, **(guide_kwargs or {}))
    pb.BLR(s.model, guide, pb.IVON(lr=1e-3, **options)).step(s.y)
    return float(guide.scales.mu.detach().pow(-2))


def test_the_precision_starts_at_ess_times_hess_init():
    # One step with beta2 = 0.999 moves the precision by at most 0.1% of the gap to the
    # curvature estimate (11 here, times a chi-square draw): the start shows through.
    assert first_precision(hess_init=2.0) == pytest.approx(20.0, rel=0.01)  # ess = 10 data
    assert first_precision(hess_init=3.0, ess=5) == pytest.approx(15.0, rel=0.01)
    assert first_precision(hess_init=0.5) == pytest.approx(5.0, rel=0.01)  # below the Hessian
    # hess_init="auto" starts at the Hessian (1 + 10 = 11 everywhere), whatever the guide's
    # init_scale; hess_init=None keeps the guide's 1 / 0.1^2.
    assert first_precision() == pytest.approx(11.0, rel=0.01)
    assert first_precision({"init_scale": 1e-3}) == pytest.approx(11.0, rel=0.01)
    assert first_precision(hess_init=None) == pytest.approx(100.0, rel=0.01)


def product_model(y):
    """y_i ~ N(a b, 1): at a = b = 0 the likelihood has no curvature in a or b."""
    a = pyro.sample("a", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(a * b, 1.0), obs=y)


def test_the_auto_start_is_the_expected_curvature_not_the_curvature_at_the_mean():
    # The Hessian of l in a is 1 + N b^2: 1 at the symmetric start b = 0, but 1 + N s^2 chi2_1
    # at a draw b ~ N(0, s^2). With N = 10^4, s = 0.1 its expectation is 101; four draws average
    # chi2_4 / 4, below 0.09 (a start under 10) with probability 0.014 (the draws are fixed).
    y = torch.zeros(10_000, dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoNormal(product_model, init_scale=0.1)
    pb.BLR(product_model, guide, pb.IVON(lr=1e-3)).step(y)
    for site in ("a", "b"):
        start = float(getattr(guide.scales, site).detach().pow(-2))
        assert 10 < start < 1 + 1e4 * 0.01 * 6  # chi2_4 / 4 above 6: probability 2e-5


def concave_in_mu(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    pyro.factor("bump", 10 * mu**2)  # the log joint's curvature in mu: 1 + len(y) - 20 < 0
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_where_the_curvature_is_not_positive_the_auto_start_is_one_prior_precision_per_datum():
    # ess / s^2 for the prior's scale s (about 1 here, estimated from prior draws)
    y = torch.zeros(10, dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoNormal(concave_in_mu)
    pb.BLR(concave_in_mu, guide, pb.IVON(lr=1e-3)).step(y)
    expected = 10 * float(prior_precision(concave_in_mu, guide, y))
    assert float(guide.scales.mu.detach().pow(-2)) == pytest.approx(expected, rel=0.01)


def poisson_rate(y):
    """y_i ~ Poisson(exp(theta)): the curvature N exp(theta) grows fast away from the mean."""
    theta = pyro.sample("theta", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(theta.exp()), obs=y)


@pytest.mark.parametrize("init_scale", [0.01, 1.0])
def test_a_broad_guide_does_not_start_above_the_curvature_near_its_mean(init_scale):
    # At draws from N(0, 1) the curvature 1 + 500 exp(theta) averages far above its value at
    # the mean, 501 (e^{1/2} times in expectation, more with exp's long tail), and beta2 = 0.999
    # would take thousands of steps to forget it: the start is capped at max(ess / s^2, H(m)),
    # with H(m) = 501 and the prior's scale s about 1.
    y = torch.ones(500, dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoNormal(poisson_rate, init_scale=init_scale)
    pb.BLR(poisson_rate, guide, pb.IVON(lr=1e-3, beta2=1 - 1e-6)).step(y)
    cap = max(500 * float(prior_precision(poisson_rate, guide, y)), 501.0)
    # a narrow guide's draws see about H(m) itself (501 e^{1/(2 * 100^2)}); a broad one's the cap
    expected = 501.0 if init_scale < 0.1 else cap
    assert float(guide.scales.theta.detach().pow(-2)) == pytest.approx(expected, rel=1e-3)


def subsampled_mean(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y), subsample_size=10) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def test_the_auto_start_leaves_the_runs_random_stream_alone():
    # The start's model runs draw a minibatch of their own; the run's later draws must not
    # depend on whether the start was computed.
    y = torch.linspace(-1, 1, 100, dtype=torch.float64)
    states = []
    for hess_init in ("auto", 1.0):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(subsampled_mean)
        pb.BLR(subsampled_mean, guide, pb.IVON(lr=1e-3, hess_init=hess_init)).step(y)
        states.append(torch.get_rng_state())
    assert torch.equal(*states)


def test_a_start_whose_scale_is_not_finite_is_refused_by_name():
    y = torch.zeros(10)  # float32: 10 * 1e-50 rounds to a precision of 0
    pyro.clear_param_store()
    guide = AutoNormal(per_datum_latents)
    blr = pb.BLR(per_datum_latents, guide, pb.IVON(hess_init=1e-50))
    with pytest.raises(ValueError, match=r"hess_init=1e-50: the starting precision"):
        blr.step(y)


def per_datum_latents(y):
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y)):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


@pytest.mark.parametrize("hess_init", [3.0, "auto"])
def test_a_latent_inside_the_data_plate_starts_at_one_datums_curvature(monkeypatch, hess_init):
    # mu starts at 100 * hess_init but each z_i, which sees one datum, at 1 * hess_init; "auto"
    # above the size where it takes the Hessian starts z_i at one datum's share too.
    monkeypatch.setattr(ivon_start, "EXACT_START_MAX_DIM", 0)
    y = torch.linspace(-1, 1, 100, dtype=torch.float64)
    pyro.clear_param_store()
    guide = AutoNormal(per_datum_latents)
    # beta2 close to one: the step moves the precision by 1e-6 of the gap to the estimate.
    blr = pb.BLR(per_datum_latents, guide, pb.IVON(lr=1e-3, hess_init=hess_init, beta2=1 - 1e-6))
    blr.step(y)
    if hess_init == "auto":
        per_datum = prior_precision(per_datum_latents, guide, y)
    else:
        per_datum = torch.full((101,), hess_init, dtype=torch.float64)
    mu_start = float(guide.scales.mu.detach().pow(-2))
    if hess_init == "auto":
        # above the exact size "auto" is each site's measured expected curvature (Hutchinson,
        # 64 products), capped at N_i / s_i^2: mu's is 101 (prior plus 100 data); 6% is five
        # standard errors of the 64-probe estimate
        assert mu_start == pytest.approx(min(101.0, 100 * float(per_datum[0])), rel=0.06)
    else:
        assert mu_start == pytest.approx(100 * float(per_datum[0]), rel=0.01)
    torch.testing.assert_close(guide.scales.z.detach().pow(-2), per_datum[1:], rtol=0.01, atol=0)


def test_each_fit_judges_divergence_against_its_own_best():
    # A second fit on ten times the data has a loss far above the first fit's best: that is
    # not a divergence.
    s = NormalNormal(torch.linspace(-1, 1, 1000, dtype=torch.float64))
    pyro.clear_param_store()
    blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON(lr=0.5))
    blr.fit(s.y[:10], num_steps=30, progress=False)
    blr.fit(s.y, num_steps=30, progress=False)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(ess=0), "ess must be positive"),
        (dict(ess=-3.0), r"ess must lie in \[0, inf\)"),
        (dict(hess_init=0.0), "hess_init must be positive"),
        (dict(hess_init=float("nan")), "hess_init must lie in"),
        (dict(hess_init="exact"), "hess_init must be 'auto', a number or None, got 'exact'"),
    ],
)
def test_bad_data_scale_options_are_named(options, message):
    s = NormalNormal(torch.zeros(3))
    with pytest.raises(ValueError, match=message):
        pb.BLR(s.model, AutoNormal(s.model), pb.IVON(**options))


def test_data_scale_options_are_ivons_and_vons_own():
    s = NormalNormal(torch.zeros(3))
    for rule in ("newton", "vogn", "ogn"):
        with pytest.raises(TypeError, match="unexpected keyword argument 'hess_init'"):
            rule_from_name(rule, hess_init=2.0)
        with pytest.raises(TypeError, match=r"options of the rule.*pb\.(Newton|VOGN|OGN)\("):
            pb.BLR(s.model, AutoNormal(s.model), rule_from_name(rule), hess_init=2.0)


class BNN(PyroModule):
    """20 inputs, 64 ReLU units, noise sd 0.1: a network as a Pyro user writes one."""

    def __init__(self, num_data: int, batch: int):
        super().__init__()
        self.num_data, self.batch = num_data, batch
        self.hidden = PyroModule[nn.Linear](20, 64)
        self.hidden.weight = PyroSample(dist.Normal(0.0, 1.0).expand([64, 20]).to_event(2))
        self.hidden.bias = PyroSample(dist.Normal(0.0, 1.0).expand([64]).to_event(1))
        self.out = PyroModule[nn.Linear](64, 1)
        self.out.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 64]).to_event(2))
        self.out.bias = PyroSample(dist.Normal(0.0, 1.0).expand([1]).to_event(1))

    def forward(self, X, y):
        data = pyro.plate("data", self.num_data, subsample_size=self.batch)
        idx = data.indices  # the minibatch, drawn as the plate is made
        mean = self.out(torch.relu(self.hidden(X[idx]))).squeeze(-1)  # weights outside the plate
        with data:
            pyro.sample("y", dist.Normal(mean, 0.1), obs=y[idx])


def rmse(guide, X, y):
    median = guide.median()
    with torch.no_grad():
        hidden = torch.relu(X @ median["hidden.weight"].T + median["hidden.bias"])
        mean = (hidden @ median["out.weight"].T + median["out.bias"]).squeeze(-1)
    return float((mean - y).pow(2).mean().sqrt())


@pytest.mark.slow  # five fits of 600 steps on 10^5 data
def test_ivon_trains_a_bnn_at_scale_with_its_defaults():
    # Before IVON's start was put on the data's scale, this network diverged within ten steps
    # at lr 0.01-0.2: the precision started at 100 where the curvature is of order 10^7.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(102_000, 20, generator=gen)
    y = (
        torch.sin(X[:, 0])
        + torch.cos(X[:, 1] * X[:, 2])
        + 0.1 * torch.randn(102_000, generator=gen)
    )
    train, test = slice(0, 100_000), slice(100_000, None)
    steps = 600
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = BNN(100_000, 256)
    guide = AutoNormal(net)
    svi = SVI(net, guide, pyro.optim.Adam({"lr": 0.01}), Trace_ELBO())
    for _ in range(steps):
        svi.step(X[train], y[train])
    adam = rmse(guide, X[test], y[test])
    for seed in range(5):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        net = BNN(100_000, 256)
        guide = AutoNormal(net)
        pb.BLR(net, guide).fit(X[train], y[train], num_steps=steps, progress=False)
        # Not a diverged fit (fit() raises on those), and as accurate as SVI + Adam's fit of the
        # same length within 10% (measured: IVON 0.23-0.28 over seeds, Adam 0.36 at 600 steps).
        assert rmse(guide, X[test], y[test]) <= 1.1 * adam


def _eight_schools_fit(rule, num_steps, **options):
    """AutoNormal's unconstrained means and scales (mu, log tau, the eight theta_trans) after a
    BLR fit of non-centered eight schools."""
    eight = load_example("eight_schools")
    sigma, y, _ = eight.load()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(eight.model)
    pb.BLR(eight.model, guide, rule_from_name(rule, **options)).fit(
        sigma, y, num_steps=num_steps, progress=False
    )
    sites = ("mu", "tau", "theta_trans")
    loc = torch.cat([getattr(guide.locs, s).detach().reshape(-1) for s in sites])
    scale = torch.cat([getattr(guide.scales, s).detach().reshape(-1) for s in sites])
    return loc, scale


@pytest.mark.slow  # two fits of 3000-4000 steps
def test_ivon_reaches_the_mean_field_optimum_on_eight_schools_at_its_defaults():
    # The reference is the mean-field optimum from exact Hessians ("von" on the same guide, 16
    # particles, 3000 steps at lr 0.1); a second such fit at lr 0.05 and 32 particles agrees
    # within 0.03 sd and 2% in every scale. IVON at its defaults starts at the expected
    # curvature (log tau at precision 0.18, the optimum's is 1.96) and beta2 = 0.999 closes
    # 0.1% of the gap a step: 1.8% is left after 4000 steps. Measured on seeds 0-9: worst
    # mean error 0.026-0.056 sd, scale ratios 0.970-1.039 (at 2000 steps one seed of ten was
    # 0.14 sd off). Before the start was the expected curvature (it was 8 = ess * 1 here), the
    # ratio of log tau's scale was 0.23 after 2000 steps.
    ref_loc, ref_scale = _eight_schools_fit("von", 3000, lr=0.1, mc_samples=16)
    loc, scale = _eight_schools_fit("ivon", 4000)
    assert ((loc - ref_loc).abs() / ref_scale).max() < 0.1
    ratio = scale / ref_scale
    assert ((ratio > 0.9) & (ratio < 1.1)).all()
