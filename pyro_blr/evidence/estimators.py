r"""Log-evidence estimates :math:`\log p(\mathcal D)` from a fitted guide, with standard errors.

With importance weights :math:`w_k = p(\mathcal D, z_k) / q(z_k)`, :math:`z_k \sim q`:

* ``"elbo"``: :math:`\frac1K \sum_k \log w_k`, standard error
  :math:`\operatorname{sd}(\log w)/\sqrt K`;
* ``"iwae"``: :math:`\log \frac1K \sum_k w_k` (Burda et al. 2016), standard error by the delta
  method, :math:`\operatorname{sd}(w) / (\sqrt K\, \bar w)`;
* ``"renyi"``: :math:`\frac{1}{1-\alpha}\log\frac1K\sum_k w_k^{1-\alpha}`, standard error
  :math:`\operatorname{sd}(w^{1-\alpha}) / (\sqrt K\, \overline{w^{1-\alpha}}\, |1-\alpha|)`.

For :math:`\alpha \in [0, 1]` all three are lower bounds in expectation, ordered
ELBO :math:`\le` Rényi :math:`\le` IWAE :math:`\le \log p(\mathcal D)`, and IWAE tends to
:math:`\log p(\mathcal D)` as :math:`K` grows. Particles are drawn in vectorized chunks, so the
memory stays bounded for any :math:`K`.

When every latent site lies in one plate of :math:`N` conditionally independent elements (local
latents with no global ones, as in an amortized VAE), :math:`\log p(\mathcal D) = \sum_i
\log p(x_i)` and each term is estimated from its own weights :math:`w_{k,i}`: for IWAE this is
the per-datum bound that VAE papers report, far tighter for the same :math:`K` than a bound on
the joint weight :math:`\prod_i w_{k,i}`. The standard errors add in quadrature.

References:
    | Importance Weighted Autoencoders (Burda, Grosse & Salakhutdinov, ICLR 2016)
    | https://arxiv.org/abs/1509.00519
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_blr.core import (
    check_finite_weights,
    check_model_and_guide,
    check_model_full_data,
    guess_max_plate_nesting,
    log_weights,
    model_keywords,
    rng_state,
)
from pyro_blr.core.checks import initialized_cuda_devices
from pyro_blr.objectives.renyi import as_alpha, renyi_bound

__all__ = ["LogEvidence", "log_evidence"]

METHODS = ("elbo", "iwae", "renyi")


class LogEvidence(NamedTuple):
    """A log-evidence estimate and its Monte Carlo standard error (floats)."""

    value: float
    stderr: float


def _estimate(log_w: Tensor, method: str, alpha: float) -> LogEvidence:
    """The estimate from ``(K,)`` joint weights, or the sum of per-element estimates from
    ``(K, B)`` weights, with its standard error (per-element errors added in quadrature)."""
    k = log_w.shape[0]
    order = {"elbo": 1.0, "iwae": 0.0, "renyi": alpha}[method]
    value = renyi_bound(log_w, order)
    if order == 1:
        variance = log_w.var(0) / k
    else:
        powered = (1 - order) * log_w
        scaled = (powered - powered.max(0).values).exp()
        variance = (scaled.std(0) / (scaled.mean(0) * abs(1 - order))).square() / k
    return LogEvidence(float(value.sum()), float(variance.sum().sqrt()))


@torch.no_grad()
def log_evidence(
    model: Callable,
    guide: Callable,
    *args: Any,
    method: str = "iwae",
    num_particles: int = 1000,
    alpha: float = 0.5,
    chunk_size: int = 256,
    max_plate_nesting: int | None = None,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> LogEvidence:
    r"""Estimate :math:`\log p(\mathcal D)` by importance sampling from ``guide``.

    Args:
        model: the Pyro model.
        guide: a fitted guide (reparameterized or not: no gradients are taken).
        *args: the model's positional arguments.
        method: ``"elbo"``, ``"iwae"`` or ``"renyi"``.
        num_particles: the number :math:`K` of importance samples.
        alpha: the Rényi order for ``method="renyi"`` (finite, not 1; a NumPy scalar or a 0-d
            tensor is accepted).
        chunk_size: particles drawn per vectorized model run.
        max_plate_nesting: the model's plate nesting (found from a trace when not given).
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named like an option of this function (``method``,
            ``num_particles``, ``alpha``, ``chunk_size``, ``max_plate_nesting``), which would
            otherwise be taken for the option.
        **kwargs: the model's keyword arguments.

    Returns:
        ``LogEvidence(value, stderr)``.

    Raises:
        TypeError: a model argument named like an option without ``model_kwargs=``.
        ValueError: an unknown method, bad ``num_particles``/``chunk_size``/``alpha``, a model
            that subsamples, with a vectorized or a sequential plate (the evidence is of the
            full data), a discrete latent site the guide leaves out and the model does not mark
            ``infer={"enumerate": "parallel"}`` (sites so marked are summed out exactly, as
            ``TraceEnum_ELBO`` sums them), or a log weight that is not finite (the error names
            the site whose log density is not: a :math:`-\infty` likelihood term means data
            impossible under some draw).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = AutoNormal(model, init_scale=1.0)  # q = p: every weight is 1
        >>> estimate = pb.log_evidence(model, guide, method="iwae", num_particles=100)
        >>> abs(estimate.value) < 1e-6 and estimate.stderr < 1e-6
        True
    """
    options = ("method", "num_particles", "alpha", "chunk_size", "max_plate_nesting")
    kwargs = model_keywords(model, "log_evidence", options, kwargs, model_kwargs)
    _check_arguments(method, num_particles, chunk_size)
    if method == "renyi":
        alpha = as_alpha(alpha)
        if alpha == 1 or not math.isfinite(alpha):
            raise ValueError(
                f"method='renyi' needs a finite alpha != 1, got {alpha} (alpha=1 is "
                "method='elbo'; the limits alpha=+-inf, the smallest and largest log weight, "
                "have no delta-method standard error: use pb.RenyiELBO for them)"
            )
    check_model_full_data(model, guide, args, kwargs, "log_evidence")
    enumerated = check_model_and_guide(model, guide, args, kwargs, summed=True)
    nesting = max_plate_nesting
    if nesting is None:  # a run that leaves the draws as they were, enumerated sites or not
        with torch.random.fork_rng(devices=initialized_cuda_devices()):
            nesting = guess_max_plate_nesting(model, guide, args, kwargs)
    chunks = []
    for start in range(0, num_particles, chunk_size):
        size = min(chunk_size, num_particles - start)
        state = rng_state()
        weights = log_weights(
            model, guide, args, kwargs, size, nesting, require_rsample=False, enumerated=enumerated
        )
        if not torch.isfinite(weights.joint).all():
            check_finite_weights(model, guide, args, kwargs, size, nesting, state, enumerated)
        chunks.append(weights.joint if weights.local is None else weights.local)
    return _estimate(torch.cat(chunks).double(), method, alpha)


def _check_arguments(method: str, num_particles: Any, chunk_size: Any) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    for name, value, minimum in (
        ("num_particles", num_particles, 2),
        ("chunk_size", chunk_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
