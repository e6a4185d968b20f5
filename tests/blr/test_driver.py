"""The BLR driver's contract: subsampling, dtypes, checkpoints, Pyro models of every shape."""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb
from pyro_blr.blr.rules import rule_from_name
from tests.scenarios import constrained_model, linear_regression


def test_subsampled_fit_converges_to_the_full_data_posterior():
    # Measured over 10 seeds with this schedule: the final mean's error has sd 0.2 posterior sd,
    # the sd ratio stays within 0.98-1.03. Tolerances: 4 x 0.2 sd, and +-10% for the sd (a wrong
    # N/B scaling would put it off by a factor sqrt(10)).
    s = linear_regression(num_data=200, subsample_size=20)
    guide = AutoNormal(s.model)
    blr = pb.BLR(s.model, guide, pb.VON(lr=lambda t: 1 / (1 + t / 10)))
    blr.fit(s.X, s.y, num_steps=1000, progress=False)
    sd = s.posterior_precision.diagonal().rsqrt()
    assert ((guide.locs.w.detach() - s.posterior_mean).abs() / sd < 0.8).all()
    ratio = guide.scales.w.detach() / sd
    assert ((ratio > 0.9) & (ratio < 1.1)).all()


@pytest.mark.parametrize(
    "default, data", [(torch.float32, torch.float64), (torch.float64, torch.float32)]
)
@pytest.mark.parametrize("rule", ["ivon", "von", "newton"])
def test_state_follows_the_data_dtype_not_the_default(default, data, rule):
    s = linear_regression(dtype=data)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        guide = AutoDiagonalNormal(s.model)
        blr = pb.BLR(s.model, guide, rule_from_name(rule, lr=0.1))
        blr.fit(s.X, s.y, num_steps=3, progress=False)
    finally:
        torch.set_default_dtype(previous)
    assert all(t.dtype == data for t in blr.state_dict()["state"].values())
    assert guide.loc.dtype == data and guide.scale.dtype == data


@pytest.mark.parametrize(
    "rule, guide_class", [("ivon", AutoNormal), ("von", AutoMultivariateNormal)]
)
def test_state_dict_round_trip_repeats_the_run_bit_for_bit(rule, guide_class):
    s = linear_regression(subsample_size=10)
    data = (s.X, s.y)

    def make():
        pyro.clear_param_store()
        guide = guide_class(s.model)
        guide(*data)
        return guide, pb.BLR(s.model, guide, rule_from_name(rule, lr=lambda t: 0.3 / (1 + t)))

    pyro.set_rng_seed(0)
    _, blr = make()
    blr.fit(*data, num_steps=5, progress=False)
    checkpoint = blr.state_dict()
    rng = torch.get_rng_state()
    expected = blr.fit(*data, num_steps=5, progress=False).losses
    expected_state = blr.state_dict()

    _, resumed = make()
    resumed.load_state_dict(checkpoint)
    torch.set_rng_state(rng)
    assert resumed.fit(*data, num_steps=5, progress=False).losses == expected
    for name, value in resumed.state_dict()["state"].items():
        assert torch.equal(value, expected_state["state"][name]), name
    assert resumed.num_steps == 10


def test_load_state_dict_checks_the_rule():
    s = linear_regression()
    blr = pb.BLR(s.model, AutoNormal(s.model), pb.VON())
    with pytest.raises(ValueError, match="state_dict is of rule 'ivon', this driver runs 'von'"):
        blr.load_state_dict({"rule": "ivon", "num_steps": 0, "state": None})


class BayesianLinear(PyroModule):
    def __init__(self, dim):
        super().__init__()
        self.linear = PyroModule[nn.Linear](dim, 1)
        self.linear.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, dim]).to_event(2))
        self.linear.bias = PyroSample(dist.Normal(0.0, 1.0))

    def forward(self, X, y):
        mean = self.linear(X).squeeze(-1)
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(mean, 0.5), obs=y)


def test_pyro_module_model_gets_the_exact_posterior():
    # The same conjugate regression written as a PyroModule with a bias: Newton, lr=1, one step.
    s = linear_regression(dtype=torch.float32)
    model = BayesianLinear(3)
    guide = AutoMultivariateNormal(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0), vectorize_particles=False).step(s.X, s.y)
    X1 = torch.cat([s.X, torch.ones(len(s.y), 1)], 1).double()
    precision = torch.eye(4, dtype=torch.float64) + X1.T @ X1 / 0.25
    mean = torch.linalg.solve(precision, X1.T @ s.y.double() / 0.25)
    torch.testing.assert_close(guide.loc.detach().double(), mean, rtol=1e-4, atol=1e-4)
    # The vectorized path cannot run nn.Linear on batched weights; per-particle runs can.
    samples = pyro.infer.Predictive(model, guide=guide, num_samples=10)(s.X, None)
    assert samples["linear.weight"].shape == (10, 1, 1, 3)


def test_constrained_sites_and_nested_plates_reach_an_elbo_stationary_point():
    # At the BLR fixed point E_q[grad l] = 0, i.e. the ELBO's gradient in the mean vanishes.
    # Pyro's own Trace_ELBO checks it: 8 batches of 2000 particles give its mean and standard
    # error; the gradient must be within 4 standard errors of zero (and was > 10 at the start).
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    data = (x, 2 * x + torch.randn(2, 5, generator=gen, dtype=torch.float64))
    guide = AutoMultivariateNormal(constrained_model)
    blr = pb.BLR(constrained_model, guide, pb.VON(lr=lambda t: 0.5 / (1 + t / 20), mc_samples=8))

    def elbo_gradient():
        elbo = Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=2)
        grads = []
        for _ in range(8):
            loss = elbo.differentiable_loss(constrained_model, guide, *data)
            grads.append(torch.autograd.grad(loss, guide.loc)[0])
        grads = torch.stack(grads)
        return grads.mean(0), grads.std(0) / 8**0.5

    guide(*data)
    start, _ = elbo_gradient()
    assert start.abs().max() > 10
    blr.fit(*data, num_steps=400, progress=False)
    mean, stderr = elbo_gradient()
    assert (mean.abs() < 4 * stderr + 1e-3).all(), (mean, stderr)


def test_pyro_module_with_auto_normal_writes_dotted_site_names():
    # AutoNormal stores "linear.weight" in nested modules; the mean-field optimum of a Gaussian
    # posterior has the exact posterior mean.
    s = linear_regression(dtype=torch.float32)
    model = BayesianLinear(3)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=0.5), vectorize_particles=False)
    blr.fit(s.X, s.y, num_steps=300, progress=False)
    X1 = torch.cat([s.X, torch.ones(len(s.y), 1)], 1).double()
    precision = torch.eye(4, dtype=torch.float64) + X1.T @ X1 / 0.25
    mean = torch.linalg.solve(precision, X1.T @ s.y.double() / 0.25)
    median = guide.median(s.X, s.y)
    found = torch.cat([median["linear.weight"].reshape(-1), median["linear.bias"].reshape(-1)])
    torch.testing.assert_close(found.double(), mean, rtol=0, atol=1e-4)  # float32 round-off


def _poisson_regression():
    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Poisson((X @ w).exp()), obs=y)

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(100, 3, generator=gen, dtype=torch.float64)
    w = torch.tensor([0.5, -0.3, 0.8], dtype=torch.float64)
    return model, X, torch.poisson((X @ w).exp(), generator=gen)


def test_a_short_fit_never_ends_at_an_average_worse_than_its_last_iterate():
    # Seven Newton steps at lr 0.1 are still far from the optimum: the average of steps 4-7 lags
    # ~15 nats behind step 7 (ELBO -198.8 against -184.1, 2000 draws, stderr 0.2 each). The
    # fit must end at the better one, here the last iterate, exactly as average=False leaves it.
    model, X, y = _poisson_regression()
    ends, kept_average = {}, []
    for average in (None, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoMultivariateNormal(model)
        blr = pb.BLR(model, guide, pb.Newton())
        blr.fit(X, y, num_steps=7, progress=False, average=average)
        kept_average.append(blr.averaged)
        ends[average] = (guide.loc.detach().clone(), guide.scale_tril.detach().clone())
        pyro.set_rng_seed(1)  # the same draws for both ELBOs
        ends[average] += (pb.log_evidence(model, guide, X, y, num_particles=2000).value,)
    assert kept_average == [False, False]
    assert ends[None][2] >= ends[False][2] - 0.5  # same draws: the difference is round-off
    torch.testing.assert_close(ends[None][0], ends[False][0])
    torch.testing.assert_close(ends[None][1], ends[False][1])


def test_a_long_constant_step_fit_keeps_the_average_when_it_is_better():
    # At the end of 200 von steps at lr 0.5 with 2 particles the last iterate jitters around the
    # optimum; the average of 100 iterates has far less noise, so its ELBO is the higher on the
    # same 32 draws (the average was kept on each of seeds 0-4).
    model, X, y = _poisson_regression()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(model)
    blr = pb.BLR(model, guide, pb.VON(lr=0.5))
    blr.fit(X, y, num_steps=200, progress=False)
    assert blr.averaged


def test_a_fit_shorter_than_its_window_with_a_falling_loss_is_not_called_diverged():
    # Newton at lr 1 on a conjugate model is exact in one step: the loss falls from ~1e5 to ~1e2
    # and stays. Three steps are fewer than the window of 20; nothing diverged.
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(200, 3, generator=gen, dtype=torch.float64)
    y = X @ torch.tensor([10.0, -10.0, 5.0], dtype=torch.float64) + 0.1 * torch.randn(
        200, generator=gen, dtype=torch.float64
    )
    s = linear_regression(dtype=torch.float64)
    s.X, s.y, s.noise, s.prior_scale = X, y, 0.1, 10.0
    blr = pb.BLR(s.model, AutoMultivariateNormal(s.model), pb.Newton(lr=1.0))
    losses = blr.fit(s.X, s.y, num_steps=3, progress=False).losses
    assert losses[0] > 1e4 > 1e3 > losses[-1]


@pytest.mark.parametrize(
    "optim",
    [torch.optim.Adam, lambda: torch.optim.Adam([torch.zeros(1, requires_grad=True)])],
    ids=["class", "instance"],
)
def test_a_torch_optimizer_is_refused_with_what_optim_is_for(optim):
    s = linear_regression()
    optim = optim if isinstance(optim, type) else optim()
    with pytest.raises(TypeError, match=r"pyro\.optim\.Adam.*model's own parameters.*rule"):
        pb.BLR(s.model, AutoNormal(s.model), pb.VON(), model_optim=optim)


def _model_with_a_window(calls):
    def model(y, window=3):
        calls.append(window)
        mu = pyro.sample("mu", dist.Normal(y.new_zeros(()), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    return model


def test_fit_refuses_a_model_keyword_named_like_its_option():
    calls = []
    model = _model_with_a_window(calls)
    blr = pb.BLR(model, AutoNormal(model), pb.VON())
    with pytest.raises(TypeError, match=r"argument named 'window'.*model_kwargs="):
        blr.fit(torch.ones(3), num_steps=2, window=7, progress=False)
    assert not calls  # refused before the model ran


def test_fit_passes_model_kwargs_to_the_model():
    calls = []
    model = _model_with_a_window(calls)
    blr = pb.BLR(model, AutoNormal(model), pb.VON())
    blr.fit(torch.ones(3), num_steps=2, progress=False, window=1, model_kwargs={"window": 7})
    assert calls and set(calls) == {7}


def test_fit_batches_cycles_through_an_iterable_and_refuses_data_given_twice():
    s = linear_regression()
    batches = [(s.X[:10], s.y[:10]), (s.X[10:], s.y[10:])]
    seen = []

    def model(X, y):
        seen.append(len(y))
        s.model(X, y)

    blr = pb.BLR(model, AutoNormal(model), pb.VON(lr=0.5), vectorize_particles=False)
    with pytest.raises(TypeError, match="either as the model's positional arguments or as"):
        blr.fit(s.X, s.y, num_steps=2, batches=batches, progress=False)
    blr.fit(num_steps=3, batches=batches, progress=False, check=False)
    assert set(seen) == {10, len(s.y) - 10}  # both batches, the first one again at step 3
    with pytest.raises(ValueError, match="batches yielded no batch"):
        blr.fit(num_steps=1, batches=[], progress=False)


@pytest.mark.slow  # ~20 s on a loaded machine: 200 steps with five M-steps each
def test_a_model_parameter_reaches_its_type_ii_maximum_likelihood():
    # A four-line conjugate model with its noise as a pyro.param: the exact type-II ML noise
    # maximizes log N(y; 0, s^2 I + x x^T), 0.0094 here (grid of 6000 log-spaced points).
    # One Adam(0.01) step per BLR step left it at 0.050 after 300 steps (w's sd 5x too wide);
    # five reach 0.0094 by 300 steps. Tolerance: 10% after 200 steps (measured 0.0094).
    from torch.distributions import constraints

    def model(x, y):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
        sigma = pyro.param("sigma", x.new_tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, sigma), obs=y)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=gen, dtype=torch.float64)
    y = 0.7 * x + 0.01 * torch.randn(50, generator=gen, dtype=torch.float64)
    # log N(y; 0, s^2 I + x x^T) up to a constant, by the matrix determinant lemma and
    # Sherman-Morrison: (N-1) log s^2 + log(s^2 + |x|^2) + (|y|^2 - (x.y)^2 / (s^2 + |x|^2)) / s^2
    grid = torch.linspace(-6, 0, 6001, dtype=torch.float64).exp()
    v, xx = grid**2, x @ x
    evidence = -0.5 * (
        (len(x) - 1) * v.log() + (v + xx).log() + (y @ y - (x @ y) ** 2 / (v + xx)) / v
    )
    exact = grid[evidence.argmax()].item()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    pb.BLR(model, guide, pb.VON(lr=0.5)).fit(x, y, num_steps=200, progress=False)
    assert abs(pyro.param("sigma").item() / exact - 1) < 0.1, (pyro.param("sigma").item(), exact)


def _newton_fit_in_units(c: float, lr: float, num_steps: int) -> tuple[bool, list[str]]:
    """Newton on the conjugate regression with the data, the prior, the noise and the guide's
    start all in units of ``c``: the same fit, its losses shifted by ``N log c``. Returns
    whether fit() raised and the steps at which it warned that the fit was diverging."""
    pyro.clear_param_store()
    s = linear_regression()
    s.y, s.prior_scale, s.noise = s.y * c, s.prior_scale * c, s.noise * c
    guide = AutoDiagonalNormal(s.model, init_scale=0.1 * c)
    blr = pb.BLR(s.model, guide, pb.Newton(lr=lr))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            blr.fit(s.X, s.y, num_steps=num_steps, progress=False, check=False)
            raised = False
        except FloatingPointError as error:
            assert "diverged" in str(error)
            raised = True
    warned = [str(w.message).split(":")[0] for w in caught if "diverging" in str(w.message)]
    return raised, warned


def test_a_diverging_fit_gets_the_same_verdict_in_any_units():
    # Newton at lr 3 overshoots (the mean's error doubles a step) on the conjugate
    # regression. In units of 1e8 every loss is the same plus 20 log(1e8) = 368 nats; a threshold
    # that grew with |best| let five steps of this fit return the diverged guide as an answer
    # (and warned two steps later), while in units of 1 it raised.
    verdicts = {c: _newton_fit_in_units(c, lr=3.0, num_steps=5) for c in (1.0, 1e8)}
    assert verdicts[1.0] == verdicts[1e8]
    assert verdicts[1.0][0], "the diverging fit must raise"
    assert verdicts[1.0][1], "and warn as it diverges"


@pytest.mark.parametrize("c", [1e-8, 1.0, 1e8])
def test_a_converging_fit_is_never_called_diverging_in_any_units(c):
    # lr 1 is Newton's exact step on this model: nothing diverges, in whatever units.
    assert _newton_fit_in_units(c, lr=1.0, num_steps=5) == (False, [])
