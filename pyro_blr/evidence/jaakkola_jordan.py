r"""The Jaakkola–Jordan lower bound on :math:`\log p(\mathcal D)` of an unchanged Pyro model
with Bernoulli-logit observations and Gaussian latents (the maths:
:mod:`pyro_blr.evidence.local_bounds`).

The model is read, not rewritten: one trace finds its ``Bernoulli`` observed sites; the logits as
a function of the flat latent vector (:mod:`pyro_blr.core.layout`) give their Jacobian by
autograd, and the rest of the log joint (priors and any other observed site) its gradient and
Hessian; an affinity check then confirms, at random points on the prior's scale, that the logits
equal their linear extrapolation and the rest its quadratic one, so that the bound is exactly the
Gaussian integral it claims. Anything else raises an error naming the site.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.distributions import Independent, MaskedDistribution
from pyro.distributions.torch_distribution import ExpandedDistribution
from torch import Tensor
from torch.distributions import Bernoulli, constraints

from pyro_blr.core import (
    LatentLayout,
    check_latent_masks,
    check_model_full_data,
    latent_layout,
    model_keywords,
    sample_sites,
    site_log_probs,
)
from pyro_blr.core.log_joint import conditioned_trace
from pyro_blr.evidence.local_bounds import LogitQuadratic, jj_fixed_point, jj_xi

__all__ = ["JaakkolaJordan", "jaakkola_jordan_evidence"]

ENTRY = "jaakkola_jordan_evidence"


class JaakkolaJordan(NamedTuple):
    r"""The Jaakkola–Jordan bound at its EM fixed point.

    Attributes:
        bound: :math:`\mathcal L(\xi) \le \log p(\mathcal D)`, a float.
        history: the bound at each EM iterate (non-decreasing), a float64 tensor.
        loc: the mean of the Gaussian :math:`q` over the flat latent vector (the model's latent
            sites in order, each flattened).
        covariance: its covariance.
        xi: the local parameters :math:`\xi_n`, one per Bernoulli observation (sites in order,
            each flattened).
    """

    bound: float
    history: Tensor
    loc: Tensor
    covariance: Tensor
    xi: Tensor


def _bernoulli(name: str, fn) -> Bernoulli | None:
    """The Bernoulli inside ``Independent``/``expand`` wrappers, or ``None``."""
    while isinstance(fn, (Independent, ExpandedDistribution)):
        fn = fn.base_dist
    if isinstance(fn, MaskedDistribution):
        raise ValueError(
            f"observed site '{name}' is masked by Distribution.mask(...), whose mask "
            f"{ENTRY} cannot read: mask it with pyro.poutine.mask(mask=...) instead"
        )
    return fn if isinstance(fn, Bernoulli) else None


def _check_gaussian_latents(trace, layout: LatentLayout) -> None:
    if layout.enumerated:
        raise ValueError(
            f"{ENTRY}: site '{layout.enumerated[0]}' is a discrete latent summed out by "
            "enumeration; the bound needs every latent Gaussian"
        )
    for site in layout.sites:
        support = trace.nodes[site.name]["fn"].support
        while hasattr(support, "base_constraint"):  # independent(real, k)
            support = support.base_constraint
        if support is not constraints.real:
            raise ValueError(
                f"{ENTRY}: latent site '{site.name}' has support {support}, not the real "
                "line: the Jaakkola-Jordan bound needs Gaussian latents (Normal or "
                "MultivariateNormal priors, maybe with Gaussian hyperpriors on their means)"
            )


def _pieces(model, layout, args, kwargs, theta: Tensor) -> tuple[Tensor, Tensor, dict]:
    """At ``theta (D,)``: the logits of every Bernoulli observation (flattened, in site order),
    the log joint of everything else, and per site name its term (for error messages)."""
    trace, _ = conditioned_trace(model, layout, theta, args, kwargs, {})
    latent = {site.name for site in layout.sites}  # observed in this conditioned trace
    logits, terms = [], {}
    for name, log_prob in site_log_probs(trace):
        site = trace.nodes[name]
        base = None if name in latent else _bernoulli(name, site["fn"])
        if base is None:
            terms[name] = log_prob.sum()
        else:
            logits.append(torch.broadcast_to(base.logits, site["value"].shape).reshape(-1))
            terms[name] = None  # a Bernoulli site: its place in the logits, for messages
    if not logits:
        raise ValueError(
            f"{ENTRY}: the model has no observed Bernoulli site: the bound is for "
            "likelihoods pyro.sample(..., dist.Bernoulli(logits=...), obs=y)"
        )
    rest = torch.stack([t for t in terms.values() if t is not None]).sum()
    sizes = iter([len(a) for a in logits])
    return torch.cat(logits), rest, {k: next(sizes) if v is None else v for k, v in terms.items()}


def _observations(model, layout, args, kwargs, like: Tensor) -> tuple[Tensor, Tensor]:
    """The signs 2y - 1 and the weights (Pyro's scale times mask) of every Bernoulli datum."""
    trace, _ = conditioned_trace(model, layout, like, args, kwargs, {})
    latent = {site.name for site in layout.sites}
    signs, weights = [], []
    for name, site in sample_sites(trace, deterministic=False):
        if name in latent or _bernoulli(name, site["fn"]) is None:
            continue
        value = site["value"].to(like.dtype)
        if not ((value == 0) | (value == 1)).all():
            raise ValueError(f"{ENTRY}: observed site '{name}' holds values other than 0 and 1")
        weight = torch.ones_like(value) * site["scale"]
        if site["mask"] is not None:
            weight = weight * torch.as_tensor(site["mask"], device=value.device)
        signs.append((2 * value - 1).reshape(-1))
        weights.append(weight.reshape(-1))
    return torch.cat(signs), torch.cat(weights)


def _check_affine(model, layout, args, kwargs, terms: LogitQuadratic, like: Tensor) -> None:
    """At random points on the prior's scale the logits must equal ``c + J theta`` and the rest
    ``r0 + g theta - theta P theta / 2`` (to the dtype's square-root precision)."""
    gen = torch.Generator(device=like.device).manual_seed(0)
    scale = terms.P.diagonal().clamp_min(1e-12).rsqrt().to(like.dtype)
    tol = torch.finfo(like.dtype).eps ** 0.5
    for _ in range(3):
        theta = scale * torch.randn(layout.dim, generator=gen, dtype=like.dtype, device=like.device)
        with torch.no_grad():
            logits, rest, site_terms = _pieces(model, layout, args, kwargs, theta)
        t = theta.double()
        linear = terms.c + terms.J @ t
        gap = (logits.double() - linear).abs()
        if (gap > tol * (1 + linear.abs())).any():
            worst = int(gap.argmax())
            name = _site_of(site_terms, worst)
            raise ValueError(
                f"{ENTRY}: the logits of observed site '{name}' are not affine in the latent "
                f"sites (they leave their linear extrapolation by {float(gap.max()):.3g} at a "
                "random point): the bound needs logits = X @ w + b with Gaussian w, b"
            )
        quadratic = terms.r0 + terms.g @ t - 0.5 * t @ terms.P @ t
        size = 1 + abs(float(quadratic)) + float((terms.g * t).abs().sum())
        if abs(float(rest) - float(quadratic)) > tol * size:
            culprit = _non_gaussian(site_terms, layout, model, args, kwargs, theta)
            raise ValueError(
                f"{ENTRY}: the log density of {culprit} "
                "is not Gaussian in the latent sites: the bound needs Gaussian priors (means "
                "affine in other latents, fixed scales) and Gaussian or Bernoulli-logit "
                "observations"
            )


def _site_of(site_terms: dict, index: int) -> str:
    """The Bernoulli site that holds flat logit ``index`` (its entry in ``site_terms`` is its
    number of logits)."""
    end = 0
    for name, size in site_terms.items():
        if isinstance(size, int):
            end += size
            if index < end:
                return name
    raise IndexError(index)


def _non_gaussian(site_terms: dict, layout, model, args, kwargs, theta: Tensor) -> str:
    """Name the site whose term is not quadratic along the segment from 0 to ``theta``: a
    quadratic's third finite difference vanishes."""
    values = []
    for t in (0.0, 1.0 / 3, 2.0 / 3, 1.0):
        with torch.no_grad():
            values.append(_pieces(model, layout, args, kwargs, t * theta)[2])
    tol = torch.finfo(theta.dtype).eps ** 0.5
    for name in site_terms:
        if isinstance(site_terms[name], int):  # a Bernoulli site
            continue
        v = [float(x[name]) for x in values]
        third = v[3] - 3 * v[2] + 3 * v[1] - v[0]
        if abs(third) > tol * (1 + max(abs(x) for x in v)):
            return f"site '{name}'"
    return "the log joint"


def jaakkola_jordan_evidence(
    model: Callable,
    *args: Any,
    num_iterations: int = 100,
    tol: float = 1e-8,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> JaakkolaJordan:
    r"""The Jaakkola–Jordan lower bound on :math:`\log p(\mathcal D)` for Bernoulli-logit
    likelihoods with Gaussian latents, its local parameters updated in closed form (EM) to their
    fixed point; see :mod:`pyro_blr.evidence.local_bounds` for the maths.

    A deterministic bound, not an estimate: it needs no guide and has no Monte Carlo error, so it
    is a function of its own rather than a ``method=`` of :func:`pyro_blr.log_evidence` (whose
    estimates come from a fitted guide's draws, with a standard error).

    Args:
        model: the Pyro model: Gaussian latent sites (``Normal``/``MultivariateNormal``, means
            affine in other latents), observed ``Bernoulli(logits=...)`` sites whose logits are
            affine in the latents (``X @ w + b``, ``nn.Linear`` alike), and any other observed
            site Gaussian in them; ``poutine.scale`` and ``poutine.mask`` weigh terms as Pyro
            does.
        *args: the model's positional arguments, with the full data.
        num_iterations: the most EM updates of :math:`\xi`.
        tol: stop when an update raises the bound by less than this.
        model_kwargs: the model's keyword arguments as a dict, required when one is named like an
            option of this function.
        **kwargs: the model's keyword arguments.

    Returns:
        ``JaakkolaJordan(bound, history, loc, covariance, xi)``.

    Raises:
        ValueError: naming the site at fault: a latent that is not Gaussian, logits that are not
            affine in the latents, no Bernoulli observation, a subsampled plate, a
            ``Distribution.mask``; or an improper (flat) prior.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> from pyro_blr.evidence import jaakkola_jordan_evidence
        >>> X = torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
        >>> y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
        >>> def model(X, y):
        ...     w = pyro.sample("w", dist.Normal(torch.zeros(1, dtype=X.dtype), 1.0).to_event(1))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Bernoulli(logits=X @ w), obs=y)
        >>> result = jaakkola_jordan_evidence(model, X, y)
        >>> bool((result.history.diff() >= 0).all()), result.bound < -1.5
        (True, True)
    """
    options = ("num_iterations", "tol")
    kwargs = model_keywords(model, ENTRY, options, kwargs, model_kwargs)
    if isinstance(num_iterations, bool) or not isinstance(num_iterations, int):
        raise ValueError(f"num_iterations must be an integer >= 0, got {num_iterations!r}")
    if num_iterations < 0:
        raise ValueError(f"num_iterations must be an integer >= 0, got {num_iterations!r}")
    check_model_full_data(model, None, args, kwargs, ENTRY, ": the bound is on the full data")
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    check_latent_masks(trace)  # a masked latent has no density: improper
    layout = latent_layout(trace, trace)
    _check_gaussian_latents(trace, layout)
    like = trace.nodes[layout.sites[0].name]["value"]
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    zero = torch.zeros(layout.dim, dtype=dtype, device=like.device)
    with poutine.block():
        terms = _linearize(model, layout, args, kwargs, zero)
        _check_affine(model, layout, args, kwargs, terms, zero)
    prior_xi = jj_xi(terms, torch.linalg.solve(terms.P, terms.g), torch.linalg.inv(terms.P))
    history, xi, loc, covariance = jj_fixed_point(terms, prior_xi, num_iterations, tol)
    return JaakkolaJordan(
        float(history[-1]), history, loc.to(dtype), covariance.to(dtype), xi.to(dtype)
    )


def _jacobian_rows(values: Tensor, theta: Tensor) -> Tensor:
    r"""The Jacobian ``(N, D)`` of ``values`` (computed from ``theta`` with a graph, which they
    may not depend on) by the double-backward trick: :math:`g(v) = J^\top v` is linear in
    ``v``, so its gradient in ``v`` along coordinate ``i`` is the column :math:`J e_i` -- one
    backward pass per latent coordinate (usually far fewer than values), no model run under
    ``vmap``. The result keeps a graph where ``values`` is not linear in ``theta``."""
    zeros = values.new_zeros(values.shape[0], theta.shape[-1])
    if not values.requires_grad:
        return zeros
    v = torch.zeros_like(values, requires_grad=True)
    (jt_v,) = torch.autograd.grad(values, theta, v, create_graph=True, allow_unused=True)
    if jt_v is None:
        return zeros
    columns = []
    for i in range(theta.shape[-1]):
        (column,) = torch.autograd.grad(
            jt_v[i], v, retain_graph=True, create_graph=True, allow_unused=True
        )
        columns.append(zeros[:, i] if column is None else column)
    return torch.stack(columns, -1)


def _linearize(model, layout, args, kwargs, zero: Tensor) -> LogitQuadratic:
    """The logits' value and Jacobian and the rest's value, gradient and Hessian at 0 (float64),
    with the data's signs and weights."""
    with torch.enable_grad():
        theta = zero.clone().requires_grad_(True)
        logits, rest, _ = _pieces(model, layout, args, kwargs, theta)
        grad = _jacobian_rows(rest[None], theta)[0]
        hessian = _jacobian_rows(grad, theta)
        jacobian = _jacobian_rows(logits, theta)
    P = -hessian.detach().double()
    P = 0.5 * (P + P.mT)
    if torch.linalg.cholesky_ex(P).info != 0:
        flat = int(P.diagonal().argmin())
        raise ValueError(
            f"{ENTRY}: the prior is not a proper Gaussian along latent site "
            f"'{layout.site_at(flat)}' (its precision is not positive definite): give every "
            "latent a proper Normal prior"
        )
    signs, weights = _observations(model, layout, args, kwargs, zero)
    return LogitQuadratic(
        rest.detach().double(), grad.detach().double(), P, jacobian.detach().double(),
        logits.detach().double(), signs.double(), weights.double(),
    )  # fmt: skip
