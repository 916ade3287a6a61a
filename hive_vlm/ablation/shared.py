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

from hive_vlm.files import atomic_folder, write_json_atomic
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.training.recipe import HiveRecipe
from modeling_hive import HiveProcessor

from .settings import HiveStudySettings


IMAGE_TOKEN = "<image>"
SHAPES_VIEWS = {"mme": None, "scienceqa": "lmms-eval", "okvqa": None}  # the lowercasing shapes tokenizer writes "a", not "A"


class HiveStudyRun(HiveRecipeRun):
    """The recipe run behind a study: `HiveRecipeRun`, with an image placeholder token in the tokenizer for the fusions
    that put image tokens inline (LLaVA's and BLIP-2's)."""

    def build_processor(self) -> HiveProcessor:
        processor = super().build_processor()
        if IMAGE_TOKEN not in processor.tokenizer.get_vocab():
            processor.tokenizer.add_tokens([IMAGE_TOKEN], special_tokens=True)
        return processor

    def uses_shapes(self) -> bool:
        return any(source is None or "shapes" in (source.source, source.format)
                   for source in (self.recipe.data.stage2, self.recipe.data.stage3))  # fmt: skip


def shared_recipe(recipe: HiveRecipe) -> dict:
    """The parts of a recipe the shared folder is built from (a study with other values needs a new folder)."""
    values = dataclasses.asdict(recipe)
    return json.loads(json.dumps({key: values[key] for key in ("seed", "model", "data", "stage0", "stage1", "eval")}))


def evaluations(recipe: HiveRecipe, study: HiveStudySettings, run: HiveStudyRun, folder: Path) -> tuple[list[dict], dict]:
    """The benchmarks every fusion is scored on at the end, and the one scored at each stage-3 checkpoint.

    Without an `eval` section, a recipe trained on hive-shapes is scored on its test and compositional test splits
    (per level) and on the MME, ScienceQA and OK-VQA layouts of its test split; the checkpoints read validation.
    """
    from hive_vlm.data.shapes_layouts import to_mme, to_okvqa, to_scienceqa

    shapes = str(folder / "data" / "shapes")
    if recipe.eval is None:
        if not run.uses_shapes():
            raise ValueError("the recipe has no `eval` section: name what the study scores, e.g. eval: [{benchmark: llava-qa, "
                             "data: test.json, image_root: images/}] (a LLaVA-format file whose answers are the references).")  # fmt: skip
        entries = [{"label": split, "benchmark": "hive-shapes", "data": shapes, "split": split, "image_root": None, "limit": None,
                    "protocol": None} for split in ("test", "test_compositional")]  # fmt: skip
        entries += [{"label": name, "benchmark": name, "data": "shapes", "split": None, "image_root": None, "limit": None,
                     "protocol": protocol} for name, protocol in SHAPES_VIEWS.items()]  # fmt: skip
    else:
        entries = [{"label": e.label, "benchmark": e.benchmark, "data": e.data, "split": e.split, "image_root": e.image_root,
                    "limit": e.limit, "protocol": e.protocol} for e in recipe.eval]  # fmt: skip
    if study.benchmarks is not None:
        missing = sorted(set(study.benchmarks) - {entry["label"] for entry in entries})
        if missing:
            raise ValueError(f"study.benchmarks: {missing} name no evaluation; the recipe's are {[e['label'] for e in entries]}.")
        entries = [entry for entry in entries if entry["label"] in study.benchmarks]
    views = {"mme": to_mme, "scienceqa": to_scienceqa, "okvqa": to_okvqa}
    for entry in entries:
        if entry["data"] != "shapes":
            continue
        if entry["benchmark"] == "hive-shapes":
            entry["data"] = shapes
        elif entry["benchmark"] in views:
            path = folder / "data" / "views" / entry["benchmark"]
            if not path.is_dir():
                with atomic_folder(path) as out:
                    views[entry["benchmark"]](run.shapes()[entry["split"] or "test"]).save_to_disk(str(out))
            entry.update(data=str(path), split=None)
        else:
            raise ValueError(f"eval: {entry['benchmark']} has no hive-shapes layout; `data: shapes` serves hive-shapes, mme, "
                             "scienceqa and okvqa.")  # fmt: skip
    if run.uses_shapes() and recipe.eval is None:
        validation = {"label": "validation", "benchmark": "hive-shapes", "data": shapes, "split": "validation", "image_root": None,
                      "limit": None, "protocol": None}  # fmt: skip
    else:
        validation = dict(entries[0])
    return entries, validation


def prepare_shared(recipe: HiveRecipe, study: HiveStudySettings, folder) -> dict:
    """Builds what every fusion shares into `folder` (once; an existing `meta.json` means done, and an interrupted
    preparation resumes its stages) and returns the meta."""
    from .probe import probe_encoder

    folder = Path(folder)
    if (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("recipe") != shared_recipe(recipe):
            raise ValueError(f"{folder} was built from another recipe (model, data, stage 0-1 or eval); pass a new --out.")
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
    meta = {"recipe": shared_recipe(recipe), "image_token_id": processor.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
            "caption_prompt": recipe.stage_arguments(2, "unused", use_cpu=True).caption_prompt,
            "max_length": {f"stage{stage}": recipe.stage_arguments(stage, "unused", use_cpu=True).max_length
                           or recipe.data.max_length for stage in (2, 3)},
            "vocab_size": len(processor.tokenizer),
            "vision": str(vision.relative_to(folder)),
            "text": str(text.relative_to(folder)) if text.is_relative_to(folder) else str(text),
            "evaluations": entries, "validation": validation, "shapes": run.uses_shapes()}  # fmt: skip
    if run.uses_shapes():
        from transformers import AutoModel

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
