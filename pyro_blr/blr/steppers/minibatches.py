"""Each step's minibatch of a model's subsampled plates, as every particle's run must share it.

A rule that evaluates particles in separate model runs (one by one, or under
``torch.func.vmap``) must give them all the same minibatch, so the stepper draws it once per step
and conditions each run's subsample sites on it. :class:`Minibatches` draws it without running
the model; :func:`minibatch` finds it by one run of the model (the way for plates
:class:`Minibatches` cannot be sure of).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_blr.core import (
    DataStamp,
    draw_subsample,
    is_subsampled,
    plate_draws,
    rng_kept,
    traced_subsamples,
)

__all__ = ["Minibatches", "minibatch", "subsample_indices"]


def minibatch(
    model: Callable, args: tuple, kwargs: dict, latents: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The minibatch indices of every subsampled plate, from one run of the model (so that a
    ``subsample=`` the user passes is honoured, and random ones are drawn as Pyro draws them).
    With ``latents`` (site name -> value) the run is conditioned on them, so that the only
    random numbers it draws are the minibatch's."""
    if latents:
        model = poutine.condition(model, data=latents)
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    return subsample_indices(trace)


def subsample_indices(trace) -> dict[str, Tensor]:
    """Plate name -> minibatch indices, for the subsampled plates of a trace, vectorized or
    sequential (``for i in pyro.plate(..., subsample_size=B)``: conditioning its subsample site
    on the indices fixes which sites a run has, each scaled by :math:`N/B` as Pyro scales it)."""
    return {
        name: site["value"]  # drawn, or given by subsample=
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and site_is_subsample(site) and is_subsampled(site)
    }


class Minibatches:
    """Each step's minibatch of a model's subsampled plates, drawn without running the model.

    The first call on a batch of data (and on other data objects, or data changed in place:
    :class:`pyro_blr.core.DataStamp`) runs the model once, conditioned on the latents and
    without touching the random stream, to learn its subsampled plates
    (:func:`pyro_blr.core.plate_draws`); every call then draws each plate's indices exactly as
    Pyro's plate draws them (:func:`pyro_blr.core.draw_subsample`: the same generator, calls and
    order), so a seeded run of a model that draws no other random numbers before its plates
    draws what the model would (one that does gets other, equally distributed minibatches), and
    no model run is spent on finding the minibatch. Data the model reads from outside its
    arguments (a module-level tensor) are not seen by the stamp: replacing them by data of
    another size needs a new driver. Indices the model gives itself
    (``pyro.plate(..., subsample=idx)``) are those of that run while the data are the same,
    once a second run on another random stream
    gave the same ones (they are computed from the arguments, not drawn). A model this cannot
    be sure of (a sequential plate, a plate nested in another, indices the model draws itself)
    is run at every call, as Pyro would run it: correct first.
    """

    def __init__(self) -> None:
        self._stamp: DataStamp | None = None
        self._draws = None  # None: run the model at every call
        self._given: dict[str, Tensor] = {}
        self.subsampled = False

    def plan(self, model: Callable, args: tuple, kwargs: dict, latents: dict, like: Tensor):
        """Learn the plates of ``model`` on this data (random stream untouched); returns
        whether any plate is subsampled."""
        with rng_kept(like):
            trace, given = traced_subsamples(model, args, kwargs, latents)
        indices = subsample_indices(trace)
        draws = plate_draws(trace, given)
        if draws is not None and any(name in given for name in indices):
            with rng_kept(like):  # another random stream: indices the model draws itself differ
                torch.rand((), device=like.device)
                torch.rand(())
                again = subsample_indices(traced_subsamples(model, args, kwargs, latents)[0])
            if any(not torch.equal(indices[n], again.get(n, indices[n][:0])) for n in given
                   if n in indices):  # fmt: skip
                draws = None
        self._stamp = DataStamp.of(args, kwargs)
        self._draws = draws
        self._given = {name: value for name, value in indices.items() if name in given}
        self.subsampled = bool(indices)
        return self.subsampled

    def draw(
        self, model: Callable, args: tuple, kwargs: dict, latents: dict, like: Tensor
    ) -> dict[str, Tensor]:
        """Plate name -> this step's minibatch indices (see the class docstring)."""
        if self._stamp is None or not self._stamp.matches(args, kwargs):
            self.plan(model, args, kwargs, latents, like)
        if self._draws is None:
            return minibatch(model, args, kwargs, latents)
        return {**self._given, **draw_subsample(self._draws)}
