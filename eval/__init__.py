"""`hive_vlm.eval` (the repository's `eval/` folder): one adapter per benchmark, a generic runner, `evaluate` scorers.

    benchmark       the adapter interface and the loader of published dataset layouts
    mme, gqa, okvqa, scienceqa, hive_shapes, llava_qa, classification  one adapter per benchmark
    registry        the benchmarks by name, shared by `hive eval` and the studies
    runner          batched generation, resumable predictions, the results JSON
    metrics/        the scorers, as `evaluate` modules loaded by path
    cli             `hive eval`
"""
