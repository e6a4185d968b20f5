r"""Log importance weights :math:`\log w_k = \log p(\mathcal D, z_k) - \log q(z_k)` from traces.

The guide draws :math:`K` particles at once inside a plate left of the model's plates (Pyro's
``vectorize_particles``), the model is replayed on them, and every site's log density (scaled by
:math:`N/B` in subsampled plates, masked as Pyro masks it) is summed per particle.

A model's sites marked ``infer={"enumerate": "parallel"}`` (left out of the guide, as for Pyro's
``TraceEnum_ELBO``) are summed out: :math:`\log p(\mathcal D, z_k)` is then the marginal
:func:`pyro_blr.core.enumeration.enumerated_log_joint`, one model run per particle.

When every site of the model and the guide lies inside one plate, the joint factorizes over that
plate's elements and so does the weight, :math:`\log w_{k} = \sum_i \log w_{k,i}`: the per-element
weights (unscaled, shape ``(K, B)``) are what an unbiased minibatch Rényi bound needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from pyro_blr.core.enumeration import enumerated_trace, model_enumerated_sites, trace_log_joint
from pyro_blr.core.log_joint import _check_all_latents_given
from pyro_blr.core.plates import full_size, is_subsampled, subsampled_plates
from pyro_blr.core.traces import PARTICLE_PLATE, sample_sites, site_log_probs, sum_per_particle

__all__ = [
    "PROBE_PARTICLES",
    "LogWeights",
    "enumerated_model_traces",
    "log_weights",
    "replay_particles",
    "vectorized_traces",
]

logger = logging.getLogger(__name__)


class LogWeights(NamedTuple):
    """Log importance weights of :math:`K` particles.

    Attributes:
        joint: :math:`\\log w_k`, shape ``(K,)`` (scaled as Pyro scales minibatches).
        local: per-element weights :math:`\\log w_{k,i}`, shape ``(K, B)``, with the minibatch
            scale :math:`N/B` taken out, or ``None`` when the sites do not all share one plate.
        local_scale: the factor (:math:`N/B`) that turns the sum over the ``B`` elements into an
            estimate of the sum over all :math:`N`.
        subsampled: the names of subsampled plates in the model or the guide, vectorized or
            sequential (``for i in pyro.plate(..., subsample_size=B)``).
        outside: latent sites outside every subsampled plate (why ``local`` is ``None``).
        sequential: the subsampled plates among ``subsampled`` that are sequential: their
            sites are not the elements of one batch dimension, so ``local`` is ``None``.
    """

    joint: Tensor
    local: Tensor | None
    local_scale: float
    subsampled: tuple[str, ...]
    outside: tuple[str, ...]
    sequential: tuple[str, ...] = ()


class _Term(NamedTuple):
    log_prob: Tensor  # signed (+ model, - guide), scaled and masked as Pyro does
    frames: dict  # the site's vectorized plates, by name
    name: str
    latent: bool  # a latent site of the model
    plates: frozenset  # every plate the site lies in, vectorized or sequential


def _frames(site) -> dict:
    return {
        f.name: f for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
    }


def _per_element(log_prob: Tensor, num_particles: int, nesting: int, dim: int) -> Tensor:
    """Sum a term over every plate dimension except ``dim``: shape ``(K, B)``."""
    while log_prob.dim() < nesting + 1:
        log_prob = log_prob.unsqueeze(0)
    others = [d for d in range(-nesting, 0) if d != dim]
    if others:
        log_prob = log_prob.sum(others, keepdim=True)
    return log_prob.reshape(log_prob.shape[-nesting - 1], -1).expand(num_particles, -1)


class _StackedFn:
    """The distributions of one site in per-particle runs, seen as one batched distribution
    with the particles first (left of ``pad`` singleton plate dimensions)."""

    def __init__(self, fns: list, shapes: list, pad: int, nesting: int, shared: bool = False):
        self.fns, self.shapes, self.nesting, self.shared = fns, shapes, nesting, shared
        self.event_dim = fns[0].event_dim
        self.has_rsample = fns[0].has_rsample
        self.batch_shape = torch.Size((len(fns), *(1,) * pad, *fns[0].batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """Each run's log density on the model's ``nesting`` plate dimensions, stacked: shape
        ``(K, *plate_dims)``. A run's batch dimensions left of its plates (a model written for a
        particle plate, e.g. ``w.reshape(-1, A, B)`` in Pyro's sparse gamma DEF, keeps a
        leading singleton when run alone) are summed, as one run's log joint sums them."""
        rows = [  # observed data are shared by every particle, latent values are not
            _on_plate_dims(
                torch.as_tensor(fn.log_prob(value if self.shared else value[k].reshape(shape))),
                self.nesting,
            )
            for k, (fn, shape) in enumerate(zip(self.fns, self.shapes, strict=True))
        ]
        shape = torch.broadcast_shapes(*(r.shape for r in rows))
        return torch.stack([r.expand(shape) for r in rows])


def _on_plate_dims(log_prob: Tensor, nesting: int) -> Tensor:
    """``log_prob`` with exactly ``nesting`` dimensions: extra leading ones summed, missing
    ones added as singletons."""
    if log_prob.dim() > nesting:
        log_prob = log_prob.sum(tuple(range(log_prob.dim() - nesting)))
    return log_prob.reshape((*(1,) * (nesting - log_prob.dim()), *log_prob.shape))


def _padded(value: Tensor, event_dim: int, nesting: int) -> tuple[Tensor, int]:
    pad = max(0, nesting - (value.dim() - event_dim))
    return value.reshape((*(1,) * pad, *value.shape)), pad


def _stack(traces: list[Trace], nesting: int, latents: set[str]) -> Trace:
    """Per-particle model traces as one trace whose sample sites hold every particle's value
    (particles first, as under a particle plate) and score each with its own distribution.
    The ``latents`` were conditioned on the guide's draws: they are latent, as under replay."""
    stacked = Trace()
    for name, node in traces[0].nodes.items():
        node = dict(node)
        if name in latents:
            node["is_observed"] = False
        if node["type"] == "sample" and not site_is_subsample(node):
            event_dim = node["fn"].event_dim
            values = [t.nodes[name]["value"] for t in traces]
            fns = [t.nodes[name]["fn"] for t in traces]
            shapes = [v.shape for v in values]
            pad = _padded(values[0], event_dim, nesting)[1]
            if node["is_observed"] and not node["infer"].get("_deterministic"):
                node["fn"] = _StackedFn(fns, shapes, pad, nesting, shared=True)
            else:
                node["value"] = torch.stack([_padded(v, event_dim, nesting)[0] for v in values])
                node["fn"] = _StackedFn(fns, shapes, pad, nesting)
        stacked.add_node(name, **{k: v for k, v in node.items() if k != "name"})
    return stacked


def _particle_values(guide_trace: Trace, k: int, nesting: int) -> dict[str, Tensor]:
    """Particle ``k``'s value of every latent site the guide drew, without the particle
    dimension and the padding to the model's plate nesting (its batch dimensions are those of
    its own plates)."""
    values = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if site["infer"].get("is_auxiliary"):
            continue
        dims = [
            -f.dim for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
        ]
        batch = max(dims, default=0)
        value = site["value"][k]
        values[name] = value.reshape(value.shape[nesting - batch :])
    return values


def _per_particle_traces(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    count: int,
    nesting: int,
    resampled: Collection[str] = (),
    shared: dict | None = None,
) -> list[Trace]:
    """The model run once per particle on the guide's draws, every run on the same minibatch
    (``shared``: plate name -> indices; by default the first run's)."""
    traces, shared = [], dict(shared or {})
    for k in range(count):
        data = {**_particle_values(guide_trace, k, nesting), **shared}
        trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        # a latent the guide does not draw, or one the model skips on this run: refused by name
        _check_all_latents_given(trace, data.keys() - shared.keys(), resampled)
        if k == 0 and not shared:
            shared = _subsample_values(trace)
        traces.append(trace)
    return traces


def _subsample_values(trace: Trace) -> dict[str, Tensor]:
    return {n: s["value"] for n, s in trace.nodes.items() if site_is_subsample(s)}


def _per_particle_rows(term: Tensor, num: int, nesting: int) -> Tensor | None:
    """A plate run's log-density term as ``(num, *plate_dims)`` (exactly ``nesting`` plate
    dimensions), or ``None`` when it has a batch dimension left of the particle dimension or a
    particle dimension of the wrong size (the model broadcast the particles somewhere else)."""
    if term.dim() > nesting + 1 or (term.dim() == nesting + 1 and term.shape[0] not in (1, num)):
        return None
    term = term if term.dim() == nesting + 1 else _on_plate_dims(term, nesting)[None]
    return term.expand(num, *term.shape[1:])


def _plate_differs(plate: Trace, loop: Trace, num: int, count: int, nesting: int) -> str | None:
    """Why the plate run ``plate`` of ``num`` particles is not the per-particle runs ``loop`` of
    its first ``count`` (stacked, see :func:`_stack`), or ``None`` when it is: every site's log
    density must have one row per particle with the runs' plate shape, and equal values (to
    float32 round-off, finite where they are finite). A joint alone can hide a wrong shape: in
    ``X @ w`` with one datum and one feature the likelihood's batch is ``(K, K)``."""
    try:
        found = dict(site_log_probs(plate))
    except Exception as error:  # the plate run's densities do not evaluate: take the loop
        return f"its log densities raise {type(error).__name__}: {error}"
    expected = dict(site_log_probs(loop))
    if found.keys() != expected.keys():
        return f"it scores sites {sorted(found)}, one run per particle {sorted(expected)}"
    for name, exact in expected.items():
        rows = _per_particle_rows(found[name], num, nesting)
        if rows is None or rows.shape[1:] != exact.shape[1:]:
            return (
                f"site '{name}' has log-density shape {tuple(found[name].shape)}, one run per "
                f"particle {tuple(exact.shape[1:])} for each of the {num} particles"
            )
        rows, finite = rows[:count], torch.isfinite(exact)
        if not torch.equal(finite, torch.isfinite(rows)) or not torch.allclose(
            rows[finite], exact[finite], rtol=1e-4, atol=1e-4
        ):
            return f"site '{name}' has other log densities than one run per particle"
    return None


PROBE_PARTICLES = 3
"""Particles on which :func:`replay_particles` (``mode="auto"``) first runs the model inside
the particle plate and compares it with one run per particle, before it runs all of them in the
plate. A model that broadcasts the particles wrong (``X @ W + b`` with ``W`` of shape
``(K, 1, D, C)`` and ``b`` of ``(K, 1, C)`` gives logits of ``(K, K, N, C)``) builds a
tensor ``K`` times too large in the plate: on the probe that is ``(3, 3, N, C)``, and the loop
is taken without ever building the ``(K, K, N, C)`` one."""


def _first_particles(guide_trace: Trace, count: int, num_particles: int) -> Trace:
    """``guide_trace`` with the values of its sample sites cut to the first ``count``
    particles (subsample indices, and values without the particle dimension, kept whole)."""
    cut = guide_trace.copy()
    for name, site in guide_trace.nodes.items():
        value = site.get("value")
        if site["type"] != "sample" or site_is_subsample(site) or not torch.is_tensor(value):
            continue
        if value.dim() > 0 and value.shape[0] == num_particles:
            cut.nodes[name] = {**site, "value": value[:count]}
    return cut


def _plate_run(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    shared: dict[str, Tensor] | None = None,
) -> Trace:
    """``model`` run once inside the particle plate, replayed on ``guide_trace`` (and on the
    minibatch ``shared``: plate name -> indices, when given)."""
    replayed = poutine.replay(model, trace=guide_trace)
    if shared:
        replayed = poutine.condition(replayed, data=shared)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        return poutine.trace(replayed).get_trace(*args, **kwargs)


def replay_particles(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    mode: str = "auto",
    resampled: Collection[str] = (),
) -> tuple[Trace, str]:
    """Run ``model`` replayed on a particle-vectorized guide trace; returns the model trace and
    the way it was run.

    ``"plate"`` runs the model once inside the particle plate (it must broadcast); ``"loop"``
    runs it once per particle (conditioned on that particle's values, every run on the same
    minibatch) and stacks the runs into one trace that reads like the plate's, so models
    written ``X @ w`` or with ``nn.Linear`` are scored right. ``"auto"`` first runs the plate on
    the first :data:`PROBE_PARTICLES` particles and compares every site's log density with
    the loop's on them (shape per particle and values); when they agree it runs the plate on
    all the particles and compares again on those three (no extra runs beyond them), else it
    takes the loop, so that a model that broadcasts the particles wrong never builds a
    tensor as many times too large as there are particles. The observed sites named in
    ``resampled`` are drawn by the model on purpose (a posterior predictive); any other latent
    the guide did not draw is refused by name.
    """
    if mode == "plate":
        return _plate_run(model, guide_trace, args, kwargs, num_particles, nesting), "plate"
    latents = set(_particle_values(guide_trace, 0, nesting))
    if mode == "auto":
        count = min(PROBE_PARTICLES, num_particles)
        probe = guide_trace
        if count < num_particles:
            probe = _first_particles(guide_trace, count, num_particles)
        try:
            model_trace = _plate_run(model, probe, args, kwargs, count, nesting)
        except Exception as error:
            reason = f"it raises {type(error).__name__}: {error}"
        else:
            shared = _subsample_values(model_trace)  # the plate's minibatch, for a fair test
            loop = _per_particle_traces(
                model, guide_trace, args, kwargs, count, nesting, resampled, shared
            )
            loop = _stack(loop, nesting, latents)
            reason = _plate_differs(model_trace, loop, count, count, nesting)
            if reason is None and count < num_particles:
                try:
                    model_trace = _plate_run(
                        model, guide_trace, args, kwargs, num_particles, nesting, shared
                    )
                except Exception as error:
                    reason = f"it raises {type(error).__name__}: {error}"
                else:
                    reason = _plate_differs(model_trace, loop, num_particles, count, nesting)
            if reason is None:
                return model_trace, "plate"
        logger.info("particles replayed one by one: the particle plate differs (%s)", reason)
    shared = _subsample_values(guide_trace)  # a guide that subsamples chose the minibatch
    traces = _per_particle_traces(
        model, guide_trace, args, kwargs, num_particles, nesting, resampled, shared
    )
    return _stack(traces, nesting, latents), "loop"


def vectorized_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    mode: str = "auto",
) -> tuple[Trace, Trace]:
    """Run ``guide`` on ``num_particles`` particles at once and ``model`` replayed on them
    (see :func:`replay_particles` for ``mode``)."""
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace, _ = replay_particles(
        model, guide_trace, args, kwargs, num_particles, nesting, mode
    )
    return model_trace, guide_trace


def log_weights(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    require_rsample: bool = True,
    enumerated: Collection[str] | None = None,
) -> LogWeights:
    """Draw ``num_particles`` particles from ``guide`` (vectorized) and weigh them by ``model``.

    Sites of the model marked for parallel enumeration and absent from the guide are summed out
    (see :func:`pyro_blr.core.enumeration.enumerated_log_joint`). ``enumerated`` names them
    when the caller knows them (e.g. from :func:`pyro_blr.core.check_model_and_guide`);
    ``None`` finds them with one extra model run conditioned on the first particle.

    Raises:
        ValueError: a guide site that cannot be reparameterized (its gradient would need a
            score-function term), or a model that does not broadcast over the particle plate.
    """
    nesting = max_plate_nesting
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    if enumerated is None:
        first = _particle_values(guide_trace, 0, nesting)
        enumerated = model_enumerated_sites(model, args, kwargs, first)
    if enumerated:
        return _enumerated_weights(
            model, guide_trace, args, kwargs, num_particles, nesting, require_rsample
        )
    model_trace, _ = replay_particles(model, guide_trace, args, kwargs, num_particles, nesting)
    joint = 0.0
    terms = []
    for sign, trace in ((1.0, model_trace), (-1.0, guide_trace)):
        for name, site in sample_sites(trace, deterministic=False):
            if require_rsample and trace is guide_trace and not site["fn"].has_rsample:
                raise ValueError(
                    f"guide site '{name}' ({type(site['fn']).__name__}) cannot be "
                    "reparameterized; these objectives need reparameterized guides"
                )
            log_prob = scale_and_mask(
                site["fn"].log_prob(site["value"]), site["scale"], site["mask"]
            )
            if not torch.is_tensor(log_prob):
                continue
            joint = joint + sign * sum_per_particle(log_prob, num_particles, nesting)
            latent = trace is model_trace and not site["is_observed"]
            plates = frozenset(f.name for f in site["cond_indep_stack"])
            terms.append(_Term(sign * log_prob, _frames(site), name, latent, plates))
    plates = {**subsampled_plates(guide_trace), **subsampled_plates(model_trace)}
    plates.pop(PARTICLE_PLATE, None)
    subsampled = tuple(sorted(plates))
    sequential = tuple(name for name in subsampled if plates[name].sequential)
    shared = set.intersection(*(set(t.frames) for t in terms))
    # Every site lies in the shared plates: the weight splits over one of them (the subsampled
    # one, if any). The split is an unbiased minibatch estimate only when no other plate is
    # subsampled: a sequential plate's sites share no batch dimension to split over.
    name = next((n for n in subsampled if n in shared), min(shared, default=None))
    if name is None or set(subsampled) - {name}:
        outside = {t.name for t in terms if t.latent and not t.plates & set(subsampled)}
        return LogWeights(joint, None, 1.0, subsampled, tuple(sorted(outside)), sequential)
    # Undo the split plate's N/B scale, so that each element's weight is that of one datum.
    frame = terms[0].frames[name]
    local_scale = (full_size(frame) / frame.size) if is_subsampled(frame) else 1.0
    local = sum(_per_element(t.log_prob, num_particles, nesting, frame.dim) for t in terms)
    return LogWeights(joint, local / local_scale, local_scale, subsampled, (), sequential)


def _guide_log_q(guide_trace: Trace, num_particles: int, nesting: int, require_rsample: bool):
    r""":math:`\log q(z_k)` per particle, every guide site scaled and masked as Pyro does."""
    total = 0.0
    for name, site in sample_sites(guide_trace, deterministic=False):
        if require_rsample and not site["fn"].has_rsample:
            raise ValueError(
                f"guide site '{name}' ({type(site['fn']).__name__}) cannot be "
                "reparameterized; these objectives need reparameterized guides"
            )
        log_prob = scale_and_mask(site["fn"].log_prob(site["value"]), site["scale"], site["mask"])
        if torch.is_tensor(log_prob):
            total = total + sum_per_particle(log_prob, num_particles, nesting)
    return total


def enumerated_model_traces(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    particles: int | range,
    nesting: int,
    shared: dict[str, Tensor] | None = None,
) -> list[Trace]:
    """The model run once per particle (``particles``: a count from the first, or a range) of
    a particle-vectorized ``guide_trace`` with its enumerated sites enumerated (see
    :func:`pyro_blr.core.enumeration.enumerated_trace`), every run on the same minibatch
    (``shared``: plate name -> indices; by default the guide's, or else the first run's)."""
    shared = dict(shared or _subsample_values(guide_trace))
    traces = []
    for k in range(particles) if isinstance(particles, int) else particles:
        values = {**_particle_values(guide_trace, k, nesting), **shared}
        trace = enumerated_trace(model, args, kwargs, nesting, values)
        if not shared:
            shared = _subsample_values(trace)
        traces.append(trace)
    return traces


def _enumerated_model_log(
    model: Callable, guide_trace: Trace, args: tuple, kwargs: dict, num: int, nesting: int
) -> tuple[Tensor, Trace]:
    r""":math:`\log p(\mathcal D, z_k)` per particle with the enumerated sites summed out, and
    one particle's enumerated trace. One run inside the particle plate when the model
    broadcasts over it: its values must match one run per particle on the first three (to
    float32 round-off, finite where those are); else one run per particle (models written
    ``locs[assignment]`` or ``X @ w``)."""
    shared = _subsample_values(guide_trace)
    latents = {
        name: site["value"]
        for name, site in guide_trace.nodes.items()
        if site["type"] == "sample"
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary")
    }
    count = min(PROBE_PARTICLES, num)

    def plate_log_joint(size: int, shared: dict) -> tuple[Tensor, dict] | None:
        values = {n: v[:size] if v.dim() and v.shape[0] == num else v for n, v in latents.items()}
        try:
            plate_trace = enumerated_trace(
                model, args, kwargs, nesting, {**values, **shared}, (PARTICLE_PLATE, size)
            )
            joint = trace_log_joint(plate_trace, PARTICLE_PLATE)
        except Exception as error:  # the model does not broadcast over particles: the loop
            logger.info("enumerated particles run one by one: the particle plate raised %s", error)
            return None
        if joint.dim() > 1 or joint.numel() not in (1, size):
            return None
        return joint.expand(size), shared or _subsample_values(plate_trace)

    # As in replay_particles: the plate on the first PROBE_PARTICLES particles before all.
    plate = plate_log_joint(count, shared)
    if plate is not None:
        shared = plate[1]
    traces = enumerated_model_traces(model, guide_trace, args, kwargs, count, nesting, shared)
    loop = torch.stack([trace_log_joint(trace) for trace in traces])

    def agrees(rows: Tensor) -> bool:
        finite = torch.isfinite(loop)
        return torch.equal(finite, torch.isfinite(rows)) and torch.allclose(
            rows[finite], loop[finite], rtol=1e-4, atol=1e-4
        )

    if plate is not None and agrees(plate[0]):
        full = plate if count == num else plate_log_joint(num, shared)
        if full is not None and agrees(full[0][:count]):
            return full[0], traces[0]
    logger.info("enumerated particles run one by one: the particle plate differs")
    rest = enumerated_model_traces(
        model, guide_trace, args, kwargs, range(count, num), nesting, shared
    )
    loop = torch.cat([loop, *(trace_log_joint(trace)[None] for trace in rest)])
    return loop, traces[0]


def _enumerated_weights(
    model: Callable,
    guide_trace: Trace,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    nesting: int,
    require_rsample: bool,
) -> LogWeights:
    """Log weights with the model's enumerated sites summed out, every particle on the same
    minibatch (see :func:`_enumerated_model_log`). The weight does not split over data
    elements here (``local`` is ``None``)."""
    model_log, trace = _enumerated_model_log(
        model, guide_trace, args, kwargs, num_particles, nesting
    )
    log_q = _guide_log_q(guide_trace, num_particles, nesting, require_rsample)
    joint = model_log - log_q
    plates = {**subsampled_plates(guide_trace), **subsampled_plates(trace)}
    plates.pop(PARTICLE_PLATE, None)
    subsampled = tuple(sorted(plates))
    sequential = tuple(name for name in subsampled if plates[name].sequential)
    outside = tuple(
        name
        for name, site in sample_sites(trace, deterministic=False)
        if not site["is_observed"] or name in guide_trace.nodes
        if not {f.name for f in site["cond_indep_stack"]} & set(subsampled)
    )
    return LogWeights(joint, None, 1.0, subsampled, outside if subsampled else (), sequential)
