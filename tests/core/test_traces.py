"""Traces as the package reads them: sample sites, plate nesting, shape validation, per-particle
sums, and a set-up trace that leaves the RNG alone."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

from pyro_blr.core import (
    guess_max_plate_nesting,
    max_plate_nesting,
    sample_sites,
    site_log_probs,
    sum_per_particle,
    trace_without_rng,
    validate_site_shapes,
)


def test_sum_per_particle_sums_every_plate_dimension():
    term = torch.arange(24.0).reshape(3, 2, 4)  # (particles, plate -2, plate -1)
    torch.testing.assert_close(sum_per_particle(term, 3, 2), term.sum((1, 2)))
    # A particle dimension with broadcast plate dimensions.
    torch.testing.assert_close(sum_per_particle(torch.ones(3, 1, 4), 3, 2), torch.full((3,), 4.0))
    # No plates: the term is one number per particle already.
    term = torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(sum_per_particle(term, 3, 0), term)


def test_a_term_without_the_particle_dimension_is_shared_by_every_particle():
    # E.g. the log density of an observed site that does not depend on the latents.
    term = torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # only the model's two plate dimensions
    torch.testing.assert_close(sum_per_particle(term, 5, 2), torch.full((5,), 10.0))
    torch.testing.assert_close(sum_per_particle(torch.tensor(2.5), 4, 0), torch.full((4,), 2.5))


def test_a_batch_dimension_left_of_the_particles_is_refused():
    with pytest.raises(ValueError, match=r"batch shape \(2, 3\) left of the model's 1 plate"):
        sum_per_particle(torch.ones(2, 3, 4), 3, 1)


def nested(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("groups", 2, dim=-2):
        offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        with pyro.plate("data", 3, dim=-1):
            pyro.sample("y", dist.Normal(mu + offset, 1.0), obs=y)


def deep(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y), dim=-3):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y.reshape(-1, 1, 1))


def no_plates():
    pyro.sample("mu", dist.Normal(0.0, 1.0))


@pytest.mark.parametrize(
    "model, args, nesting",
    [(nested, (torch.zeros(2, 3),), 2), (deep, (torch.zeros(4),), 3), (no_plates, (), 0)],
    ids=["nested", "dim=-3", "no plates"],
)
def test_plate_nesting_from_one_run_of_guide_and_model(model, args, nesting):
    guide = AutoNormal(model)
    assert guess_max_plate_nesting(model, guide, args, {}) == nesting
    assert max_plate_nesting(poutine.trace(model).get_trace(*args)) == nesting


def test_guessing_the_nesting_leaves_the_param_store_and_draws_alone():
    # It runs under poutine.block: nothing the guide registers is recorded by an outer trace.
    guide = AutoNormal(nested)
    guide(torch.zeros(2, 3))
    with poutine.trace(param_only=True) as outer:
        guess_max_plate_nesting(nested, guide, (torch.zeros(2, 3),), {})
    assert not outer.trace.nodes


def misshapen(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def test_an_observation_broadcasting_against_its_plate_is_refused_by_name():
    # y of shape (N, 1) in a plate of N broadcasts to an (N, N) log density: N times the data.
    y = torch.zeros(4, 1)
    trace = poutine.trace(misshapen).get_trace(y)
    with pytest.raises(ValueError, match=r'at site "y", invalid log_prob shape'):
        validate_site_shapes(trace)
    with pytest.raises(ValueError, match=r'at site "y", invalid log_prob shape'):
        guess_max_plate_nesting(misshapen, AutoNormal(misshapen), (y,), {})
    validate_site_shapes(poutine.trace(misshapen).get_trace(torch.zeros(4)))  # the right shape
    with pyro.validation_enabled(False):  # Pyro's switch turns the check off, as in Pyro
        validate_site_shapes(trace)


def with_everything(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.deterministic("twice", 2 * mu)
    with pyro.plate("data", 10, subsample_size=4) as idx:
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])


def test_sample_sites_skip_subsample_sites_and_optionally_deterministic_ones():
    trace = poutine.trace(with_everything).get_trace(torch.zeros(10))
    assert "data" in trace.nodes  # Pyro records the subsample indices as a sample site
    assert [name for name, _ in sample_sites(trace)] == ["mu", "twice", "y"]
    assert [name for name, _ in sample_sites(trace, deterministic=False)] == ["mu", "y"]


def test_site_log_probs_are_scaled_by_n_over_b_and_masked_like_pyro():
    y = torch.arange(10.0)
    trace = poutine.trace(with_everything).get_trace(y)
    terms = dict(site_log_probs(trace))
    assert set(terms) == {"mu", "y"}  # the deterministic site has no density
    mu, idx = trace.nodes["mu"]["value"], trace.nodes["data"]["value"]
    torch.testing.assert_close(terms["y"], 10 / 4 * dist.Normal(mu, 1.0).log_prob(y[idx]))
    torch.testing.assert_close(sum(t.sum() for t in terms.values()), trace.log_prob_sum())

    def masked(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)), poutine.mask(mask=torch.tensor([True, False, True])):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([0.5, 100.0, -0.5])
    trace = poutine.trace(masked).get_trace(y)
    terms = dict(site_log_probs(trace))
    assert terms["y"][1] == 0  # the masked datum counts for nothing
    torch.testing.assert_close(sum(t.sum() for t in terms.values()), trace.log_prob_sum())


def test_trace_without_rng_leaves_the_generator_where_it_was():
    pyro.set_rng_seed(1)
    expected = torch.rand(3)
    pyro.set_rng_seed(1)
    trace = trace_without_rng(with_everything, (torch.zeros(10),), {}, torch.zeros(()))
    assert {"mu", "y", "twice"} <= set(trace.nodes)  # observed and deterministic sites too
    assert torch.equal(torch.rand(3), expected)


def test_num_observations_counts_full_plates_of_observed_sites():
    from pyro_blr.core import num_observations

    def model(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("groups", 3, dim=-2):
            z = pyro.sample("z", dist.Normal(mu, 1.0))  # latent: not counted
            with pyro.plate("data", 100, subsample_size=10, dim=-1) as idx:
                pyro.sample("y", dist.Normal(z, 1.0), obs=y[..., idx])
        pyro.sample("extra", dist.Normal(mu, 1.0), obs=torch.tensor(0.0))

    assert num_observations(poutine.trace(model).get_trace(torch.zeros(3, 100))) == 300

    def no_data():
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    assert num_observations(poutine.trace(no_data).get_trace()) == 1


def test_num_observations_counts_each_datum_with_its_sites_scale():
    # A model under poutine.scale(2) has the log joint of its data duplicated: it counts each
    # datum twice (it counted the plate's size, half the duplicated data's count). A subsampled
    # plate still counts its full size (N/B times B), and a tensor scale its mean per element.
    from pyro_blr.core import num_observations

    def model(y, weight=1.0):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with poutine.scale(scale=weight), pyro.plate("data", 100, subsample_size=10) as idx:
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])

    y = torch.zeros(100)
    twice = poutine.scale(model, scale=2.0)
    assert num_observations(poutine.trace(model).get_trace(y)) == 100
    assert num_observations(poutine.trace(twice).get_trace(y)) == 200
    assert num_observations(poutine.trace(model).get_trace(y, 0.25)) == 25
    weights = torch.tensor([1.0, 3.0]).repeat(5)  # one per element of the minibatch: mean 2
    assert num_observations(poutine.trace(model).get_trace(y, weights)) == 200
    duplicated = torch.cat([y, y])

    def model_of_duplicates(y):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    doubled = poutine.scale(model_of_duplicates, scale=2.0)
    assert num_observations(poutine.trace(doubled).get_trace(y)) == num_observations(
        poutine.trace(model_of_duplicates).get_trace(duplicated)
    )
