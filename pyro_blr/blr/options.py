"""The checks on :class:`pyro_blr.BLR`'s options and :meth:`pyro_blr.BLR.fit`'s: each bad value
raises ``ValueError`` naming the option, the range it must lie in and what it got, before the
driver changes anything."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import pyro.optim
import torch

from pyro_blr.blr.distributed import Collective
from pyro_blr.blr.steppers import StepOptions

__all__ = [
    "check_fit_options",
    "check_lr",
    "check_number",
    "check_optim",
    "check_positive_int",
    "check_step_options",
    "collective_for",
]


def check_number(name: str, value: Any, low: float, high: float, closed_high: bool) -> float:
    """A real, non-bool number in [low, high) (or [low, high]); numpy and 0-d tensors welcome.

    Example:
        >>> check_number("beta1", 0.9, 0.0, 1.0, closed_high=False)
        0.9
    """
    if torch.is_tensor(value) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    inside = low <= value <= high if closed_high else low <= value < high
    if not inside or math.isnan(value):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must lie in [{low:g}, {high:g}{bracket}, got {value}")
    return value


def check_positive_int(name: str, value: Any) -> int:
    """A positive integer, not a bool; numpy integers and integer 0-d tensors welcome."""
    if torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_lr(lr: Any) -> float:
    """A positive finite step size (a number or a 0-d tensor)."""
    if torch.is_tensor(lr) and lr.numel() == 1:
        lr = lr.item()
    if isinstance(lr, bool) or not isinstance(lr, Real) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    return float(lr)


def _positive(name: str, value: Any, high: float = math.inf, closed_high: bool = False) -> float:
    value = check_number(name, value, 0.0, high, closed_high)
    if value == 0:
        raise ValueError(f"{name} must be positive, got 0")
    return value


def check_step_options(rule: str, honoured: dict[str, Any], **options: Any) -> StepOptions:
    """The stepper's options checked whole: each in its range, and none that ``rule`` does not
    use given a non-default value.

    Args:
        rule: the rule's name.
        honoured: for each rule its stepper runs, the names of the options it uses.
        **options: the fields of :class:`pyro_blr.blr.steppers.StepOptions`.
    """
    mc_samples = check_positive_int("mc_samples", options["mc_samples"])
    beta1 = check_number("beta1", options["beta1"], 0.0, 1.0, closed_high=False)
    beta2 = check_number("beta2", options["beta2"], 0.0, 1.0, closed_high=False)
    clip_radius, ess, hess_init = options["clip_radius"], options["ess"], options["hess_init"]
    weight_decay, nesting = options["weight_decay"], options["max_plate_nesting"]
    if clip_radius is not None:
        clip_radius = _positive("clip_radius", clip_radius, closed_high=True)
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, Real)
        or not (0 <= weight_decay < math.inf)
    ):
        raise ValueError(f"weight_decay must be non-negative and finite, got {weight_decay}")
    if options["vectorize_particles"] not in ("auto", True, False):
        raise ValueError(
            "vectorize_particles must be 'auto', True or False, got "
            f"{options['vectorize_particles']!r}"
        )
    if nesting is not None and (
        isinstance(nesting, bool) or not isinstance(nesting, int) or nesting < 0
    ):
        raise ValueError(f"max_plate_nesting must be a non-negative integer, got {nesting!r}")
    if ess is not None:
        ess = _positive("ess", ess)
    if isinstance(hess_init, str):
        if hess_init != "auto":
            raise ValueError(f"hess_init must be 'auto', a number or None, got {hess_init!r}")
    elif hess_init is not None:
        hess_init = check_number("hess_init", hess_init, 0.0, math.inf, closed_high=False)
        if hess_init == 0:
            raise ValueError("hess_init must be positive, got 0 (or None to keep the guide's)")
    checked = StepOptions(
        mc_samples=mc_samples,
        antithetic=bool(options["antithetic"]),
        beta1=beta1,
        beta2=beta2,
        clip_radius=clip_radius,
        weight_decay=float(weight_decay),
        vectorize_particles=options["vectorize_particles"],
        max_plate_nesting=nesting,
        ess=ess,
        hess_init=hess_init,
        hessian_every=check_positive_int("hessian_every", options["hessian_every"]),
    )
    defaults = StepOptions()
    for name, value in checked._asdict().items():
        if name not in honoured[rule] and value != getattr(defaults, name):
            users = sorted(r for r, opts in honoured.items() if name in opts)
            named = ", ".join(repr(r) for r in users)
            where = f"rule{'s' if len(users) > 1 else ''} {named}" if users else "other rules"
            raise ValueError(
                f"{name}={value!r} does not apply to rule {rule!r} (it is used by {where}); "
                "leave it at its default"
            )
    return checked


def check_fit_options(num_steps: Any, tol: Any, window: Any) -> float | None:
    """Check :meth:`pyro_blr.BLR.fit`'s ``num_steps``, ``tol`` and ``window``; returns ``tol``
    as a float (or ``None``)."""
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
        raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
    if tol is not None:
        tol = check_number("tol", tol, 0.0, math.inf, closed_high=False)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    return tol


def check_optim(optim: Any) -> pyro.optim.PyroOptim | None:
    """``None`` or a Pyro optimizer: the one for the model's own parameters."""
    if optim is None or isinstance(optim, pyro.optim.PyroOptim):
        return optim
    what = (
        f"the class {optim.__module__}.{optim.__name__}"
        if isinstance(optim, type)
        else f"a {type(optim).__module__}.{type(optim).__name__}"
    )
    raise TypeError(
        f"optim must be a Pyro optimizer such as pyro.optim.Adam({{'lr': 0.01}}), got {what}: "
        "optim steps only the model's own parameters (pyro.param sites, nn.Parameter of a "
        "PyroModule that are not PyroSample), as SVI does; the guide is stepped by the "
        "rule (set its step size with lr=), not by an optimizer"
    )


def collective_for(
    process_group: Any, rank_noise: bool, stepper: Any, rule: str
) -> Collective | None:
    """The distributed run's reductions for the ``process_group`` option, or ``None`` for a
    one-process run; a rule whose stepper cannot run distributed raises ``ValueError``."""
    if process_group == "auto":
        running = torch.distributed.is_available() and torch.distributed.is_initialized()
        if not running or torch.distributed.get_world_size() == 1:
            return None
        process_group = None  # the default group
    elif process_group is None:
        return None
    if not stepper.distributable:
        raise ValueError(
            f"rule {rule!r} does not run distributed yet: use a Gaussian guide with rule "
            "'ivon', 'von', 'vogn' or 'newton' or an AutoExpFamily with 'expfamily', or pass "
            "process_group=None for one process"
        )
    return Collective(process_group, rank_noise=bool(rank_noise))
