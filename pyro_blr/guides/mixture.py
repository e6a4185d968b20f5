r"""Mixture guides: one base class, :class:`AutoMixture`, for every kind of component.

.. math::
    q(z) = \sum_{k=1}^K \pi_k\, q_k(z), \qquad \pi = \operatorname{softmax}(\text{logits}),

with components that are Gaussians over the model's flat unconstrained latent vector
(``component="diagonal"`` or ``"full"``, :class:`~pyro_blr.guides.gaussian_mixture.GaussianMixture`)
or products of support-matched exponential families over the sites (``component="expfamily"``,
:class:`~pyro_blr.guides.expfamily_mixture.ExpFamilyMixture`). ``pb.AutoMixture(model, ...)``
builds the subclass that ``component`` names, and every one is an ``AutoMixture``.

Every mixture holds its logits as an ``nn.Parameter`` (``guide.logits``) and writes them with
:meth:`AutoMixture.set_logits`; the components are read and written by the subclass's own methods
(``components``/``set_components`` for Gaussians, ``natural_params``/``set_natural_params`` for
exponential families), so the Bayesian learning rule never touches a guide's internals by name.

References:
    | Fast and Simple Natural-Gradient Variational Inference with Mixture of Exponential-family
      Approximations (Lin, Khan & Schmidt, ICML 2019) https://arxiv.org/abs/1906.02914
"""

from __future__ import annotations

import torch
from pyro.infer.autoguide import AutoGuide
from torch import Tensor

from pyro_blr.core import write_param

__all__ = ["COMPONENTS", "AutoMixture"]

COMPONENTS = ("diagonal", "full", "expfamily")
"""The kinds of mixture components."""


def _mixture_class(component: object) -> type:
    # Imported here: both subclasses import this module.
    if component in ("diagonal", "full"):
        from pyro_blr.guides.gaussian_mixture import GaussianMixture

        return GaussianMixture
    if component == "expfamily":
        from pyro_blr.guides.expfamily_mixture import ExpFamilyMixture

        return ExpFamilyMixture
    raise ValueError(f"component must be 'diagonal', 'full' or 'expfamily', got {component!r}")


def check_num_components(num_components: object) -> int:
    """``num_components`` if it is a positive integer, else ``ValueError``."""
    if isinstance(num_components, bool) or not isinstance(num_components, int):
        raise ValueError(f"num_components must be a positive integer, got {num_components!r}")
    if num_components < 1:
        raise ValueError(f"num_components must be a positive integer, got {num_components!r}")
    return num_components


class AutoMixture(AutoGuide):
    r"""A mixture of ``num_components`` components with learnable weights.

    ``AutoMixture(model, num_components=K, component=...)`` returns the subclass for
    ``component``, with that subclass's keyword arguments:

    * ``"diagonal"``, ``"full"``: Gaussians over the unconstrained latent vector, see
      :class:`~pyro_blr.guides.gaussian_mixture.GaussianMixture` (``init_loc_fn``,
      ``init_scale``, ``init_spread``). Fitted by ``pb.BLR(model, guide, pb.MixtureRule())``, or for
      ``"diagonal"`` by ``pyro.infer.SVI``.
    * ``"expfamily"``: support-matched families per site, see
      :class:`~pyro_blr.guides.expfamily_mixture.ExpFamilyMixture` (also ``families``).
      Fitted by ``pb.BLR(model, guide, pb.MixtureRule())``.

    The arguments are ``model`` (the Pyro model), ``num_components`` (:math:`K`) and
    ``component`` (the kind of component), then the subclass's own.

    Raises:
        ValueError: an unknown ``component`` or ``num_components < 1``; (at the first call) a
            discrete or subsampled local latent site.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        >>> guide = pb.AutoMixture(model, num_components=3)
        >>> guide()["x"].shape, guide.weights.shape
        (torch.Size([2]), torch.Size([3]))
        >>> isinstance(pb.AutoMixture(model, component="expfamily"), pb.AutoMixture)
        True
    """

    component: str
    num_components: int

    def __new__(cls, *args, **kwargs):
        if cls is AutoMixture:  # pick the subclass; its __init__ then runs with these arguments
            component = args[2] if len(args) > 2 else kwargs.get("component", "diagonal")
            cls = _mixture_class(component)
            check_num_components(args[1] if len(args) > 1 else kwargs.get("num_components", 2))
        return super().__new__(cls)

    def _check_setup(self, method: str) -> None:
        if self.prototype_trace is None:
            raise RuntimeError(
                f"{type(self).__name__}.{method}() needs the guide set up: call the guide once "
                "(or pyro_blr.core.initialize_guide) with the model's arguments first"
            )

    @property
    def weights(self) -> Tensor:
        """The mixture weights :math:`\\pi = \\operatorname{softmax}(\\text{logits})`."""
        return torch.softmax(self.logits, -1)

    def _describe(self) -> str:
        return f"AutoMixture(component={self.component!r})"

    def _checked_logits(self, logits: Tensor, method: str) -> Tensor:
        """``logits`` detached if it has shape ``(K,)`` and is finite, else ``ValueError``."""
        shape = (self.num_components,)
        if not isinstance(logits, Tensor) or logits.shape != shape:
            got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ValueError(f"{self._describe()}.{method}: logits need shape {shape}, got {got}")
        if not torch.isfinite(logits).all():
            raise ValueError(f"{self._describe()}.{method}: the logits are not finite: {logits}")
        return logits.detach()

    def set_logits(self, logits: Tensor) -> None:
        """Write the mixture's logits (shape ``(K,)``, finite), in place.

        Raises:
            ValueError: a wrong shape or a non-finite entry; nothing is written.
        """
        self._check_setup("set_logits")
        write_param(self, "logits", self._checked_logits(logits, "set_logits"))
