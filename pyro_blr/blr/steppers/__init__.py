"""One stepper per kind of guide, found by rule: see :mod:`pyro_blr.blr.steppers.base`."""

from __future__ import annotations

from typing import Any

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
    "rule_names",
    "stepper_for",
]

STEPPERS: tuple[type[Stepper], ...] = (
    GaussianStepper,
    ExpFamilyStepper,
    GaussianMixtureStepper,
    ExpFamilyMixtureStepper,
)
"""Every stepper; :func:`stepper_for` picks the one that runs a rule on a guide."""


def rule_names() -> list[str]:
    """Every rule some stepper runs."""
    return sorted({rule for stepper in STEPPERS for rule in stepper.rules})


def stepper_for(rule: str, guide: Any) -> type[Stepper]:
    """The stepper that runs ``rule`` on ``guide``.

    Raises:
        ValueError: an unknown rule.
        TypeError: the rule cannot drive this guide (the message lists what can).
    """
    if rule not in rule_names():
        raise ValueError(f"unknown rule {rule!r}; choose one of {rule_names()}")
    for stepper in STEPPERS:
        if rule in stepper.rules and stepper.accepts(guide, rule):
            return stepper
    able = sorted({r for s in STEPPERS for r in s.rules if s.accepts(guide, r)})
    fix = (
        f"this guide takes rule {' or '.join(map(repr, able))}"
        if able
        else (
            "BLR drives pyro.infer.autoguide.AutoNormal, AutoDiagonalNormal, "
            "AutoMultivariateNormal, pb.AutoExpFamily and pb.AutoMixture"
        )
    )
    raise TypeError(f"BLR cannot drive {type(guide).__name__} with rule {rule!r}: {fix}")
