"""Classification metrics on hand-computed cases (exact), their bin edges and their input checks."""

import math

import pytest
import torch

from pyro_blr.diagnostics.calibration import (
    ClassificationMetrics,
    accuracy,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    negative_log_likelihood,
)

# Three classes, four data; every value a binary fraction, so sums and bins are exact.
PROBS = torch.tensor(
    [
        [0.25, 0.5, 0.25],  # label 1: predicted 1 (right), confidence 0.5
        [0.125, 0.125, 0.75],  # label 0: predicted 2 (wrong), confidence 0.75
        [0.625, 0.25, 0.125],  # label 0: predicted 0 (right), confidence 0.625
        [0.0, 0.0625, 0.9375],  # label 2: predicted 2 (right), confidence 0.9375
    ],
    dtype=torch.float64,
)
LABELS = torch.tensor([1, 0, 0, 2])


def test_accuracy_by_hand():
    assert accuracy(PROBS, LABELS) == 0.75
    # Ties go to the first class, as argmax does.
    tie = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    assert accuracy(tie, torch.tensor([0, 1])) == 0.5


def test_nll_by_hand():
    expected = -(math.log(0.5) + math.log(0.125) + math.log(0.625) + math.log(0.9375)) / 4
    assert negative_log_likelihood(PROBS, LABELS) == pytest.approx(expected, rel=1e-15)
    # A label given probability zero: the NLL is infinite, not clipped.
    assert negative_log_likelihood(PROBS, torch.tensor([1, 0, 0, 0])) == math.inf


def test_ece_by_hand():
    # B = 4, bins (0, .25], (.25, .5], (.5, .75], (.75, 1]:
    #   (.25, .5]: 0.5 right          -> |1 - 0.5|            * 1/4 = 0.125
    #   (.5, .75]: 0.75 wrong, 0.625 right -> |0.5 - 0.6875| * 2/4 = 0.09375
    #   (.75, 1]:  0.9375 right       -> |1 - 0.9375|         * 1/4 = 0.015625
    assert expected_calibration_error(PROBS, LABELS, num_bins=4) == pytest.approx(
        0.125 + 0.09375 + 0.015625, abs=1e-15
    )
    # One bin: |accuracy - mean confidence| = |0.75 - 2.8125 / 4|.
    assert expected_calibration_error(PROBS, LABELS, num_bins=1) == pytest.approx(
        abs(0.75 - 2.8125 / 4), abs=1e-15
    )
    # The default is 15 bins (Guo et al. 2017; Shen et al. 2024): here every confidence is alone
    # in its bin, so the ECE is the mean of |correct - confidence|.
    alone = (0.5 + 0.75 + (1 - 0.625) + (1 - 0.9375)) / 4
    assert expected_calibration_error(PROBS, LABELS) == pytest.approx(alone, abs=1e-15)


def test_ece_bins_are_closed_on_the_right():
    # Confidences 0.5 (right) and 0.75 (wrong), two bins. Bins (0, .5], (.5, 1] give
    # (|1 - .5| + |0 - .75|) / 2 = 0.625; bins [0, .5), [.5, 1] would give 0.125.
    probs = torch.tensor([[0.5, 0.5], [0.75, 0.25]])
    assert expected_calibration_error(probs, torch.tensor([0, 1]), num_bins=2) == 0.625
    # Confidence 1 lies in the last bin (and a confidently wrong datum has gap 1).
    certain = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(certain, torch.tensor([0, 0]), num_bins=4) == 0.5


def test_ece_is_zero_when_calibrated():
    # Four data at confidence 0.75, three of them right.
    probs = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(probs, torch.tensor([0, 0, 0, 1])) == 0.0


def test_brier_by_hand():
    # Per datum: sum over classes of (p - onehot)^2.
    rows = [
        0.25**2 + 0.5**2 + 0.25**2,
        0.875**2 + 0.125**2 + 0.75**2,
        0.375**2 + 0.25**2 + 0.125**2,
        0.0 + 0.0625**2 + 0.0625**2,
    ]
    assert brier_score(PROBS, LABELS) == pytest.approx(sum(rows) / 4, abs=1e-15)
    # Two classes: twice the binary (p - y)^2; bounds 0 (certain, right) and 2 (certain, wrong).
    p = torch.tensor([0.25, 0.875])
    binary = torch.stack([1 - p, p], -1)
    y = torch.tensor([1, 0])
    assert brier_score(binary, y) == pytest.approx(2 * (0.75**2 + 0.875**2) / 2, abs=1e-15)
    certain = torch.tensor([[1.0, 0.0]])
    assert brier_score(certain, torch.tensor([0])) == 0.0
    assert brier_score(certain, torch.tensor([1])) == 2.0


def test_all_metrics_at_once_and_dtypes_agree():
    metrics = classification_metrics(PROBS, LABELS, num_bins=4)
    assert isinstance(metrics, ClassificationMetrics)
    assert metrics == (
        accuracy(PROBS, LABELS),
        negative_log_likelihood(PROBS, LABELS),
        expected_calibration_error(PROBS, LABELS, 4),
        brier_score(PROBS, LABELS),
    )
    # float32 inputs of the same (exactly representable) values give the same numbers.
    single = classification_metrics(PROBS.float(), LABELS, num_bins=4)
    for a, b in zip(single, metrics, strict=True):
        assert a == pytest.approx(b, rel=1e-6)


def test_logits_are_refused_with_the_fix():
    logits = torch.tensor([[2.0, 1.0], [0.3, 0.1]])
    for metric in (accuracy, negative_log_likelihood, expected_calibration_error, brier_score):
        with pytest.raises(ValueError, match=r"probs.*sum to one.*logits\.softmax\(-1\)"):
            metric(logits, torch.tensor([0, 1]))
    # Logits or log-probabilities with negative entries, and non-finite values.
    for bad in ([[1.5, -0.5]], [[-0.1, -2.4]], [[math.nan, 1.0]]):
        with pytest.raises(ValueError, match=r"finite and non-negative.*logits\.softmax"):
            accuracy(torch.tensor(bad), torch.tensor([0]))


def test_bad_shapes_labels_and_bins_are_refused():
    with pytest.raises(ValueError, match=r"probs must be .* shape \(N, C\)"):
        accuracy(torch.tensor([0.2, 0.8]), torch.tensor([1]))
    with pytest.raises(ValueError, match=r"labels must be a tensor of shape \(N,\)"):
        accuracy(PROBS, LABELS[:3])
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.2"):
        brier_score(PROBS, torch.tensor([1, 0, 3, 2]))
    with pytest.raises(ValueError, match="class indices"):
        accuracy(PROBS, torch.tensor([1.0, 0.5, 0.0, 2.0]))
    with pytest.raises(ValueError, match="at least one datum"):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="num_bins must be a positive integer"):
            expected_calibration_error(PROBS, LABELS, num_bins=bad)
