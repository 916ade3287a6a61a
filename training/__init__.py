"""`hive_vlm.training` (the repository's `training/` folder): a `Trainer` and an arguments class per stage, the recipe.

    lm_*, mim_*, alignment_*, finetune_*  stages 0 to 3: each a `*_config.py` (arguments) and a `*_trainer.py`
    hive_trainer   what stages 2 and 3 share
    callbacks      the callbacks every stage runs with
    recipe         one YAML file: the data, the model and each stage's hyperparameters
    pipeline       a recipe's stages run in order
    export_vision  the trained encoder as a plain transformers model (`hive export-vision`)
"""
