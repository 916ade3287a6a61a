"""The demo's evaluation: hive-shapes per level and per question type, the benchmark views of its test split, and
the majority-answer baseline and a blank image beside every score."""

from collections import Counter
from functools import partial
from pathlib import Path

from PIL import Image

from hive_vlm.data.shapes import LEVELS, QUESTION_TYPES
from hive_vlm.data.shapes_layouts import to_mme, to_okvqa, to_scienceqa
from hive_vlm.eval.benchmark import load_metric, load_published
from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
from hive_vlm.eval.mme import HiveMMEBenchmark
from hive_vlm.eval.okvqa import HiveOKVQABenchmark
from hive_vlm.eval.runner import evaluate_benchmark, generate_answers, load_model, model_identity
from hive_vlm.eval.scienceqa import HiveScienceQABenchmark
from hive_vlm.files import atomic_folder, write_json_atomic

from .settings import EVAL_SPLITS, PROTOCOLS


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
