"""`hive_vlm.push`: `hive push` (its arguments and `run` in `cli`); the upload itself is `hive_vlm.hub.push`."""
