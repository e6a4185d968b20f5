r"""Why a mixture step failed: the error naming the sites and the components at fault.

A mixture step evaluates :math:`h = \log q - \log p(\mathcal D, \cdot)` at every component's
draws, its gradient and curvature (Gaussian components) and the rule's update. Where one of them
is not finite the step raises ``FloatingPointError`` before anything is written, and the message
says where: the model's sites whose log density is not finite (found by rerunning the model at
the failing draws, one run per draw) or the guide's own mixture density, the sites whose
coordinates of the gradient, Hessian or update are not finite, and the components whose draws
or parameters they are.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.rules import Estimates, MixtureState
from pyro_blr.blr.steppers.base import KEPT
from pyro_blr.core import LatentLayout, neg_log_joint

__all__ = ["check_draws", "check_gaussian_estimates", "gaussian_update"]


def _indices(mask: Tensor) -> list[int]:
    return mask.nonzero().flatten().tolist()


def _sites(layout: LatentLayout, coordinates: Tensor) -> list[str]:
    """The sites owning the flat coordinates where ``coordinates`` (shape ``(D,)``) is true."""
    return sorted({layout.site_at(i) for i in _indices(coordinates)})


def _non_finite_sites(stepper: Any, theta: Tensor, args: tuple, kwargs: dict) -> list[str]:
    """The model's sites whose log density is not finite at some particle of ``theta``."""
    runs = []
    with torch.no_grad():
        neg_log_joint(stepper.model, stepper.layout, theta, args, kwargs, "loop", runs)
    return sorted({name for terms in runs for name, t in terms if not torch.isfinite(t).all()})


def _not_finite_at(sites: list[str], components: list[int], step: int) -> FloatingPointError:
    if sites:
        what = f"the log joint is not finite at site(s) {sites}"
    else:
        what = "the guide's mixture density is not finite (a draw far from every component)"
    return FloatingPointError(f"BLR step {step}: {what} in component(s) {components}; {KEPT}")


def check_gaussian_estimates(
    stepper: Any, theta: Tensor, out: Any, args: tuple, kwargs: dict, step: int
) -> None:
    """Raise naming the sites and components where :math:`h`, its gradient or its Hessian at
    the particles ``theta`` ``(K, S, D)`` is not finite (``out``: their
    :func:`pyro_blr.core.derivatives`)."""
    k, num, d = theta.shape
    bad = ~torch.isfinite(out.value.reshape(k, num))
    if bad.any():
        sites = _non_finite_sites(stepper, theta[bad], args, kwargs)
        raise _not_finite_at(sites, _indices(bad.any(1)), step)
    for label, tensor in (("gradient", out.grad), ("Hessian", out.hess)):
        bad = (~torch.isfinite(tensor.reshape(k, num, d, -1))).any(-1)  # (K, S, D)
        if bad.any():
            raise FloatingPointError(
                f"BLR step {step}: the {label} is not finite at site(s) "
                f"{_sites(stepper.layout, bad.any(0).any(0))} in component(s) "
                f"{_indices(bad.any(-1).any(-1))}; {KEPT}"
            )


def check_draws(
    sample: Any, h: Tensor, objective: Tensor, num: int, args: tuple, kwargs: dict, step: int
) -> None:
    """Raise naming the sites and components where an exponential-family mixture's
    :math:`h` or objective is not finite at its draws (``sample``: a
    :class:`~pyro_blr.blr.steppers.expfamily.SiteDraws` of ``K * num`` draws, component by
    component)."""
    bad = ~(torch.isfinite(h) & torch.isfinite(objective.detach()))
    if bad.any():
        sites = sample.non_finite_sites(args, kwargs, rows=bad)
        components = sorted(set((bad.nonzero().flatten() // num).tolist()))
        raise _not_finite_at(sites, components, step)


def gaussian_update(
    rule: Any, layout: LatentLayout, state: MixtureState, estimates: Estimates, lr: float
) -> tuple[MixtureState, Any]:
    """``rule.update`` on a mixture of Gaussians, raising naming the sites and components where
    the update is not finite or a new precision cannot be factorized."""
    step = estimates.step
    try:
        new, info = rule.update(state, estimates, lr)
    except torch.linalg.LinAlgError as error:
        bad = []
        for c in range(state.locs.shape[0]):
            one = MixtureState(state.logits[c : c + 1], state.locs[c : c + 1],
                               state.precisions[c : c + 1])  # fmt: skip
            parts = [t[c : c + 1] for t in (estimates.grad, estimates.hess, estimates.values)]
            try:
                rule.update(one, Estimates(parts[0], parts[1], step, values=parts[2]), lr)
            except torch.linalg.LinAlgError:
                bad.append(c)
        raise FloatingPointError(
            f"BLR step {step}: the new precision of component(s) {bad} cannot be factorized "
            f"(lr={lr}; lower lr, or fit in float64); {KEPT}"
        ) from error
    locs, precisions = ~torch.isfinite(new.locs), ~torch.isfinite(new.precisions)
    coords = locs | precisions.reshape(*locs.shape, -1).any(-1)  # (K, D)
    if coords.any():
        raise FloatingPointError(
            f"BLR step {step}: the update is not finite at site(s) "
            f"{_sites(layout, coords.any(0))} in component(s) {_indices(coords.any(1))} "
            f"(lr={lr}; lower lr); {KEPT}"
        )
    if not torch.isfinite(new.logits).all():
        raise FloatingPointError(
            f"BLR step {step}: the update of the weights is not finite at component(s) "
            f"{_indices(~torch.isfinite(new.logits))} (lr={lr}; lower lr); {KEPT}"
        )
    return new, info
