"""A guide asked for its posterior before it has seen the model: a message that names what to call.

Pyro's autoguides build their parameters at their first call, from a trace of the model run on
that call's arguments. This package's guides build them on demand where a summary (``median()``)
is asked for first, with the arguments it is given. Called with none, on a model that needs some,
the model's own error (``model() missing 1 required positional argument: 'x'``) says nothing
about the guide. :func:`setup_for` turns it into one that says what to call first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["BLR_OR_SVI", "setup_for"]

BLR_OR_SVI = (
    "pb.BLR(model, guide).fit(*args, **kwargs), or SVI(model, guide, ...).step(*args, **kwargs)"
)
"""How a guide the BLR drives is fitted, as :func:`setup_for`'s message says it."""


def setup_for(
    guide: Any,
    method: str,
    setup: Callable[..., None],
    args: tuple,
    kwargs: dict,
    fit: str = BLR_OR_SVI,
) -> None:
    """Build ``guide``'s parameters for ``method`` if it has not yet seen the model.

    Nothing happens where ``guide.prototype_trace`` exists. Otherwise ``setup`` (the guide's own
    set-up, bound to it) runs the model on ``args`` and ``kwargs``. Where that fails with no
    arguments given, the error says to fit the guide first or to pass the model's arguments;
    with arguments given, the model's own error is left as it is (it is about those arguments).
    A model that fails to run leaves the guide unbuilt (Pyro records the prototype trace only
    after the run), so its next call builds it as if nothing had happened.

    Args:
        guide: the guide (an ``AutoGuide``): its ``prototype_trace`` says whether it is built.
        method: the method asked for, for the message (``"median"``).
        setup: the guide's set-up, called as ``setup(*args, **kwargs)``.
        args: the positional arguments ``method`` was given (the model's).
        kwargs: the keyword arguments ``method`` was given (the model's).
        fit: how this guide is fitted, for the message (a guide the BLR cannot drive names
            ``SVI`` only).

    Raises:
        RuntimeError: the guide is unbuilt, ``method`` was given no arguments and the model
            cannot run without them (the model's error is chained as the cause).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.guides import AutoExpFamily
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     pyro.sample("y", dist.Normal(mu, 1.0).expand([len(y)]).to_event(1), obs=y)
        >>> guide = AutoExpFamily(model)
        >>> try:
        ...     guide.median()
        ... except RuntimeError as error:
        ...     print(str(error).split(":")[0])
        AutoExpFamily.median() before the guide has seen the model
        >>> sorted(guide.median(torch.zeros(3)))  # with the model's arguments it is built
        ['mu']
    """
    if guide.prototype_trace is not None:
        return
    if args or kwargs:
        setup(*args, **kwargs)
        return
    try:
        setup()
    except Exception as error:
        name = type(guide).__name__
        raise RuntimeError(
            f"{name}.{method}() before the guide has seen the model: it builds its parameters "
            f"from a run of the model, which failed without arguments ({type(error).__name__}: "
            f"{error}). Fit the guide first ({fit}), or pass the model's arguments: "
            f"guide.{method}(*args, **kwargs)"
        ) from error
