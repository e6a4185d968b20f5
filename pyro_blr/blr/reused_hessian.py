r"""An exact Hessian reused across steps while it still describes the log joint.

With ``hessian_every = k > 1`` the ``"von"`` and ``"newton"`` rules compute the expected Hessian
:math:`\hat H` of :math:`\ell` at most every :math:`k` steps and reuse it in between, where a
step costs only the gradients. The rule's fixed point does not move: the mean stops where
:math:`\mathbb E_q[\nabla\ell] = 0` and the precision relaxes to the latest :math:`\hat H`, taken
there at convergence.

A reused Hessian is dropped early when the last step shows that it no longer fits. That step
:math:`s = m_t - m_{t-1}` changed the expected gradient by :math:`y = \bar g_t - \bar g_{t-1}`;
along :math:`s` the log joint's curvature was :math:`s^\top y / s^\top s` where the reused Hessian
says :math:`s^\top \hat H s / s^\top s` (the curvature pair of quasi-Newton methods; Nocedal &
Wright 2006, ch. 6). If the two differ by more than a factor of two, the next step computes a
fresh Hessian. Only steps that leave the cloud of particles, :math:`\lVert s\rVert_S^2 > D`, are
judged, so that Monte Carlo noise in :math:`\bar g` near convergence does not trigger it. Far from
the posterior the curvature changes with the mean, and a Hessian reused over several steps from a
poor start can send Newton's mean far off where a fresh one would not: the check is for that.

References:
    | Numerical Optimization, 2nd ed. (Nocedal & Wright, Springer 2006), chapter 6
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["ReusedHessian"]

_KEYS = ("hessian", "hessian_age", "hessian_stale", "previous_loc", "previous_grad")


class ReusedHessian:
    """The Hessian a step reuses, when it is due, and its checkpoint entries.

    Args:
        every: compute a fresh Hessian at least every ``every`` steps.

    Example:
        >>> import torch
        >>> reused = ReusedHessian(every=3)
        >>> reused.due()  # nothing to reuse yet
        True
        >>> hess = reused.use(torch.zeros(2), torch.zeros(2), torch.eye(2), torch.eye(2))
        >>> reused.due(), reused.use(torch.zeros(2), torch.zeros(2), None, torch.eye(2))
        (False, tensor([[1., 0.],
                [0., 1.]]))
    """

    def __init__(self, every: int):
        self.every = every
        self.reset()

    def reset(self) -> None:
        """Forget the Hessian (the guide was set from outside: a fresh one next step)."""
        self.hessian: Tensor | None = None
        self.age = 0
        self.stale = False
        self.previous: tuple[Tensor, Tensor] | None = None

    def due(self) -> bool:
        """Whether this step computes a fresh Hessian."""
        return self.hessian is None or self.age >= self.every or self.stale

    def use(self, loc: Tensor, grad: Tensor, hess: Tensor | None, precision: Tensor) -> Tensor:
        """The Hessian this step uses: ``hess`` when fresh (not ``None``), else the reused one.
        Judges the step that led to ``loc`` (see the module docstring)."""
        if hess is not None:
            self.hessian, self.age, self.stale = hess, 0, False
        elif self.previous is not None:
            step = loc - self.previous[0]
            change = grad - self.previous[1]
            moved = _quadratic(precision, step)
            if moved > step.numel():
                assumed = _quadratic(self.hessian, step)
                seen = step @ change
                self.stale = not bool(0.5 * assumed <= seen <= 2.0 * assumed)
        self.age += 1
        self.previous = (loc, grad)
        return self.hessian

    def state_dict(self) -> dict[str, Tensor]:
        if self.hessian is None:
            return {}
        loc, grad = self.previous
        return {
            "hessian": self.hessian.clone(),
            "hessian_age": torch.tensor(self.age),
            "hessian_stale": torch.tensor(self.stale),
            "previous_loc": loc.clone(),
            "previous_grad": grad.clone(),
        }

    @staticmethod
    def split(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A stepper's checkpoint entries: (this class's, the rest)."""
        mine = {k: v for k, v in state.items() if k in _KEYS}
        return mine, {k: v for k, v in state.items() if k not in _KEYS}

    def check_state(
        self, state: dict[str, Any], check, like_loc: Tensor, like_precision: Tensor
    ) -> None:
        """Refuse entries that are incomplete or that do not fit, before anything changes
        (``check(name, saved, like)`` checks one tensor against the one it stands for)."""
        if not state:
            return
        if set(state) != set(_KEYS):
            raise ValueError(
                f"state_dict entries {list(_KEYS)} go together; got only {sorted(state)}"
            )
        check("hessian", state["hessian"], like_precision)
        check("previous_loc", state["previous_loc"], like_loc)
        check("previous_grad", state["previous_grad"], like_loc)
        for name, allowed in (("hessian_age", "an integer >= 0"), ("hessian_stale", "0 or 1")):
            value = state[name]
            fits = torch.is_tensor(value) and value.numel() == 1 and not value.is_floating_point()
            fits = fits and int(value) >= 0 and (name == "hessian_age" or int(value) <= 1)
            if not fits:
                raise ValueError(f"state_dict entry {name!r} must be {allowed}, got {value!r}")

    def load_state_dict(self, state: dict[str, Any], like: Tensor) -> None:
        self.reset()
        if not state:
            return
        to = dict(dtype=like.dtype, device=like.device)
        self.hessian = state["hessian"].to(**to).clone()
        self.age = int(state["hessian_age"])
        self.stale = bool(state["hessian_stale"])
        self.previous = (state["previous_loc"].to(**to), state["previous_grad"].to(**to))


def _quadratic(matrix: Tensor, vector: Tensor) -> Tensor:
    """:math:`v^\\top A v` for a full or a diagonal (vector) ``A``."""
    return vector @ (matrix @ vector if matrix.dim() == 2 else matrix * vector)
