"""`hive_vlm.demo`: `hive demo`, the whole HIVE method end to end on one machine, offline (see `cli` for the phases).

    settings    HiveDemoSettings (FULL, FAST) and the hive train recipe they make
    run         the run: stages 0-3 through the recipe, evaluation, Hub folder, pipeline, figure
    evaluation  hive-shapes per level and question type, the benchmark views, the majority baseline
    report      the summary table
    cli         the command
"""

from .evaluation import baseline_scores, evaluate_demo, majority_answers, scores_by_type, write_views
from .report import summary_table
from .run import HiveDemoProgress, HiveDemoRun, ask_fresh_scene, run_demo, sincos_position_embeddings, write_hub_folder
from .settings import EVAL_SPLITS, FAST, FULL, MAX_LENGTH, PROTOCOLS, HiveDemoSettings, demo_recipe, text_config, vision_config


__all__ = [
    "EVAL_SPLITS", "FAST", "FULL", "MAX_LENGTH", "PROTOCOLS", "HiveDemoProgress", "HiveDemoRun", "HiveDemoSettings",
    "ask_fresh_scene", "baseline_scores", "demo_recipe", "evaluate_demo", "majority_answers", "run_demo",
    "scores_by_type", "sincos_position_embeddings", "summary_table", "text_config", "vision_config", "write_hub_folder",
    "write_views",
]  # fmt: skip
