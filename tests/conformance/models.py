"""Model idioms from Pyro's tutorials and ordinary user code, each with its data and its answer.

Every :class:`Idiom` is a small model written the way a Pyro user writes it, the data to call it
with, and the answer it must give: the posterior mean and standard deviation of every latent
coordinate (constrained), from a closed form where one exists (linear-Gaussian models, conjugate
pairs) or from one-dimensional quadrature on a fine grid (the rest), and the exact log evidence
where it exists. ``expect`` says, per entry point of ``tests/conformance/test_matrix.py``, what
the cell must do when it does not simply give the right answer: raise an error whose message
names a site (``Raises``) or fail in a way the package must still fix (``XFail``).

All data are float64 and drawn from fixed generators.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroSample
from torch import Tensor, nn

F64 = torch.float64
ZERO = torch.tensor(0.0, dtype=F64)


@dataclass(frozen=True)
class Raises:
    """The cell must raise ``error`` with a message matching ``match`` (a site or argument)."""

    error: type[Exception]
    match: str


@dataclass(frozen=True)
class XFail:
    """The cell is known to misbehave: ``reason`` says how (listed in docs/conformance.md)."""

    reason: str
    raises: type[Exception] | tuple[type[Exception], ...] | None = None
    should: Raises | None = None  # the refusal the cell should give, when it gives none


@dataclass(frozen=True)
class LOOAnswer:
    """What leaving each datum of ``plate`` out does, exactly (refits in closed form).

    Attributes:
        plate: the data plate.
        mean_shift: the leave-one-out posterior mean minus the posterior mean, ``(N, D)``, over
            the latent coordinates in trace order (unconstrained); ``None`` where the posterior
            is not Gaussian in them (only ``loo_lpd`` is then checked).
        loo_lpd: :math:`\\log p(y_i \\mid y_{\\setminus i})` (the datum's likelihood term, as
            the model scales it, integrated against the leave-one-out posterior), ``(N,)``; NaN
            where the model masks the datum out (it has no term).
    """

    plate: str
    mean_shift: Tensor | None
    loo_lpd: Tensor


@dataclass
class Idiom:
    """One model idiom, its data and its answer.

    Attributes:
        name: the idiom's id in the matrix.
        model: the Pyro model, as a user would write it.
        args: the positional arguments to call it with.
        ref: site -> (posterior mean, posterior sd), constrained, flattened.
        log_evidence: the exact log marginal likelihood, if it has one.
        gaussian: the posterior is exactly Gaussian in the unconstrained coordinates, with
            ``ref_cov`` its covariance over the sites in trace order (Newton with lr=1 is exact).
        expect: entry point -> ``Raises`` or ``XFail`` for the cells that do not fit.
        guide_model: the model the guides are built on (``poutine.block`` for enumeration).
        subsampled: the model subsamples a plate (full-data diagnostics must refuse it).
        heavy_tails: in unconstrained coordinates the posterior's tail decays like a
            Jacobian (exponentially), more slowly than any Gaussian q: the importance ratios
            p/q are unbounded and Pareto k-hat must say so (> 0.7).
        loo: the exact leave-one-out answer (:class:`LOOAnswer`), where a closed form exists.
    """

    name: str
    model: Callable
    args: tuple
    ref: dict[str, tuple[Tensor, Tensor]]
    log_evidence: float | None = None
    gaussian: bool = False
    ref_cov: Tensor | None = None
    expect: dict[str, object] = field(default_factory=dict)
    guide_model: Callable | None = None
    subsampled: bool = False
    heavy_tails: bool = False
    elbo: str = "Trace_ELBO"
    answer: Callable | None = None
    loo: Callable[[], LOOAnswer] | None = None

    @property
    def for_guide(self) -> Callable:
        return self.model if self.guide_model is None else self.guide_model


# ----------------------------------------------------------------------------- exact answers
def linear_gaussian(A: Tensor, y: Tensor, prior_cov: Tensor, noise_var: Tensor | float):
    """Posterior mean and covariance of z and log p(y) for y = A z + e, z ~ N(0, P), e ~ N(0, v)."""
    noise = torch.as_tensor(noise_var, dtype=A.dtype).expand(A.shape[0])
    precision = torch.linalg.inv(prior_cov) + A.T @ (A / noise[:, None])
    cov = torch.linalg.inv(precision)
    mean = cov @ (A.T @ (y / noise))
    marginal = A @ prior_cov @ A.T + torch.diag(noise)
    evidence = dist.MultivariateNormal(torch.zeros_like(y), marginal).log_prob(y)
    return mean, cov, float(evidence)


def split(mean: Tensor, cov: Tensor, sizes: dict[str, int]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-site (mean, sd) from the joint mean and covariance over the sites in order."""
    out, start, sd = {}, 0, cov.diagonal().sqrt()
    for name, size in sizes.items():
        out[name] = (mean[start : start + size], sd[start : start + size])
        start += size
    return out


def grid_posterior(grid: Tensor, log_density: Tensor, *functions: Tensor):
    """Mean and sd of each ``f(grid)`` under the density ∝ exp(log_density), and log ∫ exp(.)
    by the trapezoid rule (a grid of 20001 points: error far below any test tolerance)."""
    log_z = torch.logsumexp(log_density, 0)
    w = (log_density - log_z).exp()
    w = w / torch.trapezoid(w, grid)
    out = []
    for f in functions:
        m = torch.trapezoid(w * f, grid)
        out.append((m.reshape(1), torch.trapezoid(w * (f - m) ** 2, grid).sqrt().reshape(1)))
    log_evidence = float(torch.trapezoid((log_density - log_density.max()).exp(), grid).log())
    return out, log_evidence + float(log_density.max())


def grid_loo(grid: Tensor, log_prior: Tensor, log_lik: Tensor) -> Tensor:
    """Exact log p(y_i | y_-i) = log Z - log Z_{-i} for a one-dimensional latent, with
    Z_S = ∫ p(z) prod_{j in S} p(y_j | z) dz by the trapezoid rule on ``grid`` (``log_lik``:
    ``(len(grid), N)``); other latents with their own data cancel from the ratio."""

    def log_z(log_density: Tensor) -> Tensor:
        top = log_density.max(0).values
        return torch.trapezoid((log_density - top).exp(), grid, dim=0).log() + top

    full = log_prior + log_lik.sum(-1)
    return log_z(full) - log_z(full[:, None] - log_lik)


def regression_data(num_data: int = 20, dim: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(num_data, dim, generator=gen, dtype=F64)
    X[:, 1:] += 0.3 * X[:, :1]  # mildly correlated columns
    w = torch.randn(dim, generator=gen, dtype=F64)
    y = X @ w + 0.5 * torch.randn(num_data, generator=gen, dtype=F64)
    return X, y


NOISE = 0.5


def regression_answer(A: Tensor, y: Tensor, sizes: dict[str, int], noise_var=NOISE**2):
    mean, cov, evidence = linear_gaussian(A, y, torch.eye(A.shape[1], dtype=F64), noise_var)
    return split(mean, cov, sizes), cov, evidence


def linear_gaussian_loo(
    A: Tensor,
    y: Tensor,
    noise_var: float = NOISE**2,
    keep: Tensor | None = None,
    scale: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Exact leave-one-out refits of y = A z + e, z ~ N(0, I), e ~ N(0, v), with the likelihood
    raised to the power ``scale`` (poutine.scale) and only the data in ``keep`` observed.

    Datum i's refit drops row i: mean m_{-i}, covariance S_{-i}. Its predictive term is
    log ∫ N(y_i; a_i z, v)^s N(z; m_{-i}, S_{-i}) dz, and N(y; m, v)^s = N(y; m, v/s)
    (2 pi v)^{(1-s)/2} s^{-1/2}, so it is log N(y_i; a_i m_{-i}, a_i S_{-i} a_i + v/s) +
    (1-s)/2 log(2 pi v) - log(s)/2. A masked datum has no term: shift 0, lpd NaN.
    """
    keep = torch.ones(len(y), dtype=torch.bool) if keep is None else keep
    prior = torch.eye(A.shape[1], dtype=A.dtype)
    mean = linear_gaussian(A[keep], y[keep], prior, noise_var / scale)[0]
    shifts, lpd = torch.zeros_like(A), torch.full_like(y, math.nan)
    for i in torch.nonzero(keep).flatten().tolist():
        rest = keep.clone()
        rest[i] = False
        m, S, _ = linear_gaussian(A[rest], y[rest], prior, noise_var / scale)
        shifts[i] = m - mean
        var = A[i] @ S @ A[i] + noise_var / scale
        lpd[i] = dist.Normal(A[i] @ m, var.sqrt()).log_prob(y[i])
        lpd[i] += (1 - scale) / 2 * math.log(2 * math.pi * noise_var) - math.log(scale) / 2
    return shifts, lpd


def regression_loo(A: Tensor, y: Tensor, **options) -> Callable[[], LOOAnswer]:
    return lambda: LOOAnswer("data", *linear_gaussian_loo(A, y, **options))


# ----------------------------------------------------------------------------- expectations
BLR_ENTRIES = ["blr_ivon", "blr_von", "blr_newton", "blr_expfamily", "blr_mixture"]
DIAGNOSTIC_ENTRIES = [
    "log_evidence", "sgd_evidence", "to_inference_data", "psis_diagnostic", "loo_sensitivity",
]  # fmt: skip
ALL_ENTRIES = [
    *BLR_ENTRIES, "svi_expfamily", "svi_mixture", "svi_flow", "svi_renyi", *DIAGNOSTIC_ENTRIES,
]  # fmt: skip


def refuse(entries, match: str, error: type[Exception] = ValueError) -> dict[str, Raises]:
    return {entry: Raises(error, match) for entry in entries}


def known(entries, reason: str, raises=None, should=None) -> dict[str, XFail]:
    return {entry: XFail(reason, raises, should) for entry in entries}


PLATE_VECTORIZED = (
    "the diagnostics evaluate their particles in one vectorized plate without checking that "
    "the model broadcasts (as pb.BLR does): {what} raises a raw torch shape error naming no site"
)


# ----------------------------------------------------------------------------- idioms
def linear(X: Tensor, w: Tensor) -> Tensor:
    """X w written the broadcasting way, as Pyro's tutorials write it inside a plate; only the
    ``matmul`` idiom (and the PyroModule ones) use ``X @ w``, so that each idiom tests one
    thing."""
    return (X * w).sum(-1)


def matmul() -> Idiom:
    X, y = regression_data()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(X @ w, NOISE), obs=y)

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    return Idiom(
        "matmul", model, (X, y), ref, ev, gaussian=True, ref_cov=cov, loo=regression_loo(X, y)
    )


def bnn_linear() -> Idiom:
    """PyroModule[nn.Linear] with PyroSample weight and bias: one layer, so closed-form."""
    X, y = regression_data()

    class Regressor(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[nn.Linear](3, 1)
            self.linear.weight = PyroSample(dist.Normal(ZERO, 1.0).expand([1, 3]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(ZERO, 1.0).expand([1]).to_event(1))

        def forward(self, X, y=None):
            mean = self.linear(X).squeeze(-1)
            with pyro.plate("data", X.shape[0]):
                return pyro.sample("y", dist.Normal(mean, NOISE), obs=y)

    model = Regressor().double()
    A = torch.cat([X, torch.ones(len(X), 1, dtype=F64)], 1)
    ref, cov, ev = regression_answer(A, y, {"linear.weight": 3, "linear.bias": 1})
    return Idiom(
        "bnn_linear", model, (X, y), ref, ev, gaussian=True, ref_cov=cov, loo=regression_loo(A, y)
    )


def bnn_sequential() -> Idiom:
    """PyroModule[nn.Sequential] holding a PyroModule[nn.Linear] with a PyroSample weight (site
    'body.0.weight') and a flatten layer: linear in the weight, so closed-form."""
    X, y = regression_data()

    class Net(PyroModule):
        def __init__(self):
            super().__init__()
            self.body = PyroModule[nn.Sequential](
                PyroModule[nn.Linear](3, 1, bias=False), nn.Flatten(-2)
            )
            self.body[0].weight = PyroSample(dist.Normal(ZERO, 1.0).expand([1, 3]).to_event(2))

        def forward(self, X, y=None):
            mean = self.body(X)
            with pyro.plate("data", X.shape[0]):
                return pyro.sample("y", dist.Normal(mean, NOISE), obs=y)

    model = Net().double()
    ref, cov, ev = regression_answer(X, y, {"body.0.weight": 3})
    return Idiom(
        "bnn_sequential", model, (X, y), ref, ev, gaussian=True, ref_cov=cov,
        loo=regression_loo(X, y),
    )  # fmt: skip


def pyro_param() -> Idiom:
    """A learned noise scale as pyro.param; the answer is the posterior at its current value
    (fits also learn it: checked separately against the evidence-optimal value)."""
    X, y = regression_data()
    y = 3 * y  # the evidence-optimal sigma is far from the initial 1.0

    def model(X, y):
        sigma = pyro.param("sigma", lambda: torch.tensor(1.0, dtype=F64), dist.constraints.positive)
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(linear(X, w), sigma), obs=y)

    def answer():
        sigma = float(pyro.param("sigma").detach()) if "sigma" in pyro.get_param_store() else 1.0
        return regression_answer(X, y, {"w": 3}, noise_var=sigma**2)

    def loo():
        sigma = float(pyro.param("sigma").detach()) if "sigma" in pyro.get_param_store() else 1.0
        return regression_loo(X, y, noise_var=sigma**2)()

    ref, cov, ev = answer()
    return Idiom(
        "pyro_param", model, (X, y), ref, ev, gaussian=True, ref_cov=cov, answer=answer, loo=loo
    )


def evidence_optimal_sigma(idiom: Idiom) -> float:
    """The sigma maximizing log p(y | sigma) of ``pyro_param`` (a grid of 0.001)."""
    X, y = idiom.args
    grid = torch.arange(0.5, 6.0, 0.001, dtype=F64)
    values = [linear_gaussian(X, y, torch.eye(3, dtype=F64), float(s) ** 2)[2] for s in grid]
    return float(grid[int(torch.tensor(values).argmax())])


def deterministic() -> Idiom:
    X, y = regression_data()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        mean = pyro.deterministic("mean", linear(X, w))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(mean, NOISE), obs=y)

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    return Idiom(
        "deterministic",
        model,
        (X, y),
        ref,
        ev,
        gaussian=True,
        ref_cov=cov,
        loo=regression_loo(X, y),
    )


def factor() -> Idiom:
    """The likelihood written as a pyro.factor (no obs site at all)."""
    X, y = regression_data()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        mean = (X * w.unsqueeze(-2)).sum(-1)  # no plate: w's batch dims stay left of the data's
        pyro.factor("lik", dist.Normal(mean, NOISE).log_prob(y).sum(-1))

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    # leave-one-out needs the data as the elements of a plate: a factor holds them all in one term
    expect = refuse(["loo_sensitivity"], "'lik'")
    return Idiom("factor", model, (X, y), ref, ev, gaussian=True, ref_cov=cov, expect=expect)


def obs_mask() -> Idiom:
    """Missing responses via obs_mask=: Pyro adds a latent 'y_unobserved' for the masked ones."""
    X, y = regression_data()
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[[3, 11]] = False

    def model(X, y, mask):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(linear(X, w), NOISE), obs=y, obs_mask=mask)

    ref, _, ev = regression_answer(X[mask], y[mask], {"w": 3})
    # 'y_unobserved' has the full data shape with the observed entries masked out of the log
    # joint: those coordinates have an improper (flat) posterior, so no evidence exists and
    # every entry point must say so, naming the site
    expect = refuse(ALL_ENTRIES, "y_unobserved")
    return Idiom("obs_mask", model, (X, y, mask), ref, ev, expect=expect)


def poutine_mask() -> Idiom:
    X, y = regression_data()
    mask = torch.ones(len(y), dtype=torch.bool)
    mask[[3, 11]] = False

    def model(X, y, mask):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]), poutine.mask(mask=mask):
            pyro.sample("y", dist.Normal(linear(X, w), NOISE), obs=y)

    ref, cov, ev = regression_answer(X[mask], y[mask], {"w": 3})
    return Idiom(
        "poutine_mask", model, (X, y, mask), ref, ev, gaussian=True, ref_cov=cov,
        loo=regression_loo(X, y, keep=mask),
    )  # fmt: skip


def poutine_scale() -> Idiom:
    """A likelihood counted twice: the posterior of noise variance NOISE^2 / 2; the 'evidence'
    log ∫ p(w) p(y|w)^2 dw = log Z(NOISE^2/2) - n/2 log(4 pi NOISE^2) since N(y;m,v)^2 =
    N(y;m,v/2) (4 pi v)^(-1/2)."""
    X, y = regression_data()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]), poutine.scale(scale=2.0):
            pyro.sample("y", dist.Normal(linear(X, w), NOISE), obs=y)

    ref, cov, ev = regression_answer(X, y, {"w": 3}, noise_var=NOISE**2 / 2)
    ev = ev - len(y) / 2 * math.log(4 * math.pi * NOISE**2)
    return Idiom(
        "poutine_scale", model, (X, y), ref, ev, gaussian=True, ref_cov=cov,
        loo=regression_loo(X, y, scale=2.0),
    )  # fmt: skip


def nested_plates() -> Idiom:
    """Hierarchical normal: mu0 ~ N(0,1), mu_g ~ N(mu0, 0.7^2) in plate 'groups' (dim -2),
    y_gi ~ N(mu_g, 0.5^2) in plate 'data' (dim -1)."""
    G, n, tau = 3, 4, 0.7
    gen = torch.Generator().manual_seed(1)
    y = torch.randn(G, n, generator=gen, dtype=F64) * 0.5 + torch.tensor([[-1.0], [0.5], [1.5]])

    def model(y):
        mu0 = pyro.sample("mu0", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        with pyro.plate("groups", y.shape[0], dim=-2):
            mu = pyro.sample("mu", dist.Normal(mu0, tau))
            with pyro.plate("data", y.shape[1], dim=-1):
                pyro.sample("y", dist.Normal(mu, NOISE), obs=y)

    prior = torch.ones(G + 1, G + 1, dtype=F64)
    prior[1:, 1:] += tau**2 * torch.eye(G, dtype=F64)
    A = torch.zeros(G * n, G + 1, dtype=F64)
    for g in range(G):
        A[g * n : (g + 1) * n, 1 + g] = 1.0
    mean, cov, ev = linear_gaussian(A, y.reshape(-1), prior, NOISE**2)
    ref = split(mean, cov, {"mu0": 1, "mu": G})
    # the observed site lies in two plates: which one holds the data is the user's to say
    expect = refuse(["loo_sensitivity"], "plate=")
    return Idiom("nested_plates", model, (y,), ref, ev, gaussian=True, ref_cov=cov, expect=expect)


def sequential_plate() -> Idiom:
    X, y = regression_data(num_data=8)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        for i in pyro.plate("data", X.shape[0]):
            pyro.sample(f"y_{i}", dist.Normal(linear(X[i], w), NOISE), obs=y[i])

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    # one site per datum, in no vectorized plate: leave-one-out names them and asks for one
    expect = refuse(["loo_sensitivity"], r"'y_0'.*vectorized plate")
    return Idiom(
        "sequential_plate", model, (X, y), ref, ev, gaussian=True, ref_cov=cov, expect=expect
    )


def subsample_global() -> Idiom:
    """Global latents, a minibatch of 10 of 40 responses (the likelihood scaled by 4 by Pyro)."""
    X, y = regression_data(num_data=40)

    def model(X, y):
        w = pyro.sample("w", dist.Normal(X.new_zeros(X.shape[1]), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0], subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(linear(X[idx], w), NOISE), obs=y[idx])

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    expect = refuse(["log_evidence", "psis_diagnostic"], "data")
    expect["loo_sensitivity"] = Raises(ValueError, r"plate \[?'data'\]? is subsampled")
    # the Rényi bound has no unbiased minibatch estimate with a global latent: it names the plate
    expect["svi_renyi"] = Raises(ValueError, r"plate \['data'\] is subsampled")
    return Idiom(
        "subsample_global", model, (X, y), ref, ev, gaussian=True, ref_cov=cov,
        subsampled=True, expect=expect,
    )  # fmt: skip


def subsample_local() -> Idiom:
    """A global mean and one local latent per datum in a subsampled plate (5 of 20)."""
    n = 20
    gen = torch.Generator().manual_seed(2)
    y = 1.0 + torch.randn(n, generator=gen, dtype=F64) * math.sqrt(1 + NOISE**2)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        with pyro.plate("data", y.shape[0], subsample_size=5) as idx:
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("y", dist.Normal(z, NOISE), obs=y[idx])

    prior = torch.ones(n + 1, n + 1, dtype=F64)
    prior[1:, 1:] += torch.eye(n, dtype=F64)
    A = torch.cat([torch.zeros(n, 1, dtype=F64), torch.eye(n, dtype=F64)], 1)
    mean, cov, ev = linear_gaussian(A, y, prior, NOISE**2)
    ref = split(mean, cov, {"mu": 1, "z": n})
    expect = refuse(
        ["blr_von", "blr_newton", "blr_expfamily", "blr_mixture", "svi_expfamily",
         "svi_mixture", "svi_flow", "sgd_evidence", "to_inference_data"], "'z'",
    )  # fmt: skip
    expect["svi_renyi"] = Raises(ValueError, r"plate \['data'\] is subsampled")  # mu is global
    expect |= refuse(["blr_ivon"], "data")  # names the plate: IVON's momentum is per datum
    expect |= refuse(["log_evidence", "psis_diagnostic", "sgd_evidence"], "data")  # the plate
    expect["loo_sensitivity"] = Raises(ValueError, "'data'")  # the plate, or 'z' in it
    return Idiom(
        "subsample_local", model, (y,), ref, ev, subsampled=True, ref_cov=cov, expect=expect
    )


def simplex() -> Idiom:
    """Dirichlet-categorical: the exact posterior is Dirichlet(1 + counts)."""
    data = torch.tensor([0] * 12 + [1] * 5 + [2] * 8)

    def model(data):
        probs = pyro.sample("probs", dist.Dirichlet(torch.ones(3, dtype=F64)))
        with pyro.plate("data", data.shape[0]):
            pyro.sample("obs", dist.Categorical(probs), obs=data)

    conc = 1.0 + torch.bincount(data, minlength=3).to(F64)
    post = dist.Dirichlet(conc)
    ref = {"probs": (post.mean, post.stddev)}
    ones = torch.ones(3, dtype=F64)

    def log_beta(a):
        return float(torch.lgamma(a).sum() - torch.lgamma(a.sum()))

    ev = log_beta(conc) - log_beta(ones)
    # leaving datum i (category k) out: p(y_i | y_-i) = (conc_k - 1) / (sum(conc) - 1)
    loo_lpd = ((conc[data] - 1) / (conc.sum() - 1)).log()
    expect = known(
        ["psis_diagnostic"],
        "pb.psis_diagnostic gives k-hat 1.0-1.2 at the full-Gaussian ELBO optimum (300 VON steps, "
        "16 draws, seeds 0-1) and 0.45-2.0 after the proposal's 15 steps, while the effective "
        "sample size is 988-998 of 1000: the ratio of the Dirichlet to a Gaussian in the "
        "stick-breaking coordinates is unbounded in the far tails, and the Pareto fit to nearly "
        "equal weights swings with the draws; a false alarm, not a missed one",
        raises=AssertionError,
    )
    return Idiom(
        "simplex", model, (data,), ref, ev, expect=expect,
        loo=lambda: LOOAnswer("data", None, loo_lpd),
    )  # fmt: skip


def lkj() -> Idiom:
    """LKJCholesky(2, eta=2) correlation of bivariate normal data; r = L[1,0] by quadrature: the
    LKJ density of r is (1 - r^2)^(eta-1) / (2^(2 eta - 1) B(eta, eta))."""
    eta, n = 2.0, 15
    gen = torch.Generator().manual_seed(3)
    C = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=F64)
    y = torch.randn(n, 2, generator=gen, dtype=F64) @ torch.linalg.cholesky(C).T

    def model(y):
        L = pyro.sample("L", dist.LKJCholesky(2, torch.tensor(eta, dtype=y.dtype)))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.MultivariateNormal(y.new_zeros(2), scale_tril=L), obs=y)

    r = torch.linspace(-1, 1, 20001, dtype=F64)[1:-1]
    log_prior = (eta - 1) * torch.log1p(-(r**2)) - (2 * eta - 1) * math.log(2)
    log_prior = log_prior - (2 * math.lgamma(eta) - math.lgamma(2 * eta))
    det = 1 - r**2
    s11, s22, s12 = (y[:, 0] ** 2).sum(), (y[:, 1] ** 2).sum(), (y[:, 0] * y[:, 1]).sum()
    quad = (s11 + s22 - 2 * r * s12) / det
    log_lik = -n * math.log(2 * math.pi) - 0.5 * n * torch.log(det) - 0.5 * quad
    (r_ref, l11_ref), ev = grid_posterior(r, log_prior + log_lik, r, det.sqrt())
    quad_i = (y[:, 0] ** 2 + y[:, 1] ** 2 - 2 * r[:, None] * y[:, 0] * y[:, 1]) / det[:, None]
    per_datum = -math.log(2 * math.pi) - 0.5 * torch.log(det)[:, None] - 0.5 * quad_i
    loo_lpd = grid_loo(r, log_prior, per_datum)
    zero = torch.zeros(1, dtype=F64)
    one = torch.ones(1, dtype=F64)
    ref = {
        "L": (
            torch.cat([one, zero, r_ref[0], l11_ref[0]]),
            torch.cat([zero, zero, r_ref[1], l11_ref[1]]),
        )
    }
    expect = refuse(["blr_expfamily", "svi_expfamily"], "'L'")  # no CorrCholesky family
    return Idiom(
        "lkj", model, (y,), ref, ev, expect=expect, heavy_tails=True,
        loo=lambda: LOOAnswer("data", None, loo_lpd),
    )  # fmt: skip


def positive() -> Idiom:
    """lam ~ Gamma(2, 1) with Poisson counts (posterior Gamma(2 + sum k, 1 + n)) and
    sigma ~ HalfNormal(1) scaling zero-mean normal data (quadrature)."""
    counts = torch.tensor([3.0, 1.0, 4.0, 2.0, 2.0, 5.0, 3.0, 1.0], dtype=F64)
    gen = torch.Generator().manual_seed(4)
    x = 1.5 * torch.randn(12, generator=gen, dtype=F64)

    def model(counts, x):
        lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0, dtype=F64), 1.0))
        sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0, dtype=F64)))
        with pyro.plate("counts", counts.shape[0]):
            pyro.sample("k", dist.Poisson(lam), obs=counts)
        with pyro.plate("x", x.shape[0]):
            pyro.sample("x_obs", dist.Normal(0.0, sigma), obs=x)

    a, b, S, n = 2.0, 1.0, float(counts.sum()), len(counts)
    post = dist.Gamma(torch.tensor(a + S, dtype=F64), b + n)
    ev_lam = (
        math.lgamma(a + S) - math.lgamma(a) + a * math.log(b) - (a + S) * math.log(b + n)
        - float(torch.lgamma(counts + 1).sum())
    )  # fmt: skip
    s = torch.linspace(0, 8, 20001, dtype=F64)[1:]
    log_density = dist.HalfNormal(torch.tensor(1.0, dtype=F64)).log_prob(s)
    log_density = log_density + dist.Normal(0.0, s[:, None]).log_prob(x).sum(-1)
    (sigma_ref,), ev_sigma = grid_posterior(s, log_density, s)
    ref = {"lam": (post.mean.reshape(1), post.stddev.reshape(1)), "sigma": sigma_ref}
    expect = refuse(["loo_sensitivity"], "plate=")  # two data plates: the user says which
    return Idiom("positive", model, (counts, x), ref, ev_lam + ev_sigma, expect=expect)


def interval() -> Idiom:
    """p ~ Beta(2, 2) with 7 of 20 successes (posterior Beta(9, 15)) and u ~ Uniform(0, 2)
    the mean of normal data (a truncated normal, by quadrature)."""
    gen = torch.Generator().manual_seed(5)
    x = 1.6 + torch.randn(6, generator=gen, dtype=F64)

    def model(k, x):
        p = pyro.sample("p", dist.Beta(torch.tensor(2.0, dtype=F64), 2.0))
        u = pyro.sample("u", dist.Uniform(torch.tensor(0.0, dtype=F64), 2.0))
        pyro.sample("k", dist.Binomial(20, p), obs=k)
        with pyro.plate("x", x.shape[0]):
            pyro.sample("x_obs", dist.Normal(u, 1.0), obs=x)

    k = torch.tensor(7.0, dtype=F64)
    post = dist.Beta(torch.tensor(9.0, dtype=F64), 15.0)

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    ev_p = math.lgamma(21) - math.lgamma(8) - math.lgamma(14) + log_beta(9, 15) - log_beta(2, 2)
    u = torch.linspace(0, 2, 20001, dtype=F64)
    log_density = -math.log(2) + dist.Normal(u[:, None], 1.0).log_prob(x).sum(-1)
    (u_ref,), ev_u = grid_posterior(u, log_density, u)
    log_lik = dist.Normal(u[:, None], 1.0).log_prob(x)
    loo_lpd = grid_loo(u, torch.full_like(u, -math.log(2)), log_lik)
    ref = {"p": (post.mean.reshape(1), post.stddev.reshape(1)), "u": u_ref}
    expect: dict[str, object] = refuse(["blr_expfamily", "svi_expfamily"], "'u'")  # (0, 1) only
    expect["loo_sensitivity"] = XFail(
        "pb.loo_sensitivity from the full-Gaussian fit is 0.09-0.21 nat per datum off the exact "
        "leave-one-out densities (seeds 0-2) on this posterior, skewed in the unconstrained "
        "coordinates (6 data; PSIS k-hat of the fit > 0.7), and says nothing",
        raises=AssertionError,
    )
    return Idiom(
        "interval", model, (k, x), ref, ev_p + ev_u, expect=expect, heavy_tails=True,
        loo=lambda: LOOAnswer("x", None, loo_lpd),
    )  # fmt: skip


def enumerated() -> Idiom:
    """A two-component mixture with a shared shift mu and an enumerated assignment z per datum;
    the guide is built on poutine.block(model, hide=['z']) as Pyro advises, and fitted with
    TraceEnum_ELBO. mu's posterior by quadrature over the marginal (z summed out) likelihood."""
    gen = torch.Generator().manual_seed(6)
    z = torch.rand(15, generator=gen, dtype=F64) < 0.3
    y = 0.8 + 3.0 * z + torch.randn(15, generator=gen, dtype=F64)

    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample(
                "z", dist.Bernoulli(torch.tensor(0.3, dtype=y.dtype)),
                infer={"enumerate": "parallel"},
            )  # fmt: skip
            pyro.sample("y", dist.Normal(mu + 3.0 * z, 1.0), obs=y)

    m = torch.linspace(-5, 5, 20001, dtype=F64)
    comp = torch.stack(
        [
            math.log(0.7) + dist.Normal(m[:, None], 1.0).log_prob(y),
            math.log(0.3) + dist.Normal(m[:, None] + 3.0, 1.0).log_prob(y),
        ]
    )
    log_lik = torch.logsumexp(comp, 0)  # log p(y_i | mu), z_i summed out: (grid, N)
    log_prior = dist.Normal(0.0, 1.0).log_prob(m)
    log_density = log_prior + log_lik.sum(-1)
    (mu_ref,), ev = grid_posterior(m, log_density, m)
    loo_lpd = grid_loo(m, log_prior, log_lik)
    return Idiom(
        "enumerated", model, (y,), {"mu": mu_ref}, ev,
        guide_model=poutine.block(model, hide=["z"]), elbo="TraceEnum_ELBO",
        loo=lambda: LOOAnswer("data", None, loo_lpd),
        expect={  # every other entry point sums z out (to_inference_data also draws it)
            **known(
                ["psis_diagnostic"],
                "pb.psis_diagnostic sums z out and gives k-hat 2.7-3.3 (seeds 0-2) at the "
                "proposal's 15 VON steps, whose log-weights have sd 0.13 and effective sample "
                "size 832-977 of 1000 (0.19 for an SVI fit of the same posterior): the Pareto "
                "fit to nearly equal weights, as for the simplex idiom; a false alarm. Not a bug "
                "of the ratios (log p - log q equals the marginal on the same draws, see "
                "tests/core/test_pareto_equal_weights.py; az.psislw gives the same k-hat): "
                "log r rises faster than quadratically toward a second small bump of the "
                "posterior at mu ~ -3.6 (22.7 nats above the bulk, 12 q-sds out), and k-hat, "
                "blind to the spread of log r, reads that shape; it falls to 0.47-0.64 on "
                "1e4-1e5 draws",
                raises=AssertionError,
            ),
        },
    )  # fmt: skip


def control_flow() -> Idiom:
    """A latent that exists only when another is positive: no fixed-structure guide can be
    right, so every entry point must refuse it, naming the site 'extra'."""
    y = torch.tensor([0.3, -0.2, 0.5], dtype=F64)

    def model(y):
        s = pyro.sample("s", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        loc = s
        if s > 0:
            loc = loc + pyro.sample("extra", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 1.0))
        with pyro.plate("data", y.shape[0]):
            pyro.sample("y", dist.Normal(loc, 1.0), obs=y)

    expect = refuse(ALL_ENTRIES, "'extra'")
    return Idiom("control_flow", model, (y,), {}, expect=expect)


# ----------------------------------------------------------------------------- tutorial idioms
# Idioms from Pyro's tutorials that broke an entry point (issue "No confident wrong answers, round
# two"). Cells that fail today for a bug being fixed are XFail, with the finding as the reason.
def sequential_subsample() -> Idiom:
    """The coin of Pyro's SVI tutorial part II (tutorial/source/svi_part_ii.ipynb), float64: a
    fairness f ~ Beta(10, 10) and ten flips read one site per flip in a sequential plate of
    minibatches of 5, ``for i in pyro.plate("data_loop", len(data), subsample_size=5)``. Pyro
    scales each flip's term by 10/5. Posterior Beta(10 + heads, 10 + tails)."""
    data = torch.tensor([1.0] * 6 + [0.0] * 4, dtype=F64)
    alpha0 = torch.tensor(10.0, dtype=F64)
    beta0 = torch.tensor(10.0, dtype=F64)

    def model(data):
        f = pyro.sample("latent_fairness", dist.Beta(alpha0, beta0))
        for i in pyro.plate("data_loop", len(data), subsample_size=5):
            pyro.sample(f"obs_{i}", dist.Bernoulli(f), obs=data[i])

    heads = float(data.sum())
    tails = len(data) - heads
    post = dist.Beta(alpha0 + heads, beta0 + tails)
    ref = {"latent_fairness": (post.mean.reshape(1), post.stddev.reshape(1))}

    def log_beta(a, b):
        return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    ev = log_beta(10 + heads, 10 + tails) - log_beta(10, 10)
    # the diagnostics need the full data: each refuses naming the plate and the fix (B's fix of
    # "No confident wrong answers, round two": log_evidence gave -13.03 against -15.81, PSIS
    # k-hat 0.2-0.4, to_inference_data a KeyError)
    expect = refuse(
        ["log_evidence", "psis_diagnostic", "to_inference_data", "loo_sensitivity",
         "sgd_evidence"],
        r"'data_loop'.* is subsampled.*without subsample_size",
    )  # fmt: skip
    expect["svi_renyi"] = Raises(ValueError, "'data_loop'")  # a global latent: no split
    return Idiom("sequential_subsample", model, (data,), ref, ev, subsampled=True, expect=expect)


def bare_assert() -> Idiom:
    """A shape check written as a bare ``assert`` (no message) inside the model, as Pyro's
    logistic-growth tutorial (tutorial/source/logistic-growth.ipynb) writes ``assert
    w.shape == ()``: the latents are scalars; the regression on two columns is closed-form."""
    X, y = regression_data()
    A = X[:, :2]

    def model(X, y):
        a = pyro.sample("a", dist.Normal(ZERO, 1.0))
        b = pyro.sample("b", dist.Normal(ZERO, 1.0))
        assert a.shape == ()
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(a * X[:, 0] + b * X[:, 1], NOISE), obs=y)

    ref, cov, ev = regression_answer(A, y, {"a": 1, "b": 1})
    return Idiom(
        "bare_assert", model, (X, y), ref, ev, gaussian=True, ref_cov=cov,
        loo=regression_loo(A, y),
    )  # fmt: skip


def mixed_dtype() -> Idiom:
    """A float32 prior constant (``torch.zeros(3)``, the default dtype) with float64 data, which
    Pyro's SVI runs (the likelihood promotes to float64). The answer is the float64 one; the
    cells ask for it to Monte Carlo accuracy only (the latent's own dtype is the prior's float32,
    whose round-off is far below that), and the exact cells (Newton's one step, leave-one-out)
    to float32 round-off, see ``test_matrix.py``."""
    X, y = regression_data()

    def model(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        with pyro.plate("data", X.shape[0]):
            pyro.sample("y", dist.Normal(linear(X, w), NOISE), obs=y)

    ref, cov, ev = regression_answer(X, y, {"w": 3})
    return Idiom(
        "mixed_dtype", model, (X, y), ref, ev, ref_cov=cov, loo=regression_loo(X, y),
    )  # fmt: skip


IDIOMS: dict[str, Callable[[], Idiom]] = {
    f.__name__: f
    for f in [
        matmul, bnn_linear, bnn_sequential, pyro_param, deterministic, factor, obs_mask,
        poutine_mask, poutine_scale, nested_plates, sequential_plate, subsample_global,
        subsample_local, simplex, lkj, positive, interval, enumerated, control_flow,
        sequential_subsample, bare_assert, mixed_dtype,
    ]
}  # fmt: skip
