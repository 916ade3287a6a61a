"""`hive visualize`: per-level cross-attention maps and gates of a saved HIVE model (the figure lives in `maps`)."""

from .maps import HiveAttentionFigure, add_arguments, cross_attention_maps, run, visualize


__all__ = ["HiveAttentionFigure", "add_arguments", "cross_attention_maps", "run", "visualize"]
