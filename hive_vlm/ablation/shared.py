"""What every fusion and seed of a study shares, built once into `shared/` by the recipe's own stages.

    shared/processor/, data/, backbones/, stage0/, stage1/   the recipe's run (`HiveRecipeRun`): its tokenizer with an
                                                             image placeholder, stage 0 (when the recipe has one) and
                                                             stage 1 of the encoder
    shared/data/stage2/, data/stage3/                        the captions and chats every fusion trains on
    shared/data/views/                                       hive-shapes test in the MME, ScienceQA and OK-VQA layouts
    shared/meta.json                                         where each piece is, the evaluations, the probe before

Example:
    >>> recipe, study = load_study("recipes/tiny-shapes.yaml", quick=True)  # doctest: +SKIP
    >>> meta = prepare_shared(recipe, study, "study/shared")  # doctest: +SKIP
    >>> meta["vision"], meta["text"]  # doctest: +SKIP
    ('stage1/model', 'backbones/text')
"""

import dataclasses
import json
import time
from pathlib import Path

from transformers import AutoModel

from hive_vlm.data.shapes_layouts import to_mme, to_okvqa, to_scienceqa
from hive_vlm.files import atomic_folder, write_json_atomic
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.training.recipe import HiveRecipe
from modeling_hive import HiveProcessor

from .probe import probe_encoder
from .settings import HiveStudySettings, evaluation_entries, uses_shapes


IMAGE_TOKEN = "<image>"


class HiveStudyRun(HiveRecipeRun):
    """The recipe run behind a study: `HiveRecipeRun`, with an image placeholder token in the tokenizer for the fusions
    that put image tokens inline (LLaVA's and BLIP-2's)."""

    def build_processor(self) -> HiveProcessor:
        processor = super().build_processor()
        if IMAGE_TOKEN not in processor.tokenizer.get_vocab():
            processor.tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        return processor


def shared_recipe(recipe: HiveRecipe, study: HiveStudySettings) -> dict:
    """What the shared folder is built from and records (a study with other values needs a new folder): the recipe's
    backbones, data, stages 0 and 1 and evaluations, the captions' prompt and lengths, and the study's choice of
    evaluations and probe."""
    values = dataclasses.asdict(recipe)
    kept = {key: values[key] for key in ("seed", "model", "data", "stage0", "stage1", "eval")}
    stage2, stage3 = (recipe.stage_arguments(stage, "unused", use_cpu=True) for stage in (2, 3))
    kept.update(caption_prompt=stage2.caption_prompt, max_length=[stage2.max_length, stage3.max_length], benchmarks=study.benchmarks,
                probe=[study.eval["probe_epochs"], study.eval["probe_limit"]])  # fmt: skip
    return json.loads(json.dumps(kept))


def evaluations(recipe: HiveRecipe, study: HiveStudySettings, run: HiveStudyRun, folder: Path) -> tuple[list[dict], dict]:
    """The benchmarks every fusion is scored on at the end (`evaluation_entries`, with hive-shapes and its benchmark
    layouts written into `folder`), and the one scored at each stage-3 checkpoint: hive-shapes validation for a
    hive-shapes recipe without `eval`, else the first evaluation."""
    views = {"mme": to_mme, "scienceqa": to_scienceqa, "okvqa": to_okvqa}
    shapes = str(folder / "data" / "shapes")
    entries = evaluation_entries(recipe, study.benchmarks)
    for entry in entries:
        if entry["data"] != "shapes":
            continue
        if entry["benchmark"] == "hive-shapes":
            entry["data"] = shapes
            continue
        split = entry["split"] or "test"
        path = folder / "data" / "views" / f"{entry['benchmark']}-{split}"
        if not path.is_dir():
            with atomic_folder(path) as out:
                views[entry["benchmark"]](run.shapes()[split]).save_to_disk(str(out))
        entry.update(data=str(path), split=None)
    if uses_shapes(recipe) and recipe.eval is None:
        validation = {"label": "validation", "benchmark": "hive-shapes", "data": shapes, "split": "validation", "image_root": None,
                      "limit": None, "protocol": None}  # fmt: skip
    else:
        validation = dict(entries[0])
    return entries, validation


def prepare_shared(recipe: HiveRecipe, study: HiveStudySettings, folder) -> dict:
    """Builds what every fusion shares into `folder` (once; an existing `meta.json` means done, and an interrupted
    preparation resumes its stages) and returns the meta."""
    folder = Path(folder)
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("recipe") != shared_recipe(recipe, study):
            raise ValueError(f"{folder} was built from another recipe or study (backbones, data, stages 0-1, captions, "
                             "evaluations or probe); pass a new --out.")  # fmt: skip
        return meta
    started = time.perf_counter()
    run = HiveStudyRun(recipe, folder, resume=True)
    run.run(stages=[stage for stage in recipe.stages if stage < 2])  # stage 0 (when the recipe has it) and stage 1
    processor = run.processor()
    for stage in (2, 3):
        path = folder / "data" / f"stage{stage}"
        if not path.is_dir():
            with atomic_folder(path) as out:
                run.dataset(stage).save_to_disk(str(out))
    entries, validation = evaluations(recipe, study, run, folder)
    vision, text = Path(run.output_dir / "stage1" / "model"), Path(run.llm_source())
    meta = {"recipe": shared_recipe(recipe, study), "image_token_id": processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "caption_prompt": recipe.stage_arguments(2, "unused", use_cpu=True).caption_prompt,
            "max_length": {f"stage{stage}": recipe.stage_arguments(stage, "unused", use_cpu=True).max_length
                           or recipe.data.max_length for stage in (2, 3)},
            "vocab_size": len(processor.tokenizer),
            "vision": str(vision.relative_to(folder)),
            "text": str(text.relative_to(folder)) if text.is_relative_to(folder) else str(text),
            "evaluations": entries, "validation": validation, "shapes": uses_shapes(recipe)}  # fmt: skip
    if uses_shapes(recipe):
        encoder = AutoModel.from_pretrained(vision)
        meta["linear_probe_before"] = probe_encoder(encoder, processor.image_processor, folder / "data" / "shapes",
                                                    study.eval["probe_epochs"], study.eval["probe_limit"])  # fmt: skip
    meta["seconds"] = round(time.perf_counter() - started, 1)
    write_json_atomic(folder / "meta.json", meta)
    return meta


def shared_path(folder, value: str) -> str:
    """A meta path (`vision`, `text`): relative to the shared folder, or a Hub id or absolute folder as given."""
    path = Path(folder) / value
    return str(path) if path.exists() else value
