r"""Two mistakes in calling a diagnostic, caught before anything is drawn: the model and the guide
passed in each other's place, and the data of an observed site left out.

Both would otherwise surface deep inside the check that every latent site of the model is sampled
by the guide, with a message about control flow or (for a discrete observation) enumeration:

* **Swapped.** ``to_inference_data(guide, model, ...)``: the "model" is an autoguide, or the
  "guide" observes data (a guide samples latent sites only; ``obs=`` belongs to the model).
* **Data left out.** ``to_inference_data(model, guide, X)`` for ``model(X, y=None)``: with
  ``obs=None`` Pyro samples the site instead of observing it, so the data become a latent site.
  Caught when the model's argument named like the site is ``None`` (``model(X, y=None)`` with
  ``obs=y``), or when a latent site the guide does not sample meets an argument that is ``None``.

Each error names the site or argument and the call that works.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoGuide

from pyro_blr.core import rng_kept, sample_sites

__all__ = ["check_call"]


def _observed(trace) -> set[str]:
    """Observed sample sites of a trace (``pyro.deterministic`` sites left out)."""
    return {n for n, s in sample_sites(trace, deterministic=False) if s["is_observed"]}


def _latent(trace) -> set[str]:
    """Latent sample sites of a trace, without those left to enumeration (summed out, not
    sampled, by the entry points that support it)."""
    return {
        n
        for n, s in sample_sites(trace, deterministic=False)
        if not s["is_observed"] and not s["infer"].get("enumerate")
    }


def _none_arguments(model: Callable, args: tuple, kwargs: dict) -> set[str]:
    """Names of the model's arguments that are ``None`` in this call (defaults included)."""
    target = model.forward if isinstance(model, torch.nn.Module) else model
    try:
        bound = inspect.signature(target).bind(*args, **kwargs)
    except (TypeError, ValueError):  # no signature, or a call the model itself will refuse
        return set()
    bound.apply_defaults()
    return {name for name, value in bound.arguments.items() if value is None}


def _swapped(model: Callable, guide: Callable, entry: str) -> str:
    return (
        f"{entry}: the first argument is a guide ({type(model).__name__}) and the second "
        f"({getattr(guide, '__name__', type(guide).__name__)}) looks like the model: the order "
        f"is {entry}(model, guide, *args, **kwargs), as in pyro.infer.SVI(model, guide, ...)"
    )


def check_call(model: Callable, guide: Callable, args: tuple, kwargs: dict, entry: str) -> None:
    """Refuse a model and guide passed in each other's place, and a model called without the
    data of one of its observed sites.

    Runs the guide and the model once each, leaving the random number generators where they
    were (the check does not change the draws of the run it precedes).

    Args:
        model: what was passed as the model.
        guide: what was passed as the guide.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        entry: the entry point, for the message (``"to_inference_data"``).

    Raises:
        ValueError: naming the argument order, or the site whose data are missing and the
            argument that should carry them.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> def model(x, y=None):
        ...     w = pyro.sample("w", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(x)):
        ...         pyro.sample("y", dist.Normal(w * x, 1.0), obs=y)
        >>> x = torch.ones(3)
        >>> check_call(model, AutoNormal(model), (x,), {}, "demo")
        Traceback (most recent call last):
        ...
        ValueError: demo: site 'y' is sampled, not observed: the model's argument 'y' is None, so Pyro samples the site (obs=None) and the data become a latent variable; pass the data, as when fitting: demo(model, guide, *args, y=...) (or positionally)
    """  # noqa: E501
    if isinstance(model, AutoGuide) and not isinstance(guide, AutoGuide):
        raise ValueError(_swapped(model, guide, entry))
    like = next((a for a in args if torch.is_tensor(a)), torch.zeros(()))
    # only the structure is read here: a non-finite input is the next check's to name
    with rng_kept(like), poutine.block(), torch.no_grad(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        observing = sorted(_observed(guide_trace))
        if observing:
            raise ValueError(
                f"{_swapped(model, guide, entry)} (the guide observes site '{observing[0]}'; a "
                "guide samples latent sites only, and obs= belongs to the model)"
            )
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    latent = _latent(model_trace)
    none_args = _none_arguments(model, args, kwargs)
    sampled = _latent(guide_trace)
    # A global site named like a None argument that the guide samples may be a parameter the
    # model lets its caller fix (obs=theta with theta=None to infer it): only data are refused,
    # a site in a plate or one the guide does not sample.
    named = sorted(
        n
        for n in latent & none_args
        if n not in sampled or model_trace.nodes[n]["cond_indep_stack"]
    )
    if named:
        raise ValueError(
            f"{entry}: site '{named[0]}' is sampled, not observed: the model's argument "
            f"'{named[0]}' is None, so Pyro samples the site (obs=None) and the data become a "
            f"latent variable; pass the data, as when fitting: {entry}(model, guide, *args, "
            f"{named[0]}=...) (or positionally)"
        )
    unsampled = sorted(latent - sampled)
    if unsampled and none_args:
        raise ValueError(
            f"{entry}: latent site '{unsampled[0]}' of the model is not sampled by the guide, "
            f"and the model's argument(s) {sorted(none_args)} are None: if one of them holds "
            f"the data of '{unsampled[0]}', the model was called without it (obs=None makes "
            "Pyro sample the site); pass the data, as when fitting"
        )
