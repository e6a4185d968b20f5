"""BLR rule "expfamily" on AutoExpFamily: conjugate posteriors recovered exactly."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from pyro_blr.blr.rules import expfamily_update
from pyro_blr.families import Beta, Gamma
from tests.scenarios import beta_bernoulli_gamma_poisson

D = torch.float64
CONJUGATE = beta_bernoulli_gamma_poisson(D)
conjugate_model = CONJUGATE.model
FLIPS, COUNTS = CONJUGATE.data
EXACT = CONJUGATE.exact


@pytest.mark.parametrize(
    "family, start, target",
    [(Beta(), (1.0, 1.0), EXACT["p"]), (Gamma(), (1.0, 1.0), EXACT["rate"])],
)
def test_one_step_with_exact_expectations_is_the_exact_posterior(family, start, target):
    # On a conjugate site E_q[l] = -<lambda*, mu> + const, so its exact lambda-gradient is
    # -F(lambda) lambda*, and rho = 1 lands on lambda*.
    eta = family.natural_params(*(torch.tensor(v, dtype=D) for v in start))
    exact = family.natural_params(*(torch.tensor(v, dtype=D) for v in target))
    new, halvings = expfamily_update(family, eta, -family.fisher(eta) @ exact, lr=1.0)
    torch.testing.assert_close(new, exact, rtol=1e-12, atol=1e-12)
    assert halvings == 0


def test_monte_carlo_blr_recovers_beta_bernoulli_and_gamma_poisson():
    # lr = 1 / (t + 1) makes lambda the running average of the per-step estimates of lambda*,
    # 200 steps x 100 draws. One step with 10000 draws was within 7%, so the average of twice
    # as many draws is within about 5%; measured 0.4%. Tolerance: 3%.
    guide = pb.AutoExpFamily(conjugate_model)
    blr = pb.BLR(conjugate_model, guide, pb.ExpFamilyRule(lr=lambda t: 1 / (t + 1), mc_samples=100))
    blr.fit(FLIPS, COUNTS, num_steps=200, progress=False)
    CONJUGATE.assert_exact_posteriors(guide)
    assert blr.num_steps == 200 and blr.halvings == 0


def test_circular_and_simplex_sites_stay_valid():
    angles = torch.tensor([0.1, 0.3, -0.2, 0.25], dtype=D)

    def model(angles):
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3, dtype=D)))
        mu = pyro.sample("mu", dist.VonMises(torch.tensor(0.0, dtype=D), 1.0))
        with pyro.plate("data", len(angles)):
            pyro.sample("obs", dist.VonMises(mu, 4.0), obs=angles)
        pyro.sample("pick", dist.Categorical(weights), obs=torch.tensor(2))

    guide = pb.AutoExpFamily(model)
    blr = pb.BLR(model, guide, pb.ExpFamilyRule(lr=0.3, mc_samples=64))
    losses = blr.fit(angles, num_steps=100, progress=False).losses
    found = guide.distributions(angles)
    assert float(found["mu"].loc) == pytest.approx(float(angles.mean()), abs=0.1)
    assert found["weights"].concentration.argmax() == 2  # the observed pick pulls its weight
    assert sum(losses[-10:]) < sum(losses[:10])


def test_rule_and_guide_must_match():
    with pytest.raises(TypeError, match=r"cannot drive AutoNormal with ExpFamilyRule"):
        pb.BLR(conjugate_model, AutoNormal(conjugate_model), pb.ExpFamilyRule())
    with pytest.raises(TypeError, match="this guide takes ExpFamilyRule"):
        pb.BLR(conjugate_model, pb.AutoExpFamily(conjugate_model), pb.IVON())


def test_state_dict_names_the_rule_that_runs():
    guide = pb.AutoExpFamily(conjugate_model)
    blr = pb.BLR(conjugate_model, guide, pb.ExpFamilyRule(lr=0.5, mc_samples=8))
    blr.step(FLIPS, COUNTS)
    state = blr.state_dict()
    assert state["rule"] == "expfamily" and state["num_steps"] == 1
    natural = guide.natural_params()  # the rule's state: each site's natural parameters
    saved = {k for k in state["state"] if not k.startswith("signature.")}
    assert saved == {f"natural.{name}" for name in natural}
    for name, value in natural.items():  # the guide's parameters hold them up to round-off
        torch.testing.assert_close(state["state"][f"natural.{name}"], value, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="this driver runs 'expfamily'"):
        blr.load_state_dict({"rule": "von", "num_steps": 0, "state": {}})
