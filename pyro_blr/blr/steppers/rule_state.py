r"""What the exponential-family and mixture steppers share: the rule's state, kept between steps,
written into the guide, checkpointed, stepped back from and reduced across ranks.

A step reads the rule's state (natural parameters, mixture logits; :mod:`pyro_blr.blr.rules`),
estimates what the rule needs at it, calls the pure ``rule.update(state, estimates, lr)`` and
writes the new state into the guide. Around that update every such stepper gets:

* **the state as the source of the next step**: the state written last is used as it is while
  the guide still holds exactly what was written (compared parameter by parameter, bit for bit);
  a guide written from outside (SVI, an iterate average, ``pyro.get_param_store``) is read
  afresh. So the natural parameters never pass through the guide's constrained parameters and
  back between two steps, and a checkpoint of the state resumes bit for bit;
* **checkpoints that are the state**: ``state_dict()`` holds the state's tensors and the model's
  signature (:mod:`pyro_blr.blr.steppers.signature`: sites and shapes, rule, dtype, each site's
  family, the number of components); ``load_state_dict`` checks all of it before writing
  anything and names the entry at fault;
* **step-back** (:mod:`pyro_blr.blr.step_back`): a loss far above the last step's, or a log
  joint that is not finite at the new state's draws, returns to the state before the last step
  and retakes it with half the step size (in a distributed run only for the loss, which every
  rank has all-reduced alike: a non-finite estimate on one rank raises on every rank instead);
* **distributed reduction** (:mod:`pyro_blr.blr.distributed`): each rank estimates on its own
  shard (and its own draws with ``rank_noise``), the loss and estimates are averaged in one
  all-reduce, and every rank then takes the same update from the same state.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

import torch
from torch import Tensor

from pyro_blr.blr.rules import Estimates
from pyro_blr.blr.step_back import StepBacks
from pyro_blr.blr.steppers.base import StepInfo, Stepper, check_state, minibatch
from pyro_blr.blr.steppers.signature import signed, unsigned
from pyro_blr.core import rng_kept

__all__ = ["RuleStateStepper"]


class RuleStateStepper(Stepper):
    """A stepper whose rule state is its checkpoint, with step-back and distributed reduction.

    Subclasses set up the layout (:meth:`_setup`), read and write the guide as the rule's state
    (:meth:`_read`, :meth:`_write_guide`), flatten the state into named tensors and back
    (:meth:`_tensors`, :meth:`_from_tensors`, :meth:`_check_loaded`), map it to natural
    parameters (:meth:`_natural`, :meth:`_from_natural`) and estimate at it (:meth:`_estimate`,
    :meth:`_finite_at`).
    """

    distributable = True

    def __init__(self, model, guide, rule, options):
        super().__init__(model, guide, rule, options)
        self.layout, self.mode = None, None
        self._state = None  # the rule's state as last written into the guide
        self._written: list[Tensor] | None = None  # the guide's parameters right after that
        self.step_backs = StepBacks()

    # ---------------------------------------------------------------- what subclasses define
    @abstractmethod
    def _setup(self, args: tuple, kwargs: dict) -> None:
        """Build ``self.layout`` and ``self.mode`` (and whatever else the stepper needs)."""

    @abstractmethod
    def _read(self) -> Any:
        """The rule's state as the guide holds it."""

    @abstractmethod
    def _write_guide(self, state: Any) -> None:
        """Write ``state`` into the guide (validated before anything is written)."""

    @abstractmethod
    def _tensors(self, state: Any) -> dict[str, Tensor]:
        """The state's tensors by checkpoint key."""

    @abstractmethod
    def _from_tensors(self, tensors: dict[str, Tensor]) -> Any:
        """The state from :meth:`_tensors`' entries."""

    @abstractmethod
    def _check_loaded(self, state: Any) -> None:
        """Raise ``ValueError`` naming the entry of a loaded state that is not valid."""

    @abstractmethod
    def _natural(self, state: Any) -> dict[str, Tensor]:
        """The state in natural parameters (in which an average is a Polyak average)."""

    @abstractmethod
    def _from_natural(self, natural: dict[str, Tensor]) -> Any:
        """The state from :meth:`_natural`'s entries."""

    @abstractmethod
    def _estimate(self, state: Any, args: tuple, kwargs: dict, step: int) -> tuple[Tensor, Any]:
        """This process's loss estimate (a scalar tensor) and the rule's ``Estimates`` at
        ``state``; raises ``FloatingPointError`` naming the sites where they are not finite."""

    @abstractmethod
    def _finite_at(self, state: Any, args: tuple, kwargs: dict) -> bool:
        """Whether the log joint is finite at a central point of ``state`` (no draws)."""

    def _structure(self) -> dict[str, Any]:
        """The guide's structure in the checkpoint signature (``families``, ``components``)."""
        return {}

    def _update(self, state: Any, estimates: Any, lr: float) -> tuple[Any, Any]:
        """``rule.update``; subclasses name what fails."""
        return self.rule.update(state, estimates, lr)

    # ---------------------------------------------------------------- the state and the guide
    def _set_up(self, args: tuple, kwargs: dict) -> None:
        self._setup(args, kwargs)
        with rng_kept(self._like()):  # set-up draws nothing a resumed run would miss
            subsampled = bool(minibatch(self.model, args, kwargs))
        # Two steps' losses compare only on the same data: minibatches differ step to step.
        self.step_backs = StepBacks(enabled=not subsampled)

    def _like(self) -> Tensor:
        return next(iter(self.guide.parameters()))

    def _holds_written(self) -> bool:
        params = [p.detach() for p in self.guide.parameters()]
        written = self._written
        if written is None or len(params) != len(written):
            return False
        pairs = zip(params, written, strict=True)
        return all(a.shape == b.shape and torch.equal(a, b) for a, b in pairs)

    def _current_state(self) -> Any:
        """The state written last while the guide still holds it, else the guide's."""
        if self._state is not None and self._holds_written():
            return self._state
        return self._read()

    def _write(self, state: Any) -> None:
        """Write ``state`` into the guide, all or nothing, and keep it as the next step's."""
        params = list(self.guide.parameters())
        old = [p.detach().clone() for p in params]
        try:
            self._write_guide(state)
        except BaseException:
            with torch.no_grad():
                for param, value in zip(params, old, strict=True):
                    param.copy_(value)
            raise
        self._state = state
        self._written = [p.detach().clone() for p in self.guide.parameters()]

    # ---------------------------------------------------------------- one step
    def step(self, args: tuple, kwargs: dict, lr: float, step_number: int) -> StepInfo:
        if self.layout is None:
            self.together(step_number, lambda: self._set_up(args, kwargs))
        self._join(step_number, args, kwargs)
        state = self._current_state()
        self.step_backs.keep_if(state is self._state, args, kwargs)
        try:
            loss, estimates = self.together(
                step_number, lambda: self._estimate(state, args, kwargs, step_number)
            )
        except FloatingPointError as error:
            # Step back only where the last step caused it: in one process (the other ranks
            # of a distributed run see RankFailed), and where the state before that step is
            # finite (a non-finite datum fails everywhere: the error is the user's).
            undo = self.step_backs.undo
            if undo is None or self.collective is not None:
                raise
            if not self._finite_at(undo.state, args, kwargs):
                raise
            return self._step_back(step_number, str(error).split(": ", 1)[-1].split("; ")[0])
        if self.collective is not None:  # one all-reduce: every rank then takes the same step
            loss, estimates = self._reduced(loss, estimates)
        loss = float(loss)
        reason = self.step_backs.diverged(loss)
        if reason is not None:
            return self._step_back(step_number, reason)
        halvings = self._take(state, estimates, lr)
        self.step_backs.remember(state, estimates, lr, step_number, loss, args, kwargs)
        return StepInfo(loss, halvings)

    def _take(self, state: Any, estimates: Any, lr: float) -> int:
        """Apply the rule and write the result; returns the update's halvings. A failed update
        raises (naming the site) with the guide unchanged."""
        new, info = self._update(state, estimates, lr)
        self._write(new)
        return info.halvings

    def _step_back(self, step_number: int, reason: str) -> StepInfo:
        """Return to the state before the last step and retake it with half the step size
        (see :mod:`pyro_blr.blr.step_back`); the loss reported is the state returned to's."""
        halvings = []

        def take(state: Any, estimates: Any, lr: float) -> None:
            halvings.append(self._take(state, estimates, lr))

        loss = self.step_backs.retake(step_number, reason, take, self._write)
        return StepInfo(loss, halvings[0], stepped_back=reason)

    def _reduced(self, loss: Tensor, estimates: Estimates) -> tuple[Tensor, Estimates]:
        """The loss and estimates averaged over the ranks, in one all-reduce."""
        grads = estimates.grad if isinstance(estimates.grad, dict) else {None: estimates.grad}
        extra = [t for t in (estimates.hess, estimates.values) if t is not None]
        loss, *parts = self.collective.mean([loss, *grads.values(), *extra])
        grads = dict(zip(grads, parts[: len(grads)], strict=True))
        extra = iter(parts[len(grads) :])
        hess = None if estimates.hess is None else next(extra)
        values = None if estimates.values is None else next(extra)
        grad = grads[None] if None in grads else grads
        return loss, estimates._replace(grad=grad, hess=hess, values=values)

    # ---------------------------------------------------------------- outside the steps
    def natural_state(self) -> dict[str, Tensor]:
        return {k: v.detach().clone() for k, v in self._natural(self._current_state()).items()}

    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        self._write(self._from_natural(state))
        self.step_backs.forget()  # a state written from outside: no step to retake

    def state_dict(self) -> dict[str, Any]:
        """The rule's state (its tensors, e.g. ``natural.<site>``, ``logits``) and the model's
        signature (:mod:`pyro_blr.blr.steppers.signature`)."""
        if self.layout is None:
            return {}
        tensors = {k: v.detach().clone() for k, v in self._tensors(self._current_state()).items()}
        return signed(tensors, self.layout, self.rule_name, self._like(), **self._structure())

    def load_state_dict(self, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
        """Make a :meth:`state_dict` the rule's state and write it into the guide; a checkpoint
        of another model, guide, rule or dtype, or one whose entries are missing, misshapen,
        not finite or outside their family's domain, is refused whole (``ValueError`` naming
        what differs) before anything is written."""
        if self.layout is None:
            self._set_up(args, kwargs)
        state = unsigned(state, self.layout, self.rule_name, self._like(), **self._structure())
        current = self._tensors(self._current_state())
        if set(state) != set(current):
            older = any(k.startswith("param.") for k in state)  # the guide's own parameters
            old = " (a checkpoint of an earlier pyro_blr, which saved the guide's parameters)"
            old = old if older else ""
            raise ValueError(
                f"state_dict of rule {self.rule_name!r} needs entries {sorted(current)}, got "
                f"{sorted(state)}{old}"
            )
        loaded = {}
        for key, value in current.items():
            check_state(key, state[key], value)
            loaded[key] = state[key].to(dtype=value.dtype, device=value.device).clone()
        new = self._from_tensors(loaded)
        self._check_loaded(new)
        self._write(new)
        self.step_backs.forget()  # a restored state: no step to retake
