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

from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from torch import Tensor

from pyro_blr.core import (
    GaussianGuide,
    Target,
    check_full_data,
    check_gaussian_guide,
    check_model_and_guide,
    initialize_guide,
    latent_layout,
    model_keywords,
    rng_kept,
    trace_without_rng,
    validate_site_shapes,
)
from pyro_blr.diagnostics.arviz_compat import elpd_data, to_numpy
from pyro_blr.diagnostics.datum_terms import (
    conditioned_run,
    data_plate,
    per_datum_derivatives,
    per_datum_log_likelihood,
    prediction_error,
)
from pyro_blr.diagnostics.fit_gap import (
    FIXED_POINT_DRAWS,
    check_mean_gap,
    check_precision_gap,
    newton_step,
    variational_gap,
)
from pyro_blr.diagnostics.fixed_point import (
    MEAN_GAP_ERROR,
    MEAN_GAP_WARNING,
    fixed_point_gap,
    needs_second_opinion,
)
from pyro_blr.diagnostics.inputs import check_finite_inputs
from pyro_blr.diagnostics.loo_predictive import predictive_densities
from pyro_blr.diagnostics.mistakes import check_call
from pyro_blr.diagnostics.psis import check_num_samples

__all__ = ["FIXED_POINT_DRAWS", "PREDICTIVES", "LOOSensitivity", "loo_sensitivity"]

PREDICTIVES = ("auto", "quadratic", "sample")
"""How :func:`loo_sensitivity` computes the predictive densities :math:`\\log p(y_i \\mid q)`."""

MAX_ELEMENTS = 1 << 22  # per-datum log-likelihoods held at once by the Monte Carlo predictive


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
    derivatives under :math:`q`, where ``pb.VON``, ``pb.IVON`` and SVI stop). A precision
    off the curvature at both by more than a factor 4 is refused (e.g. a guide never fitted),
    by more than 1.5 warned about; the mean gap :math:`r`, which grows like :math:`\sqrt D`
    with a stochastic fit's noise (a network fitted by ``pb.IVON``), by the error it puts in
    :math:`\mathrm{elpd}_{\mathrm{loo}}`, :math:`|\sum_i \nabla\ell_i^\top\delta|` to first
    order for the Newton step :math:`\delta`
    (:func:`~pyro_blr.diagnostics.fit_gap.check_mean_gap`): refused where :math:`r > 1` and
    that error exceeds the estimate's standard error, warned
    about where :math:`r > 0.1`. The LOO predictive density
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
        ValueError: a guide far from a fixed point (never fitted: a precision off by more
            than a factor 4, or a mean whose error in ``elpd_loo`` exceeds its standard error),
            a subsampled plate
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
    # a sequential plate is named here; a vectorized one by data_plate, with the data plate
    check_full_data(full_trace, entry, " (leave-one-out needs every datum)", sequential_only=True)
    layout = latent_layout(guide.prototype_trace, full_trace)
    loc, precision = GaussianGuide(guide, layout).read()
    loc, precision = loc.detach(), precision.detach()
    # NaN or inf data: site and datum named (a site the model enumerates is drawn from its prior
    # in this run, which leaves the generator where it was: the same draws follow, enumerated
    # or not)
    with pyro.validation_enabled(False), torch.no_grad(), rng_kept(loc):
        check_finite_inputs(conditioned_run(model, layout, loc, args, kwargs), entry)
    validate_site_shapes(full_trace)  # y of shape (N, 1) in a plate of N: named by Pyro
    plate, num_data, dim, data_sites = data_plate(full_trace, layout, plate)
    diagonal = precision.dim() == 1
    precision_matrix = torch.diag_embed(precision) if diagonal else precision

    log_lik = per_datum_log_likelihood(model, layout, dim, num_data, data_sites, args, kwargs)
    with torch.no_grad():
        value = log_lik(loc)  # validation on: Pyro's shape and support checks, once
    grad, hess = per_datum_derivatives(log_lik, loc, functorch=not layout.enumerated)
    grad, hess = grad.to(loc.dtype), hess.to(loc.dtype)  # the data's dtype, whatever the model's
    curvature = -hess  # H_i
    joint = Target.build(model, args, kwargs, layout, "loop").derivatives(loc[None], "hessian")
    joint_grad, joint_hess = joint.grad[0].to(loc.dtype), joint.hess[0].to(loc.dtype)
    gaps = {"the delta method, pb.Newton": fixed_point_gap(joint_grad, joint_hess, precision)}
    steps = {"the delta method, pb.Newton": newton_step(joint_grad, precision)}
    if needs_second_opinion(gaps["the delta method, pb.Newton"]):
        rule = "the variational one, 'von', 'ivon' or SVI"
        gaps[rule], expected = variational_gap(
            model, layout, loc, precision, precision_matrix, args, kwargs
        )
        steps[rule] = newton_step(expected, precision)
    check_precision_gap(gaps, entry)  # absolute: a factor per coordinate
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
    error = prediction_error(model, layout, dim, num_data, data_sites, loc, args, kwargs)

    def judge(se: float | None) -> None:
        # The mean gap grows like sqrt(D) with a stochastic fit's noise: it is judged by the
        # error it puts in elpd_loo (sum_i grad l_i . delta to first order) against its se.
        def moved(step: Tensor, gap: float) -> float:
            return float((grad @ step.to(grad.dtype)).sum().abs())

        compared = (
            f"elpd_loo's standard error is {se:.3g} nats" if se is not None else
            "elpd_loo could not be computed to judge it against"
        )  # fmt: skip
        check_mean_gap(steps, precision, entry, error=moved, reference=se or 0.0,
                       compared=compared, reference_name="its standard error",
                       refuse_above=MEAN_GAP_ERROR, warn_above=MEAN_GAP_WARNING,
                       stacklevel=4)  # fmt: skip

    try:
        lpd, loo_lpd, predictive = predictive_densities(
            predictive, log_lik, layout, loc, shift, chol, loo_chol, value, grad, hess,
            curvature, precision_matrix, loo_precision, num_samples, num_data,
            (model, dim, data_sites, args, kwargs),
        )  # fmt: skip
    except ValueError:
        judge(None)  # no estimate to judge the gap against: the absolute level (1 sd) alone
        raise
    draws = num_samples if predictive == "sample" else 0
    elpd = loo_lpd.sum()
    se = (num_data * loo_lpd.var(correction=0)).sqrt()
    judge(float(se))
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
