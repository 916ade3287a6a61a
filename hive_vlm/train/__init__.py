"""`hive_vlm.train`: `hive train`, the command that runs a recipe (the stages themselves are `hive_vlm.training`'s)."""
