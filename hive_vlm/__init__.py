"""`hive_vlm`: HIVE's training, data, evaluation and command-line side (the model lives in `modeling_hive`).

The repository's layer folders are installed inside it (pyproject.toml's `[tool.setuptools.package-dir]`): `data/` as
`hive_vlm.data`, `training/` as `hive_vlm.training`, `eval/` as `hive_vlm.eval`, `bench/` as `hive_vlm.bench` and
`model_cards/` as `hive_vlm.model_cards`. Beside them: the `hive` command (`cli`), atomic files (`files`), tiny
backbone configs (`tiny`), and one package per command (`hive_vlm.<command>.cli`).
"""
