"""The lightweight runtime: `load(OUT, rank, device)` -> `RankCheckpoint` whose `moe_layers` run this
rank's experts (`MoELayer`), and `route` for router logits. Imports neither typer nor rich."""
from .loader import RankCheckpoint, load
from .moe import Execution, MoELayer
from .routing import route

__all__ = ["Execution", "MoELayer", "RankCheckpoint", "load", "route"]
