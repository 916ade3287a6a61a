"""`hive demo`: the whole HIVE method end to end on one machine, offline, in minutes on a CPU.

Phases (each prints its progress):
    1. data       hive-shapes generated from a seed; a word-level tokenizer built from its text
    2. backbones  a tiny ViT and a tiny Llama-style LLM built from configs
    3. stage 0    the LLM pretrained on the synthetic text (captions and question-answer chats): HIVE assumes a
                  pretrained LLM, and none can be downloaded here
    4. stages 1-3 masked image modelling, hierarchical alignment, joint fine-tuning (`HiveRecipeRun`)
    5. eval       hive-shapes test and test_compositional per level next to the majority-answer baseline, and the
                  MME-, ScienceQA- and OK-VQA-layout views, each scored by its official scorer
    6. hub folder the final model, its card and its results, ready for `hive push`
    7. pipeline   that folder loaded back with `pipeline("visual-question-answering", trust_remote_code=True)`,
                  asked about a freshly generated image
    8. figure     per-level cross-attention maps and gates (`hive visualize`)

Layout of `--out`:
    run/        the training run (processor/, data/, backbones/, stage0-3/, final/; see hive_vlm.training.pipeline)
    model/      the Hub-ready folder
    results/    one results JSON per evaluation, baselines.json and summary.json
    fresh_scene.png, attention.png

Example:
    $ hive demo --out hive-demo
    $ hive demo --out /tmp/demo --fast
    $ hive demo --text-model Qwen/Qwen2-0.5B --vision-model google/siglip-base-patch16-224
"""

import argparse
import dataclasses
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path


from hive_vlm.data.shapes import LEVELS, QUESTION_TYPES, HiveShapesConfig, generate_scene
from hive_vlm.data.shapes_layouts import SHORT_ANSWER_PROMPT, to_mme, to_okvqa, to_scienceqa
from hive_vlm.files import atomic_folder
from hive_vlm.hub.push import push_training_run
from hive_vlm.data.shapes_text import CAPTION_PROMPT
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.training.recipe import HiveRecipe, parse_recipe


@dataclass
class HiveDemoSettings:
    """Sizes, data and schedules of one demo run.

    Args:
        image_size, patch_size: hive-shapes image side and the ViT's patch side, in pixels.
        vision_hidden_size, vision_layers, text_hidden_size, text_layers: backbone sizes (4 heads each).
        text_initializer_range: the tiny LLM's `initializer_range`, about 1/sqrt(width) rather than the 0.02 made for
            wide models. HIVE's own blocks and projectors are initialised with it too (HiveConfig takes the LLM's).
        vision_initializer_range: the tiny ViT's `initializer_range`. At 0.02 its patch embeddings start far fainter
            than the unit-scale sine-cosine position table, and a ViT of this size trained on shape labels alone
            reaches 37% in 1500 steps; at 0.1 it reaches 85% in 600.
        cross_attention_layers: `[vision_layer, text_layer]` pairs, one per level of the hierarchy.
        hierarchy_mode, cross_attention_intermediate_size, gate_init: as in `HiveConfig`.
        num_train, num_test: hive-shapes scenes in train and in each of test and test_compositional.
        pretrain_steps, pretrain_batch_size, pretrain_learning_rate: stage 0, the LLM's causal-LM pretraining.
        turns_per_chat: question-answer turns per stage-3 chat (see `hive_vlm.data.shapes_text.shapes_conversations`).
        stage1, stage2, stage3: the recipe's `TrainingArguments` fields of each stage. Stage 3 is where the model
            learns to pick out the object a question names, and it gains from every chat it sees: 86,400 chats
            (2700 steps of 32) score 73.1% on test, 28,800 score 63.8% (docs/demo.md). Steps of 32 cost less per
            chat than steps of 16 on 2 CPU cores.
        eval_batch_size: prompts per `generate()` call during evaluation.
    """

    image_size: int = 64
    patch_size: int = 8
    vision_hidden_size: int = 64
    vision_layers: int = 4
    text_hidden_size: int = 64
    text_layers: int = 4
    text_initializer_range: float = 0.1
    vision_initializer_range: float = 0.1
    cross_attention_layers: list = field(default_factory=lambda: [[0, 1], [1, 2], [3, 3]])
    hierarchy_mode: str = "paired"
    cross_attention_intermediate_size: int | None = 128
    gate_init: float = 0.1
    num_train: int = 4000
    num_test: int = 200
    pretrain_steps: int = 150
    pretrain_batch_size: int = 32
    pretrain_learning_rate: float = 3e-3
    turns_per_chat: int = 3
    stage1: dict = field(default_factory=lambda: {"max_steps": 30, "per_device_train_batch_size": 32, "learning_rate": 1e-3,
                                                  "mask_ratio": 0.5})
    stage2: dict = field(default_factory=lambda: {"max_steps": 2000, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
                                                  "train_vision": True})
    stage3: dict = field(default_factory=lambda: {"max_steps": 2700, "per_device_train_batch_size": 32, "learning_rate": 2e-3,
                                                  "vision_learning_rate": 1e-3, "lora_r": 16, "lora_alpha": 32})
    eval_batch_size: int = 32


FULL = HiveDemoSettings()
FAST = HiveDemoSettings(
    image_size=32, patch_size=8, vision_hidden_size=32, vision_layers=4, text_hidden_size=32, text_layers=4,
    cross_attention_layers=[[0, 1], [1, 2], [3, 3]], num_train=64, num_test=8,
    pretrain_steps=10, pretrain_batch_size=16,
    stage1={"max_steps": 3, "per_device_train_batch_size": 16, "learning_rate": 1e-3, "mask_ratio": 0.5},
    stage2={"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-3},
    stage3={"max_steps": 3, "per_device_train_batch_size": 8, "learning_rate": 1e-3, "vision_learning_rate": 1e-4,
            "lora_r": 4, "lora_alpha": 8},
    eval_batch_size=16,
)  # fmt: skip
EVAL_SPLITS = ("test", "test_compositional")
# The shapes tokenizer lowercases, so answers come out as "a", not "A": LLaVA's ScienceQA parser is case-sensitive,
# lmms-eval's is not.
PROTOCOLS = {"scienceqa": "lmms-eval"}


MAX_LENGTH = 384


class HiveDemoProgress:
    """Prints numbered phases with the time each took."""

    def __init__(self, num_phases: int):
        self.num_phases = num_phases
        self.index = 0
        self.start = time.perf_counter()
        self.times = {}
        self._current = None

    def phase(self, name: str, what: str) -> None:
        self.finish()
        self.index += 1
        self._current = (name, time.perf_counter())
        print(f"\n[{self.index}/{self.num_phases}] {what}  (t={self.elapsed():.0f}s)", flush=True)

    def finish(self) -> None:
        if self._current is not None:
            name, started = self._current
            self.times[name] = round(time.perf_counter() - started, 1)
            print(f"[{self.index}/{self.num_phases}] {name} done in {self.times[name]:.1f}s", flush=True)
            self._current = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class HiveDemoRun(HiveRecipeRun):
    """The demo's training run: `HiveRecipeRun`, with the tiny ViT starting from sine-cosine position embeddings.

    Example:
        >>> run = HiveDemoRun(demo_recipe(FAST, "runs/demo"))  # doctest: +SKIP
        >>> run.run()  # stages 0 to 3  # doctest: +SKIP
        'runs/demo/final'
    """

    def vision_source(self) -> str:
        """As `HiveRecipeRun.vision_source`; a ViT built from a config starts from 2-D sine-cosine position embeddings."""
        model = self.recipe.model
        path = self.output_dir / "backbones" / "vision"
        if model.vision_model or path.is_dir():
            return super().vision_source()
        import torch
        from transformers import AutoConfig, AutoModel

        torch.manual_seed(self.recipe.seed)
        encoder = AutoModel.from_config(AutoConfig.for_model(**model.vision_config))
        embeddings = getattr(getattr(encoder, "embeddings", None), "position_embeddings", None)
        if isinstance(embeddings, torch.nn.Parameter):
            config = encoder.config
            grid = config.image_size // config.patch_size
            table = sincos_position_embeddings(grid, config.hidden_size)  # (grid * grid, hidden)
            extra = embeddings.shape[1] - table.shape[0]  # CLS (and register) positions start at zero
            with torch.no_grad():
                embeddings.copy_(torch.cat([table.new_zeros(extra, table.shape[1]), table])[None])
        with atomic_folder(path) as out:
            encoder.save_pretrained(out)
        return str(path)


def sincos_position_embeddings(grid: int, dim: int):
    """MAE's fixed 2-D sine-cosine position table, (grid * grid, dim), rows in row-major patch order: half the
    channels encode the row, half the column. Adapted from facebookresearch/mae `util/pos_embed.py`.

    A tiny ViT trained from scratch for minutes keeps its learned position embeddings near their 0.02-scale
    initialisation, too faint for "left of" or "above" to survive into its features; this table starts them at unit
    scale (they stay trainable).

    Example:
        >>> sincos_position_embeddings(8, 64).shape
        torch.Size([64, 64])
    """
    import torch

    if dim % 4:
        raise ValueError(f"the sine-cosine table needs a width divisible by 4, got {dim}.")

    def one_axis(positions):  # (N,) -> (N, dim / 2)
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))
        angles = positions.float()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_axis(rows.flatten()), one_axis(columns.flatten())], dim=1)


def demo_recipe(settings: HiveDemoSettings, output_dir, text_model: str | None = None, vision_model: str | None = None,
                cross_attention_layers=None, seed: int = 0) -> HiveRecipe:
    """The demo's `HiveRecipe`: `settings` for sizes and schedules.

    Args:
        settings (`HiveDemoSettings`): sizes, data and schedules.
        output_dir (`str`): the run's folder.
        text_model (`str`, *optional*): a user's LLM (Hub id or folder), with its own tokenizer. When unset, the tiny
            LLM is built from `settings`, with a word-level tokenizer built from hive-shapes, and stage 0 pretrains it.
        vision_model (`str`, *optional*): an encoder's Hub id or folder; a tiny ViT is built from `settings` when unset.
        cross_attention_layers (`list`, *optional*): the layer pairs; `settings.cross_attention_layers` when unset.
        seed (`int`): the run's seed (data, initialisation, data order).
    """
    model = {"hive": {
        "cross_attention_layers": cross_attention_layers or settings.cross_attention_layers,
        "hierarchy_mode": settings.hierarchy_mode, "gate_init": settings.gate_init,
    }}  # fmt: skip
    if settings.cross_attention_intermediate_size:
        model["hive"]["cross_attention_intermediate_size"] = settings.cross_attention_intermediate_size
    if text_model:
        model["text_model"] = str(text_model)
    else:
        model["text_config"] = text_config(settings)
    if vision_model:
        model["vision_model"] = str(vision_model)
    else:
        model["vision_config"] = vision_config(settings)
    # One checkpoint, at the last step: its trainer_state.json gives the card each stage's step count and loss.
    common = {"logging_steps": 50, "report_to": "none", "save_total_limit": 1}
    values = {
        "name": "demo-shapes",
        "output_dir": str(output_dir),
        "seed": seed,
        "model": model,
        "data": {
            "tokenizer": None if text_model else "shapes",
            "max_length": MAX_LENGTH,
            "shapes": {"seed": seed, "image_size": settings.image_size, "num_train": settings.num_train,
                       "num_validation": 8, "num_test": settings.num_test,
                       "num_test_compositional": settings.num_test, "turns_per_chat": settings.turns_per_chat},
            "stage1": {"source": "shapes"},
            "stage2": {"source": "shapes"},
            "stage3": {"source": "shapes"},
        },
        # Stage 0 saves nothing but its model: HIVE assumes a pretrained LLM, and this one is pretrained in minutes.
        **({} if text_model else {"stage0": {
            "max_steps": settings.pretrain_steps, "per_device_train_batch_size": settings.pretrain_batch_size,
            "learning_rate": settings.pretrain_learning_rate, "logging_steps": 50, "save_strategy": "no",
        }}),
        "stage1": {**common, "save_steps": settings.stage1["max_steps"], **settings.stage1},
        "stage2": {**common, "save_steps": settings.stage2["max_steps"], "caption_prompt": CAPTION_PROMPT, **settings.stage2},
        "stage3": {**common, "save_steps": settings.stage3["max_steps"], **settings.stage3},
    }  # fmt: skip
    return parse_recipe(values, where="demo recipe")


def vision_config(settings: HiveDemoSettings) -> dict:
    """The tiny ViT's config (4 heads)."""
    return {"model_type": "vit", "image_size": settings.image_size, "patch_size": settings.patch_size,
            "hidden_size": settings.vision_hidden_size, "num_hidden_layers": settings.vision_layers,
            "num_attention_heads": 4, "intermediate_size": 2 * settings.vision_hidden_size,
            "initializer_range": settings.vision_initializer_range}  # fmt: skip


def text_config(settings: HiveDemoSettings) -> dict:
    """The tiny Llama-style LLM's config (4 heads, 2 key/value heads); the run sizes its vocabulary to the tokenizer."""
    return {"model_type": "llama", "hidden_size": settings.text_hidden_size, "num_hidden_layers": settings.text_layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": 2 * settings.text_hidden_size,
            "max_position_embeddings": MAX_LENGTH, "initializer_range": settings.text_initializer_range}  # fmt: skip


def majority_answers(scenes) -> dict[str, str]:
    """The most frequent answer of each question type among `scenes` (the majority-answer baseline's table)."""
    counts = {}
    for questions in scenes["questions"]:
        for question in questions:
            counts.setdefault(question["type"], Counter())[question["answer"]] += 1
    return {qtype: counter.most_common(1)[0][0] for qtype, counter in counts.items()}


def baseline_scores(benchmark, data, majority: dict[str, str], split: str | None = None) -> dict:
    """The majority-answer baseline on a benchmark's data, scored by the benchmark's own scorer.

    hive-shapes and OK-VQA questions get the majority answer of their type; a ScienceQA question the letter of that
    answer among its choices (A when it is not one); an MME question "Yes" (each image has one Yes and one No).

    Args:
        benchmark (`HiveBenchmark`): `HiveShapesBenchmark`, `HiveOKVQABenchmark`, `HiveScienceQABenchmark` or
            `HiveMMEBenchmark`.
        data (`str`): hive-shapes scenes (for hive-shapes) or the benchmark's layout (`save_to_disk` folder).
        majority (`dict[str, str]`): question type -> answer, from `majority_answers`.
        split (`str`, *optional*): the split of `data`.
    """
    if benchmark.name == "hive-shapes":
        from hive_vlm.eval.benchmark import load_published

        scenes = load_published(data, split=split)
        rows = [question for questions in scenes["questions"] for question in questions]
    else:
        examples = benchmark.load(data, split=split)
        rows = examples.rows.remove_columns(["image"]).to_list()
    predictions = []
    for row in rows:
        if benchmark.name == "hive-shapes":
            predictions.append(majority[row["type"]])
        elif benchmark.name == "okvqa":
            predictions.append(majority[row["question_type"]])
        elif benchmark.name == "scienceqa":
            answer = majority[row["category"]]
            predictions.append(chr(ord("A") + row["choices"].index(answer)) if answer in row["choices"] else "A")
        else:
            predictions.append("Yes")
    references = [benchmark.reference(row) for row in rows]
    return benchmark.score(predictions, references, benchmark.resolve_protocol(PROTOCOLS.get(benchmark.name)))


def scores_by_type(scenes, predictions: dict[str, str]) -> dict:
    """Accuracy (%) per question type of hive-shapes answers, scored by the benchmark's own scorer.

    The levels average question types that the model reads very differently (a blank image answers "comparison"
    as well as an image does), and attribute questions about a scene's only object need no selection of the
    object the question names. So next to each type this gives `attributes, only object` and `attributes, one of
    several`: colour, texture, shape and size questions split by the number of objects in the scene.

    Args:
        scenes: hive-shapes scenes (`scene_id`, `objects`, `questions`), as `hive data shapes` writes them.
        predictions (`dict[str, str]`): question id (`{scene_id}/{rank}`, as `HiveShapesBenchmark` names it) ->
            answer. Questions without an answer are left out.
    """
    from hive_vlm.eval.benchmark import load_metric

    groups = {}
    for scene_id, objects, questions in zip(scenes["scene_id"], scenes["objects"], scenes["questions"]):
        for rank, question in enumerate(questions):
            prediction = predictions.get(f"{scene_id}/{rank}")
            if prediction is None:
                continue
            names = [question["type"]]
            if question["level"] in ("low", "mid"):
                names.append("attributes, only object" if len(objects) == 1 else "attributes, one of several")
            for name in names:
                groups.setdefault(name, []).append((prediction, question["answer"], question["level"]))
    metric = load_metric("hive_shapes_accuracy")
    order = [qtype for level in LEVELS for qtype in QUESTION_TYPES[level]] + ["attributes, only object", "attributes, one of several"]
    return {name: metric.compute(predictions=[p for p, _, _ in groups[name]], references=[a for _, a, _ in groups[name]],
                                 levels=[level for _, _, level in groups[name]])["accuracy"]
            for name in order if name in groups}  # fmt: skip


def write_views(scenes, folder) -> dict[str, str]:
    """The MME, ScienceQA and OK-VQA layouts of `scenes`, each saved under `folder/<benchmark>`; name -> folder."""
    paths = {}
    for name, view in (("mme", to_mme), ("scienceqa", to_scienceqa), ("okvqa", to_okvqa)):
        path = Path(folder) / name
        with atomic_folder(path) as out:
            view(scenes).save_to_disk(str(out))
        paths[name] = str(path)
    return paths


def evaluate_demo(model_dir, shapes_dir, views: dict[str, str], results_dir, majority: dict[str, str],
                  batch_size: int = 32) -> dict:
    """Scores the model on hive-shapes (`EVAL_SPLITS`) and the benchmark views, next to the majority baseline.

    Every model result is written by `evaluate_benchmark` to `results_dir/<name>.json` (the file `hive card` reads);
    the baselines go to `results_dir/baselines.json`. The hive-shapes test split is also answered with every image
    replaced by a blank grey one (`hive-shapes-test-blank-image.json`): what the trained model gets from the
    question alone. Returns name -> {"file", "protocol", "scores", "baseline"}, plus "blank_image" on the test entry
    and, on each hive-shapes entry, "by_type": `scores_by_type` of the model, the majority baseline and (on test)
    the blank image.
    """
    from hive_vlm.eval.benchmark import load_published
    from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
    from hive_vlm.eval.mme import HiveMMEBenchmark
    from hive_vlm.eval.okvqa import HiveOKVQABenchmark
    from hive_vlm.eval.runner import evaluate_benchmark, generate_answers, load_model, model_identity
    from hive_vlm.files import write_json_atomic
    from hive_vlm.eval.scienceqa import HiveScienceQABenchmark

    model, processor = load_model(model_dir)
    identity = model_identity(model_dir)
    jobs = [(f"hive-shapes-{split}", HiveShapesBenchmark(), str(shapes_dir), split) for split in EVAL_SPLITS]
    jobs += [(b.name, b, views[b.name], None) for b in (HiveMMEBenchmark(), HiveScienceQABenchmark(), HiveOKVQABenchmark())]
    results, scenes = {}, {}
    for name, benchmark, data, split in jobs:
        out = Path(results_dir) / f"{name}.json"
        predict = partial(generate_answers, model, processor, max_new_tokens=benchmark.max_new_tokens)
        result = evaluate_benchmark(benchmark, data, predict, out, protocol=PROTOCOLS.get(benchmark.name), split=split,
                                    batch_size=batch_size, model=identity)  # fmt: skip
        baseline = baseline_scores(benchmark, data, majority, split=split)
        results[name] = {"file": str(out), "protocol": result["protocol"], "scores": result["scores"], "baseline": baseline}
        if split is not None:
            scenes[split] = load_published(data, split=split)
            majority_predictions = {f"{scene_id}/{rank}": majority[question["type"]]
                                    for scene_id, questions in zip(scenes[split]["scene_id"], scenes[split]["questions"])
                                    for rank, question in enumerate(questions)}  # fmt: skip
            results[name]["by_type"] = {"HIVE": scores_by_type(scenes[split], _predictions(result)),
                                        "majority baseline": scores_by_type(scenes[split], majority_predictions)}  # fmt: skip
        print(f"      {name}: {_headline(name, result['scores'])} (majority baseline {_headline(name, baseline)})", flush=True)

    from PIL import Image

    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    benchmark = HiveShapesBenchmark()

    def blind(images, prompts):
        return generate_answers(model, processor, [blank] * len(prompts), prompts, max_new_tokens=benchmark.max_new_tokens)

    out = Path(results_dir) / "hive-shapes-test-blank-image.json"
    result = evaluate_benchmark(benchmark, str(shapes_dir), blind, out, split="test", batch_size=batch_size, model=identity)
    results["hive-shapes-test"]["blank_image"] = result["scores"]
    results["hive-shapes-test"]["by_type"]["HIVE, blank image"] = scores_by_type(scenes["test"], _predictions(result))
    print(f"      hive-shapes-test, blank image: {_headline('hive-shapes', result['scores'])}", flush=True)
    write_json_atomic(Path(results_dir) / "baselines.json", {
        "description": "majority answer per question type, computed on the train split, scored by each benchmark's scorer",
        "majority_answers": majority, "scores": {name: entry["baseline"] for name, entry in results.items()},
    })  # fmt: skip
    return results


def _predictions(result: dict) -> dict[str, str]:
    """Question id -> answer, from an `evaluate_benchmark` result."""
    return {sample["id"]: sample["prediction"] for sample in result["samples"]}


def _headline(name: str, scores: dict) -> str:
    if name.startswith("hive-shapes"):
        return " ".join(f"{level} {scores[level]:.1f}" for level in LEVELS if level in scores)
    if name == "mme":
        return f"perception {scores['perception']:.1f}"
    if name == "okvqa":
        return f"VQA accuracy {scores['vqa_accuracy']:.1f}"
    return f"accuracy {scores['accuracy']:.1f}"


def ask_fresh_scene(model_dir, scene) -> list[dict]:
    """Loads `model_dir` through `pipeline("visual-question-answering", trust_remote_code=True)` and asks one question
    per level about `scene`; returns {"level", "question", "answer", "truth"} per question."""
    from transformers import pipeline

    vqa = pipeline("visual-question-answering", model=str(model_dir), trust_remote_code=True)
    picked = [next(q for q in scene.questions if q["level"] == level) for level in LEVELS
              if any(q["level"] == level for q in scene.questions)]  # fmt: skip
    outputs = vqa([{"image": scene.image, "question": q["question"] + SHORT_ANSWER_PROMPT} for q in picked])
    return [{"level": q["level"], "question": q["question"], "answer": output[0]["answer"], "truth": q["answer"]}
            for q, output in zip(picked, outputs)]  # fmt: skip


def real_backbone_pairs(settings: HiveDemoSettings, vision_model: str | None, text_model: str | None) -> list:
    """Three layer pairs spread over the depths of the given backbones (the tiny ones' depths otherwise)."""
    from transformers import AutoConfig

    from modeling_hive.configuration_hive import spread_layer_pairs

    vision_depth, text_depth = settings.vision_layers, settings.text_layers
    if vision_model:
        config = AutoConfig.from_pretrained(vision_model)
        vision_depth = (getattr(config, "vision_config", None) or config).num_hidden_layers
    if text_model:
        text_depth = AutoConfig.from_pretrained(text_model).get_text_config(decoder=True).num_hidden_layers
    return spread_layer_pairs(len(settings.cross_attention_layers), vision_depth, text_depth)


def run_demo(out, settings: HiveDemoSettings = FULL, text_model: str | None = None, vision_model: str | None = None,
             seed: int = 0) -> dict:
    """Runs the whole demo into `out` (see the module docstring) and returns its summary (also in results/summary.json).

    Args:
        out (`str` or `os.PathLike`): a new or empty folder.
        settings (`HiveDemoSettings`): `FULL` (the README's figures) or `FAST` (tiny, for tests).
        text_model (`str`, *optional*): an LLM's Hub id or folder; stage 0 is then skipped and its tokenizer used.
        vision_model (`str`, *optional*): an encoder's Hub id or folder, instead of the tiny ViT.
        seed (`int`): seeds the data, the initialisations and the training order.

    Example:
        >>> from hive_vlm.demo import FAST, run_demo
        >>> summary = run_demo("/tmp/hive-demo", FAST)  # doctest: +SKIP
        >>> sorted(summary["results"])  # doctest: +SKIP
        ['hive-shapes-test', 'hive-shapes-test_compositional', 'mme', 'okvqa', 'scienceqa']
    """
    from hive_vlm.files import write_json_atomic
    from hive_vlm.visualize import visualize

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty; pass a new folder to --out (or delete this one).")
    run_dir, results_dir = out / "run", out / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    pretrain = text_model is None
    pairs = real_backbone_pairs(settings, vision_model, text_model) if (text_model or vision_model) else None
    recipe = demo_recipe(settings, run_dir, text_model, vision_model, pairs, seed=seed)
    run = HiveDemoRun(recipe, run_dir)
    progress = HiveDemoProgress(8)

    progress.phase("data", f"hive-shapes: {settings.num_train} train scenes, {settings.num_test} test and "
                           f"{settings.num_test} compositional test scenes of {settings.image_size}px; evaluation views")
    shapes = run.shapes()
    views = write_views(shapes["test"], run_dir / "data" / "views")
    majority = majority_answers(shapes["train"])

    progress.phase("backbones", "tokenizer, processor and backbones")
    processor = run.processor()
    vision = run.vision_source()
    print(f"      vision: {vision}\n      tokenizer: {len(processor.tokenizer)} tokens; layer pairs "
          f"{recipe.model.hive['cross_attention_layers']} ({settings.hierarchy_mode})", flush=True)

    progress.phase("stage0", "stage 0: pretraining the LLM on the synthetic text" if pretrain else
                   f"stage 0 skipped: the LLM is {text_model}")
    if pretrain:
        run.run([0])

    progress.phase("stages1-3", "stages 1-3: masked image modelling, hierarchical alignment, joint fine-tuning")
    final = run.run([1, 2, 3])
    push_training_run(recipe, run_dir, [1, 2, 3])  # the training record and model card, as `hive train` writes them

    progress.phase("eval", "evaluation: hive-shapes per level and the MME, ScienceQA and OK-VQA views")
    results = evaluate_demo(final, run_dir / "data" / "shapes", views, results_dir, majority, settings.eval_batch_size)

    progress.phase("hub", "Hub-ready folder with its model card")
    model_dir = out / "model"
    # Only hive-shapes goes into the model-index: the card names MME, ScienceQA and OK-VQA results after the real
    # benchmarks (lmms-lab/...), and these are hive-shapes in their layouts; their files stay in results/.
    write_hub_folder(final, model_dir, [results[f"hive-shapes-{split}"]["file"] for split in EVAL_SPLITS])

    progress.phase("pipeline", "pipeline('visual-question-answering') on a freshly generated image")
    scene = generate_scene(seed, "test", settings.num_test, HiveShapesConfig(image_size=settings.image_size))
    scene.image.save(out / "fresh_scene.png")
    answers = ask_fresh_scene(model_dir, scene)
    for item in answers:
        mark = "right" if item["answer"].strip().lower() == item["truth"].lower() else "wrong"
        print(f"      [{item['level']}] {item['question']}\n            answer: {item['answer']!r}  truth: "
              f"{item['truth']!r}  ({mark})", flush=True)

    progress.phase("figure", "cross-attention maps and gates (hive visualize)")
    figure = visualize(model_dir, out / "fresh_scene.png", answers[0]["question"] + SHORT_ANSWER_PROMPT,
                       out / "attention.png")
    print(f"      {figure.path}: {figure.num_level_panels} level panels", flush=True)
    progress.finish()

    summary = {
        "seed": seed, "settings": dataclasses.asdict(settings), "text_model": text_model, "vision_model": vision_model,
        "layer_pairs": recipe.model.hive["cross_attention_layers"], "seconds": round(progress.elapsed(), 1),
        "phase_seconds": progress.times, "cpu_count": os.cpu_count(),
        "results": {name: {key: entry[key] for key in ("protocol", "scores", "baseline", "blank_image", "by_type") if key in entry} for name, entry in results.items()},
        "fresh_scene": {"scene_id": scene.scene_id, "answers": answers}, "model": str(model_dir),
        "figure": str(figure.path),
    }  # fmt: skip
    write_json_atomic(results_dir / "summary.json", summary)
    print(summary_table(summary), flush=True)
    return summary


def write_hub_folder(final, folder, result_files: list[str]) -> Path:
    """`final` with its model card (evaluation results as a model-index), copied whole to `folder` (atomically).

    The card is written in `final` first, where `hive card` finds the run's stage folders next to it.
    """
    from hive_vlm.hub.card import write_model_card

    write_model_card(final, result_files)
    with atomic_folder(folder) as out:
        shutil.copytree(final, out, dirs_exist_ok=True)
    return Path(folder)


def summary_table(summary: dict) -> str:
    """The demo's results as a plain-text table (the README's Demo section shows the full run's)."""
    results = summary["results"]
    lines = ["", "=" * 78, f"HIVE demo summary: {summary['seconds']:.0f} s ({summary['seconds'] / 60:.1f} min) on {summary['cpu_count']} CPU cores, "
             f"seed {summary['seed']}, layer pairs {summary['layer_pairs']}", "=" * 78]  # fmt: skip
    lines.append(f"{'hive-shapes accuracy (%)':<40}{'low':>8}{'mid':>8}{'high':>8}{'all':>8}")
    for split in EVAL_SPLITS:
        entry = results[f"hive-shapes-{split}"]
        rows = [("HIVE", entry["scores"]), ("HIVE, blank image", entry.get("blank_image")), ("majority baseline", entry["baseline"])]
        for label, scores in rows:
            if scores is not None:
                row = "".join(f"{scores.get(key, float('nan')):>8.1f}" for key in (*LEVELS, "accuracy"))
                lines.append(f"  {split if label == 'HIVE' else '':<20}{label:<18}{row}")
    columns = [("test", "HIVE"), ("test", "HIVE, blank image"), ("test", "majority baseline"),
               ("test_compositional", "HIVE"), ("test_compositional", "majority baseline")]  # fmt: skip
    lines.append(f"\n{'accuracy by question type (%)':<36}{'test':>8}{'blank':>8}{'majority':>10}{'compos.':>10}{'majority':>10}")
    rows = [(f"{qtype} ({level})", qtype) for level in LEVELS for qtype in QUESTION_TYPES[level]]
    rows += [("attributes, only object", "attributes, only object"), ("attributes, one of several", "attributes, one of several")]
    widths = (8, 8, 10, 10, 10)
    for label, key in rows:
        cells = [results[f"hive-shapes-{split}"].get("by_type", {}).get(column, {}).get(key) for split, column in columns]
        lines.append(f"  {label:<34}" + "".join(f"{cell:>{width}.1f}" if cell is not None else f"{'-':>{width}}"
                                                 for cell, width in zip(cells, widths)))  # fmt: skip
    lines.append("  (test: HIVE, HIVE on a blank image, majority baseline; compos.: test_compositional, HIVE and majority.\n"
                 "   attributes: colour, texture, shape and size questions, about a scene's only object or one of 2-4.)")
    lines.append(f"\n{'benchmark views of hive-shapes test':<52}{'HIVE':>12}{'majority':>12}")
    views = (("mme", "perception", "MME layout: perception score (max 800)"),
             ("scienceqa", "accuracy", "ScienceQA layout: accuracy (%)"),
             ("okvqa", "vqa_accuracy", "OK-VQA layout: VQA accuracy (%)"))  # fmt: skip
    for name, key, label in views:
        entry = results[name]
        lines.append(f"  {label + ' [' + entry['protocol'] + ']':<50}{entry['scores'][key]:>12.1f}{entry['baseline'][key]:>12.1f}")
    lines.append("\nfresh image (pipeline('visual-question-answering') on the saved folder):")
    for item in summary["fresh_scene"]["answers"]:
        lines.append(f"  [{item['level']}] {item['question']}  answer: {item['answer']!r}, truth: {item['truth']!r}")
    lines.append("\nphase times (s): " + ", ".join(f"{name} {seconds:.0f}" for name, seconds in summary["phase_seconds"].items()))
    lines.append(f"model: {summary['model']}\nfigure: {summary['figure']}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    parser.add_argument("--out", default="hive-demo", help="A new or empty folder for everything the demo writes (default hive-demo).")
    parser.add_argument("--fast", action="store_true", help="Tiny sizes and a few steps (under 2 minutes; the accuracy means nothing).")
    parser.add_argument("--text-model", help="An LLM's Hub id or folder instead of the tiny one (stage 0 is then skipped).")
    parser.add_argument("--vision-model", help="A vision encoder's Hub id or folder instead of the tiny ViT.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the data, the initialisations and the training order.")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_demo(args.out, FAST if args.fast else FULL, text_model=args.text_model, vision_model=args.vision_model, seed=args.seed)
    return 0
