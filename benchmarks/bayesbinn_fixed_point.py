"""The error of the BLR's Bernoulli fit at the enumerated mean-field fixed point, over seeds.

The spike-and-slab regression of tests/blr/test_expfamily_binary.py (4 indicators, fixed slab
weights): the CAVI fixed point by enumeration, then the BLR (``pb.ExpFamilyRule``, lr
0.5 / (1 + t / 20), the average of the last half of the steps) from several seeds. Prints each
seed's error in probability (and the largest in logit) and their mean, sd and largest value,
the numbers the test's tolerance is derived from.

Run: ``python -m benchmarks.bayesbinn_fixed_point [steps] [mc_samples] [temperature] [seeds]``
(defaults 150 1000 0.03 10, the test's settings; about 2 s a seed).
"""

from __future__ import annotations

import sys

import pyro
import torch

import pyro_blr as pb
from tests.blr.test_expfamily_binary import _cavi, _spike_and_slab


def late_average(model, args: tuple, steps: int, mc_samples: int, temperature: float, seed: int):
    """The BLR's natural parameters of site ``z`` averaged over the last half of ``steps`` steps
    (``pb.ExpFamilyRule``, lr 0.5 / (1 + t / 20)) from ``seed``: the rule is linear in them, so
    the average of the late iterates is its estimate of the fixed point."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = pb.AutoExpFamily(model)
    rule = pb.ExpFamilyRule(
        lr=lambda t: 0.5 / (1 + t / 20), mc_samples=mc_samples, temperature=temperature
    )
    blr = pb.BLR(model, guide, rule)
    total = 0.0
    for t in range(steps):
        blr.step(*args)
        if t >= steps // 2:
            total = total + guide.natural_params()["z"]
    return total / (steps - steps // 2)


def main(steps: int = 150, mc_samples: int = 1000, temperature: float = 0.03, seeds: int = 10):
    model, X, y = _spike_and_slab()
    cavi = _cavi(model, (X, y))
    print("CAVI fixed point", cavi.numpy().round(4))
    errors = []
    for seed in range(seeds):
        logits = late_average(model, (X, y), steps, mc_samples, temperature, seed)[..., 0]
        error = torch.sigmoid(logits) - cavi
        errors.append(error)
        logit_error = float((logits - torch.logit(cavi)).abs().max())
        print(f"seed {seed}: error {error.numpy().round(4)}, largest logit error {logit_error:.3f}")
    stacked = torch.stack(errors)
    print("mean", stacked.mean(0).numpy().round(4))
    if seeds > 1:
        print("sd", stacked.std(0).numpy().round(4))
    print("largest |error|", round(float(stacked.abs().max()), 4))


if __name__ == "__main__":
    kinds = (int, int, float, int)
    main(*(kind(arg) for kind, arg in zip(kinds, sys.argv[1:], strict=False)))
