r"""What :class:`~pyro_blr.AutoFlow` accepts as a layer: a bijection of :math:`\mathbb R^D`.

The guide's density :math:`\log q(z) = \log\mathcal N(\epsilon) - \sum_k \log\lvert\det
J_{f_k}\rvert - \log\lvert\det L\rvert` is the model's unconstrained posterior approximation only
when every layer :math:`f_k` maps :math:`\mathbb R^D` *onto* :math:`\mathbb R^D` and reports its
own log-determinant. A factory's layer that does not is refused at set-up, naming ``flow=`` and
the fix, instead of giving a guide that is confidently wrong:

* a layer whose codomain is not :math:`\mathbb R^D` (``ExpTransform``: a guide living on the
  positive orthant of the unconstrained space, with log-normal tails whose draws reached
  :math:`10^{15}`) or that is not a bijection;
* a layer built for another dimension (a raw shape error otherwise), or one that broadcasts over
  the coordinates and so reports the log-determinant of fewer of them: its
  :math:`\log\lvert\det J\rvert` is compared with autograd's on one point (:math:`D \le`
  :data:`JACOBIAN_CHECK_DIM`);
* an object that is no layer at all (``nn.Linear``: a module that builds no transform).

Example:
    >>> import torch
    >>> from torch.distributions import ExpTransform
    >>> try:
    ...     as_layer(ExpTransform(), 2, torch.zeros(2))
    ... except ValueError as error:
    ...     print(str(error)[:75])
    AutoFlow(flow=...): the factory's layer ExpTransform maps onto GreaterThan(
"""

from __future__ import annotations

import math

import torch
from pyro.distributions import ComposeTransformModule
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from pyro_blr.guides.lazy_layer import LazyLayer, is_lazy_transform

__all__ = ["JACOBIAN_CHECK_DIM", "as_layer", "check_layer"]

JACOBIAN_CHECK_DIM = 32
"""Up to this dimension a layer's log-determinant is checked against autograd's Jacobian (one
point, :math:`D` backward passes); above it only the shapes are checked."""

WHAT_A_FACTORY_RETURNS = (
    "a factory dim -> layer must return a bijection of R^dim onto R^dim: a "
    "torch.distributions.Transform or a Pyro TransformModule with real domain and codomain (e.g. "
    "pyro.distributions.transforms.affine_coupling(dim)), or an nn.Module that builds one when "
    "called with no argument (zuko's flows: lambda dim: zuko.flows.NSF(dim).transform)"
)


def as_layer(built: object, dim: int, like: Tensor) -> nn.Module:
    """A factory's layer as the module AutoFlow registers, in ``like``'s dtype and device, checked.

    A ``TransformModule`` is kept as it is, a lazy transform (zuko's) is wrapped in a
    :class:`~pyro_blr.guides.lazy_layer.LazyLayer`, a parameter-free ``Transform`` in a
    ``ComposeTransformModule``; then :func:`check_layer` checks it.

    Args:
        built: what the factory returned for ``dim``.
        dim: the latent dimension :math:`D`.
        like: a tensor of the guide's dtype and device.

    Raises:
        TypeError: ``built`` is no transform and no module that builds one.
        ValueError: see :func:`check_layer`.
    """
    if isinstance(built, Transform) and isinstance(built, nn.Module):
        layer = built
    elif is_lazy_transform(built):
        layer = LazyLayer(built)
    elif isinstance(built, Transform):
        layer = ComposeTransformModule([built])
    else:
        raise TypeError(
            f"AutoFlow(flow=...): the flow factory returned {type(built).__name__}: "
            f"{WHAT_A_FACTORY_RETURNS}"
        )
    layer = layer.to(dtype=like.dtype, device=like.device)
    check_layer(layer, dim, like)
    return layer


def check_layer(layer: nn.Module, dim: int, like: Tensor) -> None:
    r"""Refuse a layer that is not a bijection of :math:`\mathbb R^D` reporting its own Jacobian.

    Checks the declared domain and codomain (real, any event dimension), ``bijective``, the
    output's shape on a batch of two points, a finite log-determinant, and (for
    :math:`D \le` :data:`JACOBIAN_CHECK_DIM`) that it equals :math:`\log\lvert\det\partial
    y/\partial x\rvert` computed by autograd, to :math:`10\sqrt{\varepsilon}\,(D + \lvert\log
    \det\rvert)` (round-off and the :math:`10^{-8}` that Pyro's Sylvester, block and neural
    flows add inside their logs; a layer that counts fewer coordinates is off by whole logs).

    Args:
        layer: a transform module (a ``LazyLayer`` is checked through the transform it builds).
        dim: the latent dimension :math:`D`.
        like: a tensor of the guide's dtype and device.

    Raises:
        TypeError: a lazy module that builds no transform when called with no argument.
        ValueError: a domain or codomain other than the reals, a layer that is not bijective, a
            wrong output shape or log-determinant (a layer built for another dimension).
    """
    name = type(layer.lazy if isinstance(layer, LazyLayer) else layer).__name__
    if isinstance(layer, LazyLayer):
        try:
            transform = layer.build()
        except Exception as error:  # the user's module: any failure is the factory's
            raise TypeError(
                f"AutoFlow(flow=...): the flow factory returned {name}, an nn.Module that is no "
                f"Transform and builds none when called with no argument ({error}): "
                f"{WHAT_A_FACTORY_RETURNS}"
            ) from error
    else:
        transform = layer
    if isinstance(transform, ComposeTransformModule) and len(transform.parts) == 1:
        name = type(transform.parts[0]).__name__
    for role in ("domain", "codomain"):
        constraint = getattr(transform, role, None)
        if not _is_real(constraint):
            raise ValueError(
                f"AutoFlow(flow=...): the factory's layer {name} maps "
                f"{'from' if role == 'domain' else 'onto'} {constraint}, not R^{dim}: a flow "
                "layer acts on the model's unconstrained coordinates, so its domain and codomain "
                "must both be the reals (a positive or bounded codomain confines the guide to a "
                "corner of the posterior's space; a site's support belongs in the model, whose "
                f"constraints the guide already maps to); {WHAT_A_FACTORY_RETURNS}"
            )
    if not getattr(transform, "bijective", False):
        raise ValueError(
            f"AutoFlow(flow=...): the factory's layer {name} is not bijective: "
            f"{WHAT_A_FACTORY_RETURNS}"
        )
    _check_shapes_and_jacobian(layer, name, dim, like)


def _is_real(constraint: object) -> bool:
    while hasattr(constraint, "base_constraint"):  # independent(real, k): real per coordinate
        constraint = constraint.base_constraint
    return type(constraint) is type(constraints.real)


def _check_shapes_and_jacobian(layer: nn.Module, name: str, dim: int, like: Tensor) -> None:
    points = torch.linspace(-1.0, 1.0, 2 * dim, dtype=like.dtype, device=like.device)
    points = points.reshape(dim, 2).T.contiguous()  # two points, every coordinate different
    fix = f"build the layer for the dim the factory is given ({dim}); {WHAT_A_FACTORY_RETURNS}"
    try:
        with torch.no_grad():
            out = layer(points)
            log_det = layer.log_abs_det_jacobian(points, out)
    except Exception as error:  # the user's layer: any failure on R^dim is the factory's
        raise ValueError(
            f"AutoFlow(flow=...): the factory's layer {name} fails on a batch of points of "
            f"R^{dim} ({type(error).__name__}: {error}): {fix}"
        ) from error
    if out.shape != points.shape or log_det.reshape(2, -1).shape[1] not in (1, dim):
        raise ValueError(
            f"AutoFlow(flow=...): the factory's layer {name} maps points of shape "
            f"{tuple(points.shape)} to {tuple(out.shape)} with log-determinant of shape "
            f"{tuple(log_det.shape)}: {fix}"
        )
    if not torch.isfinite(out).all() or not torch.isfinite(log_det).all():
        raise ValueError(
            f"AutoFlow(flow=...): the factory's layer {name} gives non-finite values at its "
            f"set-up check (points in [-1, 1]^{dim}): {WHAT_A_FACTORY_RETURNS}"
        )
    if dim > JACOBIAN_CHECK_DIM:
        return
    point = points[0]
    with torch.no_grad():
        reported = float(layer.log_abs_det_jacobian(point, layer(point)).sum())
    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(lambda x: layer(x), point.clone())
    actual = float(torch.linalg.slogdet(jacobian.reshape(dim, dim)).logabsdet)
    tol = 10 * math.sqrt(torch.finfo(like.dtype).eps) * (dim + abs(actual))
    if not abs(reported - actual) <= tol:
        raise ValueError(
            f"AutoFlow(flow=...): the factory's layer {name} reports log|det J| = {reported:.6g} "
            f"at a point of R^{dim} where autograd's Jacobian gives {actual:.6g}: the layer is "
            f"not built for {dim} coordinates (it broadcasts over them) or its "
            f"log_abs_det_jacobian is wrong; {fix}"
        )
