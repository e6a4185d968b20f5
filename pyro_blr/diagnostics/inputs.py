r"""The data and inputs of a model's observed sites, checked before a diagnostic trusts them.

A NaN or an infinity in the data reaches an observed site either as its value (``y`` holds a
NaN) or through its distribution's parameters (a covariate ``X`` holds an infinity, so the
mean :math:`X w` does): either way the datum's log-likelihood is NaN or :math:`\pm\infty`, and a
diagnostic built on it (an ELPD, a pointwise log-likelihood for ``az.loo``) would be silently
wrong. Pyro's own validation, when on, refuses the distribution without naming the site. This
check runs on a trace taken with validation off and names the site, the datum, and the cause.
A :math:`-\infty` term with finite data and parameters (a datum outside the support for this
draw) is a legitimate zero likelihood and passes.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import rng_kept, sample_sites

__all__ = ["check_finite_inputs", "check_finite_inputs_at_draw"]


def _parameters(fn) -> list[tuple[str, Tensor]]:
    """The tensor parameters of a distribution, through Pyro's wrappers (Independent, masked,
    expanded)."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    out = []
    for name in getattr(fn, "arg_constraints", {}):
        try:
            value = getattr(fn, name)
        except (AttributeError, NotImplementedError):  # a lazily derived parameter
            continue
        if torch.is_tensor(value) and value.is_floating_point():
            out.append((name, value))
    return out


def _event_summed(tensor: Tensor, event_dim: int) -> Tensor:
    """Whether each batch element holds a non-finite value anywhere in its event."""
    bad = ~torch.isfinite(tensor)
    return bad.flatten(bad.dim() - event_dim).any(-1) if event_dim else bad


def check_finite_inputs(trace: Trace, entry: str) -> None:
    """Refuse an observed site whose log-likelihood is NaN or infinite because its data or its
    distribution's parameters are.

    Args:
        trace: a model trace, taken with Pyro's validation off.
        entry: the entry point, for the message.

    Raises:
        ValueError: naming the site, the first offending batch indices, and whether the site's
            observed value or which parameter of its distribution is not finite.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(x, y):
        ...     with pyro.plate("data", 3):
        ...         pyro.sample("y", dist.Normal(x, 1.0), obs=y)
        >>> x = torch.tensor([0.0, float("inf"), 1.0])
        >>> with pyro.validation_enabled(False):
        ...     trace = pyro.poutine.trace(model).get_trace(x, torch.zeros(3))
        >>> check_finite_inputs(trace, "demo")
        Traceback (most recent call last):
        ...
        ValueError: demo: observed site 'y' has a log-likelihood that is not finite at batch index [[1]], because its distribution's parameter 'loc' is not finite there: an input of the model (e.g. a covariate) holds NaN or inf; remove or impute those rows
    """  # noqa: E501
    for name, site in sample_sites(trace, deterministic=False):
        if not site["is_observed"]:
            continue
        fn, value = site["fn"], site["value"]
        if not torch.is_tensor(value):
            continue
        log_prob = fn.log_prob(value)
        bad = ~torch.isfinite(log_prob)
        if not bad.any():
            continue
        event_dim = fn.event_dim
        cause = None
        if value.is_floating_point():
            value_bad = _event_summed(value, event_dim)
            if (bad & value_bad.expand_as(bad)).any():
                bad = bad & value_bad.expand_as(bad)
                cause = (
                    "its observed value is not finite there: the data passed for this site hold "
                    "NaN or inf; remove or impute those data"
                )
        if cause is None:
            for param, tensor in _parameters(fn):
                flagged = _event_summed(tensor, max(0, tensor.dim() - len(fn.batch_shape)))
                try:
                    flagged = torch.broadcast_to(flagged, bad.shape)
                except RuntimeError:  # an expanded parameter that does not line up: skip it
                    continue
                if (bad & flagged).any():
                    bad = bad & flagged
                    cause = (
                        f"its distribution's parameter '{param}' is not finite there: an input "
                        "of the model (e.g. a covariate) holds NaN or inf; remove or impute "
                        "those rows"
                    )
                    break
        if cause is None:
            continue  # finite data and parameters: a zero likelihood, not a broken input
        where = torch.nonzero(bad)[:5].tolist()
        raise ValueError(
            f"{entry}: observed site '{name}' has a log-likelihood that is not finite at batch "
            f"index {where}, because {cause}"
        )


def check_finite_inputs_at_draw(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, entry: str
) -> None:
    """:func:`check_finite_inputs` on one run of ``model`` replayed on one draw of ``guide``
    (validation off, outside any particle plate; the RNG is left where it was)."""
    like = next((a for a in args if torch.is_tensor(a)), torch.zeros(()))
    with rng_kept(like):
        with poutine.block(), pyro.validation_enabled(False), torch.no_grad():
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    check_finite_inputs(trace, entry)
