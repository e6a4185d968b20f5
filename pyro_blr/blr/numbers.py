"""Checks of the numbers a rule or the driver takes: each bad value raises ``ValueError``
naming the option, the range it must lie in and what it got."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import torch

__all__ = ["check_lr", "check_number", "check_positive", "check_positive_int"]


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


def check_positive(
    name: str, value: Any, high: float = math.inf, closed_high: bool = False
) -> float:
    value = check_number(name, value, 0.0, high, closed_high)
    if value == 0:
        raise ValueError(f"{name} must be positive, got 0")
    return value
