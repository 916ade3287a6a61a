"""`hive_vlm.transfer`: `hive transfer`, encoders pre-trained with HIVE and its alternatives, each carried into
transformers' own LLaVA.

    settings  the recipe's `transfer` section (variants, seeds, the transfer LLM, what trains)
    run       one encoder transferred with one seed
    study     pre-training (`hive ablate`), every transfer, then the report
    cli       the command: its arguments and `run`
"""
