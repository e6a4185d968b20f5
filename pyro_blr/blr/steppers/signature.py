r"""The model's signature in a checkpoint: which model, rule and dtype a state belongs to.

A rule's state alone (a mean of :math:`D` coordinates and its precision) fits every model with
the same :math:`D`: a checkpoint of another model would load and overwrite the guide with numbers
that mean something else. So every checkpoint carries the signature of the run that saved it,
as tensors (so that ``torch.load(weights_only=True)`` reads it and the state stays a flat dict of
tensors):

* ``"signature.rule.<rule>"``: an empty tensor; its key names the rule;
* ``"signature.site.<name>"``: the latent site's unconstrained shape, one entry per site in the
  order of the flat latent vector (a site local to a subsampled plate counts the plate's full
  size, so a checkpoint does not depend on the minibatch it was saved at);
* ``"signature.family.<family>.<name>"``: an empty tensor per site of an exponential-family
  guide (``AutoExpFamily``, ``AutoMixture(component="expfamily")``); its key names the site's
  family, since two families of one site (Gamma and LogNormal of a positive site) have natural
  parameters of the same shape that mean different things;
* ``"signature.components"``: a mixture guide's number of components;
* the dtype: that of every signature tensor, the guide's.

:func:`check_signature` compares a checkpoint's signature with the current one before anything
is loaded and names what differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from pyro_blr.core import LatentLayout

__all__ = [
    "PREFIX",
    "check_signature",
    "checkpoint_signature",
    "signed",
    "site_shapes",
    "split_signature",
    "unsigned",
]

PREFIX = "signature."
_RULE, _SITE = PREFIX + "rule.", PREFIX + "site."
_FAMILY, _COMPONENTS = PREFIX + "family.", PREFIX + "components"


def site_shapes(layout: LatentLayout) -> dict[str, tuple[int, ...]]:
    """Each latent site's unconstrained shape, in the flat vector's order; a site local to a
    subsampled plate has the plate's full size :math:`N = \\text{scale} \\cdot B` on its axis."""
    shapes = {}
    for site in layout.sites:
        shape = list(site.shape)
        if site.plate is not None:
            shape[site.axis] = round(site.scale * shape[site.axis])
        shapes[site.name] = tuple(shape)
    return shapes


def checkpoint_signature(
    layout: LatentLayout,
    rule: str,
    like: Tensor,
    families: dict[str, str] | None = None,
    components: int | None = None,
) -> dict[str, Tensor]:
    """The signature entries of a checkpoint (see the module docstring).

    Args:
        layout: the model's latent layout.
        rule: the rule's name.
        like: a tensor of the guide's dtype and device.
        families: site name -> its family's name, for an exponential-family guide.
        components: a mixture guide's number of components.

    Example:
        >>> import torch
        >>> from torch.distributions.transforms import identity_transform as t
        >>> from pyro_blr.core import LatentLayout, LatentSite
        >>> layout = LatentLayout((LatentSite("w", t, torch.Size([3]), 1, 0, 3),), 3, 0)
        >>> checkpoint_signature(layout, "von", torch.zeros((), dtype=torch.float64))
        {'signature.rule.von': tensor([], dtype=torch.float64), 'signature.site.w': tensor([3.], dtype=torch.float64)}
    """  # noqa: E501
    out = {_RULE + rule: like.new_zeros(0)}
    for name, shape in site_shapes(layout).items():
        out[_SITE + name] = torch.tensor(shape, dtype=like.dtype, device=like.device)
    for name, family in (families or {}).items():
        out[f"{_FAMILY}{family}.{name}"] = like.new_zeros(0)
    if components is not None:
        out[_COMPONENTS] = torch.tensor([components], dtype=like.dtype, device=like.device)
    return out


def split_signature(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's entries: (its signature, the rest)."""
    signature = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    return signature, {k: v for k, v in state.items() if not k.startswith(PREFIX)}


def _decode(signature: dict[str, Any]) -> tuple[list[str], dict[str, tuple[int, ...]], set]:
    rules = [k[len(_RULE) :] for k in signature if k.startswith(_RULE)]
    shapes, dtypes = {}, set()
    for key, value in signature.items():
        if not torch.is_tensor(value):
            raise ValueError(f"state_dict entry {key!r} is not a tensor")
        dtypes.add(value.dtype)
        if key.startswith(_SITE):
            if value.dim() != 1 or not torch.isfinite(value).all():
                raise ValueError(f"state_dict entry {key!r} is not a site's shape")
            shapes[key[len(_SITE) :]] = tuple(int(n) for n in value.tolist())
    return rules, shapes, dtypes


def _guide_structure(signature: dict[str, Any]) -> tuple[dict[str, str], int | None]:
    """Each site's family and the number of components a signature records."""
    families = {}
    for key in signature:
        if key.startswith(_FAMILY):
            family, _, site = key[len(_FAMILY) :].partition(".")
            families[site] = family
    components = signature.get(_COMPONENTS)
    if components is not None:
        if components.numel() != 1 or not torch.isfinite(components).all():
            raise ValueError(f"state_dict entry {_COMPONENTS!r} is not a number of components")
        components = int(components.item())
    return families, components


def check_signature(saved: dict[str, Any], current: dict[str, Tensor]) -> None:
    """Refuse a checkpoint whose signature is not the current run's, naming what differs.

    Args:
        saved: the checkpoint's entries (all of them, or only its signature).
        current: :func:`checkpoint_signature` of the run loading it.

    Raises:
        ValueError: no signature, another rule, another dtype, other sites, other shapes or
            another order of the sites.
    """
    saved, _ = split_signature(saved)
    if not saved:
        raise ValueError(
            "state_dict carries no model signature (entries 'signature.*': the sites, their "
            "shapes, the rule and the dtype): it was not saved by this version of "
            "BLR.state_dict(); refit, or load it with the pyro_blr version that saved it"
        )
    rules, shapes, dtypes = _decode(saved)
    want_rules, want_shapes, want_dtypes = _decode(current)
    if rules != want_rules:
        raise ValueError(
            f"state_dict is of rule {rules[0] if len(rules) == 1 else rules!r}, this driver runs "
            f"{want_rules[0]!r}: load it into a BLR with the rule "
            f"{rules[0] if rules else None!r} (e.g. pb.BLR(model, guide, "
            f"{rules[0] if rules else None!r}))"
        )
    (dtype,) = want_dtypes
    if dtypes != want_dtypes:
        found = ", ".join(sorted(str(d) for d in dtypes))
        raise ValueError(
            f"state_dict is of dtype {found}, this guide is {dtype}: a checkpoint resumes "
            f"only in its own dtype; build the guide and pass the data in {found} "
            "(e.g. X.double() for float64)"
        )
    if shapes == want_shapes and list(shapes) == list(want_shapes):
        _check_guide_structure(saved, current)
        return
    problems = []
    only_saved = [n for n in shapes if n not in want_shapes]
    only_here = [n for n in want_shapes if n not in shapes]
    if only_saved:
        problems.append(f"sites {only_saved} are in the checkpoint, not in this model")
    if only_here:
        problems.append(f"sites {only_here} are in this model, not in the checkpoint")
    for name, shape in want_shapes.items():
        if name in shapes and shapes[name] != shape:
            problems.append(f"site {name!r} has shape {shapes[name]} there, {shape} here")
    if not problems:
        problems.append(
            f"the sites come in another order ({list(shapes)} there, {list(want_shapes)} here)"
        )
    raise ValueError(
        "state_dict is of another model: " + "; ".join(problems) + ". Load a checkpoint into "
        "a guide of the model that saved it; nothing was changed"
    )


def _check_guide_structure(saved: dict[str, Any], current: dict[str, Tensor]) -> None:
    """Refuse a checkpoint of a mixture with another number of components, or whose sites
    have other families, naming them (the model's sites agree already)."""
    families, components = _guide_structure(saved)
    want_families, want_components = _guide_structure(current)
    if components != want_components:
        there = "no mixture" if components is None else f"a mixture of {components} components"
        here = "none" if want_components is None else str(want_components)
        raise ValueError(
            f"state_dict is of {there}, this guide has {here}: load it into a guide built as "
            f"the one that saved it (pb.AutoMixture(model, num_components={components})); "
            "nothing was changed"
        )
    if families != want_families:
        differ = [
            f"site {name!r} has a {families.get(name)} family there, a {family} one here"
            for name, family in want_families.items()
            if families.get(name) != family
        ] or [f"the checkpoint's families are {families}, this guide's {want_families}"]
        raise ValueError(
            "state_dict is of another guide: " + "; ".join(differ) + ". Build the guide with "
            "the families of the one that saved it (families={...}); nothing was changed"
        )


def signed(
    state: dict[str, Any], layout: LatentLayout, rule: str, like: Tensor, **structure: Any
) -> dict[str, Any]:
    """A stepper's checkpoint: ``state`` and the run's signature (what ``state_dict`` returns);
    ``structure``: the ``families`` and ``components`` of :func:`checkpoint_signature`."""
    return {**state, **checkpoint_signature(layout, rule, like, **structure)}


def unsigned(
    state: dict[str, Any], layout: LatentLayout, rule: str, like: Tensor, **structure: Any
) -> dict[str, Any]:
    """The entries of a checkpoint without its signature, once :func:`check_signature` has found
    it the run's own (what ``load_state_dict`` checks first)."""
    check_signature(state, checkpoint_signature(layout, rule, like, **structure))
    return split_signature(state)[1]
