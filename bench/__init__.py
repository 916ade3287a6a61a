"""`hive_vlm.bench` (the repository's `bench/` folder): `hive bench`, HIVE against transformers' LLaVA on identical
backbones.

    sizes, models       the shared backbone configs and token counts, and the models built from them
    phases, measures    prefill, decode and a training step; timing and memory primitives
    flops, roofline     analytic FLOPs and the memory-bandwidth limit of a decode step
    benchmark, compiled every measure in one run; the compiled decode and the batch sweep
    tables, cli         the printed tables; `hive bench`
"""
