"""`hive_vlm.data` (the repository's `data/` folder): hive-shapes, the loaders of real data and the collators.

    shapes, shapes_layouts, shapes_text  hive-shapes: scenes and questions, benchmark and stage layouts, text
    loaders    real training data through `datasets`, normalised to `schema`'s layouts
    schema     the layouts every loader and hive-shapes view produces and the collators read
    collators  one collator per training stage
    tokenizer  a word-level tokenizer built offline, for tiny LLMs and the demo
    prompts    the published evaluation protocols' prompts
    report     what the loaders skipped and the collators truncated
    cli        `hive data`
"""
