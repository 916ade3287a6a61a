"""`hive_vlm.hub`: what a run sends to the Hub, used by `hive card`, `hive push`, `hive train` and `hive demo`.

    card    the model card of a saved folder, with its evaluation results as a model-index
    push    the allow-listed upload of a saved folder, and a training run's upload
    record  a run's training record and each stage folder's provenance
"""
