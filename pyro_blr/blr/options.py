"""The checks on :class:`pyro_blr.BLR`'s options and :meth:`pyro_blr.BLR.fit`'s: each bad value
raises ``ValueError`` naming the option, the range it must lie in and what it got, before the
driver changes anything."""

from __future__ import annotations

import math
from typing import Any

import pyro.optim
import torch

from pyro_blr.blr.distributed import Collective
from pyro_blr.blr.numbers import check_lr, check_number, check_positive_int

__all__ = [
    "check_driver_options",
    "check_fit_options",
    "check_lr",
    "check_number",
    "check_optim",
    "check_positive_int",
    "collective_for",
    "moved_option",
]


def check_driver_options(rule: Any, vectorize_particles: Any, max_plate_nesting: Any) -> None:
    """Check the driver's own options (the rule checked its own when it was built)."""
    if vectorize_particles not in ("auto", True, False):
        raise ValueError(
            f"vectorize_particles must be 'auto', True or False, got {vectorize_particles!r}"
        )
    if vectorize_particles != "auto" and not rule.vectorizes:
        raise ValueError(
            f"vectorize_particles={vectorize_particles!r} does not apply to {type(rule).__name__}, "
            "which runs the model once per particle for its per-datum gradients; leave it 'auto'"
        )
    nesting = max_plate_nesting
    if nesting is not None and (
        isinstance(nesting, bool) or not isinstance(nesting, int) or nesting < 0
    ):
        raise ValueError(f"max_plate_nesting must be a non-negative integer, got {nesting!r}")


def moved_option(options: dict[str, Any], rule: Any, guide: Any) -> str:
    """The message for options passed to :class:`pyro_blr.BLR` that belong elsewhere: a
    rule's options go to the rule object, ``optim`` is ``model_optim``."""
    if "optim" in options:
        return (
            "BLR takes the optimizer of the model's own parameters as model_optim= (optim= is "
            "what SVI calls the guide's optimizer; the BLR steps the guide with its rule)"
        )
    from pyro_blr.blr.rules import RULES, as_rule

    try:
        kind = type(as_rule(rule, guide))
    except (TypeError, ValueError):
        kind = RULES["ivon"]
    shown = ", ".join(f"{k}={v!r}" for k, v in options.items())
    return (
        f"BLR got {', '.join(options)}, which are options of the rule: pass the rule with "
        f"them as BLR's third argument, e.g. BLR(model, guide, pb.{kind.__name__}({shown}))"
    )


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
    """``None`` or a Pyro optimizer: ``model_optim``, the one for the model's own parameters."""
    if optim is None or isinstance(optim, pyro.optim.PyroOptim):
        return optim
    what = (
        f"the class {optim.__module__}.{optim.__name__}"
        if isinstance(optim, type)
        else f"a {type(optim).__module__}.{type(optim).__name__}"
    )
    raise TypeError(
        f"model_optim must be a Pyro optimizer such as pyro.optim.Adam({{'lr': 0.01}}), got "
        f"{what}: model_optim steps only the model's own parameters (pyro.param sites, "
        "nn.Parameter of a PyroModule that are not PyroSample), as SVI does; the guide is "
        "stepped by the rule (set its step size with the rule's lr, e.g. pb.IVON(lr=0.1)), "
        "not by an optimizer"
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
            f"rule {rule!r} does not run distributed: pass process_group=None for one process"
        )
    return Collective(process_group, rank_noise=bool(rank_noise))
