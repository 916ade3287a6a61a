"""`hive_vlm.ablation`: `hive ablate`, fusion strategies compared on equal terms, on the data of any `hive train`
recipe.

    settings  the recipe's `study` section (fusions, seeds, ...) and what the training loop reads from its stages
    shared    what every run shares, built by the recipe's own stages 0 and 1
    fusions   the six fusions around the same encoder and LLM
    run       one fusion trained and evaluated with one seed
    probe     the linear probe of an encoder on hive-shapes' labels
    report    mean ± std over seeds, seed-noise verdicts, markdown, JSON and plots
    study     every fusion with every seed, then the report
    cli       the command: its arguments (shared with `hive transfer`) and `run`
"""
