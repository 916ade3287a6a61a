"""`hive_vlm.model_cards` (the repository's `model_cards/` folder): the model card template `hive card` fills
(`hive_template.md`, read by `hive_vlm.hub.card`)."""
