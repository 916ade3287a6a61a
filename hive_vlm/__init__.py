"""HIVE: the training, data, evaluation and command-line side of the project (the model lives in `modeling_hive`)."""
