"""The data a model was set up with, to name the argument at fault when later data do not fit.

A guide is built for one model run: its latent sites keep the shapes, dtype and device they had
then, and so does every state a fitting rule keeps. A step taken with data of another dtype or
device, or of a shape the latents cannot follow (``X`` with another number of columns), would meet
torch's raw message deep inside the model, or silently fit in the old dtype. :class:`DataSignature`
records the arrays among a model's arguments at set-up -- their names as the model spells them,
dtype, device and shape -- so that such a step is refused naming the argument and the fix.

:class:`DataSnapshot` finds a model that changes its own input in place (``x /= 255``): the fitting
machinery runs the model many times, and each run would see other data.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch

from pyro_blr.core.model_errors import describe_error

__all__ = [
    "DataArgument",
    "DataSignature",
    "DataSnapshot",
    "data_arrays",
    "data_checked",
    "data_signature",
]

MAX_ARRAYS = 64
"""How many arrays among a model's arguments are followed (nested lists, tuples and dicts
included), so that the check stays cheap for a model given a long list of tensors."""


def data_arrays(model: Callable, args: tuple, kwargs: dict) -> Iterator[tuple[str, Any]]:
    """``(name, array)`` for each tensor or NumPy array among the model's arguments (inside
    lists, tuples and dicts too, and those a ``functools.partial`` binds), named as the model's
    signature names them.

    Example:
        >>> import torch
        >>> def model(X, data=None):
        ...     pass
        >>> for name, _ in data_arrays(model, (torch.zeros(2),), {"data": {"y": torch.ones(2)}}):
        ...     print(name)
        argument 'X'
        argument 'data["y"]'
    """
    found = 0
    stack = list(reversed(_argument_names(model, args, kwargs)))
    while stack and found < MAX_ARRAYS:
        name, value = stack.pop()
        if torch.is_tensor(value) or isinstance(value, np.ndarray):
            found += 1
            yield f"argument '{name}'", value
        elif isinstance(value, (list, tuple)):
            stack.extend(reversed([(_item(name, i), v) for i, v in enumerate(value)]))
        elif isinstance(value, dict):
            stack.extend(reversed([(_item(name, k), v) for k, v in value.items()]))


def _item(name: str, key: Any) -> str:
    key = f'"{key}"' if isinstance(key, str) else repr(key)
    return f"{name}[{key}]"


def _argument_names(model: Callable, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
    while isinstance(model, partial):  # data bound in by functools.partial are data too
        model, args, kwargs = model.func, model.args + tuple(args), {**model.keywords, **kwargs}
    try:
        target = model if inspect.isfunction(model) else getattr(model, "forward", model)
        bound = inspect.signature(target).bind_partial(*args, **kwargs)
    except (TypeError, ValueError):  # no signature, or arguments it does not take
        return [(f"args[{i}]", a) for i, a in enumerate(args)] + list(kwargs.items())
    return list(bound.arguments.items())


@dataclass(frozen=True)
class DataArgument:
    """One array among a model's arguments, as it was at set-up."""

    name: str
    numpy: bool
    dtype: str
    floating: bool
    device: str
    shape: tuple[int, ...]

    @classmethod
    def of(cls, name: str, value: Any) -> DataArgument:
        if isinstance(value, np.ndarray):
            floating = np.issubdtype(value.dtype, np.floating)
            return cls(name, True, str(value.dtype), floating, "cpu", tuple(value.shape))
        dtype = str(value.dtype).removeprefix("torch.")
        device = str(value.device)
        return cls(name, False, dtype, value.is_floating_point(), device, tuple(value.shape))


@dataclass(frozen=True)
class DataSignature:
    """The arrays among a model's arguments at set-up (see :func:`data_signature`)."""

    arguments: tuple[DataArgument, ...]

    def _now(self, model: Callable, args: tuple, kwargs: dict) -> dict[str, DataArgument]:
        return {name: DataArgument.of(name, v) for name, v in data_arrays(model, args, kwargs)}

    def check(self, model: Callable, args: tuple, kwargs: dict) -> None:
        """Refuse floating-point data whose dtype or device differs from the set-up's: the guide's
        parameters and the rule's state keep theirs.

        Raises:
            ValueError: naming the argument, both dtypes (or devices) and the fix.
        """
        now = self._now(model, args, kwargs)
        for then in self.arguments:
            new = now.get(then.name)
            if new is None or not (then.floating or new.floating):
                continue
            for what in ("dtype", "device"):
                old, current = getattr(then, what), getattr(new, what)
                if old != current:
                    raise ValueError(
                        f"{then.name} is {current}, but it was {old} when this fit was set up: "
                        f"the guide's parameters and the rule's state stay {old}. Pass the data "
                        f"as {old} again, or fit on {current} with a new guide and a new driver "
                        f"(pyro.clear_param_store() first; build the model's priors from the "
                        f"data's {what}, e.g. dist.Normal(X.new_zeros(()), 1.0))"
                    )

    def explain(self, error: BaseException, model: Callable, args: tuple, kwargs: dict) -> None:
        """After the model raised ``error`` on later data: if an array's shape changed since
        set-up beyond its first dimension (or the array is new), raise naming it; otherwise
        return, leaving ``error`` to the caller.

        Raises:
            ValueError: naming the arguments that changed, from ``error``.
        """
        then = {a.name: a for a in self.arguments}
        changed = []
        for name, new in self._now(model, args, kwargs).items():
            old = then.get(name)
            if old is None:
                changed.append(f"{name} (not given at set-up)")
            elif old.shape[1:] != new.shape[1:] or len(old.shape) != len(new.shape):
                changed.append(f"{name} of shape {new.shape}, {old.shape} at set-up")
        if changed:
            raise ValueError(
                f"the model fails on these data ({describe_error(error)}), and {', '.join(changed)}"
                ": the guide's latent sites keep the shapes they had when the fit was set up. "
                "Step with data shaped like the set-up's (only the number of rows may change), or "
                "fit the new data with a new guide and a new driver (pyro.clear_param_store() "
                "first)"
            ) from error


def data_signature(model: Callable, args: tuple, kwargs: dict) -> DataSignature:
    """The arrays among ``model``'s arguments: name, dtype, device and shape.

    Example:
        >>> import torch
        >>> def model(X):
        ...     pass
        >>> signature = data_signature(model, (torch.zeros(3, 2),), {})
        >>> signature.check(model, (torch.zeros(5, 2, dtype=torch.float64),), {})
        Traceback (most recent call last):
        ...
        ValueError: argument 'X' is float64, but it was float32 when this fit was set up: the guide's parameters and the rule's state stay float32. Pass the data as float32 again, or fit on float64 with a new guide and a new driver (pyro.clear_param_store() first; build the model's priors from the data's dtype, e.g. dist.Normal(X.new_zeros(()), 1.0))
    """  # noqa: E501
    return DataSignature(tuple(DataArgument.of(n, v) for n, v in data_arrays(model, args, kwargs)))


@contextmanager
def data_checked(
    signature: DataSignature | None, model: Callable, args: tuple, kwargs: dict
) -> Iterator[None]:
    """A context for running ``model`` on ``args`` and ``kwargs`` that first refuses data of
    another dtype or device than ``signature``'s (:meth:`DataSignature.check`) and, if the model
    fails inside, names an argument whose shape changed (:meth:`DataSignature.explain`).
    ``None``: nothing is checked."""
    if signature is None:
        yield
        return
    signature.check(model, args, kwargs)
    try:
        yield
    except Exception as error:
        signature.explain(error, model, args, kwargs)
        raise


class DataSnapshot:
    """Copies of the arrays among a model's arguments, to find a model that changes them.

    Args:
        model: the model (for its argument names).
        args: its positional arguments.
        kwargs: its keyword arguments.
    """

    def __init__(self, model: Callable, args: tuple, kwargs: dict):
        self.model, self.args, self.kwargs = model, args, kwargs
        self.copies = [(n, v, _copy(v)) for n, v in data_arrays(model, args, kwargs)]

    def check(self, cause: BaseException | None = None) -> None:
        """Raise if a model run changed an argument in place (restoring its values first).

        Raises:
            ValueError: naming the argument and the fix (from ``cause``, the error the changed
                data led to, if any).
        """
        for name, value, copy in self.copies:
            if _same(value, copy):
                continue
            if value.shape == copy.shape:
                _restore(value, copy)
            raise ValueError(
                f"the model changes its {name} in place (e.g. x /= 255 or x.sub_(...) on the "
                "argument): a fit runs the model many times, and each run would see other data "
                "(its values were restored). Compute on a copy inside the model (x = x / 255), or "
                "transform the data once before fitting"
            ) from cause


def _copy(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.copy()
    return value.detach().clone()


def _same(value: Any, copy: Any) -> bool:
    if isinstance(value, np.ndarray):
        return value.shape == copy.shape and bool(np.array_equal(value, copy, equal_nan=True))
    if value.shape != copy.shape or value.dtype != copy.dtype:
        return False
    value = value.detach()
    if not value.is_floating_point() and not value.is_complex():
        return torch.equal(value, copy)
    return bool(((value == copy) | (value.isnan() & copy.isnan())).all())


def _restore(value: Any, copy: Any) -> None:
    if isinstance(value, np.ndarray):
        value[...] = copy
    else:
        with torch.no_grad():
            value.copy_(copy)
