"""Models with exact answers, and the other helpers the tests share (tests never import each
other: what two test files need lives here).

* Conjugate Bayesian linear regression: exact posterior mean, covariance and log evidence.
* Normal-Normal, Beta-Bernoulli and Gamma-Poisson: exact posteriors and log evidence, one
  conjugate site each; :func:`beta_bernoulli_gamma_poisson` puts the last two side by side.
* A bimodal target with log Z = log 2 and known modes.
* Bayesian logistic regression: the exact ELBO of any Gaussian guide by Gauss-Hermite quadrature
  (each likelihood term depends on the weights only through a scalar projection), and the ELBO
  optimum of the full and the diagonal Gaussian family found by L-BFGS on that exact ELBO.
* Models the importance-sampling entry points must refuse (an enumerated mixture, impossible
  data), and :func:`load_example` to import a script of ``examples/``.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import config_enumerate
from pyro.infer.autoguide import AutoNormal
from torch import Tensor


@dataclass
class LinearRegression:
    """y ~ N(X w, noise^2), w ~ N(0, prior_scale^2 I): everything in closed form."""

    X: Tensor
    y: Tensor
    prior_scale: float
    noise: float
    subsample_size: int | None = None

    def model(self, X: Tensor, y: Tensor) -> None:
        dim = X.shape[-1]
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), self.prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0], subsample_size=self.subsample_size) as idx:
            mean = (X[idx] * w).sum(-1)
            pyro.sample("y", dist.Normal(mean, self.noise), obs=y[idx])

    @property
    def posterior_precision(self) -> Tensor:
        X = self.X
        eye = torch.eye(X.shape[1], dtype=X.dtype)
        return eye / self.prior_scale**2 + X.T @ X / self.noise**2

    @property
    def posterior_covariance(self) -> Tensor:
        return torch.linalg.inv(self.posterior_precision)

    @property
    def posterior_mean(self) -> Tensor:
        return self.posterior_covariance @ (self.X.T @ self.y) / self.noise**2

    @property
    def log_evidence(self) -> float:
        X = self.X
        cov = self.noise**2 * torch.eye(X.shape[0], dtype=X.dtype)
        cov = cov + self.prior_scale**2 * X @ X.T
        return float(dist.MultivariateNormal(torch.zeros_like(self.y), cov).log_prob(self.y))


def linear_regression(
    num_data: int = 20,
    dim: int = 3,
    dtype: torch.dtype = torch.float64,
    subsample_size: int | None = None,
    seed: int = 0,
) -> LinearRegression:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=dtype)
    X[:, 1:] += 0.5 * X[:, :1]  # correlated columns: the posterior is not mean-field
    w = torch.randn(dim, generator=gen, dtype=dtype)
    y = X @ w + 0.5 * torch.randn(num_data, generator=gen, dtype=dtype)
    return LinearRegression(X, y, prior_scale=1.0, noise=0.5, subsample_size=subsample_size)


_GH_NODES, _GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(64)


@dataclass
class LogisticRegression:
    """y ~ Bernoulli(sigmoid(X w)), w ~ N(0, prior_scale^2 I)."""

    X: Tensor
    y: Tensor
    prior_scale: float

    def model(self, X: Tensor, y: Tensor) -> None:
        dim = X.shape[-1]
        w = pyro.sample("w", dist.Normal(X.new_zeros(dim), self.prior_scale).to_event(1))
        with pyro.plate("data", X.shape[0]):
            logits = (X * w).sum(-1)
            pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    def elbo(self, loc: Tensor, scale_tril: Tensor) -> Tensor:
        """The exact ELBO of q = N(loc, L L^T) (64-point Gauss-Hermite per datum)."""
        X, y = self.X, self.y
        nodes = torch.as_tensor(_GH_NODES, dtype=X.dtype)
        weights = torch.as_tensor(_GH_WEIGHTS, dtype=X.dtype) / math.sqrt(2 * math.pi)
        mean = X @ loc
        sd = (X @ scale_tril).norm(dim=-1)
        f = mean[:, None] + sd[:, None] * nodes
        log_lik = y[:, None] * f - torch.nn.functional.softplus(f)
        expected_log_lik = (log_lik * weights).sum()
        dim = X.shape[1]
        tau2 = self.prior_scale**2
        trace_cov = scale_tril.square().sum()
        expected_log_prior = -0.5 * (loc.square().sum() + trace_cov) / tau2
        expected_log_prior = expected_log_prior - 0.5 * dim * math.log(2 * math.pi * tau2)
        log_det = scale_tril.diagonal().abs().log().sum()
        entropy = 0.5 * dim * (1 + math.log(2 * math.pi)) + log_det
        return expected_log_lik + expected_log_prior + entropy

    def optimum(self, diagonal: bool) -> tuple[float, Tensor, Tensor]:
        """The best ELBO of the full or diagonal Gaussian family, its mean and scale_tril."""
        dim = self.X.shape[1]
        loc = torch.zeros(dim, dtype=self.X.dtype, requires_grad=True)
        raw = torch.zeros(dim if diagonal else dim * (dim + 1) // 2, dtype=self.X.dtype)
        raw.requires_grad_(True)
        rows, cols = torch.tril_indices(dim, dim)

        def scale_tril() -> Tensor:
            if diagonal:
                return torch.diag(raw.exp())
            L = torch.zeros(dim, dim, dtype=self.X.dtype)
            L = L.index_put((rows, cols), raw)
            return L - torch.diag(L.diagonal()) + torch.diag(L.diagonal().exp())

        opt = torch.optim.LBFGS(
            [loc, raw], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )  # fmt: skip

        def closure() -> Tensor:
            opt.zero_grad()
            loss = -self.elbo(loc, scale_tril())
            loss.backward()
            return loss

        for _ in range(5):
            opt.step(closure)
        with torch.no_grad():
            L = scale_tril()
            return float(self.elbo(loc, L)), loc.detach().clone(), L


def logistic_regression(
    num_data: int = 100, dim: int = 3, dtype: torch.dtype = torch.float64, seed: int = 0
) -> LogisticRegression:
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=dtype)
    X[:, 1:] += 0.7 * X[:, :1]
    w = torch.tensor([1.5, -1.0, 0.5][:dim] + [0.0] * max(0, dim - 3), dtype=dtype)
    y = torch.bernoulli(torch.sigmoid(X @ w), generator=gen)
    return LogisticRegression(X, y, prior_scale=2.0)


def constrained_model(x, y):
    """Real, positive and simplex latents, nested plates, a deterministic site."""
    w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), 2.0))
    probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3, dtype=x.dtype)))
    with pyro.plate("groups", 2, dim=-2):
        offset = pyro.sample("offset", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
        with pyro.plate("data", x.shape[-1], dim=-1):
            mean = w[..., 0] * x + offset
            pyro.deterministic("mean", mean)
            pyro.sample("y", dist.Normal(mean, sigma), obs=y)
    pyro.sample("c", dist.Categorical(probs), obs=torch.tensor(1))


@dataclass
class NormalNormal:
    """y_i ~ N(mu, noise^2), mu ~ N(prior_loc, prior_scale^2): the posterior of mu is Normal."""

    y: Tensor
    prior_loc: float = 0.0
    prior_scale: float = 1.0
    noise: float = 1.0

    def model(self, y: Tensor) -> None:
        loc = torch.tensor(self.prior_loc, dtype=y.dtype, device=y.device)
        mu = pyro.sample("mu", dist.Normal(loc, self.prior_scale))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, self.noise), obs=y)

    @property
    def posterior_precision(self) -> float:
        return 1 / self.prior_scale**2 + len(self.y) / self.noise**2

    @property
    def posterior_mean(self) -> float:
        weighted = self.prior_loc / self.prior_scale**2 + float(self.y.sum()) / self.noise**2
        return weighted / self.posterior_precision

    @property
    def posterior_scale(self) -> float:
        return self.posterior_precision**-0.5

    @property
    def log_evidence(self) -> float:
        """log N(y; prior_loc 1, noise^2 I + prior_scale^2 1 1^T)."""
        n, y = len(self.y), self.y
        cov = self.noise**2 * torch.eye(n, dtype=y.dtype) + self.prior_scale**2
        return float(dist.MultivariateNormal(torch.full_like(y, self.prior_loc), cov).log_prob(y))


def normal_normal(num_data: int = 8, dtype: torch.dtype = torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    y = 1.5 + torch.randn(num_data, generator=gen, dtype=dtype)
    return NormalNormal(y, prior_loc=0.0, prior_scale=2.0, noise=1.0)


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


@dataclass
class BetaBernoulli:
    """flip_i ~ Bernoulli(p), p ~ Beta(a, b): the posterior is Beta(a + k, b + n - k)."""

    flips: Tensor
    a: float = 2.0
    b: float = 3.0

    def model(self, flips: Tensor) -> None:
        a = torch.tensor(self.a, dtype=flips.dtype, device=flips.device)
        p = pyro.sample("p", dist.Beta(a, torch.full_like(a, self.b)))
        with pyro.plate("flips", len(flips)):
            pyro.sample("flip", dist.Bernoulli(p), obs=flips)

    @property
    def posterior(self) -> tuple[float, float]:
        """The posterior Beta's (concentration1, concentration0)."""
        heads = float(self.flips.sum())
        return self.a + heads, self.b + len(self.flips) - heads

    @property
    def log_evidence(self) -> float:
        return _log_beta(*self.posterior) - _log_beta(self.a, self.b)


@dataclass
class GammaPoisson:
    """count_i ~ Poisson(rate), rate ~ Gamma(shape, rate0): the posterior is
    Gamma(shape + sum(count), rate0 + n)."""

    counts: Tensor
    shape: float = 2.0
    rate: float = 0.5

    def model(self, counts: Tensor) -> None:
        shape = torch.tensor(self.shape, dtype=counts.dtype, device=counts.device)
        rate = pyro.sample("rate", dist.Gamma(shape, torch.full_like(shape, self.rate)))
        with pyro.plate("counts", len(counts)):
            pyro.sample("count", dist.Poisson(rate), obs=counts)

    @property
    def posterior(self) -> tuple[float, float]:
        """The posterior Gamma's (concentration, rate)."""
        return self.shape + float(self.counts.sum()), self.rate + len(self.counts)

    @property
    def log_evidence(self) -> float:
        shape, rate = self.posterior
        log_factorials = float(torch.lgamma(self.counts + 1).sum())
        return (
            self.shape * math.log(self.rate) - math.lgamma(self.shape)
            + math.lgamma(shape) - shape * math.log(rate) - log_factorials
        )  # fmt: skip


@dataclass
class BetaBernoulliGammaPoisson:
    """Beta-Bernoulli (site ``p``) and Gamma-Poisson (site ``rate``) side by side in one model
    ``model(flips, counts)``; ``exact`` holds both posteriors' parameters."""

    beta: BetaBernoulli
    gamma: GammaPoisson
    exact: dict = field(init=False)

    def __post_init__(self):
        self.exact = {"p": self.beta.posterior, "rate": self.gamma.posterior}

    @property
    def data(self) -> tuple[Tensor, Tensor]:
        return self.beta.flips, self.gamma.counts

    def model(self, flips: Tensor, counts: Tensor) -> None:
        self.beta.model(flips)
        self.gamma.model(counts)

    @property
    def log_evidence(self) -> float:
        return self.beta.log_evidence + self.gamma.log_evidence

    def assert_exact_posteriors(self, guide, rel: float = 0.03) -> None:
        """An ``AutoExpFamily``'s Beta and Gamma match the conjugate posteriors to ``rel``."""
        found = guide.distributions(*self.data)
        got = {
            "p": (found["p"].concentration1, found["p"].concentration0),
            "rate": (found["rate"].concentration, found["rate"].rate),
        }
        for site, values in got.items():
            for value, exact in zip(values, self.exact[site], strict=True):
                assert float(value) == pytest.approx(exact, rel=rel), site


def beta_bernoulli_gamma_poisson(dtype: torch.dtype = torch.float64) -> BetaBernoulliGammaPoisson:
    flips = torch.tensor([1.0, 0, 1, 1, 0, 1, 1, 1, 0, 1], dtype=dtype)  # 7 of 10
    counts = torch.tensor([3.0, 5, 2, 4, 6, 3], dtype=dtype)  # sum 23 over 6
    return BetaBernoulliGammaPoisson(BetaBernoulli(flips, 2.0, 3.0), GammaPoisson(counts, 2.0, 0.5))


BIMODAL_LOG_Z = math.log(2)
"""log Z of :func:`bimodal`: each mode carries mass 1."""
BIMODAL_MODES = (-2.0, 2.0)
"""Where :func:`bimodal`'s modes sit on ``x[0]`` (each N(mode, 0.5^2); ``x[1]`` ~ N(0, 1))."""
BIMODAL_MODE_SCALE = 0.5


def bimodal() -> None:
    """p(x) ∝ [N(x1; -2, 0.5²) + N(x1; 2, 0.5²)] N(x2; 0, 1): log Z = log 2, modes at x1 = ±2.

    The N(0, 3²) prior is cancelled by the factor, so the unnormalized target is exactly the
    sum above."""
    x = pyro.sample("x", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    modes = torch.stack(
        [dist.Normal(m, BIMODAL_MODE_SCALE).log_prob(x[..., 0]) for m in BIMODAL_MODES]
    )
    target = torch.logsumexp(modes, 0) + dist.Normal(0.0, 1.0).log_prob(x[..., 1])
    pyro.factor("target", target - dist.Normal(torch.zeros(2), 3.0).log_prob(x).sum(-1))


# ------------------------------------------------------------------ models to refuse
MIXTURE_DATA = torch.tensor([-2.1, -1.9, -2.3, 1.8, 2.2, 2.0])


@config_enumerate
def mixture(x):
    """A two-component Gaussian mixture with its assignments ``k`` marked for enumeration."""
    weights = pyro.sample("weights", dist.Dirichlet(torch.ones(2)))
    locs = pyro.sample("locs", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    with pyro.plate("data", len(x)):
        k = pyro.sample("k", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[k], 1.0), obs=x)


def mixture_guide():
    """Pyro's advice for TraceEnum_ELBO: a guide of the continuous sites, ``k`` hidden."""
    guide = AutoNormal(poutine.block(mixture, hide=["k"]))
    guide(MIXTURE_DATA)
    return guide


def impossible_counts(y, subsample_size=None):
    """Counts of 1 under a Poisson rate of 0 for every datum: the likelihood of ``y`` is -inf
    whatever the latents (a positive one, so that a log-Jacobian term exists too)."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    pyro.sample("prior_obs", dist.Normal(0.0, scale), obs=torch.tensor(0.3))
    with pyro.plate("data", len(y), subsample_size=subsample_size) as idx:
        pyro.sample("y", dist.Poisson(0.0 * scale), obs=y[idx])


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
