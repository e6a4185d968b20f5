"""What every BLR stepper shares: the options, the step's report and the protocol.

A stepper drives one kind of guide: it reads the guide's parameters (the single source of
truth), estimates the expectations a rule needs from the unchanged model, calls a pure update
from :mod:`pyro_blr.blr.rules` and writes the result back, all or nothing. The driver
(:class:`pyro_blr.BLR`) only chooses the stepper, the step size and the loop.
"""

from __future__ import annotations

import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.blr.distributed import RanksDisagree
from pyro_blr.blr.rank_signature import run_signature
from pyro_blr.blr.rules.base import KEPT
from pyro_blr.blr.steppers.minibatches import Minibatches, minibatch, subsample_indices
from pyro_blr.core import (
    LatentLayout,
    check_latent_masks,
    choose_vectorization,
    initialize_guide,
    latent_layout,
    rng_kept,
    trace_without_rng,
    validate_site_shapes,
)
from pyro_blr.core.checks import warn_latents_below_data_precision
from pyro_blr.core.data_signature import DataSnapshot, data_arrays, data_signature
from pyro_blr.core.gradient_probe import check_differentiable
from pyro_blr.core.model_errors import describe_error

__all__ = [
    "KEPT",
    "Minibatches",
    "StepInfo",
    "StepOptions",
    "Stepper",
    "check_state",
    "minibatch",
    "prepare_layout",
    "step_options",
    "subsample_indices",
]


class StepOptions(NamedTuple):
    """The driver's options, as a stepper receives them (see :class:`pyro_blr.BLR`)."""

    mc_samples: int = 2
    antithetic: bool = True
    beta1: float = 0.9
    beta2: float = 0.999
    clip_radius: float | None = 0.1
    weight_decay: float = 0.0
    vectorize_particles: bool | str = "auto"
    max_plate_nesting: int | None = None
    ess: float | None = None
    hess_init: float | str | None = "auto"
    hessian_every: int = 1
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    alpha: float = 0.99
    eps: float = 1e-8
    perturb: bool = False


def step_options(rule: Any, vectorize_particles: bool | str, max_plate_nesting: int | None):
    """The :class:`StepOptions` a stepper reads: the rule's options and the driver's (an
    option the rule does not have keeps its default, which the stepper does not use)."""
    # MixtureRule's antithetic=None means "the stepper's default"; None is a value elsewhere
    # (ess, hess_init, clip_radius)
    own = {
        k: v
        for k, v in rule.options.items()
        if k in StepOptions._fields and not (k == "antithetic" and v is None)
    }
    return StepOptions(
        **own, vectorize_particles=vectorize_particles, max_plate_nesting=max_plate_nesting
    )


class StepInfo(NamedTuple):
    """What one step reports.

    Attributes:
        loss: the negative ELBO estimate of the guide before the step.
        halvings: how often the step size was halved to keep natural parameters valid.
        stepped_back: why the step returned to the state before the previous step and
            retook that step with a smaller step size (see :mod:`pyro_blr.blr.step_back`);
            ``None`` for an ordinary step.
    """

    loss: float
    halvings: int = 0
    stepped_back: str | None = None


class Stepper(ABC):
    """One kind of guide driven by one or more rules.

    Subclasses set :attr:`kind` and implement :meth:`accepts`, :meth:`step`,
    :meth:`state_dict` and :meth:`load_state_dict`. ``rule`` is a
    :class:`pyro_blr.blr.rules.Rule`; ``options`` its options merged with the driver's
    (:func:`step_options`).
    """

    kind: ClassVar[str] = ""
    """The rules' ``kind`` this stepper runs (see :attr:`pyro_blr.blr.rules.Rule.kind`)."""

    distributable: ClassVar[bool] = False
    """Whether the stepper runs under a :class:`pyro_blr.blr.distributed.Collective`."""

    def __init__(self, model: Callable, guide: Any, rule: Any, options: StepOptions):
        self.model, self.guide, self.rule, self.opts = model, guide, rule, options
        self.rule_name = rule.name
        self.follows_guide = False  # set by the driver where the guide chose the rule
        self.collective = None  # set by the driver for a distributed run
        self.layout = None
        self._joined = False  # whether this rank has joined the distributed run

    def together(self, step_number: int, fn: Callable[[], Any]) -> Any:
        """``fn()``; in a distributed run every rank learns whether every rank succeeded, and
        all raise if one did (so that no rank waits forever in a later collective). A set-up
        that failed on any rank is undone on every rank, so that a retry starts alike."""
        if self.collective is None:
            return fn()
        try:
            out, error = fn(), None
        except Exception as e:  # every error must reach every rank
            out, error = None, e
        try:
            self.collective.agree(error, step_number)
        except Exception:
            if not self._joined:
                self.layout = None
            raise
        return out

    def _join(self, step_number: int, args: tuple, kwargs: dict) -> None:
        """Once per distributed run, before the first collective of a step: refuse what cannot
        run distributed, check that the ranks agree on the model's signature (dimension, dtype,
        sites, plate sizes; see :meth:`pyro_blr.blr.distributed.Collective.join_run`),
        broadcast rank 0's guide and model parameters and seed the rank's particle stream
        (also after a checkpoint was loaded before the first step)."""
        if self.collective is None or self._joined:
            return
        self.together(step_number, self._check_distributable)
        signature = self.together(
            step_number, lambda: run_signature(self.model, self.guide, self.layout, args, kwargs)
        )
        try:
            self.collective.join_run(signature)
        except RanksDisagree:
            self.layout = None  # a retry with other arguments sets up again
            raise
        params = {id(p): p for p in self.guide.parameters()}
        for _, param in pyro.get_param_store().named_parameters():
            params.setdefault(id(param), param)
        before = [p.detach().clone() for p in self.guide.parameters()]
        self.collective.setup(list(params.values()), next(iter(self.guide.parameters())))
        self._joined = True
        # The broadcast writes through .data, which no version counter sees: say so if it
        # changed this rank's guide (a rank that loaded another checkpoint than rank 0's).
        if any(not torch.equal(p, q) for p, q in zip(self.guide.parameters(), before, strict=True)):
            self._guide_written_outside()

    def _guide_written_outside(self) -> None:
        """Called when something this stepper cannot see by version stamps wrote the guide
        (rank 0's broadcast): the next step reads the guide. Steppers that read the guide at
        every step need nothing."""
        return

    def _check_distributable(self) -> None:
        """Raise if this stepper's current set-up cannot run distributed."""
        if not self.distributable:
            raise ValueError(f"rule {self.rule_name!r} does not run distributed")

    @classmethod
    @abstractmethod
    def accepts(cls, guide: Any, rule: Any) -> bool:
        """Whether this stepper can drive ``guide`` with ``rule`` (of its :attr:`kind`)."""

    @abstractmethod
    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        """Take one step; on any error the guide is left unchanged."""

    @abstractmethod
    def natural_state(self) -> dict[str, Tensor]:
        """The guide's distribution in natural parameters (in which the rule's update is linear,
        so that an average of these is a Polyak average of the iterates), detached."""

    @abstractmethod
    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        """Write a :meth:`natural_state` (e.g. an average of several) into the guide."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit for bit (tensors and numbers only)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
        """Restore :meth:`state_dict`; validate everything before changing anything."""


def prepare_layout(
    model: Callable,
    guide: Any,
    args: tuple,
    kwargs: dict,
    options: StepOptions,
    allow_local: bool = False,
) -> tuple[LatentLayout, str]:
    """Initialize the guide (without consuming the RNG), validate the model's site shapes, build
    its latent layout and choose how particles are evaluated.

    ``vectorize_particles="auto"`` takes the fastest of plate, ``torch.func.vmap`` and loop that
    matches one model run per particle on three probe particles (see
    :func:`pyro_blr.core.choose_vectorization`); ``True``/``False`` force plate/loop. The model's
    log joint is then differentiated once at a probe particle
    (:func:`pyro_blr.core.gradient_probe.check_differentiable`), so that a model the rule cannot
    differentiate is refused naming the site.

    What goes wrong in set-up is reported as the model's reason: a model that changes its input
    in place is refused naming the argument (its values restored), and so is a NumPy array the
    model fails on. The layout records the data (:meth:`~pyro_blr.core.LatentLayout.with_data`),
    so that a later step with data of another dtype, device or feature count is refused naming
    the argument.
    """
    snapshot = DataSnapshot(model, args, kwargs)
    set_up_before = guide.prototype_trace is not None  # by SVI or a call, maybe in other data
    try:
        layout, mode = _prepare_layout(model, guide, args, kwargs, options, allow_local)
    except Exception as error:
        snapshot.check(cause=error)
        _check_numpy_arguments(model, args, kwargs, error)
        if set_up_before and not _raised_here(error):
            _check_guide_dtype(guide, model, args, kwargs, error)
        raise
    snapshot.check()
    return layout.with_data(data_signature(model, args, kwargs)), mode


def _check_numpy_arguments(model: Callable, args: tuple, kwargs: dict, error: Exception) -> None:
    """Name a NumPy array among the arguments of a model that failed to set up."""
    for name, value in data_arrays(model, args, kwargs):
        if isinstance(value, np.ndarray):
            raise TypeError(
                f"{name} is a NumPy array, and the model fails on its arguments "
                f"({describe_error(error)}): Pyro models take torch tensors; pass "
                "torch.as_tensor(...) of it (of the dtype the fit should have)"
            ) from error


def _raised_here(error: BaseException) -> bool:
    """Whether this package raised ``error`` (a refusal that already names its reason)."""
    frames = traceback.extract_tb(error.__traceback__)
    return bool(frames) and frames[-1].filename.startswith(_PACKAGE)


_PACKAGE = str(Path(__file__).parents[2])


def _check_guide_dtype(
    guide: Any, model: Callable, args: tuple, kwargs: dict, error: Exception
) -> None:
    """Name a floating-point argument whose dtype or device is not that of a guide set up
    before (by an earlier call or SVI), when the model failed on the mix."""
    like = next(iter(guide.parameters()), None) if guide.prototype_trace is not None else None
    if like is None:
        return
    for name, value in data_arrays(model, args, kwargs):
        if not torch.is_tensor(value) or not value.is_floating_point():
            continue
        for old, new in ((like.dtype, value.dtype), (like.device, value.device)):
            if old != new:
                old, new = str(old).removeprefix("torch."), str(new).removeprefix("torch.")
                raise ValueError(
                    f"{name} is {new}, but the guide's parameters are {old} (the guide was set "
                    f"up on {old} data), and the model fails on the mix ({describe_error(error)}): "
                    f"pass the data as {old}, or fit on {new} with a new guide "
                    "(pyro.clear_param_store() first)"
                ) from error


def _prepare_layout(
    model: Callable,
    guide: Any,
    args: tuple,
    kwargs: dict,
    options: StepOptions,
    allow_local: bool,
) -> tuple[LatentLayout, str]:
    like = initialize_guide(guide, args, kwargs)
    if like.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"the guide's parameters are {like.dtype}: the BLR's curvature and Cholesky updates "
            "need float32 or float64; pass float32 or float64 data"
        )
    dtypes = {
        name: site["value"].dtype for name, site in guide.prototype_trace.iter_stochastic_nodes()
    }
    if len(set(dtypes.values())) > 1:
        raise TypeError(
            f"the model's latent sites mix dtypes {dtypes}: one flat latent vector needs one "
            "dtype; create every prior in the data's dtype, e.g. dist.Normal(X.new_zeros(()), 1.0)"
        )
    # The model replayed on the guide's prototype: its latents take the guide's starting values,
    # so no prior is sampled (an ImproperUniform prior has no sampler).
    replayed = poutine.replay(model, trace=guide.prototype_trace)
    model_trace = trace_without_rng(replayed, args, kwargs, like)
    validate_site_shapes(model_trace)
    check_latent_masks(model_trace)
    layout = latent_layout(guide.prototype_trace, model_trace, allow_local=allow_local)
    if options.max_plate_nesting is not None:
        if options.max_plate_nesting < layout.max_plate_nesting:
            raise ValueError(
                f"max_plate_nesting={options.max_plate_nesting} is less than the "
                f"{layout.max_plate_nesting} plate dimension(s) the model uses; leave it None "
                "to have it found"
            )
        layout = layout.with_plate_nesting(options.max_plate_nesting)
    warn_latents_below_data_precision(model_trace)
    mode = options.vectorize_particles
    subsample = subsample_indices(model_trace)
    with rng_kept(like):
        probe = torch.randn(3, layout.dim, dtype=like.dtype, device=like.device)
        if mode == "auto":
            mode = choose_vectorization(model, layout, probe, args, kwargs, subsample=subsample)
        # at the guide's start, where the model has run: a failure there is about gradients
        start = torch.cat(
            [
                site.transform.inv(guide.prototype_trace.nodes[site.name]["value"]).reshape(-1)
                for site in layout.sites
            ]
        )
        check_differentiable(model, layout, start.detach(), args, kwargs, subsample)
    return layout, mode


def check_state(name: str, saved: Tensor, current: Tensor) -> None:
    """Refuse a checkpoint entry that does not fit the guide (shape) or is not finite."""
    if not torch.is_tensor(saved):
        raise ValueError(f"state_dict entry {name!r} is not a tensor")
    if saved.shape != current.shape:
        raise ValueError(
            f"state_dict entry {name!r} has shape {tuple(saved.shape)}, this guide needs "
            f"{tuple(current.shape)}: the checkpoint is of another model or guide"
        )
    if not torch.isfinite(saved).all():
        raise ValueError(f"state_dict entry {name!r} is not finite")
