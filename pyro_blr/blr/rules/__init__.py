r"""The Bayesian learning rules as objects: one file per rule, one registry line each.

A rule holds its options and implements ``init(params) -> state`` and the pure
``update(state, estimates, lr) -> (state, UpdateInfo)`` (see :mod:`pyro_blr.blr.rules.base`);
:class:`pyro_blr.BLR` takes one where ``pyro.infer.SVI`` takes its optimizer:

* :class:`IVON` -- improved variational online Newton (diagonal; gradient-only curvature);
* :class:`VON` -- variational online Newton (exact curvature);
* :class:`VOGN` / :class:`OGN` -- Gauss--Newton curvature from per-datum gradients, at draws /
  at the mean;
* :class:`Newton` -- the delta method (gradient and Hessian at the mean);
* :class:`SGD` -- gradient descent (with ``torch.optim.SGD``'s momentum): a fixed-covariance
  Gaussian by the delta method;
* :class:`RMSprop` / :class:`Adam` -- ``torch.optim``'s, as the BLR with squared gradients for
  the curvature, their square root and momentum; ``perturb=True`` draws from the posterior
  they imply (Vadam);
* :class:`ExpFamilyRule` -- any exponential family, in its natural parameters;
* :class:`MixtureRule` -- mixtures (Lin, Khan & Schmidt 2019).

A new rule is a file defining a :class:`~pyro_blr.blr.rules.base.Rule` subclass and a line in
:data:`RULES`.
"""

from __future__ import annotations

from typing import Any

from pyro_blr.blr.rules.adam import Adam, AdamState, adam_update, vadam_precision
from pyro_blr.blr.rules.base import (
    Estimates,
    GaussianRule,
    GaussianState,
    Rule,
    UpdateInfo,
    riemannian_precision_update,
)
from pyro_blr.blr.rules.expfamily import ExpFamilyRule, ExpFamilyState, expfamily_update
from pyro_blr.blr.rules.ivon import IVON, IVONState, ivon_update
from pyro_blr.blr.rules.mixture import (
    ExpFamilyMixtureState,
    MixtureRule,
    MixtureState,
    mixture_logits_update,
    mixture_update,
)
from pyro_blr.blr.rules.newton import Newton, newton_update
from pyro_blr.blr.rules.ogn import OGN
from pyro_blr.blr.rules.rmsprop import RMSprop, RMSpropState, rmsprop_update
from pyro_blr.blr.rules.sgd import SGD, SGDState, sgd_update
from pyro_blr.blr.rules.vogn import VOGN
from pyro_blr.blr.rules.von import VON, von_update

__all__ = [
    "IVON",
    "OGN",
    "RULES",
    "SGD",
    "VOGN",
    "VON",
    "Adam",
    "AdamState",
    "Estimates",
    "ExpFamilyMixtureState",
    "ExpFamilyRule",
    "ExpFamilyState",
    "GaussianRule",
    "GaussianState",
    "IVONState",
    "MixtureRule",
    "MixtureState",
    "Newton",
    "RMSprop",
    "RMSpropState",
    "Rule",
    "SGDState",
    "UpdateInfo",
    "adam_update",
    "as_rule",
    "default_rule",
    "expfamily_update",
    "ivon_update",
    "mixture_logits_update",
    "mixture_update",
    "newton_update",
    "riemannian_precision_update",
    "rmsprop_update",
    "rule_from_name",
    "sgd_update",
    "vadam_precision",
    "von_update",
]

RULES: dict[str, type[Rule]] = {
    "ivon": IVON,
    "von": VON,
    "vogn": VOGN,
    "ogn": OGN,
    "newton": Newton,
    "sgd": SGD,
    "rmsprop": RMSprop,
    "adam": Adam,
    "expfamily": ExpFamilyRule,
    "mixture": MixtureRule,
}
"""The string shorthand of each rule: ``BLR(model, guide, "von")`` is ``BLR(model, guide,
pb.VON())``."""


def rule_from_name(name: str, **options: Any) -> Rule:
    """The rule registered as ``name``, built with ``options``.

    Example:
        >>> rule = rule_from_name("von", lr=0.5)
        >>> type(rule).__name__, rule.lr
        ('VON', 0.5)
    """
    if name not in RULES:
        raise ValueError(f"unknown rule {name!r}; choose one of {sorted(RULES)}")
    return RULES[name](**options)


def default_rule(guide: Any) -> Rule:
    """The rule that follows the guide: :class:`VON` for a full covariance
    (``AutoMultivariateNormal``, whose curvature is a matrix anyway), :class:`IVON` for a
    diagonal Gaussian (:class:`VON` where its latents are local to a subsampled plate, which
    IVON's per-coordinate momentum cannot follow), :class:`ExpFamilyRule` for
    :class:`pyro_blr.AutoExpFamily` and :class:`MixtureRule` for :class:`pyro_blr.AutoMixture`.

    Raises:
        TypeError: a guide no rule drives.
    """
    from pyro.infer.autoguide import AutoMultivariateNormal

    from pyro_blr.core import GAUSSIAN_GUIDES
    from pyro_blr.guides import AutoExpFamily, AutoMixture

    if isinstance(guide, AutoMixture):
        return MixtureRule()
    if isinstance(guide, AutoExpFamily):
        return ExpFamilyRule()
    if isinstance(guide, AutoMultivariateNormal):
        return VON()
    if isinstance(guide, GAUSSIAN_GUIDES):
        return IVON()
    raise TypeError(
        f"BLR cannot drive {type(guide).__name__}: it drives pyro.infer.autoguide.AutoNormal, "
        "AutoDiagonalNormal, AutoMultivariateNormal, pb.AutoExpFamily and pb.AutoMixture; fit "
        "other guides with pyro.infer.SVI"
    )


def as_rule(rule: Any, guide: Any) -> Rule:
    """The rule object for ``BLR``'s third argument: ``None`` follows the guide
    (:func:`default_rule`), a name is the registered rule with its defaults, a rule class is
    built with its defaults, a rule object is itself.

    Raises:
        TypeError: an optimizer or an ELBO in the rule's place (the message says what to pass
            instead), or anything else that is not a rule.
        ValueError: an unknown name.
    """
    if rule is None:
        return default_rule(guide)
    if isinstance(rule, str):
        return rule_from_name(rule)
    if isinstance(rule, type) and issubclass(rule, Rule):
        return rule()
    if isinstance(rule, Rule):
        return rule
    raise TypeError(_not_a_rule(rule))


def _not_a_rule(rule: Any) -> str:
    import pyro.infer
    import pyro.optim
    import torch

    kind = rule if isinstance(rule, type) else type(rule)
    what = f"{kind.__module__}.{kind.__name__}"
    rules = "pb.IVON(lr=...), pb.VON(...), pb.VOGN(...), pb.OGN(...), pb.Newton(...)"
    if isinstance(rule, pyro.optim.PyroOptim) or issubclass(kind, torch.optim.Optimizer):
        return (
            f"BLR's third argument is the rule that steps the guide, e.g. {rules}, got the "
            f"optimizer {what}: the rule takes its step size itself (pb.IVON(lr=0.1)); "
            "torch.optim's SGD, RMSprop and Adam as rules (their steps exactly, or Vadam's "
            "with perturb=True) are pyro_blr.blr.rules.SGD, RMSprop and Adam; an optimizer for "
            "the model's own parameters (pyro.param, nn.Parameter) goes in model_optim=, e.g. "
            "model_optim=pyro.optim.Adam({'lr': 0.01})"
        )
    if issubclass(kind, pyro.infer.ELBO):
        return (
            f"BLR's third argument is the rule that steps the guide, e.g. {rules}, got the "
            f"objective {what}: the BLR always maximizes the ELBO; for another objective use "
            "pyro.infer.SVI with it"
        )
    return f"BLR's third argument must be a rule such as {rules} or a rule's name, got {what}"
