r"""The Target: a Pyro model and one batch of its data, as a function of the flat latent vector.

.. math::
    \ell(\theta) = -\log p(\mathcal D, T(\theta)) - \log\lvert\det J_T(\theta)\rvert
    + \tfrac{\delta}{2}\lVert\theta\rVert^2,

with the model's plates scaled by :math:`N/B` exactly as Pyro scales them (see
:mod:`pyro_blr.core.log_joint`) and an optional Gaussian weight decay :math:`\delta`.

A :class:`Target` is built once per batch of data (:meth:`Target.build`) and knows everything a
model run needs beyond :math:`\theta`: the model, its arguments, the latent layout, how
particles are evaluated (``"plate"``, ``"vmap"`` or ``"loop"``) and the minibatch every
particle's run sees. :meth:`Target.matches` says whether a later call brings the same data
objects (identity and in-place version), so that a driver keeps one Target while they are
unchanged and builds another when they change. Every evaluation of the model by the Gaussian
stepper goes through a Target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from pyro_blr.core.autodiff import derivatives
from pyro_blr.core.layout import LatentLayout
from pyro_blr.core.log_joint import VECTORIZATIONS, neg_log_joint
from pyro_blr.core.per_datum import PerDatum, per_datum_gradients

__all__ = ["CURVATURES", "DataStamp", "Target", "all_finite"]

CURVATURES = ("none", "hessian", "diag", "ggn")
"""The kinds of curvature :meth:`Target.derivatives` computes."""


class DataStamp(NamedTuple):
    """The data objects of one call and their in-place version counters (``y[:] = batch``
    bumps one), to tell the same batch from another without comparing values.

    Example:
        >>> import torch
        >>> y = torch.zeros(3)
        >>> stamp = DataStamp.of((y,), {})
        >>> stamp.matches((y,), {}), stamp.matches((y.clone(),), {})
        (True, False)
        >>> y[0] = 1.0
        >>> stamp.matches((y,), {})
        False
        >>> data = {"y": y}
        >>> stamp = DataStamp.of((data,), {})
        >>> data["y"] = torch.zeros(5)  # another batch in the same dict
        >>> stamp.matches((data,), {})
        False
    """

    args: tuple
    kwargs: dict
    versions: tuple

    @classmethod
    def of(cls, args: tuple, kwargs: dict) -> DataStamp:
        """The stamp of ``args`` and ``kwargs`` now."""
        return cls(tuple(args), dict(kwargs), _versions(args, kwargs))

    def matches(self, args: tuple, kwargs: dict) -> bool:
        """Whether ``args`` and ``kwargs`` are the very objects stamped, unchanged in place."""
        return (
            len(args) == len(self.args)
            and all(a is b for a, b in zip(args, self.args, strict=True))
            and kwargs.keys() == self.kwargs.keys()
            and all(kwargs[k] is self.kwargs[k] for k in kwargs)
            and _versions(args, kwargs) == self.versions
        )


def _versions(args: tuple, kwargs: dict) -> tuple:
    """Every tensor among the arguments, inside dicts, lists, tuples and plain objects too (a
    batch swapped into a dict the model reads is another batch): its identity, shape and
    in-place version."""
    return tuple(_tensor_stamps(v, depth=0) for v in [*args, *kwargs.values()])


def _tensor_stamps(value, depth: int) -> tuple | None:
    if torch.is_tensor(value):
        return (id(value), tuple(value.shape), value._version)
    if depth >= 3 or isinstance(value, (str, bytes, torch.nn.Module)):
        return None
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, (list, tuple)):
        items = list(enumerate(value))
    elif hasattr(value, "__dict__") and not callable(value):
        items = list(vars(value).items())
    else:
        return None
    return tuple((key, _tensor_stamps(item, depth + 1)) for key, item in items)


class Target:
    r"""A model and one batch of its data as :math:`\ell(\theta)` over particles ``(S, D)``.

    Build one with :meth:`build`, which checks the data's dtypes and devices against the
    layout's once per batch. Its fields are read-only; :meth:`with_subsample` gives the same
    Target on another minibatch.

    Attributes:
        model: the Pyro model.
        args: its positional arguments.
        kwargs: its keyword arguments.
        layout: its latent layout.
        mode: how particles are evaluated: ``"plate"``, ``"vmap"`` or ``"loop"``.
        subsample: plate name -> the minibatch indices every particle's run uses (empty: each
            run draws its own, as Pyro does).
        weight_decay: :math:`\delta`, the precision of a Gaussian penalty on :math:`\theta`.
        stamp: the data's :class:`DataStamp`.
    """

    __slots__ = ("args", "kwargs", "layout", "mode", "model", "stamp", "subsample", "weight_decay")

    def __init__(
        self,
        model: Callable,
        args: tuple,
        kwargs: dict,
        layout: LatentLayout,
        mode: str,
        subsample: dict[str, Tensor],
        weight_decay: float,
        stamp: DataStamp,
    ):
        self.model, self.args, self.kwargs, self.layout = model, args, kwargs, layout
        self.mode, self.subsample, self.weight_decay, self.stamp = (
            mode,
            subsample,
            weight_decay,
            stamp,
        )

    @classmethod
    def build(
        cls,
        model: Callable,
        args: tuple,
        kwargs: dict,
        layout: LatentLayout,
        mode: str | bool,
        subsample: dict[str, Tensor] | None = None,
        weight_decay: float = 0.0,
    ) -> Target:
        """The Target of ``model`` on ``args`` and ``kwargs``.

        Args:
            model: the Pyro model.
            args: its positional arguments.
            kwargs: its keyword arguments.
            layout: its latent layout (:func:`pyro_blr.core.latent_layout`).
            mode: ``"plate"`` (or ``True``), ``"vmap"`` or ``"loop"`` (or ``False``); see
                :func:`pyro_blr.core.choose_vectorization`.
            subsample: plate name -> minibatch indices shared by every particle's run.
            weight_decay: the precision of a Gaussian penalty on the flat latent vector.

        Example:
            >>> import pyro, pyro.distributions as dist, torch
            >>> from pyro_blr.core import latent_layout
            >>> def model(y):
            ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
            ...     pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
            >>> y = torch.tensor(1.0)
            >>> layout = latent_layout(pyro.poutine.trace(model).get_trace(y))
            >>> target = Target.build(model, (y,), {}, layout, "loop")
            >>> d = target.derivatives(torch.zeros(1, 1), "hessian")
            >>> d.grad.tolist(), d.hess.tolist()  # l = mu^2/2 + (y - mu)^2/2 + const
            ([[-1.0]], [[[2.0]]])
        """
        if isinstance(mode, bool):
            mode = "plate" if mode else "loop"
        if mode not in VECTORIZATIONS:
            raise ValueError(f"mode must be one of {VECTORIZATIONS} or a bool, got {mode!r}")
        if layout.data is not None:  # once per batch, not at every model run
            layout.data.check(model, args, kwargs)
        stamp = DataStamp.of(args, kwargs)
        return cls(model, args, kwargs, layout, mode, dict(subsample or {}), weight_decay, stamp)

    def with_subsample(self, subsample: dict[str, Tensor] | None) -> Target:
        """The same model and data on the minibatch ``subsample``."""
        return Target(
            self.model,
            self.args,
            self.kwargs,
            self.layout,
            self.mode,
            dict(subsample or {}),
            self.weight_decay,
            self.stamp,
        )

    def matches(self, args: tuple, kwargs: dict) -> bool:
        """Whether ``args`` and ``kwargs`` are this Target's data objects, unchanged."""
        return self.stamp.matches(args, kwargs)

    def neg_log_joint(
        self, theta: Tensor, mode: str | None = None, terms_out: list | None = None
    ) -> Tensor:
        r""":math:`\ell(\theta_s)` per particle, shape ``(S,)``.

        Args:
            theta: particles ``(S, D)``.
            mode: evaluate particles this way instead of :attr:`mode` (``"loop"`` for exact
                Hessians of a vmapped model, whose double backward would read the data once
                per particle and probe).
            terms_out: if given, each run's ``(name, log_prob)`` terms are appended (see
                :func:`pyro_blr.core.neg_log_joint`).
        """
        value = neg_log_joint(
            self.model,
            self.layout,
            theta,
            self.args,
            self.kwargs,
            mode or self.mode,
            terms_out,
            self.subsample,
            check_data=False,  # checked at build
        )
        if self.weight_decay:
            value = value + 0.5 * self.weight_decay * theta.square().sum(-1)
        return value

    def derivatives(
        self,
        theta: Tensor,
        kind: str = "none",
        groups: Tensor | None = None,
        mode: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Any:
        """The value and gradient at each particle, with the curvature ``kind`` asks for.

        Args:
            theta: particles ``(S, D)``.
            kind: ``"none"`` (value and gradient); ``"hessian"`` (the exact Hessian ``(S, D,
                D)``, or with ``groups`` its exact diagonal ``(S, D)`` by one Hessian-vector
                product per group of non-interacting coordinates); ``"diag"`` (the Hessian's
                diagonal ``(S, D)``, never a ``D x D`` matrix: exact by groups up to
                :data:`pyro_blr.core.autodiff.EXACT_DIAGONAL_MAX` of them, Hutchinson's
                unbiased estimate above, see :func:`pyro_blr.core.derivatives`); or ``"ggn"``
                (the per-datum gradients of :func:`pyro_blr.core.per_datum_gradients`, a
                :class:`~pyro_blr.core.PerDatum`, without the weight decay).
            groups: each coordinate's group (see
                :func:`pyro_blr.core.hessian_diagonal_from_grad`); ``None``: one group per
                coordinate.
            mode: as in :meth:`neg_log_joint`.
            generator: draws the probes of an estimated ``"diag"`` (``None``: torch's global
                generator).

        Returns:
            A :class:`~pyro_blr.core.Derivatives`, or for ``"ggn"`` a
            :class:`~pyro_blr.core.PerDatum`.
        """
        if kind not in CURVATURES:
            raise ValueError(f"kind must be one of {CURVATURES}, got {kind!r}")
        if kind == "ggn":
            return self.per_datum(theta)
        fn = lambda t: self.neg_log_joint(t, mode)  # noqa: E731
        if kind == "diag":
            return derivatives(fn, theta, "diag", groups, generator=generator)
        if kind == "hessian":
            return derivatives(fn, theta, True, groups)
        return derivatives(fn, theta, False)

    def per_datum(self, theta: Tensor, rest_hessian: bool = False) -> PerDatum:
        """The negative log joint, its gradient and its per-datum gradients at each particle
        (:func:`pyro_blr.core.per_datum_gradients`; the weight decay is not included), with
        ``rest_hessian`` the exact Hessian of the priors and log-Jacobians."""
        return per_datum_gradients(
            self.model,
            self.layout,
            theta,
            self.args,
            self.kwargs,
            self.subsample,
            rest_hessian=rest_hessian,
        )


def all_finite(*tensors: Tensor | None) -> bool:
    """Whether every element of the tensors (``None`` skipped) is finite, by one fused check:
    the sum of all elements is finite only if each is (a NaN or an infinity propagates), so one
    reduction per tensor and one synchronization decide the usual case; a sum that overflows
    falls back to the element-wise check.

    Example:
        >>> import torch
        >>> all_finite(torch.ones(2), None), all_finite(torch.ones(2), torch.tensor([float("nan")]))
        (True, False)
        >>> all_finite(torch.full((2,), 3e38))  # the sum overflows; every element is finite
        True
    """
    present = [t for t in tensors if t is not None]
    if not present:
        return True
    total = present[0].sum()
    for t in present[1:]:
        total = total + t.sum()
    if bool(torch.isfinite(total)):
        return True
    return all(bool(torch.isfinite(t).all()) for t in present)
