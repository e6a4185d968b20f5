"""The Jaakkola-Jordan bound: below the log evidence found by fine quadrature, equal to its
closed form at the EM fixed point, tightening with every update; and the errors that name a site
the bound cannot take."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.nn.functional import logsigmoid

from pyro_blr.evidence.jaakkola_jordan import jaakkola_jordan_evidence
from pyro_blr.evidence.local_bounds import jj_lambda

F64 = torch.float64
GEN = torch.Generator().manual_seed(0)
X1 = torch.randn(20, generator=GEN, dtype=F64)
Y1 = torch.bernoulli(torch.sigmoid(1.5 * X1 + 0.3), generator=GEN)
X2 = torch.randn(25, generator=GEN, dtype=F64)
Y2 = torch.bernoulli(torch.sigmoid(-1.0 * X2 + 0.8), generator=GEN)
PRIOR_1D, PRIOR_W, B_LOC = 2.0, 1.5, 0.5


def model_1d(x, y):
    w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_1D))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=x * w + 0.3), obs=y)


def model_2d(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(1, dtype=x.dtype), PRIOR_W).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(B_LOC, dtype=x.dtype), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Bernoulli(logits=x[:, None] @ w + b), obs=y)


def log_lik(logits, y):
    return logsigmoid((2 * y - 1) * logits).sum(-1)


def quadrature_1d():
    """log p(D) by the trapezoid rule on 30,001 points over +-7.5 prior sd (the integrand is
    smooth and decays like a Gaussian: the rule's error is far below 1e-9)."""
    w = torch.linspace(-15, 15, 30001, dtype=F64)
    log_f = dist.Normal(0.0, PRIOR_1D).log_prob(w) + log_lik(w[:, None] * X1 + 0.3, Y1)
    return float(torch.logsumexp(log_f, 0) + math.log(float(w[1] - w[0])))


def quadrature_2d():
    """log p(D) by the trapezoid rule on a 801 x 801 grid over +-8 prior sd of each latent."""
    w = torch.linspace(-8 * PRIOR_W, 8 * PRIOR_W, 801, dtype=F64)
    b = torch.linspace(B_LOC - 8, B_LOC + 8, 801, dtype=F64)
    W, B = torch.meshgrid(w, b, indexing="ij")
    log_f = dist.Normal(0.0, PRIOR_W).log_prob(W) + dist.Normal(B_LOC, 1.0).log_prob(B)
    logits = W[..., None] * X2 + B[..., None]
    log_f = log_f + log_lik(logits, Y2)
    cell = float(w[1] - w[0]) * float(b[1] - b[0])
    return float(torch.logsumexp(log_f.reshape(-1), 0) + math.log(cell))


@pytest.mark.parametrize(
    "model, data, exact",
    [(model_1d, (X1, Y1), quadrature_1d), (model_2d, (X2, Y2), quadrature_2d)],
    ids=["1d", "2d"],
)
def test_the_bound_is_below_the_quadrature_evidence(model, data, exact):
    result = jaakkola_jordan_evidence(model, *data)
    log_z = exact()
    assert result.bound <= log_z
    # the JJ gap of a small logistic model: a fraction of a nat (measured 0.27 and 0.10)
    assert log_z - result.bound < 0.5


def test_the_bound_tightens_with_every_update():
    result = jaakkola_jordan_evidence(model_2d, X2, Y2, tol=0.0, num_iterations=50)
    steps = result.history.diff()
    assert (steps >= -1e-12).all()  # EM: each update can only raise it (round-off aside)
    assert float(result.history[-1] - result.history[0]) > 0.1
    assert result.bound == float(result.history[-1])


def test_the_bound_equals_its_closed_form_at_the_fixed_point():
    result = jaakkola_jordan_evidence(model_2d, X2, Y2, tol=-math.inf, num_iterations=300)
    m, S = result.loc, result.covariance  # layout order: w, then b
    design = torch.stack([X2, torch.ones_like(X2)], -1)
    mean_a = design @ m
    second = mean_a.square() + ((design @ S) * design).sum(-1)
    assert torch.allclose(result.xi, second.sqrt(), rtol=1e-10)  # xi^2 = E_q[a^2]
    prior_var = torch.tensor([PRIOR_W**2, 1.0], dtype=F64)
    prior_loc = torch.tensor([0.0, B_LOC], dtype=F64)
    expected_log_prior = (
        -0.5 * torch.log(2 * math.pi * prior_var)
        - 0.5 * ((m - prior_loc).square() + S.diagonal()) / prior_var
    ).sum()
    entropy = 0.5 * torch.logdet(2 * math.pi * math.e * S)
    xi, s = result.xi, 2 * Y2 - 1
    likelihood = (logsigmoid(xi) + (s * mean_a - xi) / 2).sum()
    # E_q of the bounded log likelihood has one more term, -lambda (E a^2 - xi^2), which
    # vanishes at the fixed point: it is below 1e-9 here, and with it the identity is exact
    off_fixed_point = -(jj_lambda(xi) * (second - xi.square())).sum()
    assert abs(float(off_fixed_point)) < 1e-9
    closed_form = float(expected_log_prior + likelihood + off_fixed_point + entropy)
    assert result.bound == pytest.approx(closed_form, abs=1e-11)


def test_lambda_is_smooth_through_zero():
    xi = torch.tensor([0.0, 5e-5, 2e-4, 1.0], dtype=F64)
    exact = torch.tensor([0.125, 0.0, 0.0, math.tanh(0.5) / 4], dtype=F64)
    exact[1:3] = torch.tanh(xi[1:3] / 2) / (4 * xi[1:3])
    assert torch.allclose(jj_lambda(xi), exact, rtol=1e-12)
    assert torch.allclose(jj_lambda(-xi), jj_lambda(xi))


def test_scale_and_mask_weigh_terms_as_pyro_does():
    def scaled(x, y, mask=True):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_1D))
        with pyro.plate("data", len(x)), poutine.scale(scale=2.0), poutine.mask(mask=mask):
            pyro.sample("y", dist.Bernoulli(logits=x * w + 0.3), obs=y)

    # a datum counted twice is a datum duplicated (each copy's xi is the same)
    twice = jaakkola_jordan_evidence(model_1d, torch.cat([X1, X1]), torch.cat([Y1, Y1]))
    assert jaakkola_jordan_evidence(scaled, X1, Y1).bound == pytest.approx(twice.bound, abs=1e-9)
    keep = torch.arange(20) % 3 != 0
    masked = jaakkola_jordan_evidence(scaled, X1, Y1, mask=keep)
    dropped = jaakkola_jordan_evidence(
        model_1d, torch.cat([X1[keep], X1[keep]]), torch.cat([Y1[keep], Y1[keep]])
    )
    assert masked.bound == pytest.approx(dropped.bound, abs=1e-9)


def test_probs_written_as_a_sigmoid_and_float32_data_give_the_same_bound():
    def with_probs(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_1D))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(probs=torch.sigmoid(x * w + 0.3)), obs=y)

    exact = jaakkola_jordan_evidence(model_1d, X1, Y1)
    assert jaakkola_jordan_evidence(with_probs, X1, Y1).bound == pytest.approx(exact.bound, 1e-8)
    single = jaakkola_jordan_evidence(model_1d, X1.float(), Y1.float())
    assert single.loc.dtype == torch.float32 and single.xi.shape == (20,)
    assert single.bound == pytest.approx(exact.bound, rel=1e-5)


def test_logits_that_are_not_affine_are_refused():
    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w + 0.1 * w**2), obs=y)

    with pytest.raises(ValueError, match="logits of observed site 'y' are not affine"):
        jaakkola_jordan_evidence(model, X1, Y1)


def test_a_non_gaussian_latent_is_named():
    def positive(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        tau = pyro.sample("tau", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w * tau), obs=y)

    with pytest.raises(ValueError, match="latent site 'tau' has support"):
        jaakkola_jordan_evidence(positive, X1, Y1)

    def student(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        v = pyro.sample("v", dist.StudentT(3.0, torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w + v), obs=y)

    with pytest.raises(ValueError, match="log density of site 'v' is not Gaussian"):
        jaakkola_jordan_evidence(student, X1, Y1)


def test_an_improper_prior_is_named():
    def flat(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        pyro.factor("flatten", 0.5 * b**2)  # cancels b's prior: p(b) is flat
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w + b), obs=y)

    with pytest.raises(ValueError, match="not a proper Gaussian along latent site 'b'"):
        jaakkola_jordan_evidence(flat, X1, Y1)

    def masked(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0).mask(False))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w + b), obs=y)

    with pytest.raises(ValueError, match="not a proper Gaussian along latent site 'b'"):
        jaakkola_jordan_evidence(masked, X1, Y1)


def test_models_outside_the_bound_are_refused_by_name():
    def gaussian(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        pyro.sample("y", dist.Normal(x * w, 1.0).to_event(1), obs=y)

    with pytest.raises(ValueError, match="no observed Bernoulli site"):
        jaakkola_jordan_evidence(gaussian, X1, Y1)

    def subsampled(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x), subsample_size=5) as idx:
            pyro.sample("y", dist.Bernoulli(logits=x[idx] * w), obs=y[idx])

    with pytest.raises(ValueError, match=r"plate \['data'\] is subsampled"):
        jaakkola_jordan_evidence(subsampled, X1, Y1)

    def distribution_mask(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w).mask(x > 0), obs=y)

    with pytest.raises(ValueError, match=r"site 'y' is masked by Distribution\.mask"):
        jaakkola_jordan_evidence(distribution_mask, X1, Y1)


def test_a_gaussian_observation_beside_the_bernoulli_is_exact_in_the_bound():
    # With a Gaussian observation z ~ N(w, 1) as well, the bound still lies below the evidence:
    # p(D) = N(z; 0, PRIOR^2 + 1) * int N(w; post) prod sigma(...) dw, by quadrature.
    z = torch.tensor(0.7, dtype=F64)

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.tensor(0.0, dtype=x.dtype), PRIOR_1D))
        pyro.sample("z", dist.Normal(w, 1.0), obs=z)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Bernoulli(logits=x * w + 0.3), obs=y)

    w = torch.linspace(-15, 15, 30001, dtype=F64)
    log_f = dist.Normal(0.0, PRIOR_1D).log_prob(w) + dist.Normal(w, 1.0).log_prob(z)
    log_f = log_f + log_lik(w[:, None] * X1 + 0.3, Y1)
    log_z = float(torch.logsumexp(log_f, 0) + math.log(float(w[1] - w[0])))
    bound = jaakkola_jordan_evidence(model, X1, Y1).bound
    assert bound <= log_z < bound + 0.2


def test_a_pyro_module_linear_model_gives_the_same_bound_as_x_at_w():
    from pyro.nn import PyroModule, PyroSample

    X = torch.stack([X2, X2.square() - 1], -1)

    class Logistic(PyroModule):
        def __init__(self):
            super().__init__()
            self.linear = PyroModule[torch.nn.Linear](2, 1).double()
            zero = torch.tensor(0.0, dtype=F64)
            self.linear.weight = PyroSample(dist.Normal(zero, 1.0).expand([1, 2]).to_event(2))
            self.linear.bias = PyroSample(dist.Normal(zero, 1.0).expand([1]).to_event(1))

        def forward(self, X, y):
            logits = self.linear(X).squeeze(-1)  # weights sampled outside the data plate
            with pyro.plate("data", X.shape[0]):
                pyro.sample("y", dist.Bernoulli(logits=logits), obs=y)

    def plain(X, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=F64), 1.0).to_event(1))
        b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)

    module = jaakkola_jordan_evidence(Logistic(), X, Y2)
    assert module.bound == pytest.approx(jaakkola_jordan_evidence(plain, X, Y2).bound, abs=1e-10)
