r"""A lower bound on the log evidence from plain (stochastic) gradient descent chains.

Start :math:`r` chains from :math:`q_0 = \mathcal N(m_0, \sigma_0^2 I)` in the model's
unconstrained coordinates and run gradient descent on :math:`\ell = -\log p(\mathcal D, \theta)`,
:math:`\theta_{t+1} = \theta_t - \beta P \nabla\ell(\theta_t)` (:math:`P` an optional
positive-definite preconditioner). The chains' distribution :math:`q_t` has entropy

.. math::
    \mathbb H[q_{t+1}] = \mathbb H[q_t] + \mathbb E_{q_t} \log\lvert\det(I - \beta P
    \nabla^2\ell(\theta_t))\rvert,

so :math:`\mathcal L_t = \mathbb E_{q_t}[\log p(\mathcal D, \theta_t)] + \mathbb H[q_t] \le \log
p(\mathcal D)` is an ELBO of the implicit distribution of SGD's iterates. Its maximum over
:math:`t` is the early-stopping point. The log-determinant is computed exactly (autograd Hessian,
small models) or by the second-order expansion :math:`-\beta\operatorname{tr}(PH) -
\tfrac{\beta^2}{2}\operatorname{tr}((PH)^2)` with Hutchinson probes and Hessian-vector products.
With ``langevin=True`` each step adds :math:`\mathcal N(0, 2\beta T P)` noise, and the entropy
power inequality, :math:`e^{2\mathbb H[X+Y]/D} \ge e^{2\mathbb H[X]/D} + e^{2\mathbb H[Y]/D}`, keeps
the entropy a lower bound (Altieri & Duvenaud 2015).

**Minibatches.** A model whose plate subsamples (``pyro.plate(..., subsample_size=B)``) gets
stochastic gradient steps, and the bound stays valid: each step's minibatch :math:`\mathcal B_t`
is drawn independently of the chains and shared by them, so given the minibatches the step is the
deterministic map :math:`\theta \mapsto \theta - \beta P\nabla\hat\ell_{\mathcal
B_t}(\theta)`, whose Jacobian :math:`I - \beta P \nabla^2\hat\ell_{\mathcal B_t}` (the
minibatch Hessian, the one the step used) tracks the entropy exactly as above, and any
distribution of the chains gives an ELBO. The energy term must still be the full data's: the
unbiased minibatch estimate :math:`-\hat\ell_{\mathcal B_t}(\theta_t)` would make each
:math:`\mathcal L_t` noisy, and their maximum over steps (the best bound) biased upward, far
above :math:`\log p(\mathcal D)` for small minibatches (the lecture's SGLD evidence has this
flaw). So :math:`\mathbb E_{q_t}\log p(\mathcal D, \theta_t)` is computed on the full data at
every step, recovered exactly from forward runs of the unchanged model on minibatches that cover
the plate (:func:`pyro_blr.evidence.minibatch.full_data_neg_log_joint`, no gradients): ``bound``
and ``best`` mean what they mean without minibatches, with the same Monte Carlo error.

**Enumerated discrete sites.** A site marked ``infer={"enumerate": "parallel"}`` (Pyro's
mixture and HMM tutorials) is summed out at every step, as ``TraceEnum_ELBO`` sums it
(:func:`pyro_blr.core.enumerated_log_joint`): the chains move the continuous latents on
:math:`\log\sum_z p(\mathcal D, \theta, z)`, with its gradient and Hessian by autograd, and the
bound is on the same evidence. A local enumerated site inside a subsampled plate takes exact
minibatch steps (its sum is per datum, :math:`N/B` outside it); an enumerated site outside a
subsampled plate whose data depend on it is refused, naming both (:math:`\log\sum_z` of a
minibatch has no unbiased estimate), and so is a discrete site the model does not mark.

References:
    | Early Stopping as Nonparametric Variational Inference (Duvenaud, Maclaurin & Adams,
      AISTATS 2016) https://arxiv.org/abs/1504.01344
    | Variational Inference with Gradient Flows (Altieri & Duvenaud, NeurIPS AABI 2015)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import pyro.poutine as poutine
import torch
from torch import Tensor

from pyro_blr.core import (
    LatentLayout,
    PlateDraw,
    check_latent_masks,
    choose_vectorization,
    draw_subsample,
    enumerated_trace,
    hessian_from_grad,
    latent_layout,
    model_keywords,
    neg_log_joint,
    nonfinite_term,
    rng_kept,
    sample_sites,
    validate_site_shapes,
)
from pyro_blr.core.checks import initialized_cuda_devices
from pyro_blr.core.enumerated_terms import nonfinite_reason
from pyro_blr.core.enumeration import enumerated_sites
from pyro_blr.evidence.minibatch import full_data_neg_log_joint, minibatch_plates

__all__ = [
    "SGDEvidence",
    "evidence_bound",
    "gaussian_entropy",
    "hutchinson_traces",
    "langevin_entropy",
    "log_det_expansion",
    "sgd_evidence",
    "step_log_det",
]


class SGDEvidence(NamedTuple):
    """The entropy-via-optimization bound along the chains.

    Attributes:
        bound: :math:`\\mathcal L_t` for :math:`t = 0, \\dots, T` (a tensor of shape ``(T + 1,)``),
            on the full data even when the steps use minibatches.
        best: its maximum, a float.
        best_step: where the maximum is reached (the early-stopping point).
    """

    bound: Tensor
    best: float
    best_step: int


class _Preconditioner:
    """P = L L^T, a positive vector (diagonal) or a positive-definite matrix."""

    def __init__(self, matrix: Tensor):
        self.diagonal = matrix.dim() == 1
        if self.diagonal:
            if not (matrix > 0).all():
                raise ValueError("a vector preconditioner must be positive")
            self.factor = matrix.sqrt()
        else:
            factor, info = torch.linalg.cholesky_ex(matrix)
            if info != 0:
                raise ValueError("a matrix preconditioner must be positive definite")
            self.factor = factor
        self.log_det = float(
            2 * (self.factor if self.diagonal else self.factor.diagonal()).log().sum()
        )

    def matrix_root(self) -> Tensor:
        """L as a matrix."""
        return torch.diag(self.factor) if self.diagonal else self.factor

    def root(self, v: Tensor) -> Tensor:
        """L v for rows v."""
        return self.factor * v if self.diagonal else v @ self.factor.mT

    def root_t(self, v: Tensor) -> Tensor:
        """L^T v for rows v."""
        return self.factor * v if self.diagonal else v @ self.factor

    def apply(self, v: Tensor) -> Tensor:
        """P v for rows v."""
        return self.root(self.root_t(v))


def gaussian_entropy(dim: int, log_variance: float) -> float:
    r"""Entropy of an isotropic Gaussian in :math:`D` dimensions,
    :math:`\tfrac D2 \log(2\pi e\,\sigma^2)`, from :math:`\log\sigma^2` (``-inf`` allowed).

    Example:
        >>> round(gaussian_entropy(2, 0.0), 6)  # N(0, I_2)
        2.837877
    """
    if log_variance == -math.inf:
        return -math.inf
    return 0.5 * dim * (math.log(2 * math.pi * math.e) + log_variance)


def step_log_det(hess: Tensor, step_size: float, root: Tensor) -> tuple[Tensor, Tensor]:
    r"""The exact entropy change of one gradient step, per chain.

    .. math::
        \Delta\mathbb H = \log\lvert\det(I - \beta P H)\rvert
        = \log\lvert\det(I - \beta L^\top H L)\rvert, \qquad P = L L^\top,

    (the two matrices are similar), and the spectral radius of :math:`B = \beta L^\top H L`: the
    step is invertible only while it stays below 1.

    Args:
        hess: Hessians :math:`H` of the negative log joint, shape ``(r, D, D)``.
        step_size: :math:`\beta`.
        root: :math:`L`, shape ``(D, D)``.

    Returns:
        ``(log_det, radius)``, each of shape ``(r,)``.

    Example:
        >>> import torch
        >>> hess = torch.diag(torch.tensor([1.0, 4.0]))[None]
        >>> log_det, radius = step_log_det(hess, 0.1, torch.eye(2))
        >>> torch.allclose(log_det, torch.log(torch.tensor([0.9 * 0.6]))), radius.tolist()
        (True, [0.4000000059604645])
    """
    scaled = step_size * root.mT @ hess @ root
    eye = torch.eye(hess.shape[-1], dtype=hess.dtype, device=hess.device)
    log_det = torch.linalg.slogdet(eye - scaled).logabsdet
    return log_det, torch.linalg.eigvalsh(scaled).abs().amax(-1)


def hutchinson_traces(
    matvec: Callable[[Tensor], Tensor], probes: Iterable[Tensor]
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Hutchinson estimates of :math:`\operatorname{tr} B` and :math:`\operatorname{tr} B^2` for
    a symmetric :math:`B` (one per chain), from Rademacher probes :math:`v`.

    .. math::
        \mathbb E[v^\top B v] = \operatorname{tr} B, \qquad
        \mathbb E\lVert B v\rVert^2 = \mathbb E[v^\top B^2 v] = \operatorname{tr} B^2.

    Args:
        matvec: :math:`v \mapsto Bv` on rows ``(r, D)`` (one matrix per chain).
        probes: Rademacher vectors, each of shape ``(r, D)``.

    Returns:
        ``(trace, trace_of_square, norm_ratio)``: the averages over the probes, shape ``(r,)``,
        and the largest :math:`\lVert Bv\rVert / \lVert v\rVert` seen (a lower bound on the
        spectral radius).

    References:
        | A Stochastic Estimator of the Trace of the Influence Matrix for Laplacian Smoothing
          Splines (Hutchinson, 1990) https://doi.org/10.1080/03610919008812866

    Example:
        >>> import torch
        >>> B = torch.tensor([[2.0, 0.0], [0.0, -1.0]])  # diagonal: every probe is exact
        >>> probes = [torch.tensor([[1.0, -1.0]]), torch.tensor([[-1.0, -1.0]])]
        >>> trace, square, _ = hutchinson_traces(lambda v: v @ B, probes)
        >>> trace.tolist(), square.tolist()
        ([1.0], [5.0])
    """
    first = second = ratio = None
    count = 0
    for v in probes:
        bv = matvec(v)
        quad, norm2 = (v * bv).sum(-1), bv.square().sum(-1)
        step_ratio = bv.norm(dim=-1) / v.norm(dim=-1)
        if first is None:
            first, second, ratio = quad, norm2, step_ratio
        else:
            first, second = first + quad, second + norm2
            ratio = torch.maximum(ratio, step_ratio)
        count += 1
    if count == 0:
        raise ValueError("hutchinson_traces needs at least one probe")
    return first / count, second / count, ratio


def log_det_expansion(trace: Tensor, trace_of_square: Tensor) -> Tensor:
    r"""The second-order expansion of the entropy change of one gradient step,

    .. math::
        \log\lvert\det(I - B)\rvert = -\operatorname{tr} B - \tfrac12 \operatorname{tr} B^2
        - \tfrac13 \operatorname{tr} B^3 - \dots \approx -\operatorname{tr} B
        - \tfrac12 \operatorname{tr} B^2,

    accurate while the spectral radius of :math:`B = \beta L^\top H L` is well below 1 (the
    first neglected term is :math:`\tfrac13\operatorname{tr}B^3`).

    Example:
        >>> import torch
        >>> log_det_expansion(torch.tensor(0.1), torch.tensor(0.01))
        tensor(-0.1050)
    """
    return -(trace + 0.5 * trace_of_square)


def langevin_entropy(entropy: float, noise_entropy: float, dim: int) -> float:
    r"""A lower bound on the entropy after adding independent Gaussian noise, by the entropy
    power inequality:

    .. math::
        \mathbb H[X + Y] \ge \tfrac D2 \log\big(e^{2\mathbb H[X]/D} + e^{2\mathbb H[Y]/D}\big).

    References:
        | Variational Inference with Gradient Flows (Altieri & Duvenaud, NeurIPS AABI 2015)

    Example:
        >>> # two independent N(0, 1) in one dimension: N(0, 2), an equality for Gaussians
        >>> h = gaussian_entropy(1, 0.0)
        >>> round(langevin_entropy(h, h, 1) - gaussian_entropy(1, math.log(2.0)), 12)
        0.0
    """
    both = torch.tensor([2 * entropy / dim, 2 * noise_entropy / dim], dtype=torch.float64)
    return 0.5 * dim * float(torch.logsumexp(both, 0))


def evidence_bound(neg_log_joint: Tensor, entropy: float) -> float:
    r"""The bound :math:`\mathcal L_t = \mathbb E_{q_t}[\log p(\mathcal D, \theta_t)] +
    \mathbb H[q_t]`, the expectation a chain average of :math:`-\ell(\theta_t)`.

    Example:
        >>> import torch
        >>> evidence_bound(torch.tensor([1.0, 3.0]), 0.5)
        -1.5
    """
    return float(-neg_log_joint.detach().mean()) + entropy


def _rademacher(like: Tensor) -> Tensor:
    return torch.randint(0, 2, like.shape, device=like.device).to(like.dtype) * 2 - 1


def _hvp(grad: Tensor, theta: Tensor, vector: Tensor) -> Tensor:
    (product,) = torch.autograd.grad(grad, theta, grad_outputs=vector, retain_graph=True)
    return product


def _probed_log_det(
    grad: Tensor, theta: Tensor, step_size: float, precond: _Preconditioner, num_probes: int
) -> tuple[Tensor, Tensor]:
    """The expansion of log|det(I - beta P H)| per chain from Hutchinson probes on the similar
    matrix B = beta L^T H L (Hessian-vector products of ``grad``), and the probes' largest
    |Bv|/|v|."""

    def matvec(v: Tensor) -> Tensor:
        return step_size * precond.root_t(_hvp(grad, theta, precond.root(v)))

    probes = (_rademacher(theta) for _ in range(num_probes))
    trace_b, trace_b2, ratio = hutchinson_traces(matvec, probes)
    return log_det_expansion(trace_b, trace_b2), ratio


def _setup(
    model: Callable, args: tuple, kwargs: dict, init_loc: Tensor | None, preconditioner
) -> tuple[LatentLayout, dict, Tensor, _Preconditioner, tuple[PlateDraw, ...]]:
    """The model's latent layout, the dtype and device of its values, m_0, P and the plates
    whose minibatches each step draws.

    Sites marked ``infer={"enumerate": "parallel"}`` are summed out (the layout records them,
    and :func:`pyro_blr.core.neg_log_joint` contracts them at every step): they are left out of
    the flat vector, as a guide built on ``poutine.block(model, hide=[...])`` leaves them out.
    The set-up runs leave the random generators where they were, so that the chains' draws do
    not depend on how many values the model draws (a model and its hand-summed twin give the
    same chains from the same seed)."""
    with torch.random.fork_rng(devices=initialized_cuda_devices()), poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
        draws = minibatch_plates(model, args, kwargs, trace, "sgd_evidence")  # runs the model
    enumerated = enumerated_sites(trace)  # refuses sequential and Monte Carlo enumeration
    _check_discrete(trace, enumerated)
    check_latent_masks(trace, enumerated)
    validate_site_shapes(trace)  # a value broadcasting against a plate is named, not summed
    prototype = trace.copy()  # the continuous latents only: the enumerated sites are summed
    for name in enumerated:
        prototype.remove_node(name)
    layout = latent_layout(prototype, trace)  # refuses a latent local to a subsampled plate
    if enumerated and draws:
        _check_enumerated_minibatch(model, args, kwargs, trace, layout, draws)
    like = trace.nodes[layout.sites[0].name]["value"]
    dtype = like.dtype if like.is_floating_point() else torch.get_default_dtype()
    options = {"dtype": dtype, "device": like.device}
    dim = layout.dim
    loc = torch.zeros(dim, **options) if init_loc is None else init_loc.to(**options)
    if loc.shape != (dim,):
        raise ValueError(f"init_loc must have shape ({dim},), got {tuple(loc.shape)}")
    precond = _Preconditioner(
        torch.ones(dim, **options) if preconditioner is None else preconditioner.to(**options)
    )
    return layout, options, loc, precond, draws


def _check_discrete(trace, enumerated: tuple[str, ...]) -> None:
    """Refuse a discrete latent site the model does not mark for enumeration: gradient descent
    moves continuous coordinates only (sgd_evidence takes no guide, so the fix is the model's)."""
    for name, site in sample_sites(trace, deterministic=False):
        fn = site["fn"]
        discrete = getattr(fn, "has_enumerate_support", False) or fn.support.is_discrete
        if site["is_observed"] or name in enumerated or not discrete:
            continue
        raise ValueError(
            f"latent site '{name}' is discrete ({type(fn).__name__}): sgd_evidence runs gradient "
            "descent on the continuous latents and sums discrete ones out only when the model "
            f"marks them: sample '{name}' with infer={{'enumerate': 'parallel'}} (or wrap the "
            "model in pyro.infer.config_enumerate), marginalize it out in the model by hand, or "
            "observe it"
        )


def _check_enumerated_minibatch(
    model: Callable,
    args: tuple,
    kwargs: dict,
    trace,
    layout: LatentLayout,
    draws: tuple[PlateDraw, ...],
) -> None:
    r"""Refuse minibatch steps where a site inside a subsampled plate depends on an enumerated
    site outside it: :math:`\log\sum_z` of a minibatch's terms has no unbiased estimate (only
    an enumerated site local to the plate, summed out per datum and scaled by :math:`N/B`
    outside the sum, is exact). One enumerated run at the set-up values finds the dependence
    (the packed dimensions each factor touches), the random generators left where they were."""
    plates = {draw.name for draw in draws}
    values = {site.name: trace.nodes[site.name]["value"] for site in layout.sites}
    values.update({name: trace.nodes[name]["value"] for name in plates if name in trace.nodes})
    like = next(iter(values.values()))
    with rng_kept(like), poutine.block():
        packed = enumerated_trace(model, args, kwargs, layout.max_plate_nesting, values)
    plate_symbols = set(packed.plate_to_symbol.values())

    def frames(site: dict) -> set[str]:
        return {f.name for f in site["cond_indep_stack"]}

    def dims(site: dict) -> set[str]:
        return set(site["packed"]["log_prob"]._pyro_dims)

    sites = dict(sample_sites(packed, deterministic=False))
    for plate in sorted(plates):
        for name in layout.enumerated:
            if plate in frames(sites[name]):
                continue  # local to the plate: summed out per datum, exact
            own = dims(sites[name]) - plate_symbols
            for other, site in sites.items():
                if plate in frames(site) and dims(site) & own:
                    raise ValueError(
                        f"enumerated site '{name}' lies outside the subsampled plate '{plate}', "
                        f"whose site '{other}' depends on it: the log of a sum over '{name}' "
                        "has no unbiased minibatch estimate, so sgd_evidence cannot take "
                        f"minibatch steps on it; put '{name}' inside plate '{plate}' with the "
                        "data it explains (a local enumerated site is summed out per datum), "
                        "or call the model without subsample_size"
                    )


def _vectorization(model: Callable, layout: LatentLayout, loc: Tensor, args, kwargs, draws) -> str:
    """Plate, vmap or loop: the fastest that matches one model run per chain (X @ w models)."""
    with rng_kept(loc):
        probe = loc + torch.randn(3, layout.dim, dtype=loc.dtype, device=loc.device)
        fixed = draw_subsample(draws) if draws else None
        return choose_vectorization(model, layout, probe, args, kwargs, subsample=fixed)


def _entropy_change(
    grad: Tensor,
    theta: Tensor,
    hessian: str,
    step_size: float,
    precond: _Preconditioner,
    num_probes: int,
) -> tuple[Tensor, Tensor]:
    """log|det(I - beta P H)| per chain (exact or by the probed expansion) and the curvature
    measure the step-size warning uses."""
    if hessian == "exact":
        hess = hessian_from_grad(grad, theta)
        return step_log_det(hess, step_size, precond.matrix_root())
    return _probed_log_det(grad, theta, step_size, precond, num_probes)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _check_arguments(hessian, num_chains, num_steps, step_size, temperature, init_scale,
                     num_probes) -> None:  # fmt: skip
    if hessian not in ("exact", "hutchinson"):
        raise ValueError(f"hessian must be 'exact' or 'hutchinson', got {hessian!r}")
    _check_positive_int("num_chains", num_chains)
    _check_positive_int("num_steps", num_steps)
    _check_positive_int("num_probes", num_probes)
    if not step_size > 0 or not math.isfinite(step_size):
        raise ValueError(f"step_size must be positive and finite, got {step_size}")
    if not temperature >= 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be non-negative and finite, got {temperature}")
    if not init_scale > 0 or not math.isfinite(init_scale):
        raise ValueError(f"init_scale must be positive and finite, got {init_scale}")


def _full_data(values: Tensor, theta: Tensor, step: int, context: tuple) -> Tensor:
    """The chains' full-data negative log joint: ``values`` themselves without minibatches,
    else recovered from the plates' minibatch covers (no gradient)."""
    model, layout, args, kwargs, mode, draws = context
    if not draws:
        return values
    with torch.no_grad():
        full = full_data_neg_log_joint(model, layout, theta.detach(), args, kwargs, mode, draws)
    if not torch.isfinite(full).all():
        raise ValueError(
            f"at step {step} the full-data log joint is not finite on some chains although "
            "their minibatch's is: a datum outside the minibatch is impossible there (check "
            "the likelihood's support) or the chains diverged (lower step_size)"
        )
    return full


def _check_finite(values: Tensor, terms: list, step: int) -> None:
    """Name the site whose log density makes the log joint of some chain not finite."""
    if torch.isfinite(values).all():
        return
    name, value = nonfinite_term(terms[-1]) or ("the log joint", float("nan"))
    where = "the log-Jacobian of the latent map" if name == "log|det J|" else f"site '{name}'"
    raise ValueError(
        f"at step {step} the log density of {where} is {value} on some chains: "
        + (
            "the data are impossible there (check the likelihood's support)"
            if value == -math.inf
            else "the chains diverged or the density failed numerically (lower step_size)"
        )
    )


def _explain_enumerated(
    values: Tensor, theta: Tensor, step: int, context: tuple, batch: dict[str, Tensor]
) -> None:
    """Name the site whose log density makes the first non-finite chain's log joint, its
    enumerated sites summed out, not finite (a site apart from them, or the sum over them)."""
    model, layout, args, kwargs, _, _ = context
    row = int((~torch.isfinite(values)).nonzero()[0, 0])
    point = {
        site.name: site.transform(theta[row, site.block].reshape(site.shape))
        for site in layout.sites
    }
    with torch.no_grad(), poutine.block():
        trace = enumerated_trace(
            model, args, kwargs, layout.max_plate_nesting, {**point, **batch}
        )  # fmt: skip
    reason = nonfinite_reason(trace)
    if reason is not None:
        raise ValueError(
            f"at step {step} on chain {row}, {reason}; if the chains diverged there, lower "
            "step_size"
        )


def _warn_curvature(worst: float, hessian: str) -> None:
    limit = 1.0 if hessian == "exact" else 0.5
    if worst < limit:
        return
    warnings.warn(
        f"step_size * largest curvature reached {worst:.3g} (>= {limit}): "
        + (
            "the gradient step is not invertible, so the bound is invalid"
            if worst >= 1
            else "the second-order log-determinant expansion is inaccurate"
        )
        + "; lower step_size",
        stacklevel=3,
    )


def sgd_evidence(
    model: Callable,
    *args: Any,
    num_chains: int = 10,
    num_steps: int = 100,
    step_size: float = 1e-3,
    hessian: str = "hutchinson",
    langevin: bool = False,
    temperature: float = 1.0,
    init_loc: Tensor | None = None,
    init_scale: float = 1.0,
    preconditioner: Tensor | None = None,
    num_probes: int = 1,
    model_kwargs: dict | None = None,
    **kwargs: Any,
) -> SGDEvidence:
    r"""Run gradient-descent chains and track the entropy-via-optimization bound on
    :math:`\log p(\mathcal D)` (see the module docstring for the maths).

    Args:
        model: the Pyro model (its latent sites are mapped to unconstrained coordinates; sites
            marked ``infer={"enumerate": "parallel"}`` are summed out, see the module
            docstring).
        *args: the model's positional arguments. A vectorized plate with ``subsample_size``
            gives stochastic gradient steps (see the module docstring; the bound itself is
            evaluated on the full data, by :math:`N/\gcd(N, B)` forward runs per step and
            plate); a sequential or nested subsampled plate is refused.
        num_chains: the number :math:`r` of chains.
        num_steps: the number :math:`T` of gradient steps.
        step_size: :math:`\beta`.
        hessian: ``"exact"`` (autograd Hessian per chain and step; small models) or
            ``"hutchinson"`` (second-order expansion with Hessian-vector products).
        langevin: add SGLD noise :math:`\mathcal N(0, 2\beta T P)` and the entropy-power bound.
        temperature: :math:`T` for the Langevin noise.
        init_loc: :math:`m_0` (unconstrained, shape ``(D,)``); zeros if not given.
        init_scale: :math:`\sigma_0`.
        preconditioner: :math:`P`, a positive vector (diagonal) or a positive-definite matrix,
            e.g. a fitted Gaussian guide's variances or covariance; the identity if not given.
        num_probes: Hutchinson probes per chain and step.
        model_kwargs: the model's keyword arguments, given as a dict; required when the model
            has an argument named like an option of this function (``num_chains``,
            ``num_steps``, ``step_size``, ...), which would otherwise be taken for the option.
        **kwargs: the model's keyword arguments.

    Returns:
        ``SGDEvidence(bound, best, best_step)``.

    Warns:
        UserWarning: when :math:`\beta\lambda_{\max}(P^{1/2} H P^{1/2}) \ge 1` somewhere on the
            chains (the step is not invertible and the bound is invalid), or :math:`\ge 0.5` with
            ``hessian="hutchinson"`` (the expansion is inaccurate).

    Example:
        >>> import pyro, pyro.distributions as dist, torch
        >>> import pyro_blr as pb
        >>> def model():
        ...     pyro.sample("x", dist.Normal(torch.tensor(0.0), 1.0))
        >>> # q_t = N(0, 9 * 0.9^(2t)) reaches the posterior N(0, 1) near t = 10, where the bound
        >>> # meets log p(D) = 0
        >>> result = pb.sgd_evidence(model, num_chains=1000, num_steps=30, step_size=0.1,
        ...                          hessian="exact", init_scale=3.0)
        >>> -0.1 < result.best < 0.1, 7 <= result.best_step <= 15
        (True, True)
    """
    options = ("num_chains", "num_steps", "step_size", "hessian", "langevin", "temperature",
               "init_loc", "init_scale", "preconditioner", "num_probes")  # fmt: skip
    kwargs = model_keywords(model, "sgd_evidence", options, kwargs, model_kwargs)
    _check_arguments(hessian, num_chains, num_steps, step_size, temperature, init_scale,
                     num_probes)  # fmt: skip
    layout, options, loc, precond, draws = _setup(model, args, kwargs, init_loc, preconditioner)
    mode = _vectorization(model, layout, loc, args, kwargs, draws)
    dim = layout.dim
    noise_variance = 2 * temperature * step_size
    noise_entropy = gaussian_entropy(
        dim, math.log(noise_variance) if noise_variance > 0 else -math.inf
    )
    noise_entropy += 0.5 * precond.log_det

    theta = loc + init_scale * torch.randn(num_chains, dim, **options)
    entropy = gaussian_entropy(dim, 2 * math.log(init_scale))
    bounds, worst, terms = [], 0.0, []
    context = (model, layout, args, kwargs, mode, draws)
    for t in range(num_steps + 1):
        batch = draw_subsample(draws) if draws else {}  # this step's minibatch, as Pyro draws it
        with torch.enable_grad():
            theta = theta.detach().requires_grad_(True)
            try:
                values = neg_log_joint(model, layout, theta, args, kwargs, mode, None, batch)
                if not torch.isfinite(values).all() and layout.enumerated:
                    _explain_enumerated(values.detach(), theta.detach(), t, context, batch)
                if not torch.isfinite(values).all():  # again, one chain at a time, to name it
                    with torch.no_grad():
                        neg_log_joint(model, layout, theta, args, kwargs, "loop", terms, batch)
                    _check_finite(values.detach(), [[x for run in terms for x in run]], t)
            except ValueError as error:  # e.g. a distribution refusing an overflowed parameter
                if t == 0 or str(error).startswith(f"at step {t} "):
                    raise
                raise ValueError(
                    f"at step {t} the model refused the chains' values ("
                    f"{str(error).splitlines()[0]}): the chains diverged; lower step_size"
                ) from error
            (grad,) = torch.autograd.grad(values.sum(), theta, create_graph=t < num_steps)
            bounds.append(evidence_bound(_full_data(values, theta, t, context), entropy))
            if t == num_steps:
                break
            log_det, curvature = _entropy_change(
                grad, theta, hessian, step_size, precond, num_probes
            )
        worst = max(worst, float(curvature.detach().max()))
        entropy += float(log_det.detach().mean())
        theta = theta.detach() - step_size * precond.apply(grad.detach())
        if langevin and noise_variance > 0:
            noise = precond.root(torch.randn_like(theta))
            theta = theta + math.sqrt(noise_variance) * noise
            entropy = langevin_entropy(entropy, noise_entropy, dim)
    _warn_curvature(worst, hessian)
    bound = torch.tensor(bounds, **options)
    best_step = int(bound.argmax())
    return SGDEvidence(bound, float(bound[best_step]), best_step)
