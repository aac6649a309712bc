"""Strategies: HOW the student learns. Importing this package registers them."""
from .base import Phase, Strategy, StrategyContext
from . import standard  # noqa: F401  (registers "standard")

__all__ = ["Phase", "Strategy", "StrategyContext"]
