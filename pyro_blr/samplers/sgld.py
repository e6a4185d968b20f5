r"""Stochastic-gradient Langevin dynamics (SGLD) as a sampler, shaped like ``pyro.infer.MCMC``.

In the model's unconstrained coordinates :math:`\theta` (see :mod:`pyro_blr.core.layout`), with
:math:`\ell(\theta) = -\log p(\mathcal D, T(\theta)) - \log\lvert\det J_T(\theta)\rvert` and
:math:`\hat\ell` its minibatch estimate (each subsampled plate's terms scaled by :math:`N/B`
exactly as Pyro scales them, so :math:`\mathbb E\,\nabla\hat\ell = \nabla\ell`), every chain
moves by

.. math::
    \theta_{t+1} = \theta_t - \beta_t \nabla\hat\ell(\theta_t) + \sqrt{2\beta_t T}\,\xi_t,
    \qquad \xi_t \sim \mathcal N(0, I).

Welling & Teh write the same step with :math:`\epsilon_t = 2\beta_t` as
:math:`\tfrac{\epsilon_t}2\nabla\log p + \eta_t`, :math:`\eta_t \sim \mathcal N(0,\epsilon_t)`:
the injected noise has variance :math:`2\beta_t`, twice the step on :math:`\ell`, which is
what makes the Langevin diffusion's stationary law :math:`\propto e^{-\ell/T}`. With a
Robbins–Monro schedule (:class:`pyro_blr.samplers.RobbinsMonro`) the draws converge to the
posterior; with a constant step they carry an :math:`O(\beta)` discretization bias (for a
Gaussian of precision :math:`h`, the variance :math:`1/(h(1 - \beta h/2))`).

References:
    | Bayesian Learning via Stochastic Gradient Langevin Dynamics (Welling & Teh, ICML 2011)
    | https://www.stat.berkeley.edu/~ywteh/publications/sgld.pdf
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide.initialization import InitMessenger, init_to_uniform
from pyro.infer.mcmc.util import print_summary
from pyro.ops.stats import effective_sample_size, split_gelman_rubin
from torch import Tensor

from pyro_blr.core import (
    LatentLayout,
    Target,
    all_finite,
    check_latent_masks,
    choose_vectorization,
    draw_subsample,
    latent_layout,
    neg_log_joint,
    nonfinite_term,
    plate_draws,
    rng_kept,
    subsampled_plates,
    traced_subsamples,
    validate_site_shapes,
)
from pyro_blr.samplers.schedules import as_schedule, checked_step

__all__ = ["SGLD", "langevin_step"]

_MODES = ("auto", "plate", "vmap", "loop")


def langevin_step(theta: Tensor, grad: Tensor, step: float, noise: Tensor,
                  temperature: float = 1.0) -> Tensor:  # fmt: skip
    r"""One Langevin step :math:`\theta - \beta\nabla\ell + \sqrt{2\beta T}\,\xi`.

    Args:
        theta: the chains' positions ``(C, D)``.
        grad: :math:`\nabla\ell` (or its minibatch estimate) at ``theta``.
        step: :math:`\beta`.
        noise: standard normal :math:`\xi`, shaped like ``theta``.
        temperature: :math:`T` (1: the posterior).

    Example:
        >>> import torch
        >>> langevin_step(torch.ones(1, 1), torch.ones(1, 1), 0.5, torch.zeros(1, 1))
        tensor([[0.5000]])
    """
    return theta - step * grad + math.sqrt(2 * step * temperature) * noise


class SGLD:
    r"""Stochastic-gradient Langevin dynamics on an unchanged Pyro model, with the interface of
    ``pyro.infer.MCMC``: ``run(*args, **kwargs)``, ``get_samples()``, ``diagnostics()``,
    ``summary()``; the chains run side by side (vectorized, as one batch of particles).

    Minibatches come from the model's own ``pyro.plate(..., subsample_size=B)``: each step draws
    one minibatch exactly as Pyro's plate would (shared by the chains of that step), and the
    plate's terms are scaled by :math:`N/B` as Pyro scales them. A latent site local to a
    subsampled plate is refused (its value would change with the minibatch).

    Args:
        model: the Pyro model.
        step_size: :math:`\beta_t`: a float (constant; biased by :math:`O(\beta)`) or a schedule
            ``step -> float`` such as ``RobbinsMonro(a, b, gamma)``.
        num_samples: draws kept per chain.
        warmup_steps: burn-in steps discarded first.
        thin: keep one step in ``thin`` after the burn-in.
        num_chains: independent chains (at least 2 for :math:`\hat R`; default 4).
        temperature: :math:`T` (1 samples the posterior).
        init_loc_fn: where each chain starts, as Pyro's ``init_to_*`` strategies (default
            ``init_to_uniform``, as ``pyro.infer.NUTS``); it is called once per chain.
        vectorize: ``"auto"`` (the fastest evaluation of the chains that matches one model run
            per chain, see :func:`pyro_blr.core.choose_vectorization`), ``"plate"``, ``"vmap"``
            or ``"loop"``.

    Note:
        The chains of one step share its minibatch (one model run for all of them), so their
        gradient noise is shared too; it is :math:`O(\beta_t)` against the injected noise and
        vanishes with a decaying schedule, but with a large constant step :math:`\hat R` may
        look better than the chains are. With a decaying schedule, Welling & Teh weight each
        draw by its step in posterior averages; ``get_sample_stats()["step_size"]`` holds it.

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro_blr.samplers import SGLD, RobbinsMonro
        >>> def model(y):
        ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
        >>> pyro.set_rng_seed(0)
        >>> sgld = SGLD(model, RobbinsMonro.from_first(0.02, b=100.0), num_samples=200,
        ...             warmup_steps=100, num_chains=2)
        >>> sgld.run(torch.ones(9))
        >>> samples = sgld.get_samples()
        >>> samples["mu"].shape  # chains flattened, as MCMC.get_samples()
        torch.Size([400])
        >>> abs(float(samples["mu"].mean()) - 0.9) < 0.1  # the posterior N(0.9, 0.1)
        True
    """

    def __init__(
        self,
        model: Callable,
        step_size: float | Callable[[int], float],
        num_samples: int,
        warmup_steps: int = 0,
        thin: int = 1,
        num_chains: int = 4,
        temperature: float = 1.0,
        init_loc_fn: Callable = init_to_uniform,
        vectorize: str = "auto",
    ):
        for name, value, low in (("num_samples", num_samples, 1), ("warmup_steps", warmup_steps, 0),
                                 ("thin", thin, 1), ("num_chains", num_chains, 1)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SGLD: {name} must be an integer >= {low}, got {value!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                and temperature > 0):  # fmt: skip
            raise ValueError(f"SGLD: temperature must be positive and finite, got {temperature!r}")
        if vectorize not in _MODES:
            raise ValueError(f"SGLD: vectorize must be one of {_MODES}, got {vectorize!r}")
        self.model = model
        self.schedule = as_schedule(step_size)
        self.num_samples, self.warmup_steps, self.thin = num_samples, warmup_steps, thin
        self.num_chains, self.temperature = num_chains, float(temperature)
        self.init_loc_fn, self.vectorize = init_loc_fn, vectorize
        self.layout: LatentLayout | None = None
        self.mode: str | None = None
        self._draws: Tensor | None = None  # (C, S, D) unconstrained
        self._stats: dict[str, Tensor] = {}
        self._trace = None

    @property
    def num_steps(self) -> int:
        """The steps :meth:`run` takes: burn-in plus ``num_samples * thin``."""
        return self.warmup_steps + self.num_samples * self.thin

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run the chains on the model's arguments (all of them are the model's)."""
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        check_latent_masks(trace)
        validate_site_shapes(trace)
        layout = latent_layout(trace, trace)  # refuses latents local to a subsampled plate
        draws = None
        if subsampled_plates(trace):
            draws = plate_draws(*traced_subsamples(self.model, args, kwargs))
        theta = self._initial(layout, trace, args, kwargs)
        mode = self._mode(layout, theta, draws, trace, args, kwargs)
        target = Target.build(self.model, args, kwargs, layout, mode)
        c, s = self.num_chains, self.num_samples
        kept = theta.new_empty(c, s, layout.dim)
        lp, steps = theta.new_empty(c, s), theta.new_empty(s)
        for t in range(self.num_steps):
            batch = target if not draws else target.with_subsample(draw_subsample(draws))
            out = batch.derivatives(theta, "none")
            if not all_finite(out.value, out.grad):
                self._explain(batch, theta, t)
            beta = checked_step(self.schedule, t)
            offset = t - self.warmup_steps
            if offset >= 0 and offset % self.thin == 0:
                kept[:, offset // self.thin] = theta
                lp[:, offset // self.thin] = -out.value
                steps[offset // self.thin] = beta
            noise = torch.randn_like(theta)
            theta = langevin_step(theta, out.grad, beta, noise, self.temperature).detach()
        self.layout, self.mode, self._trace = layout, mode, trace
        self._draws = kept
        self._stats = {"lp": lp, "step_size": steps.expand(c, s)}

    def _initial(self, layout: LatentLayout, trace, args: tuple, kwargs: dict) -> Tensor:
        """One start per chain from ``init_loc_fn``, in unconstrained coordinates ``(C, D)``."""
        like = trace.nodes[layout.sites[0].name]["value"]
        dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
        rows = []
        for _ in range(self.num_chains):
            with poutine.block():
                start = poutine.trace(InitMessenger(self.init_loc_fn)(self.model))
                start = start.get_trace(*args, **kwargs)
            row = [
                site.transform.inv(start.nodes[site.name]["value"].detach()).reshape(-1)
                for site in layout.sites
            ]
            rows.append(torch.cat(row).to(dtype=dtype, device=like.device))
        return torch.stack(rows)

    def _mode(self, layout, theta, draws, trace, args, kwargs) -> str:
        if self.vectorize != "auto":
            return self.vectorize
        if draws is None and subsampled_plates(trace):
            return "loop"  # a plate Pyro alone can draw: each chain's run draws its own
        with rng_kept(theta):
            probe = theta[:1] + torch.randn(3, layout.dim, dtype=theta.dtype, device=theta.device)
            fixed = draw_subsample(draws) if draws else None
            return choose_vectorization(self.model, layout, probe, args, kwargs, subsample=fixed)

    def _explain(self, target: Target, theta: Tensor, step: int) -> None:
        """Raise naming the site whose log density is not finite at ``step``."""
        terms: list = []
        with torch.no_grad():
            neg_log_joint(target.model, target.layout, theta, target.args, target.kwargs, "loop",
                          terms, target.subsample, check_data=False)  # fmt: skip
        found = nonfinite_term([x for run in terms for x in run])
        name, value = found or ("the log joint's gradient", float("nan"))
        where = "the log-Jacobian of the latent map" if name == "log|det J|" else f"site '{name}'"
        fix = (
            "the initial values are impossible under the model: pass another init_loc_fn"
            if step == 0
            else "the chains diverged: lower step_size (or the schedule's first step)"
        )
        raise ValueError(f"SGLD: at step {step} the log density of {where} is {value}: {fix}")

    def _require_run(self) -> Tensor:
        if self._draws is None:
            raise RuntimeError("SGLD has no draws yet: call run(*args, **kwargs) first")
        return self._draws

    def get_samples(self, num_samples: int | None = None,
                    group_by_chain: bool = False) -> dict[str, Tensor]:  # fmt: skip
        """The draws in constrained space, site by site, as ``pyro.infer.MCMC.get_samples``:
        shape ``(num_chains * num_samples, *site_shape)``, or ``(num_chains, num_samples,
        *site_shape)`` with ``group_by_chain``; ready for ``Predictive(model,
        posterior_samples=...)``.

        Args:
            num_samples: keep this many draws, chosen at random without replacement from the
                flattened draws (``group_by_chain=False`` only).
            group_by_chain: keep the chain dimension.
        """
        draws = self._require_run()
        c, s, _ = draws.shape
        samples = {}
        for site in self.layout.sites:
            block = draws[..., site.block].reshape(c, s, *site.shape)
            samples[site.name] = site.transform(block).detach()
        if group_by_chain:
            if num_samples is not None:
                raise ValueError("num_samples needs group_by_chain=False (as MCMC.get_samples)")
            return samples
        samples = {k: v.reshape(c * s, *v.shape[2:]) for k, v in samples.items()}
        if num_samples is not None:
            index = torch.randperm(c * s, device=draws.device)[:num_samples]
            samples = {k: v[index] for k, v in samples.items()}
        return samples

    def get_sample_stats(self) -> dict[str, Tensor]:
        r"""Per draw, shape ``(num_chains, num_samples)``: ``lp``, the log density of the
        unconstrained draw (:math:`-\hat\ell`, a minibatch estimate when the model subsamples),
        and ``step_size``, the :math:`\beta_t` of that step."""
        self._require_run()
        return dict(self._stats)

    def diagnostics(self) -> dict[str, dict[str, Tensor]]:
        r"""Split :math:`\hat R` and the effective sample size of each site's draws (Pyro's
        estimators, as ``MCMC.diagnostics``)."""
        out = {}
        for name, value in self.get_samples(group_by_chain=True).items():
            out[name] = {
                "n_eff": effective_sample_size(value, chain_dim=0, sample_dim=1),
                "r_hat": split_gelman_rubin(value, chain_dim=0, sample_dim=1),
            }
        return out

    def summary(self, prob: float = 0.9) -> None:
        r"""Print mean, sd, the ``prob`` interval, :math:`n_{eff}` and :math:`\hat R` per site."""
        print_summary(self.get_samples(group_by_chain=True), prob=prob)

    def to_inference_data(self) -> Any:
        """An ArviZ ``InferenceData`` with ``posterior`` (chains, draws, site dimensions named
        after the model's plates) and ``sample_stats`` (``lp``, ``step_size``), for
        ``az.summary``, ``az.rhat``, ``az.ess`` and the plots."""
        import arviz as az

        samples = self.get_samples(group_by_chain=True)
        dims = {}
        for name, value in samples.items():
            names = self._plate_dims(name, value.dim() - 2)
            if names is not None:
                dims[name] = names
        numpy = {k: v.detach().cpu().numpy() for k, v in samples.items()}
        stats = {k: v.detach().cpu().numpy() for k, v in self._stats.items()}
        return az.from_dict(posterior=numpy, sample_stats=stats, dims=dims)

    def _plate_dims(self, name: str, ndim: int) -> list[str] | None:
        """Names for a site's dimensions: a plate's name along its batch dimension."""
        site = self._trace.nodes[name]
        batch = ndim - site["fn"].event_dim
        names = [f"{name}_dim_{i}" for i in range(ndim)]
        found = False
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None and -frame.dim <= batch:
                names[batch + frame.dim] = frame.name
                found = True
        return names if found else None
