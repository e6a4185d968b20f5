"""Guides: variational families for unchanged Pyro models."""

from pyro_blr.guides.expfamily import AutoExpFamily
from pyro_blr.guides.flow import FLOWS, AutoFlow

__all__ = ["FLOWS", "AutoExpFamily", "AutoFlow"]
