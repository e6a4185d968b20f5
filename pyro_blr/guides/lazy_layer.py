r"""A flow layer from a module that builds a transform when called: zuko's flows in AutoFlow.

zuko (a pure-PyTorch flow library) keeps a flow's parameters in an ``nn.Module`` whose call
``module()`` builds a fresh ``torch.distributions.Transform`` from the current parameters (a
"lazy" transform). Pyro's guides want a ``TransformModule`` instead: a transform that is itself
the module. :class:`LazyLayer` is that bridge, so that any such module is one layer of
:class:`~pyro_blr.AutoFlow`::

    import zuko
    guide = pb.AutoFlow(model, flow=lambda dim: zuko.flows.NSF(dim, transforms=1).transform)

(``AutoFlow`` wraps a factory's module in a ``LazyLayer`` by itself.) The layer maps
:math:`x \mapsto y = f_\phi(x)` with :math:`\log|\det \partial y/\partial x|` from the built
transform's ``call_and_ladj`` where it has one (zuko's do: one pass gives both), and keeps the
last :math:`(x, y, \log|\det J|)`, so that scoring a draw the guide just made needs neither the
inverse nor a second pass (Pyro's ``TransformedDistribution`` asks for the Jacobian of exactly
the pair it produced).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from torch.distributions import AffineTransform
    >>> class Shift(nn.Module):  # a lazy transform: builds y = x + b from its parameter
    ...     def __init__(self, dim):
    ...         super().__init__()
    ...         self.b = nn.Parameter(torch.ones(dim))
    ...     def forward(self, context=None):
    ...         return AffineTransform(self.b, 1.0, event_dim=1)
    >>> layer = LazyLayer(Shift(2))
    >>> x = torch.zeros(2)
    >>> y = layer(x)
    >>> y, layer.log_abs_det_jacobian(x, y), layer.inv(y)
    (tensor([1., 1.], grad_fn=<AddBackward0>), tensor(0.), tensor([0., 0.]))
"""

from __future__ import annotations

import torch
from pyro.distributions import constraints
from pyro.distributions.torch_transform import TransformModule
from torch import Tensor, nn

__all__ = ["LazyLayer", "is_lazy_transform"]


def is_lazy_transform(module: object) -> bool:
    """Whether ``module`` is an ``nn.Module`` that is not itself a transform but is called to
    build one (zuko's ``LazyTransform``)."""
    return (
        isinstance(module, nn.Module)
        and not isinstance(module, torch.distributions.Transform)
        and callable(module)
    )


class LazyLayer(TransformModule):
    """One bijective layer on :math:`\\mathbb R^D` (event dimension 1) whose transform ``lazy()``
    builds from the wrapped module's current parameters.

    Args:
        lazy: an ``nn.Module`` whose call with no argument returns a bijective
            ``torch.distributions.Transform`` on vectors (e.g. ``zuko.flows.NSF(D).transform``).
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, lazy: nn.Module):
        super().__init__(cache_size=1)
        self.lazy = lazy
        self._ladj: tuple[Tensor, Tensor, Tensor] | None = None  # the last (x, y, log|det J|)

    def build(self) -> torch.distributions.Transform:
        """The transform the wrapped module builds from its current parameters."""
        transform = self.lazy()
        if not isinstance(transform, torch.distributions.Transform):
            raise TypeError(
                f"{type(self.lazy).__name__}() returned {type(transform).__name__}, not a "
                "torch.distributions.Transform: a flow layer's module must build a transform "
                "when called (as zuko's LazyTransform does)"
            )
        return transform

    def _call(self, x: Tensor) -> Tensor:
        transform = self.build()
        if hasattr(transform, "call_and_ladj"):
            y, ladj = transform.call_and_ladj(x)
        else:
            y = transform(x)
            ladj = transform.log_abs_det_jacobian(x, y)
        self._ladj = (x, y, ladj)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        return self.build().inv(y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        if self._ladj is not None and x is self._ladj[0] and y is self._ladj[1]:
            return self._ladj[2]
        return self.build().log_abs_det_jacobian(x, y)
