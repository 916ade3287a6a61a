"""The demo's run: the recipe's stages 0-3, evaluation, the Hub folder, the pipeline on a fresh image and the figure."""

import dataclasses
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel, pipeline

from hive_vlm.data.shapes import LEVELS, HiveShapesConfig, generate_scene
from hive_vlm.data.shapes_layouts import SHORT_ANSWER_PROMPT
from hive_vlm.files import atomic_folder, write_json_atomic
from hive_vlm.hub.card import write_model_card
from hive_vlm.hub.push import push_training_run
from hive_vlm.training.pipeline import HiveRecipeRun
from hive_vlm.visualize import visualize

from .evaluation import evaluate_demo, majority_answers, write_views
from .report import summary_table
from .settings import EVAL_SPLITS, FULL, HiveDemoSettings, demo_recipe, real_backbone_pairs


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
    if dim % 4:
        raise ValueError(f"the sine-cosine table needs a width divisible by 4, got {dim}.")

    def one_axis(positions):  # (N,) -> (N, dim / 2)
        omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim / 4))
        angles = positions.float()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, columns = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    return torch.cat([one_axis(rows.flatten()), one_axis(columns.flatten())], dim=1)


def ask_fresh_scene(model_dir, scene) -> list[dict]:
    """Loads `model_dir` through `pipeline("visual-question-answering", trust_remote_code=True)` and asks one question
    per level about `scene`; returns {"level", "question", "answer", "truth"} per question."""
    vqa = pipeline("visual-question-answering", model=str(model_dir), trust_remote_code=True)
    picked = [next(q for q in scene.questions if q["level"] == level) for level in LEVELS
              if any(q["level"] == level for q in scene.questions)]  # fmt: skip
    outputs = vqa([{"image": scene.image, "question": q["question"] + SHORT_ANSWER_PROMPT} for q in picked])
    return [{"level": q["level"], "question": q["question"], "answer": output[0]["answer"], "truth": q["answer"]}
            for q, output in zip(picked, outputs)]  # fmt: skip


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
    write_model_card(final, result_files)
    with atomic_folder(folder) as out:
        shutil.copytree(final, out, dirs_exist_ok=True)
    return Path(folder)
