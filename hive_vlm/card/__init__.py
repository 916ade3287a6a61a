"""`hive_vlm.card`: `hive card` (its arguments and `run` in `cli`); the card itself is built by `hive_vlm.hub.card`."""
