r"""What a model with enumerated discrete sites says of posterior draws from its guide.

A site marked ``infer={"enumerate": "parallel"}`` is left out of the guide and summed out, as
``TraceEnum_ELBO`` sums it. For each continuous draw :math:`\theta_s \sim q` this module gives

* the marginal log joint :math:`\log p(\mathcal D, \theta_s) = \log \sum_z p(\mathcal D,
  \theta_s, z)` (:func:`pyro_blr.core.enumeration.trace_log_joint`);
* each observed site's pointwise marginal log-likelihood, every enumerated site it depends on
  summed out, :math:`\log p(y_i \mid \theta_s) = \log \sum_{z_i} p(z_i \mid \theta_s)\,
  p(y_i \mid z_i, \theta_s)` (:func:`pyro_blr.diagnostics.marginal.
  scaled_pointwise_log_likelihood`, for ``az.loo``);
* a draw of the enumerated sites from their exact conditional
  :math:`z_s \sim p(z \mid \mathcal D, \theta_s)` with Pyro's ``infer_discrete``, the
  ``pyro.deterministic`` values computed with it, and a posterior predictive draw of the
  observed sites given :math:`(\theta_s, z_s)`.

The draws are evaluated in one model run inside a particle plate when the model broadcasts
over it: its log joint and pointwise terms must equal one run per draw on the first three (to
:math:`\sqrt{\epsilon}` of the dtype, finite where those are). Otherwise, or when the plate's
sampling run raises, one run per draw (models written ``locs[assignment]`` or ``X @ w``).

References:
    | Tensor Variable Elimination for Plated Factor Graphs (Obermeyer et al., ICML 2019)
    | https://arxiv.org/abs/1902.03210
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import infer_discrete
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import PARTICLE_PLATE
from pyro_blr.core.enumeration import enumerated_trace, trace_log_joint
from pyro_blr.core.weights import enumerated_model_traces
from pyro_blr.diagnostics.discrete import discrete_draws
from pyro_blr.diagnostics.marginal import scaled_pointwise_log_likelihood
from pyro_blr.diagnostics.resample import Resample

__all__ = ["EnumeratedDraws", "enumerated_draws"]

logger = logging.getLogger(__name__)

_CHECKED = 3  # draws run one by one to check the particle plate against


class EnumeratedDraws(NamedTuple):
    """The model's view of :math:`S` continuous draws, its enumerated sites summed out. Every
    tensor has the draws first; the rest of its shape is the site's (possibly with singleton
    dimensions left of its plates).

    Attributes:
        sampled: enumerated site or ``pyro.deterministic`` site -> its value given each draw
            (enumerated ones drawn from :math:`p(z \\mid \\mathcal D, \\theta_s)`).
        log_p: :math:`\\log p(\\mathcal D, \\theta_s)`, the enumerated sites summed out, ``(S,)``.
        log_likelihood: observed site -> its pointwise marginal log-likelihood (scaled and
            masked as the model scales and masks it); a site whose elements share an
            enumerated site (no per-element term) is left out, with a warning.
        predictive: observed site -> a draw given :math:`(\\theta_s, z_s)`.
        mode: ``"plate"`` (one run for all draws) or ``"loop"`` (one run per draw).
    """

    sampled: dict[str, Tensor]
    log_p: Tensor
    log_likelihood: dict[str, Tensor]
    predictive: dict[str, Tensor]
    mode: str


class _Terms(NamedTuple):
    log_p: Tensor  # (K,)
    log_likelihood: dict[str, Tensor]  # (K, ...)
    skipped: dict[str, str]  # observed site -> why it has no pointwise terms


def enumerated_draws(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    latents: Sequence[str],
    enumerated: Sequence[str],
    observed: Sequence[str],
    deterministic: Sequence[str] = (),
) -> EnumeratedDraws:
    """Evaluate ``model`` on the ``num`` draws of a particle-vectorized ``guide_trace``.

    Args:
        model: the Pyro model, unchanged.
        guide_trace: the guide's trace inside a particle plate at dimension ``-nesting - 1``.
        args: the model's positional arguments.
        kwargs: its keyword arguments.
        num: the number of draws.
        nesting: the model's ``max_plate_nesting``.
        latents: the continuous latent sites (those the guide samples).
        enumerated: the sites the model enumerates.
        observed: the observed sites.
        deterministic: ``pyro.deterministic`` sites whose values to return.

    Raises:
        ValueError: naming the site, from :func:`pyro_blr.core.enumeration.enumerated_trace`
            (a site that cannot be summed out, a shape that does not fit ``nesting``).

    Warns:
        UserWarning: an observed site without per-element log-likelihoods (its elements
            share an enumerated site: an HMM's chain, a global assignment), naming it.
    """
    values = {name: guide_trace.nodes[name]["value"] for name in latents}
    count = min(_CHECKED, num)
    traces = enumerated_model_traces(model, guide_trace, args, kwargs, count, nesting)
    checked = _loop_terms(traces, observed)
    if checked.skipped:  # one warning, naming every site and the first one's reason
        first, reason = next(iter(checked.skipped.items()))
        warnings.warn(
            f"to_inference_data leaves observed site(s) {list(checked.skipped)} out of the "
            f"log_likelihood group, which has no per-element terms of theirs: '{first}': "
            f"{reason}",
            UserWarning,
            stacklevel=4,
        )
    plate = _plate_terms(model, args, kwargs, num, nesting, values, checked, count)
    if plate is not None:
        try:
            sampled, predictive = _plate_samples(
                model, args, kwargs, num, nesting, values, enumerated, observed, deterministic
            )
            return EnumeratedDraws(sampled, plate.log_p, plate.log_likelihood, predictive, "plate")
        except Exception as error:  # the plate's sampling run raised: take the loop
            logger.info("enumerated draws run one by one: infer_discrete raised %s", error)
    rest = enumerated_model_traces(model, guide_trace, args, kwargs, range(count, num), nesting)
    traces = traces + rest
    terms = _loop_terms(traces, [n for n in observed if n not in checked.skipped])
    particles = [{name: trace.nodes[name]["value"] for name in latents} for trace in traces]
    sampled = discrete_draws(model, args, kwargs, nesting, particles, return_sites=deterministic)
    predictive: dict[str, list[Tensor]] = {name: [] for name in observed}
    for k, given in enumerate(particles):
        given = {**given, **{name: sampled[name][k] for name in enumerated}}
        resample = Resample(observed)(poutine.condition(model, data=given))
        with poutine.block():
            trace = poutine.trace(resample).get_trace(*args, **kwargs)
        for name in observed:
            predictive[name].append(trace.nodes[name]["value"])
    stacked = {name: torch.stack(rows) for name, rows in predictive.items()}
    return EnumeratedDraws(sampled, terms.log_p, terms.log_likelihood, stacked, "loop")


def _loop_terms(traces: list[Trace], observed: Sequence[str]) -> _Terms:
    """Log joint and pointwise terms of one enumerated trace per draw, stacked."""
    log_p = torch.stack([trace_log_joint(trace) for trace in traces])
    log_likelihood, skipped = {}, {}
    for name in observed:
        try:
            rows = [scaled_pointwise_log_likelihood(trace, name) for trace in traces]
        except ValueError as error:
            skipped[name] = str(error)
            continue
        log_likelihood[name] = torch.stack(rows)
    return _Terms(log_p, log_likelihood, skipped)


def _plate_terms(
    model: Callable,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    values: dict[str, Tensor],
    checked: _Terms,
    count: int,
) -> _Terms | None:
    """The terms of all draws from one run inside the particle plate, or ``None`` when that run
    raises or differs from ``checked`` (the first ``count`` draws run one by one)."""
    particles = (PARTICLE_PLATE, num)
    try:
        trace = enumerated_trace(model, args, kwargs, nesting, values, particles)
        log_p = trace_log_joint(trace, PARTICLE_PLATE).expand(num)
        log_likelihood = {
            name: _rows(scaled_pointwise_log_likelihood(trace, name), num, nesting)
            for name in checked.log_likelihood
        }
    except Exception as error:  # the model does not broadcast over the draws
        logger.info("enumerated draws run one by one: the particle plate raised %s", error)
        return None
    pairs = [(log_p, checked.log_p)]
    for name, rows in checked.log_likelihood.items():
        found = log_likelihood[name]
        if found.numel() != num * rows[0].numel():
            logger.info("enumerated draws run one by one: site '%s' has another shape", name)
            return None
        log_likelihood[name] = found.reshape(num, *rows.shape[1:])
        pairs.append((log_likelihood[name], rows))
    tol = torch.finfo(log_p.dtype).eps ** 0.5
    for found, exact in pairs:
        found, finite = found[:count], torch.isfinite(exact)
        if not torch.equal(finite, torch.isfinite(found)) or not torch.allclose(
            found[finite], exact[finite], rtol=tol, atol=tol
        ):
            logger.info("enumerated draws run one by one: the particle plate differs")
            return None
    return _Terms(log_p, log_likelihood, checked.skipped)


def _rows(term: Tensor, num: int, nesting: int) -> Tensor:
    """A plate run's term with the draws' dimension (at ``-nesting - 1``) first, expanded to
    ``num`` where the term does not depend on the draw."""
    while term.dim() < nesting + 1:
        term = term.unsqueeze(0)
    return term.expand(num, *term.shape[1:])


def _plate_samples(
    model: Callable,
    args: tuple,
    kwargs: dict,
    num: int,
    nesting: int,
    values: dict[str, Tensor],
    enumerated: Sequence[str],
    observed: Sequence[str],
    deterministic: Sequence[str],
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The enumerated sites drawn given every draw by ``infer_discrete`` in one run inside the
    particle plate (each draw's sites from their own conditional: the plate makes the draws
    independent), the deterministic sites computed with them, and a predictive draw of the
    observed sites given both, in a second run."""

    def in_plate(*args, **kwargs):
        with pyro.plate(PARTICLE_PLATE, num, dim=-nesting - 1):
            return model(*args, **kwargs)

    sampler = infer_discrete(
        poutine.condition(in_plate, data=values), first_available_dim=-nesting - 2
    )
    with poutine.block():
        trace = poutine.trace(sampler).get_trace(*args, **kwargs)
    sampled = {name: trace.nodes[name]["value"] for name in (*enumerated, *deterministic)}
    given = {**values, **{name: sampled[name] for name in enumerated}}
    resample = Resample(observed)(poutine.condition(in_plate, data=given))
    with poutine.block():
        replicated = poutine.trace(resample).get_trace(*args, **kwargs)
    predictive = {name: replicated.nodes[name]["value"] for name in observed}
    return sampled, predictive
