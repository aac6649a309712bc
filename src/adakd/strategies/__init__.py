"""Strategies: HOW the student learns. Importing this package registers them."""
from .base import Phase, Strategy, StrategyContext
from . import standard  # noqa: F401  (registers "standard")
from . import sakd  # noqa: F401  (registers "sakd")
from . import abl  # noqa: F401  (registers "abl")

__all__ = ["Phase", "Strategy", "StrategyContext"]
