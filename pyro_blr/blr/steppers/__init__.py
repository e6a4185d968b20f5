"""One stepper per kind of guide, found by the rule's ``kind``: see
:mod:`pyro_blr.blr.steppers.base`."""

from __future__ import annotations

from typing import Any

from pyro_blr.blr.rules import RULES, Rule
from pyro_blr.blr.steppers.base import StepInfo, StepOptions, Stepper
from pyro_blr.blr.steppers.expfamily import ExpFamilyStepper
from pyro_blr.blr.steppers.gaussian import GaussianStepper
from pyro_blr.blr.steppers.mixture import ExpFamilyMixtureStepper, GaussianMixtureStepper

__all__ = [
    "STEPPERS",
    "ExpFamilyMixtureStepper",
    "ExpFamilyStepper",
    "GaussianMixtureStepper",
    "GaussianStepper",
    "StepInfo",
    "StepOptions",
    "Stepper",
    "stepper_for",
]

STEPPERS: tuple[type[Stepper], ...] = (
    GaussianStepper,
    ExpFamilyStepper,
    GaussianMixtureStepper,
    ExpFamilyMixtureStepper,
)
"""Every stepper; :func:`stepper_for` picks the one that runs a rule on a guide."""


def stepper_for(rule: Rule, guide: Any) -> type[Stepper]:
    """The stepper that runs ``rule`` on ``guide``.

    Raises:
        TypeError: the rule cannot drive this guide (the message says what can).
    """
    for stepper in STEPPERS:
        if stepper.kind == rule.kind and stepper.accepts(guide, rule):
            return stepper
    able = [name for name, cls in RULES.items() if _drives(cls(), guide)]
    fix = (
        f"this guide takes {' or '.join(RULES[name].__name__ for name in able)}"
        if able
        else (
            "BLR drives pyro.infer.autoguide.AutoNormal, AutoDiagonalNormal, "
            "AutoMultivariateNormal, pb.AutoExpFamily and pb.AutoMixture"
        )
    )
    raise TypeError(f"BLR cannot drive {type(guide).__name__} with {type(rule).__name__}: {fix}")


def _drives(rule: Rule, guide: Any) -> bool:
    return any(s.kind == rule.kind and s.accepts(guide, rule) for s in STEPPERS)
