"""Model selection by estimated evidence agrees with the exact evidence (polynomial regression)."""

import pyro
import pytest
from pyro.infer.autoguide import AutoMultivariateNormal

import pyro_blr as pb
from tests.scenarios import load_example

selection = load_example("model_selection")
DEGREES = range(1, 6)


@pytest.fixture(scope="module")
def designs():
    x, y = selection.make_data()
    return {d: (selection.features(x, d), y) for d in DEGREES}


def test_log_evidence_on_fitted_guides_picks_the_exact_degree(designs):
    exact = {d: selection.exact_log_evidence(*data) for d, data in designs.items()}
    estimated = {}
    for d, data in designs.items():
        guide = selection.fit(AutoMultivariateNormal, *data, num_steps=100)
        estimated[d] = pb.log_evidence(selection.model, guide, *data, num_particles=2000)
    assert max(estimated, key=lambda d: estimated[d].value) == max(exact, key=exact.get) == 3
    for d in DEGREES:  # each within four standard errors (plus the bound's tiny gap)
        assert abs(estimated[d].value - exact[d]) < 4 * estimated[d].stderr + 0.02


def test_sgd_evidence_is_a_lower_bound_on_every_degree(designs):
    # 200 chains: the chain average has a standard error below 0.1 nat here; 0.3 is three.
    pyro.set_rng_seed(0)
    for data in designs.values():
        exact = selection.exact_log_evidence(*data)
        hessian = data[0].T @ data[0] / selection.NOISE**2
        step = 0.2 / float(hessian.trace())
        result = pb.sgd_evidence(selection.model, *data, num_chains=200, num_steps=100,
                                 step_size=step, hessian="exact")  # fmt: skip
        assert result.best <= exact + 0.3
