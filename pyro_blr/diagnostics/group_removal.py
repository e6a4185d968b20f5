r"""What removing a group of data at once -- a class, a site, a source -- would do to a Gaussian
posterior, without refitting: the memory-perturbation equation for a set (Nickl, Xu, Tailor,
Möllenhoff & Khan, NeurIPS 2023).

At a fixed point of the Bayesian learning rule the precision of :math:`q = \mathcal N(m, S^{-1})`
is the prior's plus a sum of per-datum curvatures, so removing a group :math:`G` removes its
share, :math:`S_{\setminus G} = S - H_G` with :math:`H_G = -\sum_{i \in G}\nabla^2\ell_i(m)`
(:math:`\ell_i = \log p(y_i \mid \theta)`): a rank-:math:`|G|` downdate for a linear model. One
Newton step from :math:`m` on the remaining data gives the mean,

.. math::
    m_{\setminus G} = m - S_{\setminus G}^{-1} \sum_{i \in G} \nabla\ell_i(m),

exactly the posterior refitted without :math:`G` on a conjugate Gaussian model. The group's
gradient and Hessian are those of its summed log-likelihood, so each group costs one gradient
and one Hessian however many data it holds (:func:`loo_sensitivity` is the case of
single-datum groups, with the predictive densities besides).

For a network trained with IVON the Hessians are out of reach, and the cheap diagonal version
takes the guide's own diagonal precision for :math:`S_{\setminus G}` (the paper's
approximation :math:`S_{\setminus G} \approx S`, good while the group is a small part of the
data): :math:`m_{\setminus G} - m \approx -S^{-1}\sum_{i \in G}\nabla\ell_i(m)`, one backward
pass per group, cheap enough to run during training.

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
    trace_without_rng,
    validate_site_shapes,
)
from pyro_blr.core.log_joint import conditioned_trace
from pyro_blr.diagnostics.datum_groups import DataGroups, data_groups, group_log_likelihood
from pyro_blr.diagnostics.fit_gap import check_mean_gap, newton_step
from pyro_blr.diagnostics.fixed_point import (
    FixedPointGap,
    check_fixed_point,
    fixed_point_gap,
    needs_second_opinion,
)
from pyro_blr.diagnostics.inputs import check_finite_inputs
from pyro_blr.diagnostics.mistakes import check_call

__all__ = ["METHODS", "GroupRemoval", "removal_sensitivity"]

METHODS = ("newton", "diagonal")
"""How :func:`removal_sensitivity` takes the curvature: exact Hessians, or the guide's diagonal."""

FIXED_POINT_DRAWS = 32
"""Antithetic pairs of draws that estimate the expected gradient (and Hessian) under the guide."""


class GroupRemoval(NamedTuple):
    r"""What removing each group would do to a Gaussian posterior (:math:`G` groups, :math:`D`
    unconstrained latent coordinates as the guide's; tensors in the fit's dtype and device).

    Attributes:
        plate: the plate whose elements are the data.
        labels: each group's label (its key, its position, or its value of a label tensor).
        sizes: the number of data in each group, ``(G,)``.
        loc: the fitted mean :math:`m`, ``(D,)``.
        mean_shift: :math:`m_{\setminus G} - m`, ``(G, D)``.
        precision: the precision after removal in the guide's family, :math:`S - H_G`
            (``(G, D, D)``) or its diagonal :math:`S - \operatorname{diag} H_G` (``(G, D)``);
            ``None`` for ``method="diagonal"``, which does not compute :math:`H_G`.
        influence: :math:`\lVert m_{\setminus G} - m \rVert_S`, the shift in posterior standard
            deviations, ``(G,)``.
        method: ``"newton"`` or ``"diagonal"``.
    """

    plate: str
    labels: tuple
    sizes: Tensor
    loc: Tensor
    mean_shift: Tensor
    precision: Tensor | None
    influence: Tensor
    method: str

    def means(self) -> Tensor:
        r""":math:`m_{\setminus G}` for every group, ``(G, D)``."""
        return self.loc + self.mean_shift


def removal_sensitivity(
    model: Callable,
    guide: Callable,
    *args: Any,
    groups: Any,
    plate: str | None = None,
    method: str = "newton",
    check: bool = True,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> GroupRemoval:
    r"""The posterior after removing each group of data, by the memory-perturbation equation.

    With :math:`\ell_G = \sum_{i \in G} \log p(y_i \mid \theta)` the group's log-likelihood and
    :math:`H_G = -\nabla^2 \ell_G(m)`:

    * ``method="newton"``: :math:`S_{\setminus G} = S - H_G`,
      :math:`m_{\setminus G} = m - S_{\setminus G}^{-1}\nabla\ell_G(m)`; exact on a conjugate
      Gaussian model (the rank-:math:`|G|` downdate), one Newton step otherwise. For a diagonal
      guide the step takes the full Hessian :math:`P` of the negative log joint,
      :math:`m_{\setminus G} = m - (P - H_G)^{-1}\nabla\ell_G(m)`, and the precision keeps the
      family, :math:`S - \operatorname{diag} H_G` (as :func:`loo_sensitivity` does). Cost: a
      gradient and a :math:`D \times D` Hessian per group.
    * ``method="diagonal"``: :math:`m_{\setminus G} - m \approx -S^{-1}\nabla\ell_G(m)` with the
      guide's own precision :math:`S` (diagonal for ``AutoNormal``/``AutoDiagonalNormal``, e.g.
      fitted by ``pb.IVON``): no Hessian, one backward pass per group, linear in :math:`D`. It
      neglects the group's share of the precision, so it underestimates the shift of a large
      group (by about the factor :math:`S_{\setminus G}^{-1} S`).

    The guide must be near a fixed point of the learning rule (see
    :func:`~pyro_blr.diagnostics.fixed_point.check_fixed_point`): the delta method's, or the
    variational one estimated from antithetic draws (``"newton"``: the thresholds of
    :func:`loo_sensitivity`); ``"diagonal"``, meant for stochastic fits of networks, checks the
    mean's gap against the shifts it estimates instead (refused when a shift is smaller).

    Args:
        model: the Pyro model, called with the full data (no subsampled plate).
        guide: its fitted ``AutoNormal``, ``AutoDiagonalNormal`` or ``AutoMultivariateNormal``.
        *args: the model's positional arguments.
        groups: the groups, as indices (or boolean masks) into the data plate: a mapping
            ``label -> indices``, a sequence of index collections, or a tensor of one label per
            datum (e.g. ``groups=y`` for one group per class).
        plate: the plate whose elements are the data; needed only when the observed sites lie
            in more than one plate.
        method: ``"newton"`` or ``"diagonal"`` (see above).
        check: measure the guide's distance from a fixed point first (above); it costs
            :math:`2 \times` :data:`FIXED_POINT_DRAWS` gradients (and Hessians for
            ``"newton"``) of the log joint. ``False`` skips it, e.g. for estimates taken
            during training, where the guide is not at a fixed point yet by design.
        model_kwargs: the model's keyword arguments as a dict; required when the model has an
            argument named like an option (``groups``, ``plate``, ``method``, ``check``).
        **kwargs: the model's keyword arguments.

    Warns:
        UserWarning: a guide near but not at a fixed point, with the error it implies.

    Returns:
        A :class:`GroupRemoval`; ``removal_predictions`` (in
        :mod:`pyro_blr.diagnostics.removal_predictions`) turns it into the change of each
        prediction.

    Raises:
        TypeError: not a Gaussian guide, or a model argument named like an option without
            ``model_kwargs=``.
        ValueError: an unknown method; a model and guide swapped, data left out, NaN or inf
            in the data, or an observed site whose shape does not match its plates (naming
            the site); a group that is empty, out of range or repeats a datum
            (naming it); a subsampled data plate or a latent local to it; a guide far from a
            fixed point (``"diagonal"``: farther than a group's shift, naming it); or a
            removal that leaves a precision that is not positive definite (naming the group:
            the group carries more curvature than the posterior holds).

    References:
        | The Memory-Perturbation Equation: Understanding Model's Sensitivity to Data
        | (Nickl, Xu, Tailor, Möllenhoff & Khan, NeurIPS 2023)
        | https://arxiv.org/abs/2310.19273

    Example:
        Conjugate linear regression: removing the first two data is exactly the refit without
        them.

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
        >>> removal = removal_sensitivity(model, guide, X, y, groups={"first two": [0, 1]})
        >>> precision = torch.eye(2, dtype=X.dtype) + X[2:].T @ X[2:] / 0.25  # refit without them
        >>> refit = torch.linalg.solve(precision, X[2:].T @ y[2:] / 0.25)
        >>> torch.allclose(removal.means()[0], refit)
        True
        >>> torch.allclose(removal.precision[0], precision)
        True
    """
    entry = "removal_sensitivity"
    kwargs = model_keywords(
        model, entry, ("groups", "plate", "method", "check"), kwargs, model_kwargs
    )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    check_call(model, guide, args, kwargs, entry)  # swapped, or data left out
    check_gaussian_guide(guide, entry)
    like = initialize_guide(guide, args, kwargs)
    check_model_and_guide(model, guide, args, kwargs)
    full_trace = trace_without_rng(model, args, kwargs, like)
    check_full_data(full_trace, entry, " (removing a group needs every datum)", True)
    layout = latent_layout(guide.prototype_trace, full_trace)
    loc, precision = (t.detach() for t in GaussianGuide(guide, layout).read())
    with pyro.validation_enabled(False), torch.no_grad():  # NaN or inf data: site and datum named
        check_finite_inputs(conditioned_trace(model, layout, loc, args, kwargs, {})[0], entry)
    validate_site_shapes(full_trace)  # y of shape (N, 1) in a plate of N: named by Pyro
    found = data_groups(full_trace, layout, plate, groups, loc)
    log_lik = group_log_likelihood(model, layout, found, args, kwargs)
    diagonal = precision.dim() == 1
    grads = _jacobian(log_lik, loc)  # (G, D): the groups' log-likelihood gradients at m
    target = Target.build(model, args, kwargs, layout, "loop")
    if method == "diagonal":
        shift = -(grads / precision if diagonal else _solve(precision, grads))
        result = _result(found, loc, shift, None, precision, method)
        if check:
            _check_mean_gap(target, result, precision, entry)
        return result
    joint = target.derivatives(loc[None], "hessian")
    joint_grad, joint_hess = joint.grad[0].to(loc.dtype), joint.hess[0].to(loc.dtype)
    if check:
        gaps = {"the delta method, pb.Newton": fixed_point_gap(joint_grad, joint_hess, precision)}
        if needs_second_opinion(gaps["the delta method, pb.Newton"]):
            gaps["the variational one, 'von', 'ivon' or SVI"] = _expected_gap(
                target, loc, precision
            )
        check_fixed_point(gaps, entry)
    curvature = -_jacobian(lambda t: _jacobian(log_lik, t, create_graph=True), loc)  # (G, D, D)
    curvature = 0.5 * (curvature + curvature.mT)
    matrix = torch.diag_embed(precision) if diagonal else precision
    newton = (joint_hess if diagonal else matrix) - curvature
    after = precision - curvature.diagonal(dim1=-2, dim2=-1) if diagonal else newton
    chol, info = torch.linalg.cholesky_ex(newton)
    not_positive = (info != 0) | ((after <= 0).any(-1) if diagonal else info != 0)
    if bool(not_positive.any()):
        bad = [found.labels[g] for g in torch.nonzero(not_positive).flatten()[:5].tolist()]
        raise ValueError(
            f"removing group(s) {bad} of plate '{found.plate}' leaves a precision S - H_G that "
            "is not positive definite: the group carries more curvature than the posterior "
            "holds, so the guide is not at a fixed point of the learning rule for this model "
            "(fit it longer, e.g. with pb.BLR(model, guide, pb.Newton())), or the group is most "
            "of the data (refit without it)"
        )
    shift = -torch.cholesky_solve(grads[..., None], chol)[..., 0]
    return _result(found, loc, shift, after, precision, method)


def _result(found: DataGroups, loc, shift, after, precision, method) -> GroupRemoval:
    metric = shift * precision if precision.dim() == 1 else shift @ precision
    influence = (metric * shift).sum(-1).clamp(min=0).sqrt()
    sizes = found.weights.sum(-1).to(torch.long)
    return GroupRemoval(found.plate, found.labels, sizes, loc, shift, after, influence, method)


def _solve(precision: Tensor, rows: Tensor) -> Tensor:
    return torch.cholesky_solve(rows.T, torch.linalg.cholesky(precision)).T


def _jacobian(fn: Callable[[Tensor], Tensor], theta: Tensor, create_graph: bool = False) -> Tensor:
    """The Jacobian of ``fn`` (outputs ``(G,)`` or ``(G, D)``) at ``theta``, one backward pass
    per output row; Pyro's validation off inside (it ran once when the data were read)."""
    jacobian = torch.autograd.functional.jacobian
    with torch.enable_grad(), pyro.validation_enabled(False):
        try:
            jac = jacobian(fn, theta, create_graph=create_graph, vectorize=True)
        except RuntimeError:  # an operator without a batching rule: one pass per row
            jac = jacobian(fn, theta, create_graph=create_graph)
    return jac if create_graph else jac.detach()


def _draws(loc: Tensor, precision: Tensor) -> Tensor:
    """:data:`FIXED_POINT_DRAWS` antithetic pairs from :math:`\\mathcal N(m, S^{-1})`, seeded
    (the check is the same on every call and leaves the global RNG alone)."""
    generator = torch.Generator(device=loc.device).manual_seed(0)
    noise = torch.randn(
        (FIXED_POINT_DRAWS, loc.shape[0]), generator=generator, dtype=loc.dtype, device=loc.device
    )
    noise = torch.cat([noise, -noise])
    if precision.dim() == 1:
        return loc + noise * precision.rsqrt()
    chol = torch.linalg.cholesky(precision)
    return loc + torch.linalg.solve_triangular(chol.mT, noise.T, upper=True).T


def _expected_gap(target: Target, loc: Tensor, precision: Tensor) -> FixedPointGap:
    expected = target.derivatives(_draws(loc, precision), "hessian")
    grad, hess = expected.grad.mean(0).to(loc.dtype), expected.hess.mean(0).to(loc.dtype)
    return fixed_point_gap(grad, hess, precision)


def _check_mean_gap(target: Target, result: GroupRemoval, precision: Tensor, entry: str) -> None:
    r"""The diagonal method's check: the guide's mean gap :math:`r` (a Newton step from
    :math:`m` in posterior standard deviations, at the mean and in expectation under the guide,
    the smaller) against every shift it estimates (see
    :func:`~pyro_blr.diagnostics.fit_gap.check_mean_gap`)."""
    loc = result.loc
    expected = target.derivatives(_draws(loc, precision)).grad.mean(0)
    steps = {
        "the delta method, pb.Newton": newton_step(
            target.derivatives(loc[None]).grad[0], precision
        ),
        "the variational one, 'von', 'ivon' or SVI": newton_step(expected, precision),
    }
    smallest = int(result.influence.argmin())
    shift = float(result.influence[smallest])
    label = result.labels[smallest]
    check_mean_gap(
        steps,
        precision,
        entry,
        error=lambda step, gap: gap,  # about r in every shift
        reference=shift,
        compared=f"the smallest shift estimated, of group {label!r}, is {shift:.3g}",
        fix="fit the guide longer (e.g. with a decaying lr), or remove larger groups",
        reference_name="the shift",
        stacklevel=4,  # the caller of removal_sensitivity
    )
