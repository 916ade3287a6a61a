"""`hive_vlm.export_vision`: `hive export-vision` (its arguments and `run` in `cli`); the export itself is
`hive_vlm.training.export_vision`."""
