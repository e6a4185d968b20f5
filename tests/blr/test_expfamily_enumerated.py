"""pb.BLR with pb.ExpFamilyRule on pb.AutoExpFamily, on a model with an enumerated discrete site
(issue 31): the rule's estimates must weigh the marginal log p(D, theta) = log sum_z p(D, theta, z),
so its iterates equal those on the same model with the sum written by hand (MixtureSameFamily),
step for step from the same seed (the guides draw the same mu and scale: float64 round-off, 1e-8).

The expfamily stepper's log joint (``SiteDraws.neg_log_target``) sums the site out per draw
(``pyro_blr.core.log_joint(..., enumerated=True)``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

import pyro_blr as pb

F64 = torch.float64
WEIGHTS = torch.tensor([0.7, 0.3], dtype=F64)
SHIFTS = torch.tensor([0.0, 3.0], dtype=F64)


def data(n: int = 12) -> torch.Tensor:
    gen = torch.Generator().manual_seed(3)
    z = torch.rand(n, generator=gen, dtype=F64) < 0.3
    return 0.8 + 3.0 * z + torch.randn(n, generator=gen, dtype=F64)


def enumerated_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    scale = pyro.sample("scale", dist.Gamma(torch.tensor(2.0, dtype=F64), 2.0))
    with pyro.plate("data", y.shape[0]):
        z = pyro.sample("z", dist.Categorical(WEIGHTS), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(mu + SHIFTS[z], scale), obs=y)


def summed_model(y):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=F64), 1.0))
    scale = pyro.sample("scale", dist.Gamma(torch.tensor(2.0, dtype=F64), 2.0))
    with pyro.plate("data", y.shape[0]):
        components = dist.Normal((mu + SHIFTS).expand(y.shape[0], 2), scale)
        pyro.sample("y", dist.MixtureSameFamily(dist.Categorical(WEIGHTS), components), obs=y)


def fit(model, guide_model, y, steps=12):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    guide = pb.AutoExpFamily(guide_model)
    blr = pb.BLR(model, guide, pb.ExpFamilyRule(lr=0.2, mc_samples=8))
    losses = torch.tensor([blr.step(y) for _ in range(steps)], dtype=F64)
    params = {k: v.detach().clone() for k, v in pyro.get_param_store().items()}
    return params, losses


def test_expfamily_iterates_equal_the_hand_summed_models():
    y = data()
    got, got_losses = fit(enumerated_model, poutine.block(enumerated_model, hide=["z"]), y)
    want, want_losses = fit(summed_model, summed_model, y)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(got_losses, want_losses, rtol=1e-8, atol=1e-8)
