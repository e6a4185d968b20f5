"""The model's own parameters under the BLR (variational EM): which there are, and their ELBO
gradients, as ``pyro.infer.SVI`` would compute them. :class:`pyro_blr.BLR` steps them with its
Pyro optimizer after each BLR step; the guide's parameters are never among them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import Trace_ELBO
from pyro.poutine import Trace
from torch import Tensor

from pyro_blr.core import trace_without_rng

__all__ = ["has_model_params", "model_param_grads", "model_trace"]


def model_trace(model: Callable, guide: Any, args: tuple, kwargs: dict) -> Trace:
    """A trace of ``model`` with its latents replayed from the guide's prototype trace, taken
    without moving the run's random generators."""
    replayed = poutine.replay(model, trace=guide.prototype_trace)
    like = next(iter(guide.parameters()))
    return trace_without_rng(replayed, args, kwargs, like)


def has_model_params(model: Callable, guide: Any, args: tuple, kwargs: dict) -> bool:
    """Whether ``model`` reads a parameter that is not the guide's (``pyro.param`` sites,
    ``nn.Parameter`` of a ``PyroModule`` that are not ``PyroSample``)."""
    guide_params = {id(p) for p in guide.parameters()}
    return any(
        id(site["value"].unconstrained()) not in guide_params
        for site in model_trace(model, guide, args, kwargs).nodes.values()
        if site["type"] == "param"
    )


def model_param_grads(
    model: Callable, guide: Any, args: tuple, kwargs: dict
) -> tuple[list[str], list[Tensor], list[Tensor]]:
    """The model's own parameters (names, unconstrained tensors) and the gradients of a
    one-draw ``Trace_ELBO`` loss with respect to them (zeros for a parameter the loss does not
    reach); three empty lists for a model without parameters."""
    guide_params = {id(p) for p in guide.parameters()}
    with poutine.trace(param_only=True) as capture:
        loss = Trace_ELBO().differentiable_loss(model, guide, *args, **kwargs)
    sites = [
        (name, site["value"].unconstrained())
        for name, site in capture.trace.nodes.items()
        if id(site["value"].unconstrained()) not in guide_params
    ]
    if not sites:
        return [], [], []
    names, params = (list(x) for x in zip(*sites, strict=True))
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return names, params, grads
