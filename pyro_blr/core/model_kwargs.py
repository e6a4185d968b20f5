"""The model's keyword arguments at an entry point that has options of its own.

An entry point such as ``BLR.fit`` or ``pb.log_evidence`` takes the model's arguments and its own
options in one call. A model argument that shares an option's name would be taken for the option
and never reach the model. :func:`model_keywords` makes that impossible: where the model names a
parameter like one of the options, the model's keyword arguments must come in ``model_kwargs=``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = ["model_keywords", "model_parameter_names"]


def model_parameter_names(model: Callable) -> frozenset[str]:
    """The names a model's arguments can be passed by keyword (``forward``'s for a module).

    Example:
        >>> sorted(model_parameter_names(lambda x, y=None, *, window=7: None))
        ['window', 'x', 'y']
    """
    target = getattr(model, "forward", model) if not inspect.isfunction(model) else model
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # a builtin or a callable without a signature
        return frozenset()
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in parameters if p.kind in keyword)


def model_keywords(
    model: Callable,
    entry: str,
    options: Iterable[str],
    kwargs: Mapping[str, Any],
    model_kwargs: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The keyword arguments to run ``model`` with, never one of ``entry``'s options.

    With ``model_kwargs`` given, the model gets exactly those and no other keyword may be left
    over. Without it, the keywords ``entry`` did not take as options go to the model, unless the
    model has a parameter named like one of the options: that call is refused, since the value
    given under that name (or its default) was taken for the option and the model would silently
    run with its own default.

    Args:
        model: the Pyro model.
        entry: the entry point's name, for the error message (``"BLR.fit"``).
        options: the entry point's option names.
        kwargs: the keywords left after the options were taken.
        model_kwargs: the model's keyword arguments given explicitly, or ``None``.

    Raises:
        TypeError: keywords given both ways, ``model_kwargs`` not a mapping, or a model
            parameter named like an option without ``model_kwargs``.

    Example:
        >>> def model(y, window=3):
        ...     pass
        >>> model_keywords(model, "BLR.fit", ["num_steps", "window"], {}, {"window": 7})
        {'window': 7}
        >>> model_keywords(model, "BLR.fit", ["num_steps", "window"], {}, None)
        Traceback (most recent call last):
        ...
        TypeError: BLR.fit: the model has an argument named 'window', which is also an option of BLR.fit; pass the model's keyword arguments as model_kwargs={'window': ...} (model_kwargs={} for none), so that neither is taken for the other
    """  # noqa: E501
    if model_kwargs is not None:
        if not isinstance(model_kwargs, Mapping):
            raise TypeError(
                f"{entry}: model_kwargs must be a dict of the model's keyword arguments, "
                f"got {type(model_kwargs).__name__}"
            )
        if kwargs:
            raise TypeError(
                f"{entry}: the model's keyword arguments go either in model_kwargs= or as "
                f"keywords, not both; got model_kwargs and {sorted(kwargs)}"
            )
        return dict(model_kwargs)
    clash = sorted(set(options) & model_parameter_names(model))
    if clash:
        raise TypeError(
            f"{entry}: the model has an argument named {clash[0]!r}, which is also an option of "
            f"{entry}; pass the model's keyword arguments as model_kwargs={{{clash[0]!r}: ...}} "
            "(model_kwargs={} for none), so that neither is taken for the other"
        )
    return dict(kwargs)
