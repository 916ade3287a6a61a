"""`hive_vlm.model_cards` (the repository's `model_cards/` folder): the template of the model, training and evaluation
sections `hive card` fills (`hive_template.md`, read by `hive_vlm.hub.card`); the rest of the card comes from
`modeling_hive.card_hive`."""
