r"""Sensitivity of a Gaussian posterior to each datum, without refitting: the memory-perturbation
equation (Nickl, Xu, Tailor, Möllenhoff & Khan, NeurIPS 2023).

A Gaussian posterior :math:`q = \mathcal N(m, S^{-1})` fitted by the Bayesian learning rule has
natural parameters that are a sum of per-datum contributions; at its fixed point
:math:`S = S_0 + \sum_j H_j`. Removing datum :math:`i` removes its contribution, and one Newton
step from :math:`m` on the remaining data gives

.. math::
    S_{\setminus i} = S - H_i, \qquad m_{\setminus i} = m + S_{\setminus i}^{-1} g_i,

where :math:`g_i = -\nabla_\theta \log p(y_i \mid \theta)` and
:math:`H_i = -\nabla^2_\theta \log p(y_i \mid \theta)` at the mean. For a conjugate Gaussian
linear model this is the exact rank-one downdate of the posterior. Everything is read from one
pass over the data: the model runs on the flat latent vector, the trace's observed sites give
all :math:`N` per-datum log-likelihoods before summing, and ``torch.func`` differentiates those
:math:`N` outputs at once in forward mode (``jacfwd`` for the gradients, ``jacfwd`` of it for
the Hessians: :math:`D` and :math:`D^2` tangents, each one model run over all the data).

References:
    | The Memory-Perturbation Equation: Understanding Model's Sensitivity to Data
    | (Nickl, Xu, Tailor, Möllenhoff & Khan, NeurIPS 2023)
    | https://arxiv.org/abs/2310.19273
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import (
    PARTICLE_PLATE,
    GaussianGuide,
    LatentLayout,
    Target,
    check_full_data,
    check_gaussian_guide,
    check_model_and_guide,
    choose_vectorization,
    full_size,
    initialize_guide,
    is_subsampled,
    latent_layout,
    model_keywords,
    rng_kept,
    sample_sites,
    site_log_probs,
    trace_without_rng,
    validate_site_shapes,
)
from pyro_blr.core.enumeration import enumerated_trace
from pyro_blr.diagnostics.arviz_compat import elpd_data, to_numpy
from pyro_blr.diagnostics.fixed_point import (
    FixedPointGap,
    check_fixed_point,
    fixed_point_gap,
    needs_second_opinion,
)
from pyro_blr.diagnostics.inputs import check_finite_inputs
from pyro_blr.diagnostics.marginal import marginal_mean, scaled_pointwise_log_likelihood
from pyro_blr.diagnostics.mistakes import check_call
from pyro_blr.diagnostics.psis import check_num_samples

__all__ = ["PREDICTIVES", "LOOSensitivity", "loo_sensitivity"]

PREDICTIVES = ("auto", "quadratic", "sample")
"""How :func:`loo_sensitivity` computes the predictive densities :math:`\\log p(y_i \\mid q)`."""

_MAX_ELEMENTS = 1 << 22  # per-datum log-likelihoods held at once by the Monte Carlo predictive


class LOOSensitivity(NamedTuple):
    r"""What leaving each datum out would do to a Gaussian posterior (tensors on the fit's device
    and dtype; :math:`N` data, :math:`D` latent coordinates, unconstrained as the guide's).

    Attributes:
        plate: the plate whose elements are the data.
        mean_shift: :math:`m_{\setminus i} - m`, shape ``(N, D)``.
        influence: the shift in the posterior's own metric,
            :math:`\lVert m_{\setminus i} - m\rVert_S = \sqrt{\delta_i^\top S \delta_i}`,
            shape ``(N,)`` (scale-free: 1 is a shift of one posterior standard deviation).
        lpd: :math:`\log p(y_i \mid q)`, the in-sample log predictive density, ``(N,)``.
        loo_lpd: :math:`\log p(y_i \mid q_{\setminus i})`, the leave-one-out one, ``(N,)``.
        delta_lpd: ``loo_lpd - lpd``, ``(N,)`` (negative: the datum is predicted worse when it
            is not learned from).
        elpd_loo: :math:`\sum_i \log p(y_i \mid q_{\setminus i})`, a 0-d tensor.
        se: its standard error :math:`\sqrt{N \operatorname{Var}_i \log p(y_i \mid
            q_{\setminus i})}` (as ArviZ computes it), a 0-d tensor.
        p_loo: the effective number of parameters :math:`\sum_i (\text{lpd}_i -
            \text{loo\_lpd}_i)`, a 0-d tensor.
        prediction_error: the residual of the predicted mean at the posterior mean,
            :math:`\mathbb E[y_i \mid m] - y_i` (its Euclidean norm when a datum has several
            values); NaN where the likelihood has no mean (e.g. ``Categorical``). ``(N,)``.
        prediction_variance: :math:`\operatorname{tr}(S^{-1} H_i)`, ``(N,)``: for a generalized
            linear model with canonical link, :math:`H_i = \lambda_i x_i x_i^\top` and this is
            the paper's :math:`\lambda_i v_i`, :math:`v_i = x_i^\top S^{-1} x_i`; summed over
            the data it is the number of parameters the data determine.
        method: ``"quadratic"`` or ``"sample"``, how the predictive densities were computed.
        num_samples: Monte Carlo draws per datum (0 for the closed form).
    """

    plate: str
    mean_shift: Tensor
    influence: Tensor
    lpd: Tensor
    loo_lpd: Tensor
    delta_lpd: Tensor
    elpd_loo: Tensor
    se: Tensor
    p_loo: Tensor
    prediction_error: Tensor
    prediction_variance: Tensor
    method: str
    num_samples: int

    def to_elpd_data(self) -> Any:
        """This estimate as ArviZ's ``ELPDData``, beside PSIS-LOO in ``az.compare``.

        The fields are those ``az.loo(..., pointwise=True)`` fills (ArviZ 0.x: ``elpd_loo``,
        ``se``, ``p_loo``, ``n_samples``, ``n_data_points``, ``warning``, ``loo_i`` with the
        plate as its dimension, ``scale="log"``; ArviZ 1.x: the same as ``elpd``, ``se``,
        ``p``, ..., ``elpd_i`` of an ``ELPDDataLOO``), without Pareto :math:`\\hat k`: no
        importance sampling is done. See
        :func:`~pyro_blr.diagnostics.arviz_compat.elpd_data`.

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
            >>> _ = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(y)  # the exact posterior
            >>> elpd = loo_sensitivity(model, guide, y).to_elpd_data()
            >>> type(elpd).__name__.startswith("ELPDData")
            True
        """
        return elpd_data(
            float(self.elpd_loo),
            float(self.se),
            float(self.p_loo),
            self.num_samples,
            to_numpy(self.loo_lpd),
            self.plate,
        )


def loo_sensitivity(
    model: Callable,
    guide: Callable,
    *args: Any,
    plate: str | None = None,
    predictive: str = "auto",
    num_samples: int = 256,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> LOOSensitivity:
    r"""Leave-one-out sensitivity of a Gaussian posterior by the memory-perturbation equation.

    The name says what it answers: for every datum :math:`i` of a plate, what leaving it out
    would do -- to the posterior mean (the *sensitivity*) and to the datum's predictive
    density (leave-one-out cross-validation, *LOO*, comparable to ``az.loo``) -- estimated from
    the fitted posterior alone, without one refit.

    For :math:`q = \mathcal N(m, S^{-1})` over the guide's flat unconstrained latent vector,
    with per-datum log-likelihoods :math:`\ell_i(\theta) = \log p(y_i \mid \theta)`, their
    gradients :math:`\nabla\ell_i` and Hessians :math:`-H_i` at :math:`m`,

    .. math::
        S_{\setminus i} = S - H_i, \qquad
        m_{\setminus i} = m - S_{\setminus i}^{-1} \nabla\ell_i(m).

    For a diagonal guide (``AutoNormal``, ``AutoDiagonalNormal``) the guide's precision is only
    the diagonal of the curvature, so the Newton step takes the full Hessian
    :math:`P = \nabla^2\ell(m)` of the negative log joint instead,
    :math:`m_{\setminus i} = m - (P - H_i)^{-1}\nabla\ell_i(m)`, and the leave-one-out guide
    keeps the family: :math:`S_{\setminus i} = S - \operatorname{diag} H_i`. On a conjugate
    Gaussian model this is exactly the diagonal guide refitted without datum :math:`i` (the
    mean-field optimum has the exact mean and precision :math:`\operatorname{diag} P`); its
    predictive densities are those of that refit, narrower than the exact posterior's.

    A discrete site marked ``infer={"enumerate": "parallel"}`` and local to the data plate (a
    mixture's assignment) is summed out of its datum's term,
    :math:`\ell_i(\theta) = \log \sum_{z_i} p(z_i \mid \theta)\, p(y_i \mid z_i, \theta)`:
    leaving the datum out removes its assignment with it. One shared by several data (a global
    assignment, an HMM's chain) gives them no separate terms, and is refused by name.

    The guide must be fitted: its distance from a fixed point of the learning rule
    (:func:`~pyro_blr.diagnostics.fixed_point.fixed_point_gap`: the step from :math:`m` in
    posterior standard deviations, and the factor between :math:`S` and the curvature) is
    measured first, to the delta method's fixed point (derivatives at :math:`m`, where
    ``pb.Newton`` stops) and, when that one is not met, to the variational one (expected
    derivatives under :math:`q`, where ``pb.VON``, ``pb.IVON`` and SVI stop); a guide far from
    both is refused (e.g. one never fitted), one near but not at the closer is warned about with
    the error it implies. The LOO predictive density
    :math:`\log p(y_i \mid q_{\setminus i}) = \log \mathbb E_{q_{\setminus i}}\, e^{\ell_i}`
    is computed

    * ``"quadratic"``: in closed form for the second-order expansion of :math:`\ell_i` at
      :math:`m`; with :math:`\delta = m_{\setminus i} - m`, :math:`P = S_{\setminus i}`,
      :math:`b = \nabla\ell_i + P\delta`,

      .. math::
          \log p(y_i \mid q_{\setminus i}) = \ell_i(m) - \tfrac12 \delta^\top P \delta
          + \tfrac12 b^\top (P + H_i)^{-1} b - \tfrac12 \log\frac{\det(P + H_i)}{\det P},

      exact when :math:`\ell_i` is quadratic in :math:`\theta` (a Gaussian likelihood linear in
      the latents); the in-sample :math:`\log p(y_i \mid q)` is the same with :math:`\delta = 0`,
      :math:`P = S`;
    * ``"sample"``: by ``num_samples`` Monte Carlo draws from each :math:`q_{\setminus i}` (and
      from :math:`q`), the same standard-normal draws for every datum;
    * ``"auto"``: ``"quadratic"`` when :math:`\ell_i` is quadratic to round-off (checked on
      four points one posterior standard deviation away from :math:`m`), else ``"sample"``.

    Args:
        model: the Pyro model, called with the full data (no subsampled plate).
        guide: its ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal`` guide,
            fitted by ``pb.BLR`` or by SVI.
        *args: the model's positional arguments.
        plate: the plate whose elements are the data; needed only when the observed sites lie
            in more than one plate.
        predictive: ``"auto"``, ``"quadratic"`` or ``"sample"`` (see above).
        num_samples: Monte Carlo draws per datum for ``"sample"``.
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named like an option of this function (``plate``, ``predictive``,
            ``num_samples``), which would otherwise be taken for the option.
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`LOOSensitivity`; ``.to_elpd_data()`` gives ArviZ's ``ELPDData``.

    Raises:
        TypeError: the guide is not one of Pyro's Gaussian autoguides, or a model argument
            named like an option without ``model_kwargs=``.
        ValueError: a guide far from a fixed point (never fitted), a subsampled plate
            (vectorized or sequential), an observed site whose shape does not match its plates,
            data or inputs holding NaN or inf (naming the site), no observed site in a plate,
            observed sites in several plates and no
            ``plate=``, a subsampled data plate, a latent site local to the data plate (naming
            it: leaving a datum out would also remove its latent; an enumerated one is summed
            out instead), an enumerated site shared by several data, or a datum whose curvature
            exceeds the posterior's (:math:`S - H_i` not positive definite: the guide is not at
            a fixed point of the learning rule for this model).

    Warns:
        UserWarning: a guide near but not at a fixed point, with the error it implies.

    Note:
        Cost: one model run gives all :math:`N` per-datum terms; the gradients take :math:`D`
        forward-mode tangents of that run and the Hessians :math:`D^2` (vectorized, memory
        :math:`N D^2`), then :math:`N` Cholesky factorizations of :math:`D \times D` matrices:
        :math:`O(N D^3)` in all, no refit and no draw. PSIS-LOO needs :math:`S` posterior draws
        and :math:`S` model runs; exact LOO needs :math:`N` refits. ``"sample"`` adds
        :math:`N \cdot` ``num_samples`` model runs (vectorized, in chunks), each over all
        :math:`N` data, so :math:`O(N^2)` work: prefer ``"quadratic"`` for large :math:`N`.

        The expansion is at the mean (the delta method), which is the fixed point of
        ``pb.BLR(model, guide, pb.Newton())``; for a ``"von"`` fit the paper's expectations under
        :math:`q` differ from it by the posterior's spread.

    References:
        | The Memory-Perturbation Equation: Understanding Model's Sensitivity to Data
        | (Nickl, Xu, Tailor, Möllenhoff & Khan, NeurIPS 2023)
        | https://arxiv.org/abs/2310.19273

    Example:
        Conjugate linear regression: the estimate is the exact leave-one-out posterior.

        >>> import pyro, pyro.distributions as dist, torch
        >>> from pyro.infer.autoguide import AutoMultivariateNormal
        >>> import pyro_blr as pb
        >>> X = torch.tensor([[1.0, 0.2], [1.0, -1.0], [1.0, 0.7], [1.0, 1.5]], dtype=torch.float64)
        >>> y = torch.tensor([0.3, -1.2, 0.9, 1.4], dtype=torch.float64)
        >>> def model(X, y):
        ...     w = pyro.sample("w", dist.Normal(X.new_zeros(2), 1.0).to_event(1))
        ...     with pyro.plate("data", len(y)):
        ...         pyro.sample("y", dist.Normal(X @ w, 0.5), obs=y)
        >>> guide = AutoMultivariateNormal(model)
        >>> _ = pb.BLR(model, guide, pb.Newton(lr=1.0)).step(X, y)  # the exact posterior
        >>> loo = pb.loo_sensitivity(model, guide, X, y)
        >>> precision = torch.eye(2, dtype=X.dtype) + X[1:].T @ X[1:] / 0.25  # refit without y[0]
        >>> refit = torch.linalg.solve(precision, X[1:].T @ y[1:] / 0.25)
        >>> torch.allclose(guide.loc + loo.mean_shift[0], refit), loo.method
        (True, 'quadratic')
    """
    entry = "loo_sensitivity"
    options = ("plate", "predictive", "num_samples")
    kwargs = model_keywords(model, entry, options, kwargs, model_kwargs)
    if predictive not in PREDICTIVES:
        raise ValueError(f"predictive must be one of {PREDICTIVES}, got {predictive!r}")
    num_samples = check_num_samples(num_samples)
    check_call(model, guide, args, kwargs, entry)  # swapped, or data left out
    check_gaussian_guide(guide, entry)
    like = initialize_guide(guide, args, kwargs)
    # the model's structure before the fit's; sites marked for parallel enumeration are summed
    # out of each datum's likelihood
    check_model_and_guide(model, guide, args, kwargs, summed=True)
    full_trace = trace_without_rng(model, args, kwargs, like)
    # a sequential plate is named here; a vectorized one by _data_plate, with the data plate
    check_full_data(full_trace, entry, " (leave-one-out needs every datum)", sequential_only=True)
    layout = latent_layout(guide.prototype_trace, full_trace)
    loc, precision = GaussianGuide(guide, layout).read()
    loc, precision = loc.detach(), precision.detach()
    # NaN or inf data: site and datum named (a site the model enumerates is drawn from its prior
    # in this run, which leaves the generator where it was: the same draws follow, enumerated
    # or not)
    with pyro.validation_enabled(False), torch.no_grad(), rng_kept(loc):
        check_finite_inputs(_condition(model, layout, loc, args, kwargs), entry)
    validate_site_shapes(full_trace)  # y of shape (N, 1) in a plate of N: named by Pyro
    plate, num_data, dim, data_sites = _data_plate(full_trace, layout, plate)
    diagonal = precision.dim() == 1
    precision_matrix = torch.diag_embed(precision) if diagonal else precision

    log_lik = _per_datum(model, layout, dim, num_data, data_sites, args, kwargs)
    with torch.no_grad():
        value = log_lik(loc)  # validation on: Pyro's shape and support checks, once
    grad, hess = _derivatives(log_lik, loc, functorch=not layout.enumerated)
    grad, hess = grad.to(loc.dtype), hess.to(loc.dtype)  # the data's dtype, whatever the model's
    curvature = -hess  # H_i
    joint = Target.build(model, args, kwargs, layout, "loop").derivatives(loc[None], "hessian")
    joint_grad, joint_hess = joint.grad[0].to(loc.dtype), joint.hess[0].to(loc.dtype)
    gaps = {"the delta method, pb.Newton": fixed_point_gap(joint_grad, joint_hess, precision)}
    if needs_second_opinion(gaps["the delta method, pb.Newton"]):
        gaps["the variational one, 'von', 'ivon' or SVI"] = _expected_gap(
            model, layout, loc, precision, precision_matrix, args, kwargs
        )
    check_fixed_point(gaps, entry)
    # The Newton step to the leave-one-out mean needs the full curvature of the remaining data:
    # a full guide's precision is that curvature at its fixed point, a diagonal guide's is only
    # its diagonal, so for it the Hessian of the log joint is used. The leave-one-out guide then
    # keeps the guide's family: S - H_i, or diag(S) - diag(H_i) (the mean-field fixed point).
    newton_precision = joint_hess if diagonal else precision_matrix
    removed = torch.diag_embed(curvature.diagonal(dim1=-2, dim2=-1)) if diagonal else curvature
    loo_precision = precision_matrix - removed
    loo_chol, info = torch.linalg.cholesky_ex(loo_precision)
    newton_chol, newton_info = (
        torch.linalg.cholesky_ex(newton_precision - curvature) if diagonal else (loo_chol, info)
    )
    if (info != 0).any() or (newton_info != 0).any():
        bad = torch.nonzero((info != 0) | (newton_info != 0)).flatten()[:5].tolist()
        raise ValueError(
            f"leaving out datum {bad} of plate '{plate}' leaves a precision S - H_i that is not "
            "positive definite: the datum's curvature exceeds the posterior's, so the guide is "
            "not at a fixed point of the learning rule for this model (fit it longer, e.g. with "
            "pb.BLR(model, guide, pb.Newton()))"
        )
    shift = -torch.cholesky_solve(grad[..., None], newton_chol)[..., 0]
    influence = (shift * (precision_matrix @ shift[..., None])[..., 0]).sum(-1).clamp(min=0).sqrt()
    chol = torch.linalg.cholesky(precision_matrix)
    variance = torch.cholesky_solve(curvature, chol).diagonal(dim1=-2, dim2=-1).sum(-1)
    error = _prediction_error(model, layout, dim, num_data, data_sites, loc, args, kwargs)

    if predictive == "auto":
        quadratic = _is_quadratic(log_lik, loc, chol, value, grad, hess)
        predictive = "quadratic" if quadratic else "sample"
    if predictive == "quadratic":
        lpd = _quadratic_predictive(value, grad, curvature, torch.zeros_like(shift),
                                    precision_matrix.expand_as(curvature))  # fmt: skip
        loo_lpd = _quadratic_predictive(value, grad, curvature, shift, loo_precision)
        draws = 0
    else:
        gen_shape = (num_samples, loc.shape[0])
        noise = torch.randn(gen_shape, dtype=loc.dtype, device=loc.device)
        batched = None
        if layout.enumerated:  # vmap cannot run the enumeration: a particle plate can
            batched = _enumerated_batch(model, layout, dim, num_data, data_sites, args, kwargs)
        lpd = _sampled_predictive(log_lik, loc[None], chol[None], noise, num_data, batched)
        loo_lpd = _sampled_predictive(log_lik, loc + shift, loo_chol, noise, num_data, batched)
        draws = num_samples
    elpd = loo_lpd.sum()
    se = (num_data * loo_lpd.var(correction=0)).sqrt()
    return LOOSensitivity(
        plate=plate,
        mean_shift=shift,
        influence=influence,
        lpd=lpd,
        loo_lpd=loo_lpd,
        delta_lpd=loo_lpd - lpd,
        elpd_loo=elpd,
        se=se,
        p_loo=(lpd - loo_lpd).sum(),
        prediction_error=error,
        prediction_variance=variance,
        method=predictive,
        num_samples=draws,
    )


def _data_plate(
    trace, layout: LatentLayout, plate: str | None
) -> tuple[str, int, int, tuple[str, ...]]:
    """The data plate's name, size and dim, and the observed sites inside it."""
    observed = [
        (name, site)
        for name, site in sample_sites(trace, deterministic=False)
        if site["is_observed"]
    ]
    plates: dict[str, list[str]] = {}
    frames = {}
    for name, site in observed:
        for frame in site["cond_indep_stack"]:
            if frame.vectorized:
                plates.setdefault(frame.name, []).append(name)
                frames[frame.name] = frame
    if plate is None:
        if not plates:
            names = [name for name, _ in observed] or "none"
            raise ValueError(
                f"no observed site lies in a pyro.plate (observed sites: {names}): the data "
                "must be the elements of a vectorized plate"
            )
        if len(plates) > 1:
            where = "; ".join(f"'{p}': {sites}" for p, sites in plates.items())
            raise ValueError(
                f"the observed sites lie in several plates ({where}): say which plate holds the "
                "data with plate=..."
            )
        plate = next(iter(plates))
    if plate not in plates:
        raise ValueError(
            f"no observed site lies in plate '{plate}' (plates of observed sites: {list(plates)})"
        )
    frame = frames[plate]
    if is_subsampled(frame):
        raise ValueError(
            f"plate '{plate}' is subsampled ({frame.size} of {full_size(frame)}): leave-one-out "
            "sensitivity needs the full data; call the model without subsample_size"
        )
    for latent in layout.sites:
        stack = trace.nodes[latent.name]["cond_indep_stack"]
        if any(f.name == plate for f in stack):
            raise ValueError(
                f"latent site '{latent.name}' is local to the data plate '{plate}': leaving a "
                "datum out would also remove its latent, which the memory-perturbation "
                "equation does not cover; marginalize it out in the model"
            )
    return plate, frame.size, frame.dim, tuple(plates[plate])


FIXED_POINT_DRAWS = 32
"""Antithetic pairs of draws from the guide that estimate its expected gradient and Hessian."""


def _expected_gap(
    model: Callable,
    layout: LatentLayout,
    loc: Tensor,
    precision: Tensor,
    precision_matrix: Tensor,
    args: tuple,
    kwargs: dict,
) -> FixedPointGap:
    r"""The guide's gaps to the variational fixed point, :math:`\mathbb E_q[\nabla\ell] = 0`,
    :math:`S = \mathbb E_q[\nabla^2\ell]`, from :data:`FIXED_POINT_DRAWS` antithetic pairs
    :math:`m \pm C^{-\top}\varepsilon` (their gradients' linear part cancels exactly; seeded,
    so the check is the same on every call and leaves the RNG alone)."""
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(
        (FIXED_POINT_DRAWS, loc.shape[0]), generator=generator, dtype=loc.dtype, device=loc.device
    )
    chol = torch.linalg.cholesky(precision_matrix)
    offsets = torch.linalg.solve_triangular(chol.mT, torch.cat([noise, -noise]).T, upper=True).T
    theta = loc + offsets
    mode = choose_vectorization(model, layout, theta[:2], args, kwargs)
    expected = Target.build(model, args, kwargs, layout, mode).derivatives(theta, "hessian")
    grad = expected.grad.mean(0).to(loc.dtype)
    return fixed_point_gap(grad, expected.hess.mean(0).to(loc.dtype), precision)


def _values(layout: LatentLayout, theta: Tensor) -> dict[str, Tensor]:
    """Each latent site's constrained value at the flat unconstrained ``theta`` ``(D,)``."""
    return {
        site.name: site.transform(theta[site.block].reshape(site.shape)) for site in layout.sites
    }


def _condition(model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict):
    """One run of the model at ``theta``; the sites it enumerates are drawn from their prior
    (callers that need them summed out use :func:`_enumerated`)."""
    values = _values(layout, theta)
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(*args, **kwargs)
    for name, site in sample_sites(trace, deterministic=False):
        if not site["is_observed"] and name not in layout.enumerated:
            raise ValueError(
                f"latent site '{name}' is not in the guide: make the model sample it on every run"
            )
    return trace


def _enumerated(model: Callable, layout: LatentLayout, theta: Tensor, args: tuple, kwargs: dict):
    """One packed run of the model at ``theta`` with its enumerated sites enumerated."""
    return enumerated_trace(model, args, kwargs, layout.max_plate_nesting, _values(layout, theta))


def _enumerated_batch(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    args: tuple,
    kwargs: dict,
) -> Callable[[Tensor], Tensor]:
    """:math:`\\theta \\mapsto (\\log p(y_i \\mid \\theta))_i` of many draws ``(B, D) -> (B, N)``
    in one enumerated run inside a particle plate, the enumerated sites summed out of each
    datum's term. The model must broadcast over the plate: the first three draws are checked
    against one run each (to :math:`\\sqrt{\\epsilon}`), and a mismatch or a failure raises
    ``ValueError``, on which the caller runs the draws one by one."""
    one = _per_datum(model, layout, dim, num_data, sites, args, kwargs)
    nesting = layout.max_plate_nesting

    def batched(theta: Tensor) -> Tensor:
        num = theta.shape[0]
        unpacked = layout.unpack(theta).values()
        values = {s.name: s.transform(u) for s, u in zip(layout.sites, unpacked, strict=True)}
        trace = enumerated_trace(model, args, kwargs, nesting, values, (PARTICLE_PLATE, num))
        rows = 0.0
        for name in sites:
            term = scaled_pointwise_log_likelihood(trace, name)
            term = term.reshape((*(1,) * (nesting + 1 - term.dim()), *term.shape))
            rows = rows + term.expand(num, *term.shape[1:]).movedim(dim, 1).reshape(
                num, num_data, -1
            ).sum(-1)
        count = min(3, num)
        exact = torch.stack([one(t) for t in theta[:count]])
        tol = torch.finfo(exact.dtype).eps ** 0.5
        if not torch.allclose(rows[:count], exact, rtol=tol, atol=tol, equal_nan=True):
            raise ValueError("the particle plate gives other per-datum terms than one run each")
        return rows

    return batched


def _by_datum(term: Tensor, dim: int, num_data: int, name: str) -> Tensor:
    """A site's term with the data plate's dimension first, summed over the rest: ``(N,)``."""
    return _by_datum_rows(term, dim, num_data, name).sum(-1)


def _per_datum(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    args: tuple,
    kwargs: dict,
) -> Callable[[Tensor], Tensor]:
    """:math:`\\theta \\mapsto (\\log p(y_i \\mid \\theta))_i`, one model run for all ``N``;
    the sites the model enumerates are summed out of each datum's term,
    :math:`\\log p(y_i \\mid \\theta) = \\log \\sum_{z_i} p(z_i \\mid \\theta)\\,
    p(y_i \\mid z_i, \\theta)` (a site shared by several data, which has no such term, is
    refused by name)."""

    def log_lik(theta: Tensor) -> Tensor:
        if layout.enumerated:
            trace = _enumerated(model, layout, theta, args, kwargs)
            terms = {name: scaled_pointwise_log_likelihood(trace, name) for name in sites}
        else:
            terms = dict(site_log_probs(_condition(model, layout, theta, args, kwargs)))
        return sum(_by_datum(terms[name], dim, num_data, name) for name in sites)

    return log_lik


def _quiet(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """``fn`` with Pyro's validation off: its support checks are data-dependent control flow,
    which ``torch.func`` transforms refuse (validation runs once, outside)."""

    def quiet(theta: Tensor) -> Tensor:
        with pyro.validation_enabled(False):
            return fn(theta)

    return quiet


def _derivatives(
    log_lik: Callable[[Tensor], Tensor], loc: Tensor, functorch: bool = True
) -> tuple[Tensor, Tensor]:
    """Per-datum gradients ``(N, D)`` and Hessians ``(N, D, D)`` at ``loc``.

    Forward mode: each tangent is one model run over all ``N`` data, so the gradients cost
    :math:`D` runs and the Hessians :math:`D^2` (batched by ``vmap``), where reverse mode would
    need one backward pass per datum through the whole graph (:math:`N` times the work).
    ``functorch=False`` goes straight to autograd's loop (Pyro's tensor contraction, which sums
    enumerated sites out, has an ``autograd.Function`` that ``torch.func`` refuses).
    """
    quiet = _quiet(log_lik)
    jacfwd, jacrev = torch.func.jacfwd, torch.func.jacrev
    with torch.enable_grad():
        if functorch:
            try:
                return jacfwd(quiet)(loc).detach(), _symmetric(jacfwd(jacfwd(quiet))(loc))
            # an operator without a forward-mode rule (ValueError: the enumerated run names
            # the failure; a real error in the model is raised again by the loop, outside
            # torch.func)
            except (RuntimeError, NotImplementedError, ValueError):
                pass
            try:
                return jacrev(quiet)(loc).detach(), _symmetric(jacfwd(jacrev(quiet))(loc))
            except (RuntimeError, NotImplementedError, ValueError):  # nor a batching rule
                pass
        jacobian = torch.autograd.functional.jacobian
        hess = jacobian(lambda t: jacobian(quiet, t, create_graph=True), loc)
        return jacobian(quiet, loc).detach(), _symmetric(hess)


def _symmetric(hess: Tensor) -> Tensor:
    return (0.5 * (hess + hess.mT)).detach()


def _prediction_error(
    model: Callable,
    layout: LatentLayout,
    dim: int,
    num_data: int,
    sites: tuple[str, ...],
    loc: Tensor,
    args: tuple,
    kwargs: dict,
) -> Tensor:
    """The residual of the likelihood's mean at ``loc``, per datum (a norm when vector-valued);
    the sites the model enumerates summed out of the mean by their prior
    (:func:`~pyro_blr.diagnostics.marginal.marginal_mean`)."""
    nesting = layout.max_plate_nesting
    with torch.no_grad():
        if layout.enumerated:
            trace = _enumerated(model, layout, loc, args, kwargs)
        else:
            trace = _condition(model, layout, loc, args, kwargs)
        residuals = []
        for name in sites:
            site = trace.nodes[name]
            fn, value = site["fn"], site["value"]
            batch_shape = fn.batch_shape
            if layout.enumerated:
                batch_shape = batch_shape[max(0, len(batch_shape) - nesting) :]
                mean = marginal_mean(trace, name, nesting)
            else:
                try:
                    mean = fn.mean
                except NotImplementedError:  # a likelihood without a mean
                    mean = None
            if mean is None:
                residual = torch.full_like(value, math.nan, dtype=loc.dtype)
            else:
                residual = (mean - value).to(loc.dtype)
            residual = residual.expand(batch_shape + fn.event_shape)
            flat = residual.reshape(*batch_shape, -1)  # the event flattened last
            residuals.append(_by_datum_rows(flat, dim - 1, num_data, name))
        residual = torch.cat(residuals, -1)
    return residual[:, 0] if residual.shape[1] == 1 else residual.norm(dim=-1)


def _by_datum_rows(term: Tensor, dim: int, num_data: int, name: str) -> Tensor:
    """``term`` with the data plate's dimension first and the rest flattened: ``(N, K)``."""
    if term.dim() < -dim or term.shape[dim] != num_data:
        raise ValueError(
            f"observed site '{name}' has shape {tuple(term.shape)}, without the data plate's "
            f"{num_data} elements at dim {dim}"
        )
    return term.movedim(dim, 0).reshape(num_data, -1)


def _is_quadratic(
    log_lik: Callable[[Tensor], Tensor],
    loc: Tensor,
    chol: Tensor,
    value: Tensor,
    grad: Tensor,
    hess: Tensor,
) -> bool:
    """Whether every :math:`\\ell_i` equals its second-order expansion at ``loc`` to round-off,
    on four points one posterior standard deviation away along two fixed directions."""
    dim = loc.shape[0]
    ones = torch.ones(dim, dtype=loc.dtype, device=loc.device)
    alternating = ones.clone()
    alternating[1::2] = -1.0
    directions = torch.stack([ones, alternating, -ones, -alternating]) / math.sqrt(dim)
    steps = torch.linalg.solve_triangular(chol.mT, directions.T, upper=True).T  # ~ N(0, S^-1)
    eps = torch.finfo(loc.dtype).eps
    with torch.no_grad():
        for step in steps:
            linear = grad @ step
            quadratic = 0.5 * (step @ hess @ step)
            expansion = value + linear + quadratic
            actual = log_lik(loc + step)
            scale = value.abs() + linear.abs() + quadratic.abs() + 1.0
            if not bool(((actual - expansion).abs() <= 1e3 * eps * scale).all()):
                return False
    return True


def _quadratic_predictive(
    value: Tensor, grad: Tensor, curvature: Tensor, shift: Tensor, precision: Tensor
) -> Tensor:
    r""":math:`\log \int e^{\tilde\ell_i(\theta)}\, \mathcal N(\theta; m + \delta_i, P_i^{-1})\,
    d\theta` for the second-order expansion :math:`\tilde\ell_i` at :math:`m`, per datum."""
    pull = grad + (precision @ shift[..., None])[..., 0]
    joint = precision + curvature
    joint_chol, info = torch.linalg.cholesky_ex(joint)
    if (info != 0).any():
        bad = torch.nonzero(info).flatten()[:5].tolist()
        raise ValueError(
            f"the log-likelihood of datum {bad} curves upward faster than the posterior "
            "narrows (P + H_i is not positive definite): use predictive='sample'"
        )
    solved = torch.cholesky_solve(pull[..., None], joint_chol)[..., 0]
    log_det_joint = 2 * joint_chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det = torch.linalg.cholesky(precision).diagonal(dim1=-2, dim2=-1).log().sum(-1) * 2
    penalty = (shift * (precision @ shift[..., None])[..., 0]).sum(-1)
    return value - 0.5 * penalty + 0.5 * (pull * solved).sum(-1) - 0.5 * (log_det_joint - log_det)


def _sampled_predictive(
    log_lik: Callable[[Tensor], Tensor],
    means: Tensor,
    precision_chols: Tensor,
    noise: Tensor,
    num_data: int,
    batched: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    r""":math:`\log \frac1S \sum_s p(y_i \mid \theta_{is})`, :math:`\theta_{is} = \mu_i +
    C_i^{-\top}\varepsilon_s` for ``K`` Gaussians (``means`` ``(K, D)``, Cholesky factors of their
    precisions ``(K, D, D)``): datum ``i`` under Gaussian ``i`` when ``K = N``, every datum
    under the one Gaussian when ``K = 1`` (then ``(N,)`` is returned as well). ``batched``:
    ``log_lik`` of many draws at once (by default ``vmap`` of it)."""
    num_gaussians = means.shape[0]
    num_samples = noise.shape[0]
    quiet = _quiet(log_lik)
    batched = batched or torch.func.vmap(quiet, randomness="different")
    rows = max(1, _MAX_ELEMENTS // (num_samples * num_data))
    out = []
    with torch.no_grad():
        for start in range(0, num_gaussians, rows):
            stop = min(start + rows, num_gaussians)
            offsets = torch.linalg.solve_triangular(
                precision_chols[start:stop].mT, noise.T.expand(stop - start, -1, -1), upper=True
            )  # (B, D, S)
            theta = (means[start:stop, :, None] + offsets).mT.reshape(-1, means.shape[1])
            try:
                values = batched(theta)
            # a model that vmap cannot run (ValueError: the enumerated run, which names the
            # failure): one run per draw, which raises a real error in the model again
            except (RuntimeError, ValueError):
                values = torch.stack([quiet(t) for t in theta])
            values = values.reshape(stop - start, num_samples, num_data)
            if num_gaussians == 1:
                out.append(values[0].logsumexp(0))
            else:
                index = torch.arange(start, stop, device=values.device)
                out.append(values[torch.arange(stop - start), :, index].logsumexp(-1))
    return torch.cat(out) - math.log(num_samples)
