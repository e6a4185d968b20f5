"""ArviZ ``InferenceData`` from any guide: posterior, predictive, pointwise log-likelihood."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from pyro.infer import SVGD

from pyro_blr.core import model_keywords
from pyro_blr.diagnostics.arviz_compat import MIN_PSIS_SAMPLES, from_dict, psis_smooth, to_numpy
from pyro_blr.diagnostics.draws import draw
from pyro_blr.diagnostics.inputs import check_finite_inputs_at_draw
from pyro_blr.diagnostics.mistakes import check_call
from pyro_blr.diagnostics.particles import particles_to_inference_data
from pyro_blr.diagnostics.psis import check_num_samples

__all__ = ["to_inference_data"]


def _systematic_resample(log_weights: np.ndarray, generator: torch.Generator | None) -> np.ndarray:
    """Indices of a systematic resample of ``len(log_weights)`` draws by normalized weights."""
    num = len(log_weights)
    cumulative = np.cumsum(np.exp(log_weights - np.logaddexp.reduce(log_weights)))
    cumulative[-1] = 1.0
    start = float(torch.rand((), generator=generator))
    return np.searchsorted(cumulative, (start + np.arange(num)) / num)


def to_inference_data(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    num_chains: int = 1,
    psis: bool = False,
    max_plate_nesting: int | None = None,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> Any:
    r"""Draw from ``guide`` and return an ArviZ ``InferenceData`` of the model's posterior.

    Groups: ``posterior`` (latent and ``pyro.deterministic`` sites, constrained), ``sample_stats``
    (``log_p`` = :math:`\log p(\mathcal D, z)` and ``log_q`` = :math:`\log q(z)` per draw),
    ``log_likelihood`` (pointwise, per observed site, for ``az.loo``/``az.waic``),
    ``posterior_predictive`` and ``observed_data``. Dimensions carry the names of the Pyro plates
    (with their indices as coordinates); scalar sites have no trailing dimensions. Draws are
    independent, split into ``num_chains`` groups for ArviZ's chain dimension. Under
    ``pyro.plate(subsample_size=B)`` the log-likelihood and predictive cover all the data.

    **Enumerated discrete sites.** A site marked ``infer={"enumerate": "parallel"}`` (or under
    ``pyro.infer.config_enumerate``) and left out of the guide, as for ``TraceEnum_ELBO``, is
    summed out of ``log_p`` (:math:`\log \sum_z p(\mathcal D, z, \theta)`) and of each
    datum's ``log_likelihood`` (:math:`\log \sum_{z_i} p(z_i \mid \theta)\,
    p(y_i \mid z_i, \theta)`, what ``az.loo`` needs); it appears in ``posterior`` drawn from
    its exact conditional :math:`p(z \mid \mathcal D, \theta)` given each draw (Pyro's
    ``infer_discrete``), and the predictive is drawn given both. An observed site whose
    elements share an enumerated site (an HMM's chain, a global assignment) has no
    per-element terms: it is left out of ``log_likelihood`` with a warning naming it.

    **SVGD.** A fitted ``pyro.infer.SVGD`` in the guide's place gives one draw per particle
    (:func:`~pyro_blr.diagnostics.particles.particles_to_inference_data`): the particles have no
    density, so ``sample_stats`` has ``log_p`` but no ``log_q``, and ``num_samples``,
    ``num_chains`` and ``psis`` do not apply (leave them at their defaults).

    With ``psis=True`` the draws are resampled by their Pareto-smoothed importance weights
    :math:`\propto p(\mathcal D, z_s)/q(z_s)` (Yao et al. 2018), which moves a good-enough guide's
    estimates toward the exact posterior; :math:`\hat k` is stored in the attributes
    (``psis_khat``) and tells whether to trust them.

    Args:
        model: the Pyro model.
        guide: any guide of ``model`` (Pyro's autoguides, hand-written ones, this package's).
        *args: the model's positional arguments.
        num_samples: the number of draws (at least
            :data:`~pyro_blr.diagnostics.arviz_compat.MIN_PSIS_SAMPLES` with ``psis=True``).
        num_chains: how many equal groups to split them into (must divide ``num_samples``).
        psis: resample the draws by PSIS weights.
        max_plate_nesting: the model's plate nesting (found from a trace when not given).
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named like an option of this function (``num_samples``,
            ``num_chains``, ``psis``, ``max_plate_nesting``), which would otherwise be taken for
            the option.
        **kwargs: the model's keyword arguments.

    Returns:
        ``arviz.InferenceData`` (ArviZ 0.x) or the ``DataTree`` of ArviZ 1.x. Every array is
        copied to the CPU (``.detach().cpu()``), whatever the device of the model's tensors.

    Raises:
        TypeError: a model argument named like an option without ``model_kwargs=``.
        ValueError: a bad ``num_samples`` or ``num_chains``, a latent site local to a subsampled
            plate, a sequential plate (``for i in pyro.plate(...)``) that is subsampled, data or
            inputs of an observed site holding NaN or inf (naming the site), a discrete latent
            site the guide does not sample and the model does not mark for parallel
            enumeration (it would be drawn from its prior and scored as data), sequential or
            Monte Carlo enumeration, or a subsampled plate in a model with enumerated sites
            (each naming the site and the fix).

    Warns:
        UserWarning: observed sites left out of ``log_likelihood`` (see above), by name.

    References:
        | Yes, but Did It Work?: Evaluating Variational Inference (Yao et al., ICML 2018)
        | https://arxiv.org/abs/1802.02538

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoNormal
        >>> import pyro_blr as pb
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> y = torch.tensor([0.5, 1.5, 1.0])
        >>> guide = AutoNormal(model)
        >>> idata = pb.to_inference_data(model, guide, y, num_samples=200)
        >>> idata.posterior["mu"].shape, idata.log_likelihood["y"].dims
        ((1, 200), ('chain', 'draw', 'data'))
    """
    options = ("num_samples", "num_chains", "psis", "max_plate_nesting")
    if isinstance(guide, SVGD):
        _check_particle_options(guide, num_samples, num_chains, psis)
        return particles_to_inference_data(model, guide, *args, model_kwargs=model_kwargs, **kwargs)
    kwargs = model_keywords(model, "to_inference_data", options, kwargs, model_kwargs)
    num_samples = check_num_samples(num_samples, MIN_PSIS_SAMPLES if psis else 1)
    if isinstance(num_chains, bool) or not isinstance(num_chains, int) or num_chains < 1:
        raise ValueError(f"num_chains must be a positive integer, got {num_chains!r}")
    if num_samples % num_chains:
        raise ValueError(f"num_chains={num_chains} must divide num_samples={num_samples}")
    check_call(model, guide, args, kwargs, "to_inference_data")  # swapped, or data left out
    check_finite_inputs_at_draw(model, guide, args, kwargs, "to_inference_data")
    with torch.no_grad():
        draws = draw(model, guide, args, kwargs, num_samples, max_plate_nesting)
    index = None
    attrs = {"inference_library": "pyro_blr", "guide": type(guide).__name__}
    if psis:
        smoothed, khat = psis_smooth(draws.log_p - draws.log_q)
        index = _systematic_resample(smoothed, None)
        attrs["psis_khat"] = khat

    def arrays(group: dict) -> dict:
        out = {}
        for name, value in group.items():
            value = to_numpy(value)
            if index is not None:
                value = value[index]
            out[name] = value.reshape((num_chains, num_samples // num_chains, *value.shape[1:]))
        return out

    groups = {
        "posterior": arrays(draws.posterior),
        "sample_stats": arrays({"log_p": draws.log_p, "log_q": draws.log_q}),
        "log_likelihood": arrays(draws.log_likelihood),
        "posterior_predictive": arrays(draws.predictive),
        "observed_data": {name: to_numpy(value) for name, value in draws.observed.items()},
    }
    coords = {name: to_numpy(idx) for name, idx in draws.coords.items()}
    return from_dict(groups, coords, draws.dims, attrs)


def _check_particle_options(svgd: SVGD, num_samples: int, num_chains: int, psis: bool) -> None:
    """Refuse options that cannot apply to a particle approximation, naming each."""
    if psis:
        raise ValueError(
            "to_inference_data: psis=True needs a guide with a density; SVGD's particles have "
            "none (for importance weights fit particle_proposal(model, svgd, ...) and pass it)"
        )
    if num_samples not in (1000, svgd.num_particles) or num_chains != 1:
        raise ValueError(
            f"to_inference_data: the draws of an SVGD are its {svgd.num_particles} particles; "
            f"num_samples={num_samples} and num_chains={num_chains} do not apply (leave them out)"
        )
