r"""Binary latents under the ``"expfamily"`` rule: the model must be defined on relaxed values.

The gradient of a Bernoulli site is estimated on Gumbel-softmax draws :math:`x_\tau \in (0, 1)`
(:meth:`pyro_blr.families.Bernoulli.relaxed`), so the model's log joint :math:`f` runs there and
is differentiated in :math:`x`. A model that uses the value as an index (``w[z]``), casts it
(``z.long()``, ``z.bool()``) or branches on it (``if z:``, ``torch.where(z > 0.5, ...)``) either
fails at such values or has a gradient that does not see the jump between 0 and 1: the
estimate would be silently wrong. :func:`check_relaxed_model` runs before the first step and
refuses both, naming the site, by the fundamental theorem of calculus along straight paths
between binary points :math:`x_0, x_1` (others at their guide's median),

.. math::
    f(x_1) - f(x_0) = \int_0^1 \nabla f\big(x_0 + t(x_1 - x_0)\big)\cdot(x_1 - x_0)\,dt,

the integral by adaptive 8-point Gauss--Legendre quadrature (an interval is halved until its
halves agree with it; exact at once for a log joint of degree up to 15 in :math:`t`, e.g. any
Gaussian likelihood of ``X @ (z * w)``). A cast or a branch makes the gradient blind to the
jump, and the two sides differ by it.

A OneHotCategorical site over :math:`K` outcomes is relaxed to the simplex; its paths run between
one-hot values (every element from outcome 1 to outcome :math:`k`, for each :math:`k`, and a
pattern of outcomes to the next ones), so that a model that takes ``z.argmax(-1)``, indexes
with it or branches on it is refused the same way, naming the site and the fix
(``z @ locs``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core.model_errors import describe_error
from pyro_blr.families.relaxation import is_one_hot_site

__all__ = ["NODES", "check_relaxed_model"]

NODES = 8
"""Gauss--Legendre nodes of each interval of the (adaptive) path integral."""

_MAX_CALLS = 400  # Gauss-Legendre rules per path: 3200 model runs at most

_RTOL = 1e-3  # of the path's scale; a cast or branch misses a whole jump


def _log_joint(model: Callable, values: dict[str, Tensor], args: tuple, kwargs: dict) -> Tensor:
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    return trace.log_prob_sum()


def _fix(name: str, one_hot: bool = False) -> str:
    how = (
        f"may take values on the simplex and enters differentiably (e.g. '{name} @ locs', "
        f"not 'locs[{name}.argmax(-1)]', '{name}.long()' or 'if {name}[..., 0]:')"
        if one_hot
        else f"may take values in [0, 1] and enters differentiably (e.g. '{name} * w' or "
        f"'X @ ({name} * w)', not 'w[{name}]', '{name}.long()', '{name}.bool()' or 'if {name}:')"
    )
    return (
        f"write the model so that site '{name}' {how}, or mark it "
        "infer={'enumerate': 'parallel'} and hide it from the guide "
        f"(poutine.block(model, hide=['{name}'])) so that it is summed out"
    )


def _what(name: str, one_hot: bool) -> str:
    if one_hot:
        return (
            f"latent site '{name}' is a OneHotCategorical that the BLR relaxes to points of "
            "the simplex"
        )
    return f"latent site '{name}' is a Bernoulli that the BLR relaxes to values in (0, 1)"


def _paths(base: Tensor, one_hot: bool) -> list[tuple[Tensor, Tensor]]:
    """The paths of a site whose value away from them is ``base``: binary, all zeros to all
    ones and an alternating pattern to its complement; one-hot, every element from outcome 1
    to outcome k (each k > 1) and outcomes 1, 2, ..., K, 1, ... to the next ones."""
    if not one_hot:
        pattern = (torch.arange(base.numel(), device=base.device) % 2).reshape(base.shape)
        pattern = pattern.to(base.dtype)
        return [(torch.zeros_like(base), torch.ones_like(base)), (pattern, 1 - pattern)]
    k = base.shape[-1]
    first = torch.zeros(base.shape[:-1], dtype=torch.long, device=base.device)
    index = (torch.arange(first.numel(), device=base.device) % k).reshape(first.shape)

    def vertex(outcomes: Tensor) -> Tensor:
        return torch.nn.functional.one_hot(outcomes, k).to(base.dtype)

    ends = [(vertex(first), vertex(first + m)) for m in range(1, k)]
    return [*ends, (vertex(index), vertex((index + 1) % k))]


def _path_mismatch(
    model: Callable,
    values: dict[str, Tensor],
    name: str,
    ends: tuple,
    args: tuple,
    kwargs: dict,
    one_hot: bool = False,
) -> tuple[float, float, float]:
    """``(f(x1) - f(x0), the path integral of the gradient, the path's scale)`` for site
    ``name`` moved from ``ends[0]`` to ``ends[1]``; raises ``ValueError`` naming the site where
    the model fails or is not finite inside the path."""
    start, end = ends
    with torch.no_grad():
        f0 = _log_joint(model, {**values, name: start}, args, kwargs)
        f1 = _log_joint(model, {**values, name: end}, args, kwargs)
    change = float(f1 - f0)
    # round-off of the two ends (float32 log joints of many data) is no jump
    roundoff = 64 * torch.finfo(f0.dtype).eps / _RTOL * (abs(float(f0)) + abs(float(f1)))
    nodes, weights = np.polynomial.legendre.leggauss(NODES)

    def slope(t: float) -> float:
        x = (start + t * (end - start)).requires_grad_(True)
        try:
            with torch.enable_grad():
                f = _log_joint(model, {**values, name: x}, args, kwargs)
                (grad,) = torch.autograd.grad(f, x, allow_unused=True)
        except Exception as error:  # any failure at a relaxed value is the model's reason
            raise ValueError(
                f"{_what(name, one_hot)} (Gumbel-softmax), and the model fails there "
                f"({describe_error(error)}): {_fix(name, one_hot)}"
            ) from error
        value = 0.0 if grad is None else float((grad * (end - start)).sum())
        if not (np.isfinite(value) and torch.isfinite(f)):
            raise ValueError(
                f"{_what(name, one_hot)}, and the model's log joint or its gradient is not "
                f"finite there: {_fix(name, one_hot)}"
            )
        return value

    def gauss(a: float, b: float) -> tuple[float, float]:
        """The integral of the slope and of its absolute value over ``[a, b]``."""
        slopes = [slope(a + (b - a) * (n + 1) / 2) for n in nodes]
        half = (b - a) / 2
        return (
            half * sum(w * v for w, v in zip(weights, slopes, strict=True)),
            half * sum(w * abs(v) for w, v in zip(weights, slopes, strict=True)),
        )

    # Adaptive bisection where halves disagree with their whole (a log joint that is steep
    # near an end, e.g. log det(I + X diag(z) X^T), needs it); a cast or a branch has a zero
    # slope, which converges at once and leaves the jump unexplained.
    tol = 0.1 * _RTOL * (abs(change) + roundoff)
    integral, scale, calls = 0.0, 0.0, 1
    stack = [(0.0, 1.0, gauss(0.0, 1.0))]
    while stack:
        a, b, whole = stack.pop()
        mid = (a + b) / 2
        left, right = gauss(a, mid), gauss(mid, b)
        calls += 2
        refined = left[0] + right[0]
        if abs(refined - whole[0]) <= tol * (b - a) or calls > _MAX_CALLS or b - a < 1e-12:
            integral += refined
            scale += left[1] + right[1]
        else:
            stack += [(a, mid, left), (mid, b, right)]
    return change, integral, scale + abs(change) + roundoff


def check_relaxed_model(
    model: Callable, median: dict[str, Tensor], names: Iterable[str], args: tuple, kwargs: dict
) -> None:
    """Refuse a model whose log joint is not a differentiable function of a binary site's
    relaxed value (see the module docstring).

    Two paths per binary site: all zeros to all ones, and an alternating pattern to its
    complement; :math:`K` paths per one-hot site over :math:`K` outcomes (see the module
    docstring); the other sites at ``median``. Nothing random is drawn (the generators are left
    where they were).

    Args:
        model: the model with the binary sites relaxed
            (:func:`pyro_blr.families.relaxation.relax_binary_sites`).
        median: every latent site's value away from its path (e.g. the guide's ``median()``).
        names: the binary sites.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.

    Raises:
        ValueError: naming the site and the fix, where the model fails or is not finite at a
            relaxed value, or where its gradient misses a jump between 0 and 1.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.families.relaxation import relax_binary_sites
        >>> w = torch.tensor([0.5, 2.0])
        >>> def model():
        ...     z = pyro.sample("z", dist.Bernoulli(torch.full((2,), 0.5)).to_event(1))
        ...     pyro.sample("y", dist.Normal(w[z.long()].sum(), 1.0), obs=torch.tensor(1.0))
        >>> relaxed = relax_binary_sites(model, ["z"])
        >>> try:
        ...     check_relaxed_model(relaxed, {"z": torch.zeros(2)}, ["z"], (), {})
        ... except ValueError as error:
        ...     print(str(error)[:70])
        latent site 'z' is a Bernoulli that the BLR relaxes to values in (0, 1
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        values = {n: v.detach() for n, v in median.items()}
        trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
        for name in names:
            one_hot = is_one_hot_site(trace.nodes[name]["fn"])
            for ends in _paths(values[name], one_hot):
                change, integral, scale = _path_mismatch(
                    model, values, name, ends, args, kwargs, one_hot
                )
                if abs(change - integral) > _RTOL * scale + 1e-6:
                    raise ValueError(
                        f"{_what(name, one_hot)} and differentiates there, but the model's log "
                        f"joint is not a differentiable function of it: from "
                        f"{_describe(ends[0], one_hot)} to {_describe(ends[1], one_hot)} it "
                        f"changes by {change:.6g}, its gradient adds up to {integral:.6g} (a "
                        f"cast, an index or a branch on the value hides the jump): "
                        f"{_fix(name, one_hot)}"
                    )


def _describe(value: Any, one_hot: bool = False) -> str:
    if one_hot:
        value = value.argmax(-1)
        return f"outcomes {_describe(value)} (counted from 0)"
    flat = value.reshape(-1)
    shown = ", ".join(f"{int(v)}" for v in flat[:4].tolist())
    return f"[{shown}{', ...' if flat.numel() > 4 else ''}]"
