"""Models written as Pyro users write them run unchanged under the BLR's defaults, with exact
answers where they exist."""

import pyro
import pyro.distributions as dist
import pyro.optim
import pytest
import torch
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.nn import PyroModule, PyroSample
from torch import nn

import pyro_blr as pb
from tests.scenarios import linear_regression


def matmul_model(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)


def unpacking_model(X, y):
    w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
    a, b, c = w
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Normal(a * X[:, 0] + b * X[:, 1] + c * X[:, 2], 0.5), obs=y)


@pytest.mark.parametrize("model", [matmul_model, unpacking_model], ids=["X@w", "a,b,c=w"])
def test_non_broadcasting_models_get_the_exact_posterior_by_default(model):
    # Newton with lr=1 on a conjugate model is exact in one step (float64, 1e-8), which needs
    # every particle to see its own w: a plate would have fed X @ w the particle dimension.
    s = linear_regression()
    guide = AutoMultivariateNormal(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)
    posterior = guide.get_posterior()
    torch.testing.assert_close(posterior.mean, s.posterior_mean, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(
        posterior.covariance_matrix, s.posterior_covariance, rtol=1e-8, atol=1e-8
    )


def test_pyro_module_linear_layer_gets_the_exact_posterior():
    # PyroModule[nn.Linear] with PyroSample weights, a one-layer net (a regression, so the
    # posterior is closed-form); float32, so 1e-4.
    s = linear_regression(dtype=torch.float32)

    class Linear(PyroModule):
        def __init__(self):
            super().__init__()
            self.layer = PyroModule[nn.Linear](3, 1, bias=False)
            self.layer.weight = PyroSample(dist.Normal(0.0, 1.0).expand([1, 3]).to_event(2))

        def forward(self, X, y):
            mean = self.layer(X).squeeze(-1)
            with pyro.plate("data", X.shape[0]):
                pyro.sample("y", dist.Normal(mean, 0.5), obs=y)

    model = Linear()
    guide = AutoMultivariateNormal(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)
    torch.testing.assert_close(guide.get_posterior().mean, s.posterior_mean, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_model_parameter_is_learned_as_type_two_maximum_likelihood():
    # sigma as pyro.param: BLR (newton, exact posterior for the current sigma) plus Adam on sigma
    # is variational EM, whose fixed point maximizes the exact log evidence log N(y; 0, XX' +
    # sigma^2 I). The fitted sigma must be evidence-optimal to 0.01 nat (the evidence's
    # curvature makes that a few percent in sigma), and the guide the exact posterior there.
    s = linear_regression(num_data=40)
    X, y = s.X, s.y * 3  # noise far from the initial sigma = 1

    def model(X, y):
        sigma = pyro.param("sigma", torch.tensor(1.0, dtype=X.dtype), dist.constraints.positive)
        w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, sigma), obs=y)

    def log_evidence(sigma):
        cov = sigma**2 * torch.eye(len(y), dtype=X.dtype) + X @ X.T
        return float(dist.MultivariateNormal(torch.zeros_like(y), cov).log_prob(y))

    guide = AutoMultivariateNormal(model)
    optim = pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.995})
    pb.BLR(model, guide, pb.Newton(lr=1.0), model_optim=optim).fit(
        X, y, num_steps=600, progress=False
    )
    fitted = float(pyro.param("sigma").detach())
    grid = torch.linspace(0.5, 6.0, 5501, dtype=X.dtype)
    best = max(log_evidence(float(g)) for g in grid)
    assert fitted > 1.5 and log_evidence(fitted) > best - 0.01
    precision = torch.eye(3, dtype=X.dtype) + X.T @ X / fitted**2
    mean = torch.linalg.solve(precision, X.T @ y / fitted**2)
    torch.testing.assert_close(guide.get_posterior().mean, mean, rtol=1e-3, atol=1e-3)


def test_a_reduction_over_the_latent_vector_is_exact():
    # w.sum() would sum over the particle dimension too under a plate; the default must not.
    # The model is linear in w with design x0 * [1, 1, 1]: Newton with lr=1 is exact (1e-8).
    s = linear_regression()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(3), 1.0).to_event(1))
        total = w.sum()
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X[:, 0] * total, 0.5), obs=y)

    guide = AutoMultivariateNormal(model)
    pb.BLR(model, guide, pb.Newton(lr=1.0)).step(s.X, s.y)
    design = s.X[:, :1].expand(-1, 3)
    precision = torch.eye(3, dtype=s.X.dtype) + design.T @ design / 0.25
    mean = torch.linalg.solve(precision, design.T @ s.y / 0.25)
    torch.testing.assert_close(guide.get_posterior().mean, mean, rtol=1e-8, atol=1e-8)
