"""to_inference_data: exact round trips, shapes and names, every guide, ArviZ's own functions."""

import warnings

import matplotlib
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoDiagonalNormal, AutoMultivariateNormal, AutoNormal

import pyro_blr as pb
from pyro_blr.diagnostics.arviz_compat import MIN_PSIS_SAMPLES, elpd_summary, import_arviz
from tests.scenarios import MIXTURE_DATA, linear_regression, mixture, mixture_guide

matplotlib.use("Agg")
az = import_arviz()


@pytest.fixture(scope="module")
def exact():
    pyro.clear_param_store()
    s = linear_regression()
    guide = AutoMultivariateNormal(s.model)
    pb.BLR(s.model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)
    pyro.set_rng_seed(0)
    return s, guide, pb.to_inference_data(s.model, guide, s.X, s.y, num_samples=4000, num_chains=4)


def test_summary_matches_the_exact_posterior(exact):
    # 4000 independent draws: means within 4 standard errors (4 sd / sqrt(4000)); sds within
    # 4 relative standard errors of a sample sd (4 / sqrt(2 * 4000) = 4.5%).
    s, _, idata = exact
    summary = az.summary(idata, var_names=["w"], kind="stats")
    sd = s.posterior_covariance.diagonal().sqrt().numpy()
    assert (
        abs(summary["mean"].to_numpy() - s.posterior_mean.numpy()).max()
        < (4 * sd / 4000**0.5).max()
    )
    assert abs(summary["sd"].to_numpy() / sd - 1).max() < 0.045


def test_groups_dims_and_coords(exact):
    s, _, idata = exact
    # InferenceData.groups() (ArviZ 0.x) or DataTree.groups, paths from "/" (ArviZ 1.x)
    groups = idata.groups() if callable(idata.groups) else [g.strip("/") for g in idata.groups]
    for group in (
        "posterior",
        "sample_stats",
        "log_likelihood",
        "posterior_predictive",
        "observed_data",
    ):
        assert group in groups
    assert idata.posterior["w"].dims == ("chain", "draw", "w_dim_0")
    assert idata.posterior["w"].shape == (4, 1000, 3)
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "data")
    assert idata.observed_data["y"].dims == ("data",)
    assert list(idata.log_likelihood["data"].values) == list(range(20))
    torch.testing.assert_close(torch.as_tensor(idata.observed_data["y"].values), s.y)
    # At the exact posterior log p - log q = log Z for every draw.
    log_ratio = idata.sample_stats["log_p"] - idata.sample_stats["log_q"]
    assert float(abs(log_ratio - s.log_evidence).max()) < 1e-8


def test_loo_waic_compare_and_plots_run_on_a_good_fit(exact):
    _, _, idata = exact
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # e.g. "Estimated shape parameter ... high"
        loo = az.loo(idata, pointwise=True)
    assert (elpd_summary(loo).pareto_k < 0.7).all()
    assert len(az.compare({"a": idata, "b": idata})) == 2
    if hasattr(az, "waic"):  # ArviZ 0.x (1.x dropped WAIC for PSIS-LOO)
        az.waic(idata)
        az.plot_posterior(idata, var_names=["w"])
        az.plot_ppc(idata, num_pp_samples=20)
    else:  # ArviZ 1.x: arviz-plots
        az.plot_dist(idata, var_names=["w"], backend="matplotlib")
        az.plot_ppc_dist(idata, num_samples=20, backend="matplotlib")
    matplotlib.pyplot.close("all")


def shapes_model(X, y, subsample_size=None):
    """Scalar, vector and matrix latents, nested plates, a subsampled inner plate."""
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0), 0.3))
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("m", dist.Normal(torch.zeros(2, 2), 1.0).to_event(2))
    with pyro.plate("groups", 2, dim=-2):
        offset = pyro.sample("offset", dist.Normal(torch.tensor(0.0), 1.0))
        with pyro.plate("data", X.shape[0], subsample_size=subsample_size, dim=-1) as idx:
            mean = (X[idx] * w).sum(-1) + offset
            pyro.deterministic("mean", mean)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y[:, idx])


@pytest.mark.parametrize("subsample_size", [None, 4])
def test_shapes_for_every_kind_of_site(subsample_size):
    X = torch.randn(10, 3)
    y = torch.randn(2, 10)
    guide = AutoNormal(shapes_model)
    guide(X, y)  # initialized on the full data
    idata = pb.to_inference_data(shapes_model, guide, X, y, subsample_size, num_samples=50)
    post = idata.posterior
    assert post["sigma"].dims == ("chain", "draw")
    assert post["w"].dims == ("chain", "draw", "w_dim_0") and post["w"].shape[-1] == 3
    assert post["m"].shape == (1, 50, 2, 2)
    assert post["offset"].dims == ("chain", "draw", "groups")
    assert idata.log_likelihood["y"].dims == ("chain", "draw", "groups", "data")
    assert idata.log_likelihood["y"].shape == (1, 50, 2, 10)  # all ten data, even subsampled
    assert idata.posterior_predictive["y"].shape == (1, 50, 2, 10)
    torch.testing.assert_close(torch.as_tensor(idata.observed_data["y"].values), y)
    assert post["mean"].dims == ("chain", "draw", "groups", "data")
    assert post["mean"].shape == (1, 50, 2, 10)
    # The pointwise log-likelihood is that of the full data: compare with a direct computation.
    draws = {k: torch.as_tensor(post[k].values[0]) for k in ("sigma", "w", "offset")}
    mean = (X * draws["w"][:, None, None, :]).sum(-1) + draws["offset"][..., None]
    expected = dist.Normal(mean, draws["sigma"][:, None, None]).log_prob(y)
    torch.testing.assert_close(torch.as_tensor(idata.log_likelihood["y"].values[0]), expected)


def test_local_latent_in_a_subsampled_plate_is_refused():
    def model(y):
        with pyro.plate("data", len(y), subsample_size=2) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(z, 1.0), obs=y[idx])

    def guide(y):
        with pyro.plate("data", len(y), subsample_size=2):
            pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="latent site 'z' is local to the subsampled plate"):
        pb.to_inference_data(model, guide, torch.zeros(5), num_samples=10)


def test_deterministic_discrete_observations_and_a_hand_written_guide():
    def model(x, k):
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        pyro.deterministic("odds", p / (1 - p))
        with pyro.plate("data", len(k)):
            pyro.sample("k", dist.Binomial(5, p), obs=k)

    def guide(x, k):
        a = pyro.param("a", torch.tensor(3.0), constraint=dist.constraints.positive)
        pyro.sample("p", dist.Beta(a, 2.0))

    k = torch.tensor([1.0, 3.0, 4.0])
    idata = pb.to_inference_data(model, guide, None, k, num_samples=100)
    assert idata.posterior["odds"].dims == ("chain", "draw")
    p = idata.posterior["p"].values
    torch.testing.assert_close(
        torch.as_tensor(idata.posterior["odds"].values), torch.as_tensor(p / (1 - p))
    )
    assert idata.posterior_predictive["k"].shape == (1, 100, 3)
    predicted = idata.posterior_predictive["k"].values
    assert ((predicted >= 0) & (predicted <= 5) & (predicted == predicted.round())).all()


@pytest.mark.parametrize("num_chains", [3])
def test_num_chains_must_divide_num_samples(num_chains):
    s = linear_regression()
    with pytest.raises(ValueError, match="num_chains=3 must divide num_samples=100"):
        pb.to_inference_data(s.model, AutoDiagonalNormal(s.model), s.X, s.y, num_samples=100,
                             num_chains=num_chains)  # fmt: skip


@pytest.mark.parametrize(
    "options, message",
    [
        ({"num_samples": 0}, "num_samples must be at least 1"),
        ({"num_samples": 2.5}, "num_samples must be an integer"),
        ({"num_samples": 10, "psis": True}, f"num_samples must be at least {MIN_PSIS_SAMPLES}"),
        ({"num_samples": 10, "num_chains": 0}, "num_chains must be a positive integer"),
    ],
)
def test_bad_sample_counts_name_the_argument(options, message):
    s = linear_regression()
    with pytest.raises(ValueError, match=message):
        pb.to_inference_data(s.model, AutoDiagonalNormal(s.model), s.X, s.y, **options)


def test_an_enumerated_site_hidden_from_the_guide_is_summed_out_and_drawn():
    # It used to be refused (replaying would draw k from its prior and score it as data); it is
    # now summed out of log p and log_likelihood and drawn given each draw: exactness against the
    # hand-summed model in tests/diagnostics/test_enumerated_diagnostics.py
    pyro.set_rng_seed(0)
    idata = pb.to_inference_data(mixture, mixture_guide(), MIXTURE_DATA, num_samples=20)
    assert idata.posterior["k"].dims == ("chain", "draw", "data")
    assert set(idata.posterior["k"].values.flatten().tolist()) <= {0, 1}
    assert idata.log_likelihood["x"].shape == (1, 20, len(MIXTURE_DATA))


def test_a_discrete_site_hidden_from_the_guide_and_not_enumerated_is_refused():
    def model(x):
        locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 3.0).to_event(1))
        with pyro.plate("data", len(x)):
            k = pyro.sample("k", dist.Categorical(torch.ones(2)))
            pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)

    guide = AutoNormal(pyro.poutine.block(model, hide=["k"]))
    with pytest.raises(ValueError, match=r"latent site 'k'.*infer=\{'enumerate': 'parallel'\}"):
        pb.to_inference_data(model, guide, MIXTURE_DATA, num_samples=20)
