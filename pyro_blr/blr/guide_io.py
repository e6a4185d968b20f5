"""A guide's parameters as a rule's state: read, written, and outside writes detected by stamp.

The guide's parameters are the single source of truth: SVI steps, another driver or an edit
through ``pyro.get_param_store()`` may change them between two BLR steps, and the next step must
start from what the guide holds. Reading the guide back after every write, and comparing it with
what was written at every step, costs a fifth of a small model's step. Instead,
:class:`GuideIO` remembers, after each write, every guide parameter's identity and in-place
version counter and storage (``Tensor._version``, which every in-place write bumps: ``copy_``,
an optimizer's ``add_``; a replaced module attribute changes the identity, ``param.data = new``
the storage); while that stamp is unchanged the guide still holds exactly what was written,
and the caller's copy of the state stands for it without a read.

Note:
    A write through ``param.data.copy_(...)`` bypasses the version counter (``.data`` is
    autograd's escape hatch): it goes unseen, as it goes unseen by autograd. Pyro's optimizers,
    ``pyro.param`` and ``load_state_dict`` all write through the counter.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from pyro_blr.core import GaussianGuide

__all__ = ["GuideIO", "ParamStamp"]


class ParamStamp:
    """The identity, storage and in-place version of every parameter of a module, at one moment.

    Example:
        >>> import torch
        >>> module = torch.nn.Linear(2, 1)
        >>> stamp = ParamStamp(module)
        >>> stamp.holds(module)
        True
        >>> with torch.no_grad():
        ...     _ = module.bias.add_(1.0)
        >>> stamp.holds(module)
        False
        >>> stamp = ParamStamp(module)
        >>> module.bias.data = torch.zeros(1)  # new storage, same version counter
        >>> stamp.holds(module)
        False
    """

    __slots__ = ("params", "versions")

    def __init__(self, module: Any):
        self.params = tuple(module.parameters())
        self.versions = tuple((p._version, p.data_ptr()) for p in self.params)

    def holds(self, module: Any) -> bool:
        """Whether ``module`` has the very same parameters, none written in place since."""
        params = tuple(module.parameters())
        return len(params) == len(self.params) and all(
            p is q and (p._version, p.data_ptr()) == v
            for p, q, v in zip(params, self.params, self.versions, strict=True)
        )


class GuideIO:
    """Reads and writes a Pyro Gaussian autoguide as ``(loc, precision)`` over the flat latent
    vector (:class:`pyro_blr.core.GaussianGuide`), and tells whether the guide still holds what
    was written last.

    Args:
        guide: an initialized ``AutoNormal``, ``AutoDiagonalNormal`` or
            ``AutoMultivariateNormal``.
        layout: the model's latent layout.
    """

    def __init__(self, guide: Any, layout: Any):
        self.guide = guide
        self.view = GaussianGuide(guide, layout)
        self._stamp: ParamStamp | None = None

    def read(self, subsample: dict[str, Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """The guide's mean and precision (see :meth:`pyro_blr.core.GaussianGuide.read`)."""
        return self.view.read(subsample)

    def write(
        self, loc: Tensor, precision: Tensor, subsample: dict[str, Tensor] | None = None
    ) -> None:
        """Write the guide's Gaussian, all parameters or none (see
        :meth:`pyro_blr.core.GaussianGuide.write`), and stamp it."""
        self._stamp = None  # a write that fails leaves no stamp: the next step reads
        self.view.write(loc, precision, subsample)
        self._stamp = ParamStamp(self.guide)

    def unchanged(self) -> bool:
        """Whether the guide holds exactly what :meth:`write` wrote last (nothing written to it
        since, from here or from outside)."""
        return self._stamp is not None and self._stamp.holds(self.guide)

    def forget(self) -> None:
        """Drop the stamp: the next :meth:`unchanged` is ``False`` until the next write."""
        self._stamp = None
