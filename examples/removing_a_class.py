"""What if we removed a class? Predicting the change of every test prediction without retraining.

Softmax regression on scikit-learn's digits (1437 training and 360 test images of 8x8 pixels,
ten classes, 650 weights) trained with the Bayesian learning rule's IVON (``pb.IVON``, a
diagonal Gaussian ``AutoNormal``). For one removed class at a time,
``removal_sensitivity(..., method="diagonal")`` applies the memory-perturbation equation with
IVON's own diagonal precision (Nickl et al. 2023): the posterior mean without the class is
estimated as m - S^-1 grad l_G(m), from the gradient of the class's summed log-likelihood, one
backward pass. ``removal_predictions`` runs the model on the test images at both means. The
estimate is compared with retraining without the class by the same rule, seed and steps; the
change between two full trainings that differ only in their seed is the noise floor.

Run: ``python examples/removing_a_class.py`` (writes examples/results/removing_a_class.md and
docs/assets/removing_a_class.png; about 3 minutes on one loaded core). ``--smoke`` is quick.
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoNormal
from tqdm.auto import tqdm

import pyro_blr as pb
from pyro_blr.diagnostics.group_removal import removal_sensitivity
from pyro_blr.diagnostics.removal_predictions import removal_predictions

try:  # imported as examples.removing_a_class (by the tests)
    from examples._report import markdown_table, pyplot, report, save_figure, smoke_flag
except ModuleNotFoundError:  # run as a script: python examples/removing_a_class.py
    from _report import markdown_table, pyplot, report, save_figure, smoke_flag

PRIOR = 1.0
REMOVED = (8, 3)
NUM_TRAIN = 1437


def load_data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """Pixels scaled to [0, 1] in float64 and labels, split 1437 / 360 by a fixed permutation."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    X = torch.tensor(digits.data, dtype=torch.float64) / 16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, test = order[:NUM_TRAIN], order[NUM_TRAIN:]
    return (X[train], y[train]), (X[test], y[test])


def model(X: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Softmax regression, every weight ~ N(0, 1)."""
    W = pyro.sample("W", dist.Normal(X.new_zeros(X.shape[1], 10), PRIOR).to_event(2))
    b = pyro.sample("b", dist.Normal(X.new_zeros(10), PRIOR).to_event(1))
    with pyro.plate("data", X.shape[0]):
        pyro.sample("y", dist.Categorical(logits=X @ W + b), obs=y)


def train(X: torch.Tensor, y: torch.Tensor, num_steps: int, seed: int) -> tuple[AutoNormal, float]:
    """IVON from a fresh guide, with a step size decaying to 1e-3 over the second half (the
    mean then settles near its fixed point); returns the guide and the seconds taken."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = AutoNormal(model)

    def lr(step: int) -> float:
        return 0.2 * min(1.0, 2 * (1 - step / num_steps)) + 1e-3

    started = time.process_time()
    pb.BLR(model, guide, pb.IVON(lr=lr, mc_samples=2)).fit(
        X, y, num_steps=num_steps, progress=False
    )
    return guide, time.process_time() - started


def probabilities(guide: AutoNormal, X: torch.Tensor) -> torch.Tensor:
    """Class probabilities at the posterior mean (plug-in), ``(N, 10)``."""
    with torch.no_grad():
        median = guide.median(X)
        return torch.softmax(X @ median["W"] + median["b"], -1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])


def rms(a: torch.Tensor) -> float:
    return float(a.square().mean().sqrt())


def main(smoke: bool = False, plot: bool | None = None) -> dict:
    # Each guide keeps its own parameters: with Pyro's default param store every
    # AutoNormal(model) shares one set of names, and the full fit, called again after a
    # retraining, would take the retrained guide's parameters.
    local = pyro.settings.get("module_local_params")
    pyro.settings.set(module_local_params=True)
    try:
        return _main(smoke, plot)
    finally:
        pyro.settings.set(module_local_params=local)


def _main(smoke: bool, plot: bool | None) -> dict:
    (X, y), (X_test, y_test) = load_data()
    num_steps = 250 if smoke else 1000
    removed_classes = REMOVED[:1] if smoke else REMOVED
    trainings = tqdm(total=len(removed_classes) + 2, desc="trainings", disable=smoke)
    guide, train_seconds = train(X, y, num_steps, seed=0)
    trainings.update()
    before = probabilities(guide, X_test)
    accuracy = float((before.argmax(-1) == y_test).double().mean())
    rows, results = [], {}
    for removed in removed_classes:
        started = time.process_time()
        removal = removal_sensitivity(model, guide, X, y, groups={removed: y == removed},
                                      method="diagonal")  # fmt: skip
        predicted = removal_predictions(model, guide, removal, X_test, site="y").change[0]
        estimate_seconds = time.process_time() - started
        keep = y != removed
        retrained, retrain_seconds = train(X[keep], y[keep], num_steps, seed=0)
        trainings.update()
        actual = probabilities(retrained, X_test) - before
        own = y_test == removed  # the test images of the removed class
        results[removed] = {
            "predicted": predicted,
            "actual": actual,
            "own": own,
            "correlation": correlation(predicted, actual),
            "rmse": rms(predicted - actual),
            "actual_rms": rms(actual),
            "own_drop_predicted": float(-predicted[own, removed].mean()),
            "own_drop_actual": float(-actual[own, removed].mean()),
            "same_argmax": float(
                ((before + predicted).argmax(-1) == (before + actual).argmax(-1)).double().mean()
            ),
            "influence": float(removal.influence[0]),
            "estimate_seconds": estimate_seconds,
            "retrain_seconds": retrain_seconds,
        }
        r = results[removed]
        rows.append(
            (removed, int((~keep).sum()), f"{r['influence']:.1f}", f"{r['correlation']:.3f}",
             f"{r['rmse']:.4f}", f"{r['actual_rms']:.4f}",
             f"{r['own_drop_predicted']:.3f} / {r['own_drop_actual']:.3f}",
             f"{r['same_argmax']:.3f}", f"{estimate_seconds:.2f}", f"{retrain_seconds:.1f}")
        )  # fmt: skip
    noise = math.nan  # the noise floor needs another full training: not in a smoke run
    if not smoke:
        other, _ = train(X, y, num_steps, seed=1)
        trainings.update()
        noise = rms(probabilities(other, X_test) - before)
    trainings.close()
    header = ["removed class", "training images", "shift (posterior sd)",
              "correlation", "RMSE", "RMS actual change",
              "drop of p(own class): predicted / actual", "same argmax",
              "estimate CPU s", "retrain CPU s"]  # fmt: skip
    lines = [
        f"Softmax regression on digits, IVON ({num_steps} steps, {train_seconds:.1f} CPU s; "
        f"test accuracy {accuracy:.3f}). Change of the 360 x 10 test probabilities when a "
        "class is removed: the diagonal memory-perturbation estimate against retraining.",
        "",
        *markdown_table(header, rows),
        "",
        f"Noise floor: RMS change of the test probabilities between two full trainings that "
        f"differ only in their seed: {noise:.4f}.",
    ]
    report(lines, "removing_a_class", smoke)

    if plot if plot is not None else not smoke:
        plt = pyplot()
        fig, axes = plt.subplots(1, len(removed_classes), figsize=(10.4, 4.6), squeeze=False)
        for ax, removed in zip(axes[0], removed_classes, strict=True):
            r = results[removed]
            own = r["own"]
            for mask, label, color in (
                (~own, "other test images", "tab:blue"),
                (own, f"test images of class {removed}", "tab:red"),
            ):
                ax.scatter(r["actual"][mask].flatten(), r["predicted"][mask].flatten(), s=5,
                           alpha=0.5, color=color, label=label)  # fmt: skip
            ax.plot([-1, 1], [-1, 1], color="gray", lw=1)
            ax.set_xlim(-1, 1)
            ax.set_ylim(-1, 1)
            ax.set_xlabel("actual change of a test probability (retrained)")
            ax.set_ylabel("predicted change (memory perturbation, IVON's S)")
            ax.set_title(f"class {removed} removed: correlation {r['correlation']:.2f}")
            ax.legend(loc="upper left")
        fig.tight_layout()
        print(f"wrote {save_figure(fig, 'removing_a_class', dpi=100)}")
    return {
        "accuracy": accuracy,
        "noise": noise,
        "train_seconds": train_seconds,
        "results": results,
    }


if __name__ == "__main__":
    main(smoke_flag(__doc__, "250 training steps, one class, no noise floor, nothing written"))
