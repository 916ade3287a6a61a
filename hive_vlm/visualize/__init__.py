"""`hive_vlm.visualize`: `hive visualize`, per-level cross-attention maps and gates of a saved HIVE model (the maps and
the figure in `maps`, the command in `cli`)."""

from .maps import HiveAttentionFigure, cross_attention_maps, visualize


__all__ = ["HiveAttentionFigure", "cross_attention_maps", "visualize"]
