r"""Whether a Pyro plate is subsampled, and its full size: asked once, here, for every module.

A ``pyro.plate(name, N, subsample_size=B)`` leaves two marks on a trace: a *subsample site*
named after the plate (its distribution knows :math:`N`, its value is the :math:`B` indices),
and a ``CondIndepStackFrame`` on every site inside it (``size=B``, ``full_size=N``). Both marks
are left whether the plate is used as a context (vectorized, ``frame.dim`` set) or as an
iterator, ``for i in pyro.plate(...)`` (sequential, ``frame.dim is None``, one site per index):
a check that looks only at vectorized frames misses the second form, whose sites are scaled by
:math:`N/B` all the same. The functions here look at both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = [
    "PlateDraw",
    "SubsampledPlate",
    "check_full_data",
    "check_model_full_data",
    "draw_subsample",
    "full_size",
    "is_subsampled",
    "plate_draws",
    "subsampled_plates",
    "traced_subsamples",
]


class SubsampledPlate(NamedTuple):
    """A plate of a trace that holds a minibatch of its data.

    Attributes:
        name: the plate's name.
        size: :math:`B`, the elements in this run.
        full_size: :math:`N`, the elements of the data.
        sequential: the plate is used as an iterator (``for i in pyro.plate(...)``).
    """

    name: str
    size: int
    full_size: int
    sequential: bool


def _is_frame(obj: Any) -> bool:
    return hasattr(obj, "full_size") and hasattr(obj, "size") and hasattr(obj, "name")


def full_size(frame_or_site: Any) -> int:
    """The number of elements of a plate's data, :math:`N`, from one of its frames or its
    subsample site (both forms of plate).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     for i in pyro.plate("data", 10, subsample_size=5):
        ...         pyro.sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=0.0)
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> site = next(s for s in trace.nodes.values() if s["name"].startswith("y_"))
        >>> (frame,) = site["cond_indep_stack"]
        >>> full_size(frame), full_size(trace.nodes["data"])
        (10, 10)
    """
    if _is_frame(frame_or_site):
        return int(frame_or_site.full_size if frame_or_site.full_size is not None
                   else frame_or_site.size)  # fmt: skip
    if isinstance(frame_or_site, dict) and site_is_subsample(frame_or_site):
        return int(frame_or_site["fn"].size)
    raise TypeError(
        "full_size takes a plate's CondIndepStackFrame or its subsample site, got "
        f"{type(frame_or_site).__name__}"
    )


def is_subsampled(frame_or_site: Any) -> bool:
    """Whether a plate holds fewer elements than its data: from one of its frames, its subsample
    site, or any sample site (then: whether any plate the site lies in is subsampled).

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     for i in pyro.plate("data", 10, subsample_size=5):
        ...         pyro.sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=0.0)
        >>> trace = pyro.poutine.trace(model).get_trace()
        >>> is_subsampled(trace.nodes["data"]), all(
        ...     is_subsampled(s) for n, s in trace.nodes.items() if n.startswith("y_"))
        (True, True)
    """
    if _is_frame(frame_or_site):
        return frame_or_site.full_size is not None and frame_or_site.full_size != frame_or_site.size
    if isinstance(frame_or_site, dict) and frame_or_site.get("type") == "sample":
        if site_is_subsample(frame_or_site):
            return len(frame_or_site["value"]) != frame_or_site["fn"].size
        return any(is_subsampled(f) for f in frame_or_site["cond_indep_stack"])
    raise TypeError(
        "is_subsampled takes a CondIndepStackFrame or a sample site of a trace, got "
        f"{type(frame_or_site).__name__}"
    )


def subsampled_plates(trace: Trace) -> dict[str, SubsampledPlate]:
    """Every subsampled plate of a trace, vectorized or sequential, by name.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     for i in pyro.plate("data", 10, subsample_size=5):
        ...         pyro.sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=0.0)
        >>> subsampled_plates(pyro.poutine.trace(model).get_trace())
        {'data': SubsampledPlate(name='data', size=5, full_size=10, sequential=True)}
    """
    found: dict[str, SubsampledPlate] = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample":
            continue
        if site_is_subsample(site):
            if is_subsampled(site):
                size, full = len(site["value"]), full_size(site)
                found.setdefault(name, SubsampledPlate(name, size, full, False))
            continue
        for frame in site["cond_indep_stack"]:
            if is_subsampled(frame):
                before = found.get(frame.name)
                sequential = frame.dim is None or (before is not None and before.sequential)
                found[frame.name] = SubsampledPlate(
                    frame.name, frame.size, full_size(frame), sequential
                )
    return found


def check_full_data(trace: Trace, entry: str, why: str = "", sequential_only: bool = False) -> None:
    """Raise when a trace has a subsampled plate: ``entry`` needs every datum.

    Args:
        trace: a trace of the model (a guide's trace replayed into it, or the model alone).
        entry: the entry point, for the message (``"log_evidence"``).
        why: what a minibatch would do to its answer, for the message.
        sequential_only: refuse only sequential plates (an entry point that covers the data of
            a vectorized plate minibatch by minibatch, but cannot name a sequential plate's
            sites for the indices it did not draw).

    Raises:
        ValueError: naming the plate, its sizes, whether it is sequential, and the fix.

    Example:
        >>> import pyro, pyro.distributions as dist
        >>> def model():
        ...     for i in pyro.plate("data", 10, subsample_size=5):
        ...         pyro.sample(f"y_{i}", dist.Normal(0.0, 1.0), obs=0.0)
        >>> check_full_data(pyro.poutine.trace(model).get_trace(), "log_evidence")
        Traceback (most recent call last):
        ...
        ValueError: log_evidence needs the full data, but plate ['data'] is subsampled (a sequential plate, for i in pyro.plate(...), holding 5 of its 10 elements): call the model without subsample_size for diagnostics
    """  # noqa: E501
    plates = subsampled_plates(trace)
    if sequential_only:
        plates = {name: plate for name, plate in plates.items() if plate.sequential}
    if not plates:
        return
    plate = next(iter(plates.values()))
    form = "a sequential plate, for i in pyro.plate(...), " if plate.sequential else ""
    raise ValueError(
        f"{entry} needs the full data, but plate {sorted(plates)} is subsampled ({form}holding "
        f"{plate.size} of its {plate.full_size} elements){why}: call the model without "
        "subsample_size for diagnostics"
    )


def check_model_full_data(
    model: Callable, guide: Callable | None, args: tuple, kwargs: dict, entry: str, why: str = ""
) -> None:
    """:func:`check_full_data` on one run of ``model`` (replayed on one run of ``guide`` when
    given), with Pyro's handlers blocked from any enclosing context and the RNG left where it
    was (the entry point's own draws do not change).

    Raises:
        ValueError: a subsampled plate, vectorized or sequential, naming it and the fix.
    """
    from pyro_blr.core.traces import rng_kept  # traces builds on this module: imported late

    like = next((a for a in args if isinstance(a, torch.Tensor)), torch.zeros(()))
    with rng_kept(like), poutine.block():
        if guide is None:
            trace = poutine.trace(model).get_trace(*args, **kwargs)
        else:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            replayed = poutine.replay(model, trace=guide_trace)
            trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    check_full_data(trace, entry, why)


class PlateDraw(NamedTuple):
    """How Pyro draws a vectorized plate's minibatch: ``torch.randperm(full_size,
    device=device)[:size]`` (``pyro.poutine.subsample_messenger._Subsample.sample``).

    Attributes:
        name: the plate's name (its subsample site's).
        full_size: :math:`N`.
        size: :math:`B < N`.
        device: the device the plate draws on.
    """

    name: str
    full_size: int
    size: int
    device: torch.device


class _GivenSubsamples(Messenger):
    """Records the plates whose indices the model gives (``pyro.plate(..., subsample=idx)``):
    innermost, it sees a subsample site's value before any replay or condition sets it."""

    def __init__(self) -> None:
        super().__init__()
        self.given: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if site_is_subsample(msg) and msg["value"] is not None:
            self.given.add(msg["name"])


def traced_subsamples(
    model: Callable, args: tuple, kwargs: dict, latents: dict[str, Tensor] | None = None
) -> tuple[Trace, set[str]]:
    """One run of ``model`` (conditioned on ``latents``, quiet, without gradients) and the names
    of the plates whose indices the model gave itself (``subsample=``) rather than Pyro drew.
    The run draws what the model draws (Pyro's minibatches included)."""
    spy = _GivenSubsamples()
    fn = spy(model)
    if latents:
        fn = poutine.condition(fn, data=latents)
    with poutine.block(), torch.no_grad():
        trace = poutine.trace(fn).get_trace(*args, **kwargs)
    return trace, spy.given


def plate_draws(trace: Trace, given: set[str]) -> tuple[PlateDraw, ...] | None:
    """The plates of ``trace`` whose minibatch Pyro draws, in the order the model drew them,
    or ``None`` where this cannot be sure to draw as the model would: a sequential plate
    (``for i in pyro.plate(...)``), a plate nested in another plate, or one drawn with the
    deprecated ``use_cuda``. Plates whose indices the model gives (``given``, see
    :func:`traced_subsamples`) are left out: the model computes them from its arguments.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> def model(y):
        ...     with pyro.plate("data", 10, subsample_size=4) as idx:
        ...         pyro.sample("y", dist.Normal(0.0, 1.0), obs=y[idx])
        >>> trace, given = traced_subsamples(model, (torch.zeros(10),), {})
        >>> plate_draws(trace, given)
        (PlateDraw(name='data', full_size=10, size=4, device=device(type='cpu')),)
    """
    plates = subsampled_plates(trace)
    if any(plate.sequential for plate in plates.values()):
        return None
    draws = []
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site_is_subsample(site) or name in given:
            continue
        fn = site["fn"]
        if site["cond_indep_stack"] or getattr(fn, "use_cuda", None):
            return None
        if not is_subsampled(site):
            continue
        if fn.subsample_size != len(site["value"]):
            return None
        draws.append(PlateDraw(name, int(fn.size), int(fn.subsample_size), torch.device(fn.device)))
    return tuple(draws)


def draw_subsample(draws: tuple[PlateDraw, ...]) -> dict[str, Tensor]:
    """Plate name -> a minibatch drawn exactly as Pyro's plate draws it (same generator, same
    calls, same order), so a seeded run draws what the model itself would have."""
    return {d.name: torch.randperm(d.full_size, device=d.device)[: d.size].clone() for d in draws}
