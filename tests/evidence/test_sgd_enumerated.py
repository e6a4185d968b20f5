"""pb.sgd_evidence on models with enumerated discrete sites (issue 31): the sites are summed out,
so the bound equals the one on the same model with the sum written by hand
(``MixtureSameFamily``), chain for chain from the same seed (the set-up leaves the random
generators alone, so both models' chains start from the same draws): float64 round-off, 1e-8.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_blr.evidence.sgd_entropy import sgd_evidence

F64 = torch.float64
WEIGHTS = torch.tensor([0.7, 0.3], dtype=F64)
SHIFTS = torch.tensor([0.0, 3.0], dtype=F64)


def data(n: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    z = torch.rand(n, generator=gen, dtype=F64) < 0.3
    return 0.8 + 3.0 * z + torch.randn(n, generator=gen, dtype=F64)


def enumerated_model(y, size=None):
    """The conformance idiom's mixture: a shared shift mu, an enumerated z per datum."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 0.5))
    with pyro.plate("data", y.shape[0], subsample_size=size) as idx:
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(mu + SHIFTS[z], scale), obs=y[idx])


def summed_model(y, size=None):
    """The same model with z summed out by hand."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=F64), 0.5))
    with pyro.plate("data", y.shape[0], subsample_size=size) as idx:
        components = dist.Normal((mu + SHIFTS).expand(idx.shape[0], 2), scale)
        mixture = dist.MixtureSameFamily(dist.Categorical(WEIGHTS), components)
        pyro.sample("y", mixture, obs=y[idx])


def run(model, *args, **options):
    pyro.set_rng_seed(0)
    options = {"num_chains": 4, "num_steps": 6, "step_size": 0.005, "init_scale": 0.3, **options}
    return sgd_evidence(model, *args, **options)


@pytest.mark.parametrize("hessian", ["exact", "hutchinson"])
def test_enumerated_equals_hand_summed(hessian):
    y = data()
    got = run(enumerated_model, y, hessian=hessian)
    want = run(summed_model, y, hessian=hessian)
    torch.testing.assert_close(got.bound, want.bound, rtol=1e-8, atol=1e-8)
    assert got.best_step == want.best_step


def test_enumerated_langevin_equals_hand_summed():
    y = data()
    got = run(enumerated_model, y, hessian="exact", langevin=True, temperature=0.5)
    want = run(summed_model, y, hessian="exact", langevin=True, temperature=0.5)
    torch.testing.assert_close(got.bound, want.bound, rtol=1e-8, atol=1e-8)


def test_local_enumerated_site_in_subsampled_plate_equals_hand_summed():
    """z local to the subsampled plate is summed out per datum, N/B outside the sum: the
    minibatch steps and the full-data bound are the hand-summed model's, minibatch for
    minibatch (both draw the same plate indices from the same generator)."""
    y = data()
    got = run(enumerated_model, y, 4, hessian="exact")
    want = run(summed_model, y, 4, hessian="exact")
    torch.testing.assert_close(got.bound, want.bound, rtol=1e-8, atol=1e-8)
    full = run(summed_model, y, None, hessian="exact")  # another chain path: steps differ
    assert not torch.allclose(got.bound[1:], full.bound[1:])


def global_enumerated_model(y, size=None):
    """One enumerated regime k for all data: its sum does not split over a minibatch."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    k = pyro.sample("k", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
    with pyro.plate("data", y.shape[0], subsample_size=size) as idx:
        pyro.sample("y", dist.Normal(mu + SHIFTS[k], 1.0), obs=y[idx])


def test_global_enumerated_site_with_subsampled_data_is_refused():
    with pytest.raises(ValueError, match=r"enumerated site 'k' .* plate 'data'.* site 'y'"):
        run(global_enumerated_model, data(), 4)


def test_global_enumerated_site_full_data_is_summed():
    """The same model without minibatches is exact: log sum_k of the whole data's joint."""

    def summed(y, size=None):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        log_lik = dist.Normal(mu + SHIFTS[:, None], 1.0).log_prob(y).sum(-1)
        pyro.factor("y", torch.logsumexp(WEIGHTS.log() + log_lik, 0))

    y = data()
    got = run(global_enumerated_model, y, hessian="exact")
    want = run(summed, y, hessian="exact")
    torch.testing.assert_close(got.bound, want.bound, rtol=1e-8, atol=1e-8)


def test_unmarked_discrete_site_names_the_model_fix_not_a_guide():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(WEIGHTS))
            pyro.sample("y", dist.Normal(mu + SHIFTS[z], 1.0), obs=y)

    with pytest.raises(ValueError, match="latent site 'z' is discrete") as caught:
        run(model, data())
    message = str(caught.value)
    assert "infer={'enumerate': 'parallel'}" in message
    assert "guide" not in message  # sgd_evidence takes no guide


def test_sequential_enumeration_is_refused():
    def model(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
        with pyro.plate("data", y.shape[0]):
            z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "sequential"})
            pyro.sample("y", dist.Normal(mu + SHIFTS[z], 1.0), obs=y)

    with pytest.raises(ValueError, match=r"latent site 'z' is marked .*'sequential'"):
        run(model, data())


def uniform_model(y, x, width):
    """Uniform likelihoods: far from the data some chains' log joint is -inf."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    pyro.sample("x", dist.Uniform(mu - width, mu + width, validate_args=False), obs=x)
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        low, high = mu + SHIFTS[z] - 1, mu + SHIFTS[z] + 1
        pyro.sample("y", dist.Uniform(low, high, validate_args=False), obs=y)


@pytest.mark.parametrize(
    "x, width, blamed",
    [
        (0.0, 100.0, r"enumerated site\(s\) \['z'\] is -inf"),  # x possible on every chain
        (9.0, 1.0, r"model site 'x' \(observed\) is -inf"),  # blamed before the sum
    ],
)
def test_impossible_data_are_named_through_the_sum(x, width, blamed):
    """A chain whose data are impossible is named by the site at fault: a site apart from the
    enumerated one, or the sum over the enumerated values (no pseudo-site)."""
    y = torch.tensor([0.1, 0.5, 3.2], dtype=F64)
    with pytest.raises(ValueError, match=rf"at step 0 on chain \d+, .*{blamed}"):
        run(uniform_model, y, torch.tensor(x, dtype=F64), width, init_scale=3.0)
