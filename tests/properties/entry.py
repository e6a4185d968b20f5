"""The entry points the relations run on a fitted guide (``log_evidence``, ``psis_diagnostic``,
``to_inference_data``, ``loo_sensitivity``), and the guides they run on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import torch

import pyro_blr as pb
from tests.properties.cases import GAUSSIAN_GUIDES, Case, Fit

# ------------------------------------------------------------------ entry points
ENTRY_CASES = [
    Case("newton", "AutoNormal"),
    Case("vogn", "AutoDiagonalNormal"),
    Case("von", "AutoMultivariateNormal"),
    Case("expfamily", "AutoExpFamily"),
    Case("mixture", "AutoMixture-diagonal"),
    Case("mixture", "AutoMixture-expfamily"),
]
"""Each kind of guide once, fitted by a rule that drives it."""


def refusal(call):
    """``call(model, guide, args)`` on the RNG seeded 7, or the ``ValueError`` it raises (a guide
    not at a fixed point, say), by type and message up to its second colon (the entry point and
    its reason, before any measured figures): both sides of a relation must then refuse alike."""

    def run(model, guide, args):
        pyro.set_rng_seed(7)
        try:
            return call(model, guide, args)
        except ValueError as error:
            return f"ValueError: {':'.join(str(error).split(':')[:2])}"

    return run


def log_evidence(model, guide, args):
    return {m: pb.log_evidence(model, guide, *args, method=m, num_particles=64)
            for m in ("elbo", "iwae")}  # fmt: skip


def psis(model, guide, args):
    return pb.psis_diagnostic(model, guide, *args, num_samples=100)


def inference_data(model, guide, args):
    idata = pb.to_inference_data(model, guide, *args, num_samples=20)
    return {
        (group, name): torch.as_tensor(np.asarray(idata[group][name]))
        for group, name in [("posterior", "w"), ("log_likelihood", "y"), ("sample_stats", "log_q"),
                            ("sample_stats", "log_p"), ("posterior_predictive", "y")]
    }  # fmt: skip


def loo(model, guide, args):
    return pb.loo_sensitivity(model, guide, *args, num_samples=32)


CALLS = {
    "log_evidence": log_evidence,
    "psis_diagnostic": psis,
    "to_inference_data": inference_data,
    "loo_sensitivity": loo,
}


def entry_points(case: Case, names=tuple(CALLS)) -> Callable:
    """``then`` for :func:`fit`: the entry points ``names`` that take ``case``'s guide
    (``loo_sensitivity`` takes Gaussian guides only), each by :func:`refusal`."""
    calls = {name: refusal(CALLS[name]) for name in names
             if name != "loo_sensitivity" or case.guide in GAUSSIAN_GUIDES}  # fmt: skip

    def every_entry_point(model, guide, args):
        return {name: call(model, guide, args) for name, call in calls.items()}

    return every_entry_point


def outputs(new: Fit, old: Fit):
    """``(name, new output, old output)`` of every entry point both sides answered; where one
    side refused, the other must have refused alike."""
    for name, found in new.out.items():
        ref = old.out[name]
        if isinstance(found, str) or isinstance(ref, str):
            assert found == ref, f"{name}: {found!r} but {ref!r}"
            continue
        yield name, found, ref
