"""Guides: variational families for unchanged Pyro models."""

from pyro_blr.guides.expfamily import AutoExpFamily
from pyro_blr.guides.flow import FLOWS, AutoFlow
from pyro_blr.guides.mixture import AutoMixture

__all__ = ["FLOWS", "AutoExpFamily", "AutoFlow", "AutoMixture"]
