"""The error of the BLR's one-hot (categorical) fit at the enumerated mean-field fixed point.

The model of tests/blr/test_expfamily_categorical.py (three one-hot choices of three outcomes, a
Gaussian likelihood linear in them): the CAVI fixed point by enumeration, then the BLR
(``pb.ExpFamilyRule``, lr 0.5 / (1 + t / 20), the average of the last half of the steps) from
several seeds. Prints each seed's largest error in probability, then the mean, sd and largest
|error| over seeds, the numbers the test's tolerance is derived from.

Run: ``python -m benchmarks.onehot_fixed_point [steps] [mc_samples] [temperature] [seeds]``
(defaults 150 1000 0.03 10, the test's settings; about 2 s a seed).
"""

from __future__ import annotations

import sys

import torch

from benchmarks.bayesbinn_fixed_point import late_average
from tests.blr.test_expfamily_categorical import _cavi, _choices


def main(steps: int = 150, mc_samples: int = 1000, temperature: float = 0.03, seeds: int = 10):
    model, X, y = _choices()
    cavi = _cavi(model, (X, y))
    print("CAVI fixed point", cavi.numpy().round(4).tolist())
    errors = []
    for seed in range(seeds):
        eta = late_average(model, (X, y), steps, mc_samples, temperature, seed)
        fitted = torch.softmax(torch.cat([eta, torch.zeros_like(eta[..., :1])], -1), -1)
        error = fitted - cavi
        errors.append(error)
        print(f"seed {seed}: largest |error| {float(error.abs().max()):.4f}")
    stacked = torch.stack(errors)
    print("mean", stacked.mean(0).numpy().round(4).tolist())
    if seeds > 1:
        print("sd", stacked.std(0).numpy().round(4).tolist())
    print("largest |mean|", round(float(stacked.mean(0).abs().max()), 4))
    if seeds > 1:
        print("largest sd", round(float(stacked.std(0).max()), 4))
    print("largest |error|", round(float(stacked.abs().max()), 4))


if __name__ == "__main__":
    kinds = (int, int, float, int)
    main(*(kind(arg) for kind, arg in zip(kinds, sys.argv[1:], strict=False)))
