r"""Check once, before a fit, that a model's log joint can be differentiated in every latent site.

The Bayesian learning rule steps on :math:`\nabla_\theta \ell(\theta)`. A model that takes a latent
out of torch's graph -- ``mu.numpy()`` in a simulator (Pyro's ``examples/inclined_plane.py``),
a NumPy function applied to it -- runs without gradients (the vectorization probe runs it so)
and fails with torch's message at the first step. :func:`check_differentiable` runs the log joint
with gradients on one particle at set-up and, if that fails where the run without gradients did
not, finds the site at fault by differentiating in one site at a time.
"""

from __future__ import annotations

import inspect
import linecache
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

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
        with _GraphExits() as exits:
            _gradient(model, layout, theta, args, kwargs, subsample)
        reason = None
    except Exception as error:
        with torch.no_grad():  # a failure without gradients too is the model's own
            neg_log_joint(model, layout, theta[None], args, kwargs, "loop", None, subsample)
        reason = error
    if reason is None:
        if exits.found:
            _check_silent_exits(model, layout, theta, args, kwargs, subsample)
        return
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


def _check_silent_exits(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor] | None,
) -> None:
    """The model takes a latent out of torch's graph without failing (``float(w)``,
    ``w.item()``): fine for control flow (``if w.item() > 0``), a confident wrong answer where
    the value feeds the log joint, whose gradient then misses it. Per site that is taken out,
    the autograd derivative along a fixed direction is compared with a central difference; a
    mismatch beyond a tenth of their size (and the difference's round-off) names the site."""
    eps = torch.finfo(theta.dtype).eps
    generator = torch.Generator(device=theta.device).manual_seed(0)
    for site in layout.sites:
        with _GraphExits() as exits:
            _, (grad,) = _gradient(model, layout, theta, args, kwargs, subsample, site.name)
        if not exits.found:
            continue
        direction = torch.zeros_like(theta)
        noise = torch.randn(site.size, generator=generator, dtype=theta.dtype, device=theta.device)
        direction[site.block] = noise / noise.norm()
        step = eps ** (1 / 3) * (1 + float(theta[site.block].abs().max()))
        try:
            with torch.no_grad():
                at = [
                    float(_gradient_free(model, layout, t, args, kwargs, subsample))
                    for t in (theta - step * direction, theta, theta + step * direction)
                ]
        except Exception:  # the model refuses the nearby values: nothing to compare
            continue
        exact = float((grad.reshape(-1) * direction[site.block]).sum())
        # One-sided differences: at a kink of control flow (if w.item() > 0 at w = 0) the side
        # of the branch taken matches autograd; a value taken out of the graph matches neither.
        # Each is allowed its truncation error (curvature times step, the curvature from the
        # same three values), its round-off and a tenth of the derivatives' size.
        sides = ((at[2] - at[1]) / step, (at[1] - at[0]) / step)
        truncation = abs(at[2] - 2 * at[1] + at[0]) / step
        round_off = 10 * eps * max(abs(v) for v in at) / step
        allowed = truncation + round_off
        if all(abs(d - exact) > 0.1 * (abs(d) + abs(exact)) + allowed for d in sides):
            raise ValueError(
                f"the model takes latent site '{site.name}' out of torch's graph at "
                f"{exits.found[0]}, and the log joint depends on it there: its derivative along a "
                f"direction is {sides[0]:.4g} by finite differences but {exact:.4g} by autograd, "
                "so a fit would miss that dependence and return a confident wrong answer. The "
                "Bayesian learning rule needs the model to compute on it with torch operations "
                "(no .item(), float(), .tolist() or NumPy of it)"
            )


def _gradient_free(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor] | None,
) -> Tensor:
    """:func:`_gradient`'s log joint without gradients."""
    values = {
        site.name: site.transform(theta[site.block].reshape(site.shape)) for site in layout.sites
    }
    conditioned = poutine.condition(model, data={**values, **(subsample or {})})
    trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    return sum(log_prob.sum() for _, log_prob in site_log_probs(trace))


def _gradient(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor] | None,
    only: str | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """The log joint at ``theta`` (without the log-Jacobian) and its gradient in every site's
    unconstrained value, or in site ``only``'s alone (the other sites' values then do not
    require gradients, so a model that takes them out of torch's graph does not fail here)."""
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
        grads = torch.autograd.grad(total, free, allow_unused=True)
    grads = [torch.zeros_like(f) if g is None else g for f, g in zip(free, grads, strict=True)]
    return total.detach(), grads


_EXITS = frozenset(
    {Tensor.item, Tensor.tolist, Tensor.numpy, Tensor.__float__, Tensor.__int__, Tensor.__index__}
)
"""Tensor methods whose result is outside torch's graph."""

_LIBRARIES = (
    str(Path(torch.__file__).parent),
    str(Path(pyro.__file__).parent),
    str(Path(__file__).parents[1]),
)


class _GraphExits(TorchFunctionMode):
    """Records where code outside torch, Pyro and this package takes a tensor that requires
    gradients out of torch's graph (``float(w)``, ``w.item()``), as ``"file:line: source"``."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _EXITS and not self.found and args and torch.is_tensor(args[0]):
            if args[0].requires_grad:
                where = _caller()
                if where is not None:
                    self.found.append(where)
        return func(*args, **(kwargs or {}))


def _caller() -> str | None:
    """The first frame outside torch, as ``"file:line: source"``; ``None`` if it is Pyro's or
    this package's (their own uses are not the model's)."""
    frame = inspect.currentframe()
    torch_dir = _LIBRARIES[0]
    while frame is not None and frame.f_code.co_filename.startswith((torch_dir, __file__)):
        frame = frame.f_back
    if frame is None or frame.f_code.co_filename.startswith(_LIBRARIES):
        return None
    filename, line = frame.f_code.co_filename, frame.f_lineno
    source = linecache.getline(filename, line).strip()
    return f"{Path(filename).name}:{line}: {source}"
