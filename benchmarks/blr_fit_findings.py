"""Figures for the findings on BLR.fit's end (items 5-7 of "No confident wrong answers, round
two" and "Pyro's own example models, unchanged"): run ``python benchmarks/blr_fit_findings.py
[baseball|loader|sigma|gp]`` and compare with the references printed beside each figure.

* baseball: Pyro's examples/baseball.py ``partially_pooled_with_logit`` on the Efron-Morris
  table, AutoMultivariateNormal, rule "von", lr 0.5, ``fit(num_steps=300)``, seeds 0-2.
* loader: Pyro's examples/svi_torch.py DataLoader loop (10^4 data, batches of 100, two epochs)
  with ``blr.step`` at lr 0.5, against ``fit(batches=loader)``.
* sigma: a conjugate regression whose noise is a ``pyro.param``; ``model_steps`` 1 and 5.
* gp: Pyro's GP tutorial model (PyroSample kernel priors, PyroParam noise); Pyro's SVI
  (Adam 0.005, 2000 steps) against BLR with ``model_steps`` 1 and 5.
"""

import math
import sys
import warnings

import pyro
import pyro.contrib.gp as gp
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.nn import PyroSample
from torch.distributions import constraints

import pyro_blr as pb
from tests.reliability.test_pyro_examples_fit import (
    AT_BATS,
    HITS,
    SviTorchModel,
    partially_pooled_with_logit,
)


def baseball():
    for seed in range(3):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        model = partially_pooled_with_logit
        guide = AutoMultivariateNormal(model)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pb.BLR(model, guide, pb.VON(lr=0.5)).fit(AT_BATS, HITS, num_steps=300, progress=False)
        pyro.set_rng_seed(123)
        elbo = pb.log_evidence(model, guide, AT_BATS, HITS, num_particles=4000).value
        said = sorted({str(w.message).split(":")[1].split("(")[0].strip()[:40] for w in caught})
        print(
            f"baseball seed {seed}: log(scale) {guide.loc[1].item():.2f} (Gaussian optimum "
            f"-1.45 +- 0.20), ELBO {elbo:.2f} (optimum -50.0); warned: {said}"
        )


def loader():
    size = 10_000
    pyro.set_rng_seed(20200723)
    with torch.no_grad():
        covariates = torch.randn(size)
        data = SviTorchModel(size)(covariates)
    batches = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(covariates, data), batch_size=100
    )
    pyro.clear_param_store()
    reference_model = SviTorchModel(size)
    reference = AutoNormal(reference_model)
    pb.BLR(reference_model, reference, pb.VON(lr=lambda t: 1 / (1 + t / 10))).fit(
        covariates, data, num_steps=100, progress=False
    )
    loc, sd = reference.locs.scale.item(), reference.scales.scale.item()
    for how in ("step loop", "fit(batches=loader)"):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = SviTorchModel(size)
        guide = AutoNormal(model)
        blr = pb.BLR(model, guide, pb.VON(lr=0.5))
        if how == "step loop":
            for _ in range(2):
                for batch in batches:
                    blr.step(*batch)
        else:
            blr.fit(num_steps=2 * len(batches), batches=batches, progress=False)
        off = (guide.locs.scale.item() - loc) / sd
        print(f"svi_torch {how}: log(scale) {off:+.1f} posterior sd off")


def sigma():
    def model(x, y):
        w = pyro.sample("w", dist.Normal(x.new_zeros(()), 1.0))
        s = pyro.param("sigma", x.new_tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(w * x, s), obs=y)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(50, generator=gen, dtype=torch.float64)
    y = 0.7 * x + 0.01 * torch.randn(50, generator=gen, dtype=torch.float64)
    grid = torch.linspace(-6, 0, 6001, dtype=torch.float64).exp()
    v, xx = grid**2, x @ x
    evidence = -0.5 * (
        (len(x) - 1) * v.log() + (v + xx).log() + (y @ y - (x @ y) ** 2 / (v + xx)) / v
    )
    exact = grid[evidence.argmax()].item()
    for steps in (1, 5):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoNormal(model)
        pb.BLR(model, guide, pb.VON(lr=0.5), model_steps=steps).fit(
            x, y, num_steps=300, progress=False, check=False
        )
        sd_w = 1 / math.sqrt(1 + xx.item() / exact**2)
        print(
            f"conjugate sigma, model_steps={steps}: sigma {pyro.param('sigma').item():.4f} "
            f"(exact {exact:.4f}), sd(w) {guide.scales.w.item():.5f} (exact {sd_w:.5f})"
        )


def gp_tutorial():
    pyro.set_rng_seed(0)
    X = dist.Uniform(0.0, 5.0).sample(sample_shape=(20,))
    y = 0.5 * torch.sin(3 * X) + dist.Normal(0.0, 0.2).sample(sample_shape=(20,))

    def make():
        pyro.clear_param_store()
        kernel = gp.kernels.RBF(input_dim=1)
        kernel.lengthscale = PyroSample(dist.LogNormal(0.0, 1.0))
        kernel.variance = PyroSample(dist.LogNormal(0.0, 1.0))
        return gp.models.GPRegression(X, y, kernel, noise=torch.tensor(1.0))

    gpr = make()
    guide = AutoNormal(gpr.model)
    svi = pyro.infer.SVI(gpr.model, guide, pyro.optim.Adam({"lr": 0.005}), pyro.infer.Trace_ELBO())
    for _ in range(2000):
        svi.step()
    print(f"GP tutorial, Pyro SVI: noise {gpr.noise.item():.4f}")
    for steps in (1, 5):
        pyro.set_rng_seed(1)
        gpr = make()
        guide = AutoMultivariateNormal(gpr.model)
        pb.BLR(gpr.model, guide, pb.VON(lr=0.5), model_steps=steps).fit(
            num_steps=300, progress=False, check=False
        )
        print(f"GP tutorial, BLR model_steps={steps}: noise {gpr.noise.item():.4f}")


if __name__ == "__main__":
    runs = {"baseball": baseball, "loader": loader, "sigma": sigma, "gp": gp_tutorial}
    for name in sys.argv[1:] or runs:
        runs[name]()
