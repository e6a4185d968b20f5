"""Why a Gaussian rule's update failed, and what fixes it: the error a stepper raises.

An update that is not finite, or whose full precision cannot be factorized, has two causes that
call for different fixes. Either the fit diverged (a step too long for the curvature: lower
``lr``), or the update is well posed but beyond the guide's dtype: in float32 a precision above
:math:`3.4\\times10^{38}` overflows (data in units of :math:`10^{-8}` with a guide started at
Pyro's ``init_scale=0.1`` reach :math:`10^{63}` in one Gauss--Newton step), and a full precision
whose condition number is above a tenth of :math:`1/\\epsilon` does not factorize reliably. The
second cause shows by retaking the same update, from the same estimates, in float64: if that one
is finite (and positive definite), float64 is the fix, and lowering ``lr`` would not be. The
error names the sites whose coordinates are at fault either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.steppers.base import KEPT
from pyro_blr.families import is_positive_definite

__all__ = ["condition_in_float64", "update_error"]

FLOAT64_FIX = (
    "refit in float64: a new guide and BLR on float64 data (X.double(), y.double()), or start "
    "the guide's scale near the posterior's (init_scale in the data's units)"
)


def update_error(
    update: Callable,
    state: Any,
    estimates: tuple[Tensor, Tensor],
    lr: float,
    step: int,
    options: dict,
    site_at: Callable[[int], str],
    new_state: Any = None,
    error: Exception | None = None,
) -> FloatingPointError:
    """The error for an update that is not finite (``new_state``) or whose precision could not
    be factorized (``error``), naming the sites at fault and the fix.

    Args:
        update: the rule's ``(state, grad, hess, lr, step, **options) -> state``.
        state: the state the update started from.
        estimates: the gradient and curvature estimates it used.
        lr: its step size.
        step: the step number.
        options: the rule's extra options.
        site_at: maps a flat coordinate to its site's name.
        new_state: the non-finite result, if the update returned one.
        error: the factorization error, if it raised one.
    """
    grad, hess = estimates
    dtype = state.precision.dtype
    wide = _in_float64(update, state, grad, hess, lr, step, options)
    if new_state is not None:
        bad = torch.zeros_like(state.loc, dtype=torch.bool)
        for t in new_state:
            bad |= _coordinates(~torch.isfinite(t), state.loc.numel())
        problem = "is not finite"
    else:
        bad = _coordinates(~torch.isfinite(hess), state.loc.numel())
        problem = f"has a precision that cannot be factorized ({error})"
    widest = math.inf if wide is None else float(wide.precision.abs().max())
    overflow = widest > torch.finfo(dtype).max
    if wide is not None and (overflow or new_state is not None):
        peak = wide.precision if wide.precision.dim() == 1 else wide.precision.diagonal()
        if not bad.any():  # name where the float64 precision peaks
            bad = peak.abs() >= peak.abs().max() / 10
        sites = _sites(bad, site_at)
        if overflow:
            why = (
                f"its precision at site(s) {sites} reaches {widest:.2g}, beyond the largest "
                f"{dtype} ({torch.finfo(dtype).max:.2g})"
            )
        else:
            why = f"at site(s) {sites} it overflows an intermediate product in {dtype}"
        return FloatingPointError(
            f"BLR step {step}: the update {problem} in {dtype}: {why}; in float64 the same "
            f"update is finite: {FLOAT64_FIX}; {KEPT}"
        )
    condition = condition_in_float64(update, state, grad, hess, lr, step, options)
    if condition is not None:  # well posed, but beyond the guide's dtype
        return FloatingPointError(
            f"BLR step {step}: the update's full precision has condition number "
            f"{condition:.2g}, more than {dtype} factorizes reliably (in float64 the same "
            f"update factorizes): refit in float64, a new guide and BLR on float64 data "
            f"(X.double(), y.double()); if the condition number keeps growing from step to "
            f"step the fit is diverging: lower lr; {KEPT}"
        )
    where = f" at site(s) {_sites(bad, site_at)}" if bad.any() else ""
    return FloatingPointError(
        f"BLR step {step}: the update {problem}{where} (lr={lr:g}): the fit diverged; "
        f"lower lr; {KEPT}"
    )


def _double(hess: Tensor | None) -> Tensor | None:
    """The curvature in float64 (``None`` for a rule that takes none: SGD)."""
    return None if hess is None else hess.double()


def _coordinates(mask: Tensor, dim: int) -> Tensor:
    """A per-coordinate mask from a mask shaped like a loc ``(D,)`` or a precision ``(D, D)``."""
    return mask.reshape(-1, dim).any(0) if mask.dim() < 2 else mask.any(0) | mask.any(1)


def _sites(mask: Tensor, site_at: Callable[[int], str]) -> list[str]:
    return sorted({site_at(int(i)) for i in mask.nonzero().flatten()})


def _in_float64(
    update: Callable, state, grad: Tensor, hess: Tensor, lr: float, step: int, options: dict
):
    """The same update in float64, where the state is narrower and that update is finite with
    a positive-definite precision; else ``None``."""
    if state.precision.dtype == torch.float64:
        return None
    options = {k: v.double() if torch.is_tensor(v) else v for k, v in options.items()}
    wide = type(state)(*(t.double() for t in state))
    try:
        new = update(wide, grad.double(), _double(hess), lr, step, **options)
    except RuntimeError:  # LinAlgError included
        return None
    if not all(torch.isfinite(t).all() for t in new):
        return None
    precision = new.precision
    positive = (precision > 0).all() if precision.dim() == 1 else is_positive_definite(precision)
    return new if positive else None


def condition_in_float64(
    update: Callable, state, grad: Tensor, hess: Tensor, lr: float, step: int, options: dict
) -> float | None:
    """The condition number of the precision that ``update`` gives in float64, where ``state``
    is full-covariance in a narrower dtype, the float64 precision factorizes and its condition
    number is beyond what the narrower dtype factorizes reliably (a tenth of ``1 / eps``: about
    8e5 in float32); else ``None``, and the failure is the fit's, not the dtype's."""
    precision = state.precision
    if precision.dim() != 2 or precision.dtype == torch.float64:
        return None
    wide = type(state)(*(t.double() for t in state))
    try:
        updated = update(wide, grad.double(), _double(hess), lr, step, **options).precision
        if not is_positive_definite(updated):
            return None
        eigenvalues = torch.linalg.eigvalsh(updated)
    except RuntimeError:  # LinAlgError included
        return None
    condition = float(eigenvalues.max() / eigenvalues.min())
    reliable = 0.1 / torch.finfo(precision.dtype).eps
    return condition if reliable < condition < math.inf else None
