r"""What a Gaussian rule's state is outside a step: its natural parameters and its checkpoint.

:meth:`GaussianCheckpoints.natural_state` gives the guide's Gaussian in natural parameters,
:math:`(\eta_1, \eta_2) \leftrightarrow (S m, S)` (the precision :math:`S` standing for
:math:`-2\eta_2`), the coordinates the rules step in, and loads them back. A checkpoint
(:meth:`GaussianCheckpoints.state_dict`) is the rule's whole NamedTuple state (mean, precision and
IVON's momentum), or for latents local to a subsampled plate the guide's own per-datum
parameters (its unconstrained tensors, so that a round trip is bit for bit), plus the model's
signature (:mod:`pyro_blr.blr.steppers.signature`: site names and shapes, rule, dtype). Loading
one checks the signature, every entry's shape and that the precision is positive definite
before writing anything.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pyro_blr.blr.reused_hessian import ReusedHessian
from pyro_blr.blr.steppers.base import check_state
from pyro_blr.blr.steppers.signature import signed, unsigned
from pyro_blr.core import write_params
from pyro_blr.families import gaussian_family, is_positive_definite

__all__ = ["GaussianCheckpoints"]


class GaussianCheckpoints:
    """The natural-parameter and checkpoint half of
    :class:`~pyro_blr.blr.steppers.gaussian.GaussianStepper` (a mixin: it reads the stepper's
    ``guide``, ``layout``, ``rule_name``, ``_local``, ``_reused``, ``_state`` and
    ``_started``, resets its ``_undo``, and calls its ``_current_state``, ``_write`` and
    ``_setup``)."""

    guide: Any
    layout: Any
    rule_name: str
    _local: bool
    _reused: ReusedHessian | None
    _state: Any
    _started: bool
    _undo: Any

    def _per_datum_params(self) -> list:
        """Each site's ``(locs module, scales module, leaf name)`` in ``AutoNormal``, whose
        ``locs`` and ``scales`` nest a dotted site name ``a.b`` as ``locs.a`` holding ``b``."""
        out = []
        for site in self.layout.sites:
            path, _, leaf = site.name.rpartition(".")
            out.append(
                (self.guide.locs.get_submodule(path), self.guide.scales.get_submodule(path), leaf)
            )
        return out

    def natural_state(self) -> dict[str, Tensor]:
        if self._local:  # every datum's row, not only a minibatch's
            state = {}
            for site, (locs, scales, leaf) in zip(
                self.layout.sites, self._per_datum_params(), strict=True
            ):
                precision = getattr(scales, leaf).detach().pow(-2)
                state[f"{site.name}.precision_times_loc"] = precision * getattr(locs, leaf).detach()
                state[f"{site.name}.precision"] = precision
            return state
        state = self._current_state()
        family = gaussian_family(state.precision)
        eta1, _ = family.natural_params(state.loc, state.precision)
        return {"precision_times_loc": eta1, "precision": state.precision.clone()}

    def load_natural_state(self, state: dict[str, Tensor]) -> None:
        self._undo = None  # a state written from outside
        if self._reused is not None:
            self._reused.reset()
        if self._local:
            writes = []
            for site, (locs, scales, leaf) in zip(
                self.layout.sites, self._per_datum_params(), strict=True
            ):
                precision = state[f"{site.name}.precision"]
                writes.append((locs, leaf, state[f"{site.name}.precision_times_loc"] / precision))
                writes.append((scales, leaf, precision.rsqrt()))
            write_params(writes)
            return
        precision = state["precision"]
        loc = gaussian_family(precision).solve(precision, state["precision_times_loc"])
        self._write(self._current_state()._replace(loc=loc, precision=precision))

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        if not self._started:
            return {}
        if self._local:  # the guide's own parameters are all of the state (von and newton)
            out = {f"param.{n}": p.detach().clone() for n, p in self.guide.named_parameters()}
            return signed(out, self.layout, self.rule_name, next(iter(self.guide.parameters())))
        state = self._current_state()
        out = {name: value.clone() for name, value in state._asdict().items()}
        if self._reused is not None and state is self._state:  # else dropped at the next step
            out.update(self._reused.state_dict())
        return signed(out, self.layout, self.rule_name, state.loc)

    def load_state_dict(self, state: dict[str, Any], args: tuple, kwargs: dict) -> None:
        if self.layout is None:
            self._setup(args, kwargs)
        like = next(iter(self.guide.parameters()))
        state = unsigned(state, self.layout, self.rule_name, like)  # before anything is read
        if self._local:
            self._load_guide_params(state)
            self._undo = None  # a restored state: no step to retake
            self._started = True
            return
        self._undo = None  # a restored state: no step to retake
        current = self._current_state()
        expected = set(current._fields)
        reused, state = ReusedHessian.split(state)
        if self._reused is not None:  # a driver with exact Hessians every step needs none
            self._reused.check_state(reused, check_state, current.loc, current.precision)
        if set(state) != expected:
            raise ValueError(
                f"state_dict of rule {self.rule_name!r} needs entries {sorted(expected)}, got "
                f"{sorted(state)}"
            )
        like = current.loc
        fields = {}
        for name in current._fields:
            check_state(name, state[name], getattr(current, name))
            fields[name] = state[name].to(dtype=like.dtype, device=like.device).clone()
        if not is_positive_definite(fields["precision"]):
            raise ValueError("state_dict entry 'precision' is not positive definite")
        self._write(type(current)(**fields))
        if self._reused is not None:
            self._reused.load_state_dict(reused, like)

    def _load_guide_params(self, state: dict[str, Any]) -> None:
        """Write the guide's own (unconstrained) parameters from ``param.<name>`` entries, as
        they are: bit for bit, all or none."""
        current = dict(self.guide.named_parameters())
        expected = {f"param.{n}" for n in current}
        if set(state) != expected:
            raise ValueError(f"state_dict needs entries {sorted(expected)}, got {sorted(state)}")
        writes = []
        for name, param in current.items():
            check_state(f"param.{name}", state[f"param.{name}"], param)
            path, _, leaf = name.rpartition(".")
            module = self.guide.get_submodule(path)  # leaf: the raw tensor, not a constrained view
            value = state[f"param.{name}"].to(dtype=param.dtype, device=param.device)
            writes.append((module, leaf, value))
        write_params(writes)
