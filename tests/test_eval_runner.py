"""The generic runner: resuming a killed run, refusing a foreign one; `hive eval` with a real tiny HIVE model."""

import hashlib
import json

import pytest

from eval_fixtures import SHAPES_ANSWERS, SHAPES_SCENES, FakePredictor, png, write_mme, write_shapes
from hive_vlm.cli import main as hive
from hive_vlm.eval.benchmark import to_rgb
from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
from hive_vlm.eval.runner import evaluate_benchmark, generate_answers
from modeling_hive.pipeline_hive import HiveVisualQuestionAnsweringPipeline


class Killed(Exception):
    pass


def test_a_killed_run_resumes_where_it_stopped(tmp_path):
    data, out = write_shapes(tmp_path), tmp_path / "results.json"
    sidecar = tmp_path / "results.json.predictions.jsonl"
    calls = []

    def dies_on_second_batch(images, prompts):
        calls.append(prompts)
        if len(calls) == 2:
            raise Killed
        return FakePredictor(SHAPES_ANSWERS)(images, prompts)

    with pytest.raises(Killed):
        evaluate_benchmark(HiveShapesBenchmark(), data, dies_on_second_batch, out, batch_size=2, progress=False)
    assert not out.exists()
    lines = sidecar.read_text().splitlines()
    assert len(lines) == 3 and "header" in json.loads(lines[0])  # header + the first batch of 2
    with open(sidecar, "a") as stream:
        stream.write('{"id": "scene-1/0", "predic')  # a write torn by the kill

    resumed = FakePredictor(SHAPES_ANSWERS)
    results = evaluate_benchmark(HiveShapesBenchmark(), data, resumed, out, batch_size=2, progress=False)
    assert len(resumed.prompts) == 4  # the 2 answered questions are not asked again
    assert resumed.prompts[0].startswith("How many objects are there?")
    assert not sidecar.exists()
    uninterrupted = evaluate_benchmark(
        HiveShapesBenchmark(), data, FakePredictor(SHAPES_ANSWERS), tmp_path / "again.json", progress=False
    )
    assert results["samples"] == uninterrupted["samples"]
    assert results["scores"] == uninterrupted["scores"]


def test_predictions_of_another_model_are_not_resumed(tmp_path):
    data, out = write_shapes(tmp_path), tmp_path / "results.json"

    def killed(images, prompts):
        raise Killed

    with pytest.raises(Killed):
        evaluate_benchmark(HiveShapesBenchmark(), data, killed, out, model={"path": "a"}, progress=False)
    with pytest.raises(ValueError, match="predictions of another run"):
        evaluate_benchmark(HiveShapesBenchmark(), data, killed, out, model={"path": "b"}, progress=False)


def test_a_predictor_must_answer_every_prompt(tmp_path):
    with pytest.raises(ValueError, match="one string per prompt"):
        evaluate_benchmark(HiveShapesBenchmark(), write_shapes(tmp_path), lambda images, prompts: ["red"],
                           tmp_path / "r.json", batch_size=2, progress=False)  # fmt: skip


# ------------------------------------------------------------------------------------------- real tiny HIVE model
CORPUS = [question + " " + answer for _, _, qas in SHAPES_SCENES for question, answer, _ in qas]


@pytest.fixture(scope="module")
def corpus():
    return CORPUS


def test_generate_answers_in_a_left_padded_batch_equal_the_pipeline_one_by_one(model, processor):
    images = [to_rgb(png("red")), to_rgb(png("blue")), to_rgb(png("red"))]
    prompts = ["What colour is the circle?", "How many objects are there in this picture of shapes?", "Is it red?"]
    batched = generate_answers(model, processor, images, prompts, max_new_tokens=6)
    pipe = HiveVisualQuestionAnsweringPipeline(model=model, processor=processor)
    one_by_one = [pipe(image=image, question=prompt, max_new_tokens=6)[0]["answer"] for image, prompt in zip(images, prompts)]
    assert batched == one_by_one
    assert all(isinstance(answer, str) and answer == answer.strip() for answer in batched)


def test_hive_eval_on_hive_shapes_with_a_tiny_hive_model(saved_folder, model, processor, tmp_path, capsys):
    folder = saved_folder
    data, out = write_shapes(tmp_path), tmp_path / "shapes.json"
    code = hive(["eval", "--model", str(folder), "--benchmark", "hive-shapes", "--data", str(data),
                 "--batch-size", "4", "--out", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert set(results["scores"]) == {"accuracy", "low", "mid", "high"}
    assert results["model"] == {
        "path": str(folder.resolve()),
        "config_sha256": hashlib.sha256((folder / "config.json").read_bytes()).hexdigest(),
    }
    assert results["prompt_template"] == "{question}\nAnswer the question using a single word or phrase."
    assert "hive-shapes (normalized-exact-match)" in capsys.readouterr().out
    # The answers are the saved model's own greedy generations for each (image, prompt).
    samples = results["samples"]
    images = [to_rgb(png(color)) for _, color, qas in SHAPES_SCENES for _ in qas]
    expected = generate_answers(model, processor, images, [sample["prompt"] for sample in samples], max_new_tokens=16)
    assert [sample["prediction"] for sample in samples] == expected


def test_hive_eval_all_runs_every_benchmark_given_data(saved_folder, tmp_path):
    folder = saved_folder
    code = hive(["eval", "--model", str(folder), "--benchmark", "all", "--data", f"mme={write_mme(tmp_path)}",
                 "--data", f"hive-shapes={write_shapes(tmp_path)}", "--protocol", "mme=lmms-eval",
                 "--limit", "2", "--out", str(tmp_path / "all"), "--no-progress"])  # fmt: skip
    assert code == 0
    assert sorted(path.name for path in (tmp_path / "all").iterdir()) == ["hive-shapes.json", "mme.json"]
    mme = json.loads((tmp_path / "all" / "mme.json").read_text())
    # The first two questions belong to two images, whose second questions come along: 4 questions.
    assert mme["protocol"] == "lmms-eval" and mme["num_examples"] == 4
    assert set(mme["scores"]) == {"perception", "cognition", "per_category"}
