r"""Check once, before a fit, that a model's log joint can be differentiated in every latent site.

The Bayesian learning rule steps on :math:`\nabla_\theta \ell(\theta)`. A model that takes a latent
out of torch's graph -- ``mu.numpy()`` in a simulator (Pyro's ``examples/inclined_plane.py``),
a NumPy function applied to it -- runs without gradients (the vectorization probe runs it so)
and fails with torch's message at the first step. :func:`check_differentiable` runs the log joint
with gradients on one particle at set-up and, if that fails where the run without gradients did
not, finds the site at fault by differentiating in one site at a time.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core.layout import LatentLayout
from pyro_blr.core.log_joint import neg_log_joint
from pyro_blr.core.model_errors import describe_error
from pyro_blr.core.traces import site_log_probs

__all__ = ["check_differentiable"]


def check_differentiable(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple = (),
    kwargs: dict | None = None,
    subsample: dict[str, Tensor] | None = None,
) -> None:
    """Refuse a model whose log joint cannot be differentiated in a latent site.

    The negative log joint is evaluated at the particle ``theta`` ``(D,)`` (one model run) and
    differentiated. If that raises, the run is repeated without gradients: an error there is the
    model's own and propagates unchanged; otherwise each site is differentiated alone to name
    the first one the model cannot differentiate in.

    Args:
        model: the Pyro model.
        layout: its latent layout.
        theta: one unconstrained particle ``(D,)``.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        subsample: the minibatch indices of subsampled plates (see
            :func:`pyro_blr.core.neg_log_joint`).

    Raises:
        ValueError: naming the site, what the model raised and the fix.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     loc = float(mu.numpy())  # a simulator outside torch
        ...     pyro.sample("y", dist.Normal(loc, 1.0), obs=torch.tensor(0.5))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> try:
        ...     check_differentiable(model, layout, torch.zeros(1))
        ... except ValueError as error:
        ...     print(str(error).split(":")[0])
        the model cannot be differentiated in latent site 'mu'
    """
    kwargs = kwargs or {}
    try:
        _gradient(model, layout, theta, args, kwargs, subsample)
        return
    except Exception as error:
        with torch.no_grad():  # a failure without gradients too is the model's own
            neg_log_joint(model, layout, theta[None], args, kwargs, "loop", None, subsample)
        reason = error
    name = "every site at once"
    for site in layout.sites:
        try:
            _gradient(model, layout, theta, args, kwargs, subsample, site.name)
        except Exception as error:
            name, reason = f"latent site '{site.name}'", error
            break
    raise ValueError(
        f"the model cannot be differentiated in {name}: with gradients it raises "
        f"{describe_error(reason).rstrip('.')}. The Bayesian learning rule steps on the gradient "
        "of the log joint in every latent site, so the model must compute on it with torch "
        "operations (no .numpy(), np.* functions, .item() or float() of it, and no .detach()); a "
        "simulator torch cannot differentiate needs a gradient-free method, such as "
        "pyro.infer.Importance"
    ) from reason


def _gradient(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor] | None,
    only: str | None = None,
) -> None:
    """Differentiate the log joint at ``theta`` in every site, or in site ``only`` alone (the
    other sites' values then do not require gradients, so a model that takes them out of
    torch's graph does not fail here)."""
    with torch.enable_grad():
        values, free = {}, []
        for site in layout.sites:
            unconstrained = theta[site.block].detach().reshape(site.shape)
            if only is None or site.name == only:
                unconstrained.requires_grad_(True)
                free.append(unconstrained)
            values[site.name] = site.transform(unconstrained)
        conditioned = poutine.condition(model, data={**values, **(subsample or {})})
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
        total = sum(log_prob.sum() for _, log_prob in site_log_probs(trace))
        torch.autograd.grad(total, free, allow_unused=True)
