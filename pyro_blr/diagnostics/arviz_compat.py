r"""ArviZ of either generation: the few ArviZ calls this package makes, feature-detected.

ArviZ 0.x (``arviz.InferenceData``, ``az.psislw``) and ArviZ 1.x (built from ``arviz-base``,
``arviz-stats`` and ``arviz-plots``; ``xarray.DataTree`` instead of ``InferenceData``, PSIS moved
to ``arviz_stats``) differ in three places this package touches:

* **Import.** ArviZ 0.23 announces its refactor with a ``FutureWarning`` on import;
  :func:`import_arviz` silences it, and says what to install when ArviZ is missing.
* **PSIS.** :func:`psis_smooth` uses ``az.psislw`` when it takes log importance ratios (0.x),
  otherwise ``arviz_stats.base.array_stats.psislw``, which takes a log-likelihood and negates it
  (so the ratios are passed negated). Both fit a generalized Pareto distribution to the largest
  :math:`M = \lceil\min(S/5,\ 3\sqrt{S})\rceil` ratios (0.x) or
  :math:`\lfloor\cdot\rfloor`-rounded (1.x); :data:`MIN_PSIS_SAMPLES` draws give both at least
  the six tail draws a fit needs (ArviZ 1.x's fit returns :math:`\hat k` = NaN on five: its
  first-quartile draw is then the smallest).
* **ELPD results.** :func:`elpd_data` builds ``arviz.ELPDData``: a pandas ``Series`` with
  ``elpd_loo``, ``loo_i``, ... (0.x) or the ``ELPDDataLOO`` dataclass of ``arviz_stats`` with
  ``elpd``, ``elpd_i``, ... (1.x); either goes into ``az.compare``. :func:`elpd_summary` reads
  either (and ``az.loo``'s result) as one :class:`ELPDSummary`.
* **Building the data.** :func:`from_dict` calls ``az.from_dict`` with one keyword per group
  (0.x) or one dict of groups and root attributes under ``"/"`` (1.x).

Which API is present is detected from the functions themselves (their names and parameters),
never from a version number. Every tensor goes to NumPy through :func:`to_numpy`
(``.detach().cpu()``), so CUDA tensors and tensors that require grad convert.

References:
    | Pareto Smoothed Importance Sampling (Vehtari, Simpson, Gelman, Yao & Gabry, JMLR 2024)
    | https://arxiv.org/abs/1507.02646
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch

from pyro_blr.core import tied_tail_khat

__all__ = [
    "MIN_PSIS_SAMPLES",
    "ELPDSummary",
    "elpd_data",
    "elpd_summary",
    "from_dict",
    "import_arviz",
    "psis_smooth",
    "to_numpy",
]

MIN_PSIS_SAMPLES = 30
"""The fewest draws PSIS accepts here: both ArviZ generations then fit at least six tail draws
(ArviZ 1.x refuses fewer than five and returns :math:`\\hat k` = NaN on five, since the first
quartile of five tail draws is their minimum; ArviZ 0.x returns :math:`\\hat k = \\infty`)."""


_NUMPY_FLOATS = (torch.float16, torch.float32, torch.float64)


def import_arviz() -> Any:
    """Import ArviZ (0.x or 1.x) without its refactor announcement.

    Raises:
        ImportError: ArviZ is not installed (``pip install arviz``).

    Example:
        >>> az = import_arviz()
        >>> callable(az.from_dict)
        True
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # ArviZ 0.x announces its 1.0 refactor
            import arviz
    except ImportError as error:  # pragma: no cover - arviz is a dependency
        raise ImportError(
            "pyro_blr's diagnostics need ArviZ: pip install arviz (0.x, or 1.x with arviz-stats)"
        ) from error
    return arviz


def to_numpy(value: Any) -> np.ndarray:
    """A NumPy copy of ``value``: tensors are detached and moved to the CPU first (float types
    NumPy lacks, such as bfloat16, become float32).

    Example:
        >>> import torch
        >>> to_numpy(torch.ones(2, requires_grad=True))
        array([1., 1.], dtype=float32)
    """
    if torch.is_tensor(value):
        value = value.detach().cpu()
        if value.is_floating_point() and value.dtype not in _NUMPY_FLOATS:
            value = value.float()
        return value.numpy()
    return np.asarray(value)


def _psislw():
    """``(log_ratios) -> (log_weights, khat)`` from whichever ArviZ is installed."""
    az = import_arviz()
    legacy = getattr(az, "psislw", None)
    if legacy is not None:
        first = next(iter(inspect.signature(legacy).parameters), None)
        if first == "log_weights":  # ArviZ 0.x: log importance ratios in
            return lambda log_ratios: legacy(log_ratios)
    try:
        from arviz_stats.base import array_stats
    except ImportError as error:
        raise ImportError(
            "PSIS needs az.psislw (ArviZ 0.x) or arviz_stats.base.array_stats.psislw (ArviZ "
            "1.x): pip install arviz-stats"
        ) from error
    # arviz-stats takes a log-likelihood and smooths the weights of its negation.
    return lambda log_ratios: array_stats.psislw(-log_ratios)


def _is_degenerate(ratios: np.ndarray, dtype_eps: float) -> bool:
    """Whether the ratios' spread is below what rounding in their own dtype produces."""
    spread = float(ratios.max() - ratios.min())
    scale = max(1.0, float(np.abs(ratios).max()))
    return spread <= max(1e-9, 64 * dtype_eps) * scale


def psis_smooth(log_ratios: Any) -> tuple[np.ndarray, float]:
    r"""Pareto-smoothed, normalized log importance weights and :math:`\hat k` of 1-D log ratios.

    The largest ratios :math:`\log r_s` are replaced by expected order statistics of a generalized
    Pareto distribution fitted to them (Vehtari et al. 2024), and the weights are normalized,
    :math:`\sum_s e^{\log\bar w_s} = 1`; :math:`\hat k` is the fitted shape.

    **A tail with no spread.** When every ratio is equal up to rounding (the guide is the
    posterior up to a constant), there is no tail to fit: the weights are uniform and
    :math:`\hat k` is reported as ``0.0`` -- an exponential tail, inside the "good" range, since
    every moment of a constant ratio is finite -- rather than the :math:`\pm\infty` a fit to
    nothing would give. :math:`\hat k` is never :math:`-\infty`. When the tail ties (a few
    atoms, e.g. every latent binary), the raw weights are returned unsmoothed with the
    :math:`\hat k` of :func:`pyro_blr.core.pareto.tied_tail_khat`.

    Args:
        log_ratios: :math:`S \ge` :data:`MIN_PSIS_SAMPLES` log ratios (tensor on any device, or
            array).

    Returns:
        ``(log_weights, khat)``: a float64 array of shape ``(S,)`` and a float.

    Raises:
        ValueError: not 1-D, fewer than :data:`MIN_PSIS_SAMPLES` ratios, or a ratio that is NaN
            or :math:`+\infty`.

    Example:
        >>> import numpy as np, torch
        >>> ratios = 0.3 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
        >>> log_w, khat = psis_smooth(ratios)  # light-tailed ratios: a small k-hat
        >>> bool(abs(np.exp(log_w).sum() - 1) < 1e-12), khat < 0.5
        (True, True)
        >>> psis_smooth(torch.full((100,), 3.0))[1]
        0.0
    """
    ratios = to_numpy(log_ratios)
    eps = float(np.finfo(ratios.dtype).eps) if np.issubdtype(ratios.dtype, np.floating) else 0.0
    ratios = ratios.astype(np.float64)
    if ratios.ndim != 1:
        raise ValueError(f"log_ratios must be 1-D, got shape {ratios.shape}")
    if len(ratios) < MIN_PSIS_SAMPLES:
        raise ValueError(
            f"PSIS needs at least {MIN_PSIS_SAMPLES} log ratios to fit a Pareto tail, "
            f"got {len(ratios)}"
        )
    if np.isnan(ratios).any() or np.isposinf(ratios).any():
        raise ValueError("log_ratios contains NaN or +inf")
    finite = np.isfinite(ratios)
    if not finite.any():
        raise ValueError("every log ratio is -inf: the guide puts no mass where the model does")
    if _is_degenerate(ratios[finite], eps):  # uniform over the draws the model allows
        log_weights = np.where(finite, -np.log(finite.sum()), -np.inf)
        return log_weights, 0.0
    tied = tied_tail_khat(ratios[finite])
    if tied is not None:  # a few atoms: the raw weights are bounded, no tail to smooth
        log_weights = np.where(finite, ratios, -np.inf)
        return log_weights - np.logaddexp.reduce(log_weights[finite]), tied
    ratios = ratios - ratios.max()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # log(0) for zero weights
        smoothed, khat = _psislw()(ratios)
    if np.isnan(khat):
        raise ValueError(
            f"PSIS could not fit a Pareto tail to {len(ratios)} log ratios (ArviZ returned "
            "k-hat = NaN: the smallest tail ratios tie); draw more samples (num_samples=...)"
        )
    smoothed = np.asarray(smoothed, dtype=np.float64)
    smoothed = smoothed - np.logaddexp.reduce(smoothed)
    return smoothed, float(khat)


def from_dict(groups: dict, coords: dict, dims: dict, attrs: dict) -> Any:
    """``az.from_dict`` for either generation: ``InferenceData`` (0.x) or ``DataTree`` (1.x).

    Args:
        groups: group name -> {variable name -> NumPy array}; sample groups have
            ``(chain, draw)`` leading dimensions, ``observed_data`` none. An empty group is
            left out.
        coords: dimension name -> coordinate values.
        dims: variable name -> names of its dimensions after ``(chain, draw)``.
        attrs: global attributes (``idata.attrs``).

    Example:
        >>> import numpy as np
        >>> idata = from_dict({"posterior": {"x": np.zeros((1, 5))}}, {}, {}, {"note": "demo"})
        >>> idata.posterior["x"].shape, idata.attrs["note"]
        ((1, 5), 'demo')
    """
    az = import_arviz()
    # ArviZ 0.x leaves an empty group out, 1.x keeps it: leave it out in both
    groups = {name: group for name, group in groups.items() if group}
    parameters = inspect.signature(az.from_dict).parameters
    if "posterior" in parameters:  # ArviZ 0.x: one keyword per group, flat attributes
        return az.from_dict(**groups, coords=coords, dims=dims, attrs=attrs)
    # ArviZ 1.x: a dict of groups; attributes per group, "/" for the root.
    return az.from_dict(groups, coords=coords, dims=dims, attrs={"/": attrs})


def elpd_data(
    elpd: float, se: float, p: float, num_samples: int, pointwise: np.ndarray, dim: str
) -> Any:
    """ArviZ's ``ELPDData`` of a leave-one-out estimate without Pareto :math:`\\hat k`, for either
    generation, as ``az.loo(..., pointwise=True)`` fills it (``scale="log"``, no warning).

    Args:
        elpd: :math:`\\sum_i \\log p(y_i \\mid y_{\\setminus i})`.
        se: its standard error.
        p: the effective number of parameters.
        num_samples: the draws it took (0 for a closed form).
        pointwise: the :math:`N` terms.
        dim: the name of their dimension (the data plate).

    Example:
        >>> import numpy as np
        >>> result = elpd_data(-3.0, 0.5, 1.2, 0, np.array([-1.0, -2.0]), "data")
        >>> type(result).__name__.startswith("ELPDData")  # ELPDDataLOO in ArviZ 1.x
        True
    """
    import xarray as xr

    az = import_arviz()
    pointwise = np.asarray(pointwise, dtype=np.float64)
    num_data = len(pointwise)
    values = xr.DataArray(pointwise, dims=[dim], coords={dim: np.arange(num_data)}, name="loo_i")
    container = getattr(az, "ELPDData", None)
    if container is not None and not dataclasses.is_dataclass(container):  # ArviZ 0.x
        fields = {
            "elpd_loo": float(elpd),
            "se": float(se),
            "p_loo": float(p),
            "n_samples": int(num_samples),
            "n_data_points": num_data,
            "warning": False,
            "loo_i": values,
            "scale": "log",
        }
        return container(data=list(fields.values()), index=list(fields))
    try:  # ArviZ 1.x: the LOO kind, so that az.compare labels it as az.loo's
        from arviz_stats.utils import ELPDDataLOO as container
    except ImportError:  # pragma: no cover - an arviz_stats without the LOO subclass
        if container is None:
            raise ImportError("ELPD results need arviz.ELPDData: pip install arviz") from None
    return container(
        elpd=float(elpd),
        se=float(se),
        p=float(p),
        n_samples=int(num_samples),
        n_data_points=num_data,
        scale="log",
        warning=False,
        good_k=0.7,
        elpd_i=values.rename("elpd_i"),
    )


class ELPDSummary(NamedTuple):
    """An ELPD estimate read from ArviZ's ``ELPDData`` of either generation.

    Attributes:
        elpd: the estimate (``elpd_loo``/``elpd_waic`` in 0.x, ``elpd`` in 1.x).
        se: its standard error.
        p: the effective number of parameters (``p_loo``/``p_waic`` in 0.x, ``p`` in 1.x).
        pointwise: the :math:`N` terms as a NumPy array, or ``None`` when not kept.
        pareto_k: Pareto :math:`\\hat k` per datum as a NumPy array, or ``None``.
    """

    elpd: float
    se: float
    p: float
    pointwise: np.ndarray | None
    pareto_k: np.ndarray | None


def elpd_summary(result: Any) -> ELPDSummary:
    """Read ``az.loo``'s result, or :func:`elpd_data`'s, in either ArviZ generation.

    ArviZ 0.x returns a pandas ``Series`` indexed by ``elpd_loo``, ``se``, ``p_loo``,
    ``loo_i``, ``pareto_k``; ArviZ 1.x an ``ELPDData`` dataclass with ``elpd``, ``se``, ``p``,
    ``elpd_i``, ``pareto_k``. Code that reads ``result["elpd_loo"]`` works with 0.x only; this
    works with both.

    Args:
        result: an ``ELPDData`` of either generation (LOO or WAIC).

    Example:
        >>> import numpy as np
        >>> summary = elpd_summary(elpd_data(-3.0, 0.5, 1.2, 0, np.array([-1.0, -2.0]), "i"))
        >>> summary.elpd, summary.se, summary.pointwise.tolist()
        (-3.0, 0.5, [-1.0, -2.0])
    """

    def array(value: Any) -> np.ndarray | None:
        return None if value is None else np.asarray(getattr(value, "values", value))

    if dataclasses.is_dataclass(result):  # ArviZ 1.x
        return ELPDSummary(
            float(result.elpd),
            float(result.se),
            float(result.p),
            array(getattr(result, "elpd_i", None)),
            array(getattr(result, "pareto_k", None)),
        )
    kind = "loo" if "elpd_loo" in result.index else "waic"  # ArviZ 0.x: a pandas Series
    return ELPDSummary(
        float(result[f"elpd_{kind}"]),
        float(result["se"]),
        float(result[f"p_{kind}"]),
        array(result.get(f"{kind}_i")),
        array(result.get("pareto_k")),
    )
