r"""Minibatches for the gradient-descent evidence bound: which plates a step may subsample, and
the full-data log joint recovered exactly from minibatch runs of the unchanged model.

A model written with ``pyro.plate(name, N, subsample_size=B)`` cannot be run on its full data
(Pyro refuses a subsample of another size), but its minibatch estimate
:math:`\hat\ell_{\mathcal B}(\theta) = -\log p(\theta) - \tfrac NB\sum_{i\in\mathcal B}\log
p(x_i\mid\theta)` averages to the full :math:`\ell(\theta)` over any family of minibatches that
holds every index equally often. The *cover* used here is the :math:`K = N/\gcd(N, B)`
minibatches of :math:`B` consecutive indices modulo :math:`N` starting at :math:`0, B, 2B,
\dots`: together they hold each index :math:`KB/N` times, so

.. math::
    \frac1K \sum_{k=1}^{K} \hat\ell_{\mathcal B_k}(\theta) = \ell(\theta)

exactly; several subsampled plates use every combination of their covers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor

from pyro_blr.core import (
    LatentLayout,
    PlateDraw,
    neg_log_joint,
    plate_draws,
    subsampled_plates,
    traced_subsamples,
)

__all__ = ["full_data_neg_log_joint", "minibatch_plates", "plate_cover"]


def minibatch_plates(
    model: Callable, args: tuple, kwargs: dict, trace: Trace, entry: str
) -> tuple[PlateDraw, ...]:
    """The subsampled plates of ``model`` whose minibatches ``entry`` draws itself, one per
    step, exactly as Pyro would (empty when the model uses the full data).

    Raises:
        ValueError: a subsampled plate this cannot draw and cover: a sequential plate (``for i
            in pyro.plate(...)``), a plate nested in another, or one whose indices the model
            gives itself (``subsample=``).
    """
    plates = subsampled_plates(trace)
    if not plates:
        return ()
    trace, given = traced_subsamples(model, args, kwargs)
    draws = plate_draws(trace, given)
    names = {d.name for d in draws or ()}
    missing = sorted(set(plates) - names)
    if draws is None or missing:
        name = missing[0] if missing else sorted(plates)[0]
        plate = plates[name]
        form = "a sequential plate, for i in pyro.plate(...), " if plate.sequential else ""
        raise ValueError(
            f"{entry} cannot draw the minibatches of plate '{name}': plate '{name}' is "
            f"subsampled ({form}holding {plate.size} of its {plate.full_size} elements), and "
            f"{entry} takes stochastic steps only on a vectorized, un-nested `with "
            "pyro.plate(..., subsample_size=B)` whose indices Pyro draws (each step draws its "
            "minibatch, and the full-data log joint is recovered from minibatches): rewrite the "
            "plate so, or call the model without subsample_size"
        )
    return draws


def plate_cover(draw: PlateDraw) -> list[Tensor]:
    r"""The :math:`K = N/\gcd(N, B)` minibatches of consecutive indices modulo :math:`N` that
    hold every index of the plate equally often.

    Example:
        >>> import torch
        >>> from pyro_blr.core import PlateDraw
        >>> [c.tolist() for c in plate_cover(PlateDraw("data", 6, 4, torch.device("cpu")))]
        [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]
    """
    count = draw.full_size // math.gcd(draw.full_size, draw.size)
    steps = torch.arange(draw.size, device=draw.device)
    return [(k * draw.size + steps) % draw.full_size for k in range(count)]


def full_data_neg_log_joint(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    mode: str,
    draws: tuple[PlateDraw, ...],
) -> Tensor:
    r"""The full-data :math:`\ell(\theta_s)` per particle, shape ``(S,)``, as the average of the
    model's minibatch estimates over every combination of the plates' covers (see the module
    docstring; :math:`\prod_p N_p/\gcd(N_p, B_p)` model runs).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout, neg_log_joint, plate_draws
        >>> y = torch.arange(6.0)
        >>> def model(size):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", 6, subsample_size=size) as idx:
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[idx])
        >>> trace = pyro.poutine.trace(model).get_trace(4)
        >>> layout, theta = latent_layout(trace), torch.tensor([[0.5]])
        >>> draws = plate_draws(trace, set())
        >>> full = neg_log_joint(model, layout, theta, (None,))
        >>> torch.allclose(full_data_neg_log_joint(model, layout, theta, (4,), {}, "loop", draws),
        ...                full)
        True
    """
    covers = [plate_cover(draw) for draw in draws]
    names = [draw.name for draw in draws]
    total, count = None, 0
    for combination in itertools.product(*covers):
        subsample = dict(zip(names, combination, strict=True))
        value = neg_log_joint(model, layout, theta, args, kwargs, mode, None, subsample)
        total = value if total is None else total + value
        count += 1
    return total / count
