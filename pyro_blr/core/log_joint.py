r"""The negative log joint of a Pyro model at particles of its flat unconstrained latent vector.

.. math::
    \ell(\theta) = -\log p(\mathcal D, T(\theta)) - \log\lvert\det J_T(\theta)\rvert,

where :math:`\log p` is the model's log joint exactly as Pyro computes it (sites inside
``pyro.plate(..., subsample_size=B)`` scaled by :math:`N/B`, masks honoured) and :math:`T` maps
the flat vector to constrained site values (see :mod:`pyro_blr.core.layout`).

Particles are evaluated in one of three ways (``vectorize``):

* ``"plate"`` -- the model runs once inside a plate left of its own plates (Pyro's
  ``vectorize_particles``); fast, but right only for models that broadcast (``X @ w``,
  ``a, b = w`` or ``w.sum()`` consume the particle dimension and silently give another model);
* ``"vmap"`` -- ``torch.func.vmap`` over the log joint of one particle: every model that runs on
  one particle runs, ``X @ w`` and ``nn.Linear`` included, with Pyro's validation off inside the
  map (its support checks are data-dependent control flow); a single particle runs the mapped
  function directly, without ``vmap``'s overhead;
* ``"loop"`` -- one model run per particle.

:func:`choose_vectorization` picks the fastest one that gives the same numbers as the loop on
probe particles, so the default never fits another model than the one written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.trace_struct import Trace
from torch import Tensor
from torch.distributions.transforms import ComposeTransform, IndependentTransform

from pyro_blr.core.data_signature import data_checked
from pyro_blr.core.enumeration import enumerated_log_joint
from pyro_blr.core.layout import LatentLayout, LatentSite
from pyro_blr.core.model_errors import describe_error
from pyro_blr.core.traces import PARTICLE_PLATE, sample_sites, site_log_probs, sum_per_particle

__all__ = [
    "VECTORIZATIONS",
    "choose_vectorization",
    "conditioned_trace",
    "log_joint",
    "neg_log_joint",
]

VECTORIZATIONS = ("plate", "vmap", "loop")
"""The ways :func:`neg_log_joint` can evaluate particles."""

logger = logging.getLogger(__name__)


def _is_identity(transform) -> bool:
    """Whether ``transform`` is the identity (``biject_to`` of a real support, maybe made
    ``Independent``): its log-Jacobian is zero, and need not be computed at every run."""
    while isinstance(transform, IndependentTransform):
        transform = transform.base_transform
    return isinstance(transform, ComposeTransform) and not transform.parts


def _to_constrained(
    site: LatentSite, unconstrained: Tensor, leading: int
) -> tuple[Tensor, Tensor | None]:
    """A site's constrained value and its scaled log-Jacobian per particle (``None``: zero)."""
    if _is_identity(site.transform):
        return unconstrained, None
    value = site.transform(unconstrained)
    jacobian = site.transform.log_abs_det_jacobian(unconstrained, value)
    # A local site of a subsampled plate is scaled by N/B like the rest of the plate's terms.
    return value, site.scale * jacobian.reshape(leading, -1).sum(-1)


def neg_log_joint(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple = (),
    kwargs: dict | None = None,
    vectorize: bool | str = True,
    terms_out: list | None = None,
    subsample: dict[str, Tensor] | None = None,
    check_data: bool = True,
) -> Tensor:
    r"""The negative log joint :math:`\ell(\theta_s)` of each particle, shape ``(S,)``.

    Args:
        model: the Pyro model.
        layout: its latent layout.
        theta: unconstrained particles of shape ``(S, D)``.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        vectorize: ``"plate"`` (or ``True``), ``"vmap"`` or ``"loop"`` (or ``False``); see the
            module docstring.
        terms_out: if given, each run's ``(name, log_prob)`` pairs (see
            :func:`pyro_blr.core.traces.site_log_probs`) and ``("log|det J|", log_det)`` are
            appended to it, to locate non-finite terms.
        subsample: plate name -> the minibatch indices every run uses (all particles see the
            same minibatch); by default each model run draws its own, as Pyro does.
        check_data: refuse data of another dtype or device than the layout's (see
            :func:`pyro_blr.core.data_signature.data_checked`); ``False`` where the caller
            checked these very data already (:class:`pyro_blr.core.Target` checks once per
            batch). An error of the model names a changed argument either way.

    Example:
        >>> import math, pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> neg_log_joint(model, layout, torch.tensor([[0.0], [1.0]])) - 0.5 * math.log(2 * math.pi)
        tensor([0.0000, 0.5000])
    """
    kwargs = kwargs or {}
    subsample = subsample or {}
    mode = _mode(vectorize)
    if check_data:
        with data_checked(layout.data, model, args, kwargs):
            value = _neg_log_joint(model, layout, theta, args, kwargs, mode, terms_out, subsample)
    else:
        try:
            value = _neg_log_joint(model, layout, theta, args, kwargs, mode, terms_out, subsample)
        except Exception as error:
            if layout.data is not None:
                layout.data.explain(error, model, args, kwargs)
            raise
    # Float32 latents with float64 data (a float32 prior constant) make float64 terms: the value
    # follows the latent vector in every mode, as the gradient does.
    return value.to(theta.dtype)


def _neg_log_joint(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    mode: str,
    terms_out: list | None,
    subsample: dict[str, Tensor],
) -> Tensor:
    num_particles = theta.shape[0]
    if layout.enumerated:  # one run per particle: torch.func cannot see through the sum
        rows = [
            _neg_log_joint_enumerated(model, layout, theta[s], args, kwargs, terms_out, subsample)
            for s in range(num_particles)
        ]
        return torch.cat(rows)
    if mode == "vmap" and terms_out is None:
        if num_particles == 1:  # the vmapped function itself, without vmap's overhead
            with pyro.validation_enabled(False):
                return _neg_log_joint_one(model, layout, theta[0], args, kwargs, None, subsample)
        return _neg_log_joint_vmap(model, layout, theta, args, kwargs, subsample)
    if mode != "plate":
        rows = [
            _neg_log_joint_one(model, layout, theta[s], args, kwargs, terms_out, subsample)
            for s in range(num_particles)
        ]
        return torch.cat(rows)
    nesting = layout.max_plate_nesting
    values = {}
    log_det = theta.new_zeros(num_particles)
    for site, unconstrained in zip(layout.sites, layout.unpack(theta).values(), strict=True):
        values[site.name], jacobian = _to_constrained(site, unconstrained, num_particles)
        if jacobian is not None:
            log_det = log_det + jacobian
    conditioned = poutine.condition(model, data={**values, **subsample})
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-nesting - 1):
        trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    _check_all_latents_given(trace, values)
    terms = site_log_probs(trace)
    log_joint = theta.new_zeros(num_particles)
    for _, log_prob in terms:
        log_joint = log_joint + sum_per_particle(log_prob, num_particles, nesting)
    if terms_out is not None:
        terms_out.append([*terms, ("log|det J|", log_det)])
    return -(log_joint + log_det)


def _constrained_values(layout: LatentLayout, theta: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Each site's constrained value for one particle ``(D,)``, and the log-Jacobian of the map
    to them, shape ``(1,)``."""
    values = {}
    log_det = theta.new_zeros(1)
    for site in layout.sites:
        unconstrained = theta[site.block].reshape(site.shape)
        values[site.name], jacobian = _to_constrained(site, unconstrained, 1)
        if jacobian is not None:
            log_det = log_det + jacobian
    return values, log_det


def _neg_log_joint_enumerated(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    terms_out: list | None,
    subsample: dict[str, Tensor],
) -> Tensor:
    r""":math:`\ell` of one particle ``(D,)`` with the model's enumerated sites summed out
    (:func:`pyro_blr.core.enumeration.enumerated_log_joint`), shape ``(1,)``."""
    values, log_det = _constrained_values(layout, theta)
    nesting = layout.max_plate_nesting
    log_joint = enumerated_log_joint(model, args, kwargs, nesting, {**values, **subsample})
    if terms_out is not None:
        terms_out.append([("the enumerated sites summed out", log_joint), ("log|det J|", log_det)])
    return -(log_joint.reshape(1) + log_det)


def conditioned_trace(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
) -> tuple[Trace, Tensor]:
    """One model run with its latents set from the flat vector ``theta`` ``(D,)``, and the
    log-Jacobian of the map to their constrained values, shape ``(1,)``.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> def model():
        ...     pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> trace, log_det = conditioned_trace(model, layout, torch.zeros(1), (), {}, {})
        >>> site = trace.nodes["scale"]
        >>> site["value"], log_det  # exp(0) = 1, log|d exp/dt| = 0
        (tensor(1.), tensor([0.]))
    """
    with data_checked(layout.data, model, args, kwargs):
        return _conditioned_trace(model, layout, theta, args, kwargs, subsample)


def _conditioned_trace(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
) -> tuple[Trace, Tensor]:
    values, log_det = _constrained_values(layout, theta)
    conditioned = poutine.condition(model, data={**values, **subsample})
    trace = poutine.trace(conditioned).get_trace(*args, **kwargs)
    _check_all_latents_given(trace, values)
    return trace, log_det


def _neg_log_joint_one(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    terms_out: list | None,
    subsample: dict[str, Tensor],
) -> Tensor:
    trace, log_det = _conditioned_trace(model, layout, theta, args, kwargs, subsample)
    terms = site_log_probs(trace)
    log_joint = sum(log_prob.sum() for _, log_prob in terms)
    if terms_out is not None:
        terms_out.append([*terms, ("log|det J|", log_det)])
    return -(log_joint + log_det)


def log_joint(
    model: Callable,
    values: dict[str, Tensor],
    batch_dims: dict[str, int],
    max_plate_nesting: int,
    args: tuple = (),
    kwargs: dict | None = None,
    vectorize: bool | str = True,
    enumerated: bool = False,
) -> Tensor:
    r""":math:`\log p(\mathcal D, x_s)` for constrained latent values with the particles first.

    The model runs conditioned on the values, once on all particles inside a plate left of its
    own plates (``vectorize=True``), or once per particle. With ``enumerated`` (the model has
    sites marked ``infer={"enumerate": "parallel"}``, :attr:`pyro_blr.core.LatentLayout.enumerated`)
    they are summed out, one run per particle
    (:func:`pyro_blr.core.enumeration.enumerated_log_joint`), whatever ``vectorize`` says.

    Args:
        model: the Pyro model.
        values: site name -> constrained values of shape ``(S, *site_shape)``.
        batch_dims: site name -> how many leading dimensions of ``site_shape`` are batch (plate)
            dimensions.
        max_plate_nesting: the model's number of plate dimensions.
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        vectorize: ``"plate"`` (or ``True``), ``"vmap"`` or ``"loop"`` (or ``False``).
        enumerated: sum the model's enumerated sites out.

    Example:
        >>> import math, pyro, pyro.distributions as dist, torch
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> values = {"x": torch.tensor([0.0, 1.0])}
        >>> log_joint(model, values, {"x": 0}, 0) + 0.5 * math.log(2 * math.pi)
        tensor([ 0.0000, -0.5000])
    """
    kwargs = kwargs or {}
    num_particles = next(iter(values.values())).shape[0]
    mode = _mode(vectorize)
    if enumerated:  # one run per particle: torch.func cannot see through the sum
        return torch.stack(
            [
                enumerated_log_joint(
                    model, args, kwargs, max_plate_nesting, {n: v[s] for n, v in values.items()}
                )
                for s in range(num_particles)
            ]
        )

    def run(data: dict[str, Tensor]) -> Tensor:
        trace = poutine.trace(poutine.condition(model, data=data)).get_trace(*args, **kwargs)
        _check_all_latents_given(trace, data)
        return sum(log_prob.sum() for _, log_prob in site_log_probs(trace))

    if mode == "loop":
        return torch.stack(
            [run({n: v[s] for n, v in values.items()}) for s in range(num_particles)]
        )
    if mode == "vmap":

        def one(data: dict[str, Tensor]) -> Tensor:
            with pyro.validation_enabled(False):
                return run(data)

        return torch.func.vmap(one, randomness="different")(values)
    padded = {}
    for name, value in values.items():
        pad = (1,) * (max_plate_nesting - batch_dims[name])
        padded[name] = value.reshape((num_particles, *pad, *value.shape[1:]))
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=-max_plate_nesting - 1):
        trace = poutine.trace(poutine.condition(model, data=padded)).get_trace(*args, **kwargs)
    _check_all_latents_given(trace, padded)
    total = 0.0
    for _, log_prob in site_log_probs(trace):
        total = total + sum_per_particle(log_prob, num_particles, max_plate_nesting)
    return total


def _check_all_latents_given(trace, given=(), resampled=()) -> None:
    """Refuse a latent site the values did not cover (it would be drawn from its prior and
    scored as if observed, which fits another model), and a given value the model did not
    sample on this run (its coordinates would enter no term: control flow)."""
    sampled = {name for name, _ in sample_sites(trace)}
    for name in given:
        if name not in sampled:
            raise ValueError(
                f"latent site '{name}' is not sampled on every run of the model (control flow "
                "skips it for some values of the other latents), so it has no fixed place in "
                "the guide: make the model sample it on every run"
            )
    for name, site in sample_sites(trace, deterministic=False):
        if name in resampled:
            continue
        if site["is_observed"]:
            continue
        enumerated = site["infer"].get("enumerate")
        why = (
            f"it is marked infer={{'enumerate': {enumerated!r}}}; enumeration is not supported "
            "here: marginalize it out in the model by hand, or use Pyro's TraceEnum_ELBO"
            if enumerated
            else "it is not in the guide (a site that appears only on some runs, e.g. through "
            "control flow, has no place in the guide): make the model sample it on every run"
        )
        raise ValueError(f"latent site '{name}' was not given a value: {why}")


def _mode(vectorize: bool | str) -> str:
    if vectorize is True:
        return "plate"
    if vectorize is False:
        return "loop"
    if vectorize not in VECTORIZATIONS:
        raise ValueError(f"vectorize must be one of {VECTORIZATIONS} or a bool, got {vectorize!r}")
    return vectorize


def _neg_log_joint_vmap(
    model: Callable,
    layout: LatentLayout,
    theta: Tensor,
    args: tuple,
    kwargs: dict,
    subsample: dict[str, Tensor],
) -> Tensor:
    def one(row: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            return _neg_log_joint_one(model, layout, row, args, kwargs, None, subsample)[0]

    return torch.func.vmap(one, randomness="different")(theta)


def _described(error: Exception) -> Exception:
    """``error`` again with :func:`describe_error`'s message, where its type allows one."""
    try:
        return type(error)(f"the model raised {describe_error(error)} at set-up")
    except Exception:
        return error


def choose_vectorization(
    model: Callable,
    layout: LatentLayout,
    probe: Tensor,
    args: tuple = (),
    kwargs: dict | None = None,
    rtol: float = 1e-4,
    subsample: dict[str, Tensor] | None = None,
) -> str:
    """The fastest way to evaluate particles that matches one model run per particle.

    ``"plate"`` is taken when the plate-vectorized values equal the per-particle loop's on the
    ``probe`` particles (to ``rtol``, float32 round-off), else ``"vmap"`` when it runs and
    matches, else ``"loop"``; the reason for a fallback is logged once at INFO, the line that
    raised where the model's error has no message (a bare ``assert``). Errors of the model
    itself (raised by the loop) propagate; one without a message gets one naming that line.

    Args:
        model: the Pyro model.
        layout: its latent layout.
        probe: a few distinct particles ``(S, D)``, ``S >= 3`` (so that ``a, b = w`` cannot pass
            by unpacking two particles).
        args: the model's positional arguments.
        kwargs: the model's keyword arguments.
        rtol: the relative tolerance of the comparison.
        subsample: the minibatch indices of subsampled plates, held fixed across the compared
            runs (see :func:`neg_log_joint`).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.core import latent_layout
        >>> X = torch.randn(5, 2)
        >>> def model():
        ...     w = pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        ...     with pyro.plate("data", 5):
        ...         pyro.sample("y", dist.Normal(X @ w, 1.0), obs=torch.zeros(5))
        >>> layout = latent_layout(pyro.poutine.trace(model).get_trace())
        >>> choose_vectorization(model, layout, torch.randn(3, 2))
        'vmap'
    """
    kwargs = kwargs or {}
    with torch.no_grad():
        try:
            exact = neg_log_joint(model, layout, probe, args, kwargs, "loop", None, subsample)
        except Exception as error:
            if str(error).strip():
                raise
            raise _described(error) from error  # a bare assert: say which line raised
        reasons = []
        for mode in ("plate", "vmap"):
            try:
                value = neg_log_joint(model, layout, probe, args, kwargs, mode, None, subsample)
            except Exception as error:
                reasons.append(f"{mode}: {describe_error(error)}")
                continue
            finite = torch.isfinite(exact)
            same = torch.equal(finite, torch.isfinite(value)) and torch.allclose(
                value[finite], exact[finite], rtol=rtol, atol=rtol
            )
            if value.shape == exact.shape and same:
                if reasons:
                    logger.info("particles evaluated by %s (%s)", mode, "; ".join(reasons))
                return mode
            reasons.append(f"{mode}: differs from one run per particle")
    logger.info("particles evaluated one by one (%s)", "; ".join(reasons))
    return "loop"
