"""`hive visualize`: per-level cross-attention maps and gates of a saved HIVE model (the figure and the command live in
`maps`)."""

from .maps import HiveAttentionFigure, cross_attention_maps, visualize


__all__ = ["HiveAttentionFigure", "cross_attention_maps", "visualize"]
