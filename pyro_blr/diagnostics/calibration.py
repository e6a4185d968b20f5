r"""Classification metrics of predicted class probabilities: accuracy, NLL, ECE and Brier score.

Every function takes ``probs``, the predicted probabilities of :math:`C` classes for :math:`N`
data, shape ``(N, C)`` with rows summing to one (for a posterior predictive: the average of
the draws' probabilities, :math:`\bar p_n = \frac1S\sum_s p(\cdot \mid x_n, \theta_s)`, as
Shen et al. 2024 evaluate IVON), and ``labels``, the true classes :math:`y_n \in \{0, \dots,
C-1\}`, shape ``(N,)``. Each returns a float. The prediction is :math:`\hat y_n = \arg\max_c
p_{nc}` (the first class among ties) and its confidence :math:`\hat p_n = \max_c p_{nc}`.

Binary problems are written with two columns (``torch.stack([1 - p, p], -1)``), so that the
ECE is the top-label one, as for any :math:`C`.

References:
    | On Calibration of Modern Neural Networks (Guo, Pleiss, Sun & Weinberger, ICML 2017)
      https://arxiv.org/abs/1706.04599
    | Verification of forecasts expressed in terms of probability (Brier, Monthly Weather
      Review 1950)
    | Variational Learning is Effective for Large Deep Networks (Shen et al., ICML 2024)
      https://arxiv.org/abs/2402.17641
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "ClassificationMetrics",
    "accuracy",
    "brier_score",
    "classification_metrics",
    "expected_calibration_error",
    "negative_log_likelihood",
]

SUM_TOLERANCE = 1e-3
"""How far a row of ``probs`` may sum from one (float32 softmax outputs sum to within ~1e-6)."""


class ClassificationMetrics(NamedTuple):
    """The four metrics of :func:`classification_metrics` (floats)."""

    accuracy: float
    nll: float
    ece: float
    brier: float


def _checked(probs: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``probs`` and ``labels`` after checking what every metric assumes of them."""
    if not isinstance(probs, Tensor) or probs.dim() != 2 or not probs.is_floating_point():
        raise ValueError(
            f"probs must be a floating-point tensor of shape (N, C), got "
            f"{getattr(probs, 'shape', type(probs))}; for binary problems pass "
            "torch.stack([1 - p, p], -1)"
        )
    if not isinstance(labels, Tensor) or labels.shape != probs.shape[:1]:
        raise ValueError(
            f"labels must be a tensor of shape (N,) = ({probs.shape[0]},) to match probs, got "
            f"{getattr(labels, 'shape', type(labels))}"
        )
    if labels.is_floating_point() and not torch.equal(labels, labels.round()):
        raise ValueError("labels must be class indices (integers), got fractional values")
    labels = labels.long()
    num_classes = probs.shape[1]
    if len(labels) == 0:
        raise ValueError("probs and labels are empty: the metrics need at least one datum")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in 0..{num_classes - 1} (probs has {num_classes} columns), got "
            f"values in {int(labels.min())}..{int(labels.max())}"
        )
    fix = "pass probabilities, e.g. logits.softmax(-1), not logits or log-probabilities"
    if not torch.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"probs must be finite and non-negative: {fix}")
    gap = float((probs.sum(-1) - 1).abs().max())
    if gap > SUM_TOLERANCE:
        raise ValueError(
            f"every row of probs must sum to one (the largest gap is {gap:.3g}): {fix}"
        )
    return probs, labels


def accuracy(probs: Tensor, labels: Tensor) -> float:
    r"""The fraction of data whose most probable class is the label.

    .. math::
        \mathrm{acc} = \frac1N \sum_{n=1}^N \mathbb 1[\hat y_n = y_n],
        \qquad \hat y_n = \arg\max_c p_{nc}.

    Args:
        probs: predicted class probabilities, shape ``(N, C)``.
        labels: true classes, shape ``(N,)``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]])
        >>> accuracy(probs, torch.tensor([0, 1, 1]))
        0.6666666666666666
    """
    probs, labels = _checked(probs, labels)
    return float((probs.argmax(-1) == labels).double().mean())


def negative_log_likelihood(probs: Tensor, labels: Tensor) -> float:
    r"""The mean negative log probability of the labels, in nats (the test NLL, cross-entropy).

    .. math::
        \mathrm{NLL} = -\frac1N \sum_{n=1}^N \log p_{n y_n}.

    A label given probability zero gives ``inf``: that is the metric's value, not an error.

    Args:
        probs: predicted class probabilities, shape ``(N, C)``.
        labels: true classes, shape ``(N,)``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.5, 0.5], [0.25, 0.75]])
        >>> round(negative_log_likelihood(probs, torch.tensor([0, 1])), 6)  # (log 2 + log 4/3)/2
        0.490415
    """
    probs, labels = _checked(probs, labels)
    picked = probs.double().gather(-1, labels[:, None]).squeeze(-1)
    return float(-picked.log().mean())


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    r"""The top-label expected calibration error (ECE) over equal-width confidence bins.

    The confidences :math:`\hat p_n` are put in the bins
    :math:`I_b = \left(\frac{b-1}{B}, \frac bB\right]`, :math:`b = 1, \dots, B`; with
    :math:`\mathcal B_b` the data in bin :math:`b`,

    .. math::
        \mathrm{ECE} = \sum_{b=1}^B \frac{|\mathcal B_b|}{N}
            \left| \mathrm{acc}(\mathcal B_b) - \mathrm{conf}(\mathcal B_b) \right|,

    where :math:`\mathrm{acc}(\mathcal B_b)` is the fraction of :math:`\mathcal B_b` predicted
    correctly and :math:`\mathrm{conf}(\mathcal B_b)` the mean of its :math:`\hat p_n` (empty
    bins count zero). Guo et al. (2017, eq. 3) define it; :math:`B = 15` is their choice and
    that of Shen et al. (2024).

    Args:
        probs: predicted class probabilities, shape ``(N, C)``.
        labels: true classes, shape ``(N,)``.
        num_bins: the number of bins :math:`B`.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
        >>> labels = torch.tensor([0, 1, 1, 0])
        >>> # bins (0.5, 0.75] holds 0.6, 0.7 (one right); (0.75, 1] holds 0.9, 0.8 (one right)
        >>> round(expected_calibration_error(probs, labels, num_bins=4), 6)
        0.25
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    probs, labels = _checked(probs, labels)
    confidence, predicted = probs.double().max(-1)
    correct = (predicted == labels).double()
    # Bin b (0-based) holds (b/B, (b+1)/B]: ceil(B p) - 1, with p = 0 put in the first bin.
    bins = (confidence * num_bins).ceil().long().sub(1).clamp(0, num_bins - 1)
    count = torch.zeros(num_bins, dtype=torch.float64, device=probs.device)
    count = count.index_add(0, bins, torch.ones_like(correct))
    gap = torch.zeros_like(count).index_add(0, bins, correct - confidence)
    return float(gap.abs().sum() / len(labels))


def brier_score(probs: Tensor, labels: Tensor) -> float:
    r"""The multi-class Brier score: the mean squared distance to the one-hot label.

    .. math::
        \mathrm{BS} = \frac1N \sum_{n=1}^N \sum_{c=1}^C \left(p_{nc} - \mathbb 1[y_n = c]\right)^2,

    Brier's (1950) original form, between 0 and 2 (twice the binary form
    :math:`(p_n - y_n)^2` when :math:`C = 2`).

    Args:
        probs: predicted class probabilities, shape ``(N, C)``.
        labels: true classes, shape ``(N,)``.

    Example:
        >>> import torch
        >>> probs = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
        >>> round(brier_score(probs, torch.tensor([0, 0])), 6)  # (0.01 + 0.01 + 0.36 + 0.36) / 2
        0.37
    """
    probs, labels = _checked(probs, labels)
    one_hot = torch.nn.functional.one_hot(labels, probs.shape[1]).double()
    return float((probs.double() - one_hot).square().sum(-1).mean())


def classification_metrics(
    probs: Tensor, labels: Tensor, num_bins: int = 15
) -> ClassificationMetrics:
    """Accuracy, NLL, ECE (``num_bins`` bins) and Brier score at once (see each function).

    Args:
        probs: predicted class probabilities, shape ``(N, C)``.
        labels: true classes, shape ``(N,)``.
        num_bins: the number of bins of :func:`expected_calibration_error`.

    Example:
        >>> import torch
        >>> metrics = classification_metrics(torch.tensor([[0.9, 0.1]]), torch.tensor([0]))
        >>> [round(value, 4) for value in metrics]
        [1.0, 0.1054, 0.1, 0.02]
    """
    return ClassificationMetrics(
        accuracy(probs, labels),
        negative_log_likelihood(probs, labels),
        expected_calibration_error(probs, labels, num_bins),
        brier_score(probs, labels),
    )
