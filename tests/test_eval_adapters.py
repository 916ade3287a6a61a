"""Every benchmark adapter end to end on a tiny file in its published layout, with a fake predictor (issue 6)."""

import json

import datasets
import pytest

from eval_fixtures import (
    GQA_ANSWERS,
    MME_ANSWERS,
    OKVQA_ANSWERS,
    SHAPES_ANSWERS,
    SQA_ANSWERS,
    ZERO_SHOT_ANSWERS,
    FakePredictor,
    mme_dataset,
    write_classification,
    write_gqa,
    write_mme,
    write_okvqa,
    write_scienceqa,
    write_shapes,
)
from hive_vlm.eval.benchmark import load_published
from hive_vlm.eval.classification import HiveZeroShotClassificationBenchmark
from hive_vlm.eval.gqa import HiveGQABenchmark
from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
from hive_vlm.eval.mme import HiveMMEBenchmark
from hive_vlm.eval.okvqa import HiveOKVQABenchmark
from hive_vlm.eval.runner import evaluate_benchmark
from hive_vlm.eval.scienceqa import HiveScienceQABenchmark


def run(benchmark, data, table, out, **kwargs):
    predictor = FakePredictor(table)
    results = evaluate_benchmark(benchmark, data, predictor, out, progress=False, **kwargs)
    assert json.loads(out.read_text()) == json.loads(json.dumps(results))
    return results, predictor


@pytest.mark.parametrize("layout", ["repo", "parquet", "save_to_disk"])
def test_mme_reads_every_published_form_and_scores_both_protocols(tmp_path, layout):
    data = write_mme(tmp_path, layout)
    official, predictor = run(HiveMMEBenchmark(), data, MME_ANSWERS, tmp_path / "mme.json")
    # count/1.png: both right -> acc 100 + acc+ 100 = 200 = perception.
    # code_reasoning/2.png: "  Yes" is "other" (wrong), "No" right -> acc 50 + acc+ 0 = 50 = cognition.
    assert official["scores"]["perception"] == pytest.approx(200.0)
    assert official["scores"]["cognition"] == pytest.approx(50.0)
    # lmms-eval strips "  Yes": both right -> 200.
    lmms_eval, _ = run(HiveMMEBenchmark(), data, MME_ANSWERS, tmp_path / "mme-lmms.json", protocol="lmms-eval")
    assert (lmms_eval["scores"]["perception"], lmms_eval["scores"]["cognition"]) == pytest.approx((200.0, 200.0))
    assert official["protocol"] == "official" and lmms_eval["protocol"] == "lmms-eval"
    assert [sample["id"] for sample in official["samples"]] == [
        "count/1.png#0", "code_reasoning/2.png#0", "count/1.png#1", "code_reasoning/2.png#1",
    ]  # fmt: skip
    assert official["samples"][0]["prompt"] == "Is there one object in the image?\nAnswer the question using a single word or phrase."
    assert official["num_examples"] == 4 and official["split"] == "test"


def test_mme_limit_keeps_both_questions_of_each_image(tmp_path):
    # limit=1 takes count/1.png; its second question (row 3, after another image's) comes along: 2 questions.
    results, predictor = run(HiveMMEBenchmark(), write_mme(tmp_path), MME_ANSWERS, tmp_path / "mme.json", limit=1)
    assert [sample["id"] for sample in results["samples"]] == ["count/1.png#0", "count/1.png#1"]
    assert results["scores"]["perception"] == pytest.approx(200.0)  # count: both right
    assert results["scores"]["cognition"] == pytest.approx(0.0)  # no cognition subtask evaluated


@pytest.mark.parametrize("protocol, expected", [("official", 25.0), ("llava", 75.0), ("lmms-eval", 100.0)])
def test_gqa_joins_the_two_configurations_and_keeps_balanced_questions(tmp_path, protocol, expected):
    # Balanced: q1 "Red"/red, q2 "green"/green, q3 "left."/left, q5 "tshirt"/t-shirt (q4 is not balanced).
    # official: only q2 -> 1/4. llava (rstrip ".", lower): q1, q2, q3 -> 3/4. lmms-eval: all four -> 4/4.
    # The answers to q1 and q2 come from the image's colour: a wrong join would change them.
    results, _ = run(HiveGQABenchmark(), write_gqa(tmp_path), GQA_ANSWERS, tmp_path / "gqa.json", protocol=protocol)
    assert [sample["id"] for sample in results["samples"]] == ["q1", "q2", "q3", "q5"]
    assert results["scores"]["accuracy"] == pytest.approx(expected)


def test_okvqa_scores_vqa_accuracy(tmp_path):
    data = write_okvqa(tmp_path)
    official, _ = run(HiveOKVQABenchmark(), data, OKVQA_ANSWERS, tmp_path / "okvqa.json")
    # "2" vs two,two,2,3x7 -> 90; "1,000 t-shirts" -> "1000 tshirts" -> 90; "tennis" vs ten "Tennis" -> 0.
    assert official["scores"]["vqa_accuracy"] == pytest.approx((90 + 90 + 0) / 3)
    lmms_eval, _ = run(HiveOKVQABenchmark(), data, OKVQA_ANSWERS, tmp_path / "okvqa-l.json", protocol="lmms-eval")
    # lmms-eval: 90; "1000 t shirts" -> 0; "tennis" == "tennis" -> 100.
    assert lmms_eval["scores"]["vqa_accuracy"] == pytest.approx((90 + 0 + 100) / 3)
    assert official["samples"][0]["reference"] == {"answers": ["two", "two", "2"] + ["3"] * 7}


@pytest.mark.parametrize("protocol, expected", [("llava", 50.0), ("lmms-eval", 75.0)])
def test_scienceqa_img_reads_its_configuration_and_drops_questions_without_image(tmp_path, protocol, expected):
    # Four questions with an image: "A" (right/right), "The answer is B." (right/wrong), "b" (wrong/right),
    # " A" (wrong/right): llava 2/4, lmms-eval 3/4. The text-only question is never asked (the table lacks it).
    results, _ = run(HiveScienceQABenchmark(), write_scienceqa(tmp_path), SQA_ANSWERS, tmp_path / "sqa.json",
                     protocol=protocol)  # fmt: skip
    assert results["num_examples"] == 4
    assert results["scores"]["accuracy"] == pytest.approx(expected)


@pytest.mark.parametrize("layout", ["questions", "scenes"])
def test_hive_shapes_reports_per_level_accuracy(tmp_path, layout):
    results, _ = run(HiveShapesBenchmark(), write_shapes(tmp_path, layout), SHAPES_ANSWERS, tmp_path / "s.json")
    # low: "Red." right, "dotted" wrong -> 50; mid: both right -> 100; high: "three" right, "no" wrong -> 50;
    # overall 4/6.
    assert results["scores"] == pytest.approx({"accuracy": 400 / 6, "low": 50.0, "mid": 100.0, "high": 50.0})
    assert [sample["id"] for sample in results["samples"]][:4] == ["scene-0/0", "scene-0/1", "scene-0/2", "scene-1/0"]


def test_zero_shot_classification(tmp_path):
    data = write_classification(tmp_path)
    results, predictor = run(HiveZeroShotClassificationBenchmark(), data, ZERO_SHOT_ANSWERS, tmp_path / "zs.json")
    # cat: "It is a cat." right; dog: "a dog" right; golden_retriever: "a retriever" wrong -> 2/3.
    assert results["scores"]["accuracy"] == pytest.approx(200 / 3)
    assert [sample["reference"]["label"] for sample in results["samples"]] == ["cat", "dog", "golden_retriever"]

    with_labels = HiveZeroShotClassificationBenchmark(with_labels=True)
    example = with_labels.load(data).rows[0]
    assert with_labels.build_prompt(example) == (
        "What type of object is in this photo? Answer with one of: cat, dog, golden retriever."
    )


def test_batches_follow_batch_size(tmp_path):
    _, predictor = run(HiveShapesBenchmark(), write_shapes(tmp_path), SHAPES_ANSWERS, tmp_path / "s.json", batch_size=4)
    assert predictor.batch_sizes == [4, 2]


def test_bad_data_and_options_raise_clear_errors(tmp_path):
    broken = tmp_path / "broken"
    datasets.DatasetDict({"test": mme_dataset().remove_columns("category")}).save_to_disk(str(broken))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['category'\]"):
        HiveMMEBenchmark().load(broken)
    with pytest.raises(ValueError, match="no protocol 'vqav2'"):
        run(HiveMMEBenchmark(), write_mme(tmp_path), MME_ANSWERS, tmp_path / "m.json", protocol="vqav2")
    with pytest.raises(ValueError, match="several configuration folders"):
        load_published(write_scienceqa(tmp_path))  # no configuration named: IMG or FULL?
    with pytest.raises(ValueError, match="neither a local file or folder"):
        load_published(tmp_path / "missing-folder")
    shapes = write_shapes(tmp_path)
    with pytest.raises(ValueError, match=r"splits \['test', 'train', 'validation'\]"):
        load_published(shapes, split="test_compositional")


def test_limit_takes_the_first_questions_of_the_scenes(tmp_path):
    results, _ = run(HiveShapesBenchmark(), write_shapes(tmp_path, "scenes"), SHAPES_ANSWERS, tmp_path / "s.json", limit=4)
    assert [sample["id"] for sample in results["samples"]] == ["scene-0/0", "scene-0/1", "scene-0/2", "scene-1/0"]
    # low: "Red." right, "dotted" wrong -> 50; mid: "a circle" right -> 100; high: "three" right -> 100; 3/4.
    assert results["scores"] == pytest.approx({"accuracy": 75.0, "low": 50.0, "mid": 100.0, "high": 100.0})
