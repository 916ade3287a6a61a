"""`hive train`: the command that runs a recipe (the stages themselves live in `hive_vlm.training`)."""
