"""Peak memory of BLR.fit with and without its closing Pareto k-hat check, on the softmax
regression of examples/removing_a_class.py (digits, 650 weights, IVON, 200 steps).

The model is written ``X @ W + b``, which broadcasts the check's 256 particles wrong inside a
particle plate (logits of 256 x 256 x 1437 x 10); the check replays the particles one by one
instead, after judging the plate on three (pyro_blr.core.weights.PROBE_PARTICLES). Measured on
one loaded CPU core: 16.6 GB with the check before that probe, 1.0 GB after (0.98 GB without it).

Run: ``/usr/bin/time -v python -m benchmarks.fit_check_memory check`` and
``... nocheck``; "Maximum resident set size" is the peak.
"""

from __future__ import annotations

import sys

import pyro
from pyro.infer.autoguide import AutoNormal

import pyro_blr as pb
from examples.removing_a_class import load_data, model


def main(check: bool) -> None:
    (X, y), _ = load_data()
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoNormal(model)
    blr = pb.BLR(model, guide, pb.IVON(lr=0.1, mc_samples=2))
    blr.fit(X, y, num_steps=200, progress=False, check=check)
    print("closing check:", getattr(blr, "pareto", None))


if __name__ == "__main__":
    main(sys.argv[1:] != ["nocheck"])
