"""The conformance matrix's guide rows: every option of this package's guides, every entry point.

A row is one guide option -- ``pb.AutoMixture(component="diagonal" | "full" | "expfamily")`` and
``pb.AutoFlow(flow=...)`` for every name in :data:`pyro_blr.guides.FLOWS` and for a user's
factory -- on the ``matmul`` idiom of ``models.py`` (conjugate linear regression: the exact
posterior and log evidence are known). A column is an entry point that takes a guide. A cell
gives the answer within the tolerances of ``test_matrix.py`` or raises the error it names:

* ``blr``: ``pb.BLR(rule="mixture")`` for the mixtures (lr 0.1, 8 particles, 150 steps, as the
  matrix's mixture column); a flow has no learning rule, and the BLR must say so naming it;
* ``svi``, ``svi_renyi``: SVI with ``Trace_ELBO`` (one particle) or ``pb.RenyiELBO(alpha=0.5)``
  (8 particles), 1500 ClippedAdam steps from lr 0.05 decayed by 0.996 a step (as the matrix);
* ``log_evidence``, ``psis_diagnostic``, ``to_inference_data``: on the ``svi`` fit (cached per
  row; the ``blr`` fit for the mixtures SVI cannot fit, ``component="full"`` and
  ``"expfamily"``, which refuse SVI naming the rule that fits them), with the matrix's
  tolerances for a guide that is not the exact posterior;
* ``loo_sensitivity``: needs a Gaussian guide, and must refuse these by name.

Mixtures of mean-field components (``"diagonal"``, and ``"expfamily"``, whose components on real
sites are Normals) are held between the mean-field optimum and the posterior, as in the matrix.
The fitted cells are ``long_fit`` (run by hand with ``-m long_fit``); the refusals and the BLR
cells are in the default suite.
"""

from __future__ import annotations

import functools

import pyro
import pyro.optim
import pytest
import torch
from pyro.distributions.transforms import affine_coupling
from pyro.infer import SVI, Trace_ELBO

import pyro_blr as pb
from pyro_blr.guides import FLOWS
from tests.conformance.models import IDIOMS, Raises, XFail
from tests.conformance.test_matrix import NUM_DRAWS, check_moments, draws, reference

MIXTURES = {
    f"mixture_{kind}": functools.partial(pb.AutoMixture, num_components=2, component=kind)
    for kind in ("diagonal", "full", "expfamily")
}
FLOW_OPTIONS = {
    **{f"flow_{name}": functools.partial(pb.AutoFlow, flow=name) for name in sorted(FLOWS)},
    "flow_factory": functools.partial(pb.AutoFlow, flow=lambda dim: affine_coupling(dim)),
}
GUIDE_OPTIONS = {**MIXTURES, **FLOW_OPTIONS}
MEAN_FIELD = {"mixture_diagonal", "mixture_expfamily"}  # components are mean-field
NO_SVI = {"mixture_full", "mixture_expfamily"}  # no reparameterized sampler: the BLR fits them
FITTED = ["svi", "svi_renyi", "log_evidence", "psis_diagnostic", "to_inference_data"]
ENTRIES = ["blr", *FITTED, "loo_sensitivity"]

KNOWN_FAILURES = {
    ("flow_spline", "svi"): (
        "AutoFlow(flow='spline') under SVI: sd of w[1] 2.55 times the exact posterior's on a "
        "Gaussian posterior the flow's affine map can hold exactly (not yet diagnosed)"
    ),
    ("flow_spline", "svi_renyi"): "AutoFlow(flow='spline') under RenyiELBO: mean 0.2501 sd off",
    ("flow_spline", "psis_diagnostic"): "AutoFlow(flow='spline') under SVI: k-hat 0.75 > 0.7",
    ("flow_spline_autoregressive", "svi"): (
        "AutoFlow(flow='spline_autoregressive') under SVI: sd ratios 1.15-2.48"
    ),
    ("flow_spline_autoregressive", "svi_renyi"): (
        "AutoFlow(flow='spline_autoregressive') under RenyiELBO: sd ratios 1.39-1.97"
    ),
    ("flow_spline_coupling", "svi"): (
        "AutoFlow(flow='spline_coupling') under SVI: sd ratios 1.09-1.31"
    ),
    ("flow_spline_coupling", "svi_renyi"): (
        "AutoFlow(flow='spline_coupling') under RenyiELBO: sd ratios 1.31-2.41"
    ),
    ("mixture_expfamily", "psis_diagnostic"): (
        "pb.psis_diagnostic k-hat 0.73 > 0.7 on the BLR fit of AutoMixture(component="
        "'expfamily') of a Gaussian posterior (measured with the exp-family rules' fix in "
        "progress; see the row's blr cell)"
    ),
    ("flow_sylvester", "svi_renyi"): (
        "AutoFlow(flow='sylvester') under RenyiELBO(alpha=0.5): sd of w[1] 1.42 times the "
        "posterior's (its Trace_ELBO fit passes: the flows' Renyi fits run wide, see planar's)"
    ),
    ("flow_planar", "svi_renyi"): (
        "AutoFlow(flow='planar') under RenyiELBO(alpha=0.5): w[1]'s mean 0.40 sd off"
    ),
}


def expectation(option: str, entry: str) -> object:
    """What a cell must do when it does not give the answer: ``Raises`` or ``XFail``."""
    if (option, entry) in KNOWN_FAILURES:
        return XFail(KNOWN_FAILURES[option, entry], raises=AssertionError)
    if entry in ("svi", "svi_renyi") and option in NO_SVI:
        return Raises(NotImplementedError, "no reparameterized sampler for SVI.*rule='mixture'")
    if entry == "loo_sensitivity":
        return Raises(TypeError, "loo_sensitivity needs a Gaussian guide")
    if entry == "blr" and option in FLOW_OPTIONS:
        return Raises(TypeError, "BLR cannot drive AutoFlow")
    return None


def fit_blr(option: str):
    idiom = IDIOMS["matmul"]()
    guide = GUIDE_OPTIONS[option](idiom.model)
    blr = pb.BLR(idiom.model, guide, pb.MixtureRule(lr=0.1, mc_samples=8))
    blr.fit(*idiom.args, num_steps=150, progress=False, average=True)
    return guide


def fit_svi(option: str, renyi: bool = False):
    idiom = IDIOMS["matmul"]()
    guide = GUIDE_OPTIONS[option](idiom.model)
    loss = pb.RenyiELBO(alpha=0.5, num_particles=8) if renyi else Trace_ELBO(num_particles=1)
    svi = SVI(idiom.model, guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.996}), loss)
    for _ in range(1500):
        svi.step(*idiom.args)
    return guide


@functools.cache
def svi_fit(option: str):
    """The ``svi`` cell's fit, shared by the diagnostics' cells of the same row."""
    pyro.set_rng_seed(0)
    return fit_svi(option)


@functools.cache
def fitted(option: str):
    """The fit the diagnostics' cells use: SVI's, or the BLR's where SVI is refused."""
    pyro.set_rng_seed(0)
    return fit_blr(option) if option in NO_SVI else fit_svi(option)


def check_answer(option: str, guide) -> None:
    idiom = IDIOMS["matmul"]()
    diagonal = option in MEAN_FIELD
    widest = reference(idiom, diagonal=False) if diagonal else None
    check_moments(draws(guide, idiom), reference(idiom, diagonal=diagonal), widest=widest)


def run_cell(option: str, entry: str) -> None:
    idiom = IDIOMS["matmul"]()
    if entry == "loo_sensitivity":  # refused whatever the fit: an unfitted guide
        pb.loo_sensitivity(idiom.model, GUIDE_OPTIONS[option](idiom.model), *idiom.args)
        return
    if entry == "blr":
        check_answer(option, fit_blr(option))
        return
    if entry == "svi":
        check_answer(option, svi_fit(option))
        return
    if entry == "svi_renyi":
        check_answer(option, fit_svi(option, renyi=True))
        return
    guide = fitted(option)
    if entry == "log_evidence":  # IWAE with K = 2000: 5 standard errors + 0.01 nat of bias
        estimate = pb.log_evidence(idiom.model, guide, *idiom.args, num_particles=2000)
        tol = 5 * estimate.stderr + 0.01
        assert abs(estimate.value - idiom.log_evidence) < tol, (estimate, idiom.log_evidence)
    elif entry == "psis_diagnostic":  # a good fit of a Gaussian posterior
        result = pb.psis_diagnostic(idiom.model, guide, *idiom.args, num_samples=1000)
        assert result.khat < 0.7, result
    else:  # to_inference_data, resampled by PSIS onto the exact posterior
        idata = pb.to_inference_data(
            idiom.model, guide, *idiom.args, num_samples=NUM_DRAWS, psis=True
        )
        samples = {
            s: torch.as_tensor(idata.posterior[s].values).reshape(NUM_DRAWS, -1) for s in idiom.ref
        }
        check_moments(samples, reference(idiom, diagonal=False))


def cells():
    for option in GUIDE_OPTIONS:
        for entry in ENTRIES:
            marks = [] if entry in ("blr", "loo_sensitivity") else [pytest.mark.long_fit]
            yield pytest.param(option, entry, marks=marks, id=f"{option}-{entry}")


@pytest.mark.parametrize(("option", "entry"), list(cells()))
def test_guide_option(option, entry, request):
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    expected = expectation(option, entry)
    if isinstance(expected, XFail):
        request.applymarker(
            pytest.mark.xfail(strict=True, reason=expected.reason, raises=expected.raises)
        )
        expected = expected.should
    if isinstance(expected, Raises):
        with pytest.raises(expected.error, match=expected.match):
            run_cell(option, entry)
        return
    run_cell(option, entry)
