"""pb.to_inference_data takes a fitted pyro.infer.SVGD in the guide's place."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVGD, RBFSteinKernel
from pyro.optim import Adam

import pyro_blr as pb


def model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture
def fitted():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    y = torch.tensor([0.5, 1.5, 1.0, 2.0])
    svgd = SVGD(model, RBFSteinKernel(), Adam({"lr": 0.1}), num_particles=12, max_plate_nesting=1)
    for _ in range(20):
        svgd.step(y)
    return svgd, y


def test_an_svgd_gives_one_draw_per_particle(fitted):
    svgd, y = fitted
    idata = pb.to_inference_data(model, svgd, y)
    particles = svgd.get_named_particles()["mu"].reshape(-1)
    assert idata.posterior["mu"].shape == (1, 12)
    torch.testing.assert_close(torch.as_tensor(idata.posterior["mu"].values[0]), particles)
    assert "log_q" not in idata.sample_stats
    assert idata.log_likelihood["y"].shape == (1, 12, 4)


@pytest.mark.parametrize(
    "options, match",
    [({"psis": True}, "psis=True needs a guide with a density"),
     ({"num_samples": 50}, "its 12 particles; num_samples=50"),
     ({"num_chains": 3, "num_samples": 12}, "num_chains=3 do not apply")],
)  # fmt: skip
def test_options_that_cannot_apply_to_particles_are_refused(fitted, options, match):
    svgd, y = fitted
    with pytest.raises(ValueError, match=match):
        pb.to_inference_data(model, svgd, y, **options)
