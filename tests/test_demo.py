"""`hive demo`: the fast run writes every artefact and each one loads; the demo's pieces do what they claim."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from huggingface_hub import ModelCard
from isolated import run_isolated
from PIL import Image
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hive_vlm.data.shapes import LEVELS, generate_shapes
from hive_vlm.demo import (
    EVAL_SPLITS,
    FAST,
    HiveDemoRun,
    HiveDemoSettings,
    baseline_scores,
    demo_recipe,
    majority_answers,
    run_demo,
    scores_by_type,
    sincos_position_embeddings,
)
from hive_vlm.eval.hive_shapes import HiveShapesBenchmark
from hive_vlm.eval.okvqa import HiveOKVQABenchmark
from hive_vlm.data.shapes_text import shapes_conversations
from hive_vlm.data.tokenizer import build_tokenizer


RESULT_NAMES = [f"hive-shapes-{split}" for split in EVAL_SPLITS] + ["mme", "scienceqa", "okvqa"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fast_demo(tmp_path_factory):
    """`hive demo --fast` run once, as a user runs it: a fresh process, offline."""
    out = tmp_path_factory.mktemp("demo") / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-m", "hive_vlm.cli", "demo", "--fast", "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    return out, result.stdout


@pytest.mark.slow
def test_fast_demo_reports_every_phase_and_the_summary(fast_demo):
    out, stdout = fast_demo
    for index in range(1, 9):
        assert f"[{index}/8]" in stdout
    assert "majority baseline" in stdout and "MME layout" in stdout and "OK-VQA layout" in stdout
    assert "by question type" in stdout and "HIVE, blank image" in stdout
    summary = json.loads((out / "results" / "summary.json").read_text())
    assert sorted(summary["results"]) == sorted(RESULT_NAMES)
    assert set(summary["phase_seconds"]) == {"data", "backbones", "stage0", "stages1-3", "eval", "hub", "pipeline", "figure"}
    assert [item["level"] for item in summary["fresh_scene"]["answers"]] == list(LEVELS)


@pytest.mark.slow
def test_fast_demo_results_are_scored_next_to_the_baseline(fast_demo):
    out, _ = fast_demo
    summary = json.loads((out / "results" / "summary.json").read_text())
    for name in RESULT_NAMES:
        results = json.loads((out / "results" / f"{name}.json").read_text())
        assert results["scores"] == summary["results"][name]["scores"]
        assert results["num_examples"] == len(results["samples"]) > 0
    for split in EVAL_SPLITS:
        entry = summary["results"][f"hive-shapes-{split}"]
        assert set(LEVELS) <= set(entry["scores"]) and set(LEVELS) <= set(entry["baseline"])
        assert json.loads((out / "results" / f"hive-shapes-{split}.json").read_text())["num_examples"] == 6 * FAST.num_test
    blank = json.loads((out / "results" / "hive-shapes-test-blank-image.json").read_text())
    assert summary["results"]["hive-shapes-test"]["blank_image"] == blank["scores"]
    assert {sample["id"] for sample in blank["samples"]} == {
        sample["id"] for sample in json.loads((out / "results" / "hive-shapes-test.json").read_text())["samples"]
    }
    for split in EVAL_SPLITS:
        by_type = summary["results"][f"hive-shapes-{split}"]["by_type"]
        expected = {"HIVE", "majority baseline"} | ({"HIVE, blank image"} if split == "test" else set())
        assert set(by_type) == expected
        assert all(0 <= value <= 100 for scores in by_type.values() for value in scores.values())
    baselines = json.loads((out / "results" / "baselines.json").read_text())
    assert set(baselines["majority_answers"]) == {"color", "texture", "shape", "size", "count", "position", "comparison"}
    assert summary["results"]["scienceqa"]["protocol"] == "lmms-eval"


@pytest.mark.slow
def test_fast_demo_artefacts_load(fast_demo, tmp_path):
    out, _ = fast_demo
    for stage in (1, 2, 3):
        assert (out / "run" / f"stage{stage}" / "model" / "config.json").is_file()
    llm = AutoModelForCausalLM.from_pretrained(out / "run" / "stage0" / "model")
    assert llm.config.hidden_size == FAST.text_hidden_size
    assert (out / "attention.png").read_bytes()[:8] == PNG_SIGNATURE
    assert Image.open(out / "fresh_scene.png").size == (FAST.image_size, FAST.image_size)

    card = ModelCard.load(out / "model" / "README.md")
    datasets_in_card = {(result.dataset_name, result.dataset_split) for result in card.data.eval_results}
    assert datasets_in_card == {("hive-shapes", "test"), ("hive-shapes", "test_compositional")}  # not the real MME etc.
    test_scores = json.loads((out / "results" / "hive-shapes-test.json").read_text())["scores"]
    in_card = {r.metric_type: r.metric_value for r in card.data.eval_results if r.dataset_split == "test"}
    assert in_card == pytest.approx(test_scores)

    loaded = run_isolated(
        f"""
        import json
        from PIL import Image
        from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline
        folder = {str(out / "model")!r}
        model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
        processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
        vqa = pipeline("visual-question-answering", model=folder, trust_remote_code=True)
        answer = vqa(image=Image.open({str(out / "fresh_scene.png")!r}), question="What color is the object?", max_new_tokens=3)
        print(json.dumps({{"model": type(model).__name__, "processor": type(processor).__name__, "answer": answer}}))
        """,
        str(tmp_path),
    )
    assert loaded["model"] == "HiveForConditionalGeneration"
    assert loaded["processor"] == "HiveProcessor"
    assert isinstance(loaded["answer"][0]["answer"], str)


def test_demo_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "something.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        run_demo(tmp_path, FAST)
    assert (tmp_path / "something.txt").read_text() == "keep me"


@pytest.fixture(scope="module")
def scenes():
    return generate_shapes(seed=3, num_train=12, num_validation=1, num_test=6, num_test_compositional=1)


def test_majority_answers_count_each_question_type(scenes):
    counts = {}
    for questions in scenes["train"]["questions"]:
        for question in questions:
            counts.setdefault(question["type"], Counter())[question["answer"]] += 1
    majority = majority_answers(scenes["train"])
    for qtype, counter in counts.items():
        assert counter[majority[qtype]] == max(counter.values())


def test_baseline_answers_the_majority_of_each_type(scenes, tmp_path):
    from hive_vlm.data.shapes_layouts import to_okvqa

    scenes.save_to_disk(str(tmp_path / "shapes"))
    to_okvqa(scenes["test"]).save_to_disk(str(tmp_path / "okvqa"))
    questions = [question for qs in scenes["test"]["questions"] for question in qs]
    majority = {question["type"]: "red" for question in questions}
    majority["count"] = "1"

    scores = baseline_scores(HiveShapesBenchmark(), str(tmp_path / "shapes"), majority, split="test")

    for level in LEVELS:
        asked = [q for q in questions if q["level"] == level]
        right = [q for q in asked if q["answer"] == majority[q["type"]]]
        assert scores[level] == pytest.approx(100 * len(right) / len(asked))
    okvqa = baseline_scores(HiveOKVQABenchmark(), str(tmp_path / "okvqa"), majority)
    right = sum(q["answer"] == majority[q["type"]] for q in questions)
    assert okvqa["vqa_accuracy"] == pytest.approx(100 * right / len(questions))


def test_scores_by_type_splits_each_type_and_attribute_questions_by_scene_size(scenes):
    test = scenes["test"]
    ids = {f"{scene_id}/{rank}": question for scene_id, questions in zip(test["scene_id"], test["questions"])
           for rank, question in enumerate(questions)}  # fmt: skip
    only = {scene_id for scene_id, objects in zip(test["scene_id"], test["objects"]) if len(objects) == 1}
    assert only, "the fixture needs a scene with one object"
    # Right about colour questions and about every question on one-object scenes, wrong ("Nothing.") elsewhere.
    predictions = {i: q["answer"].upper() + "." if q["type"] == "color" or i.rsplit("/", 1)[0] in only else "nothing"
                   for i, q in ids.items()}  # fmt: skip

    scores = scores_by_type(test, predictions)

    for qtype in {q["type"] for q in ids.values()}:
        asked = [i for i, q in ids.items() if q["type"] == qtype]
        right = [i for i in asked if qtype == "color" or i.rsplit("/", 1)[0] in only]
        assert scores[qtype] == pytest.approx(100 * len(right) / len(asked))
    several = [q for i, q in ids.items() if q["level"] != "high" and i.rsplit("/", 1)[0] not in only]
    assert scores["attributes, one of several"] == pytest.approx(100 * sum(q["type"] == "color" for q in several) / len(several))
    assert scores["attributes, only object"] == 100.0
    assert scores_by_type(test, {}) == {}


def test_conversations_ask_every_question_in_each_layout(scenes):
    train = scenes["train"]
    chats = shapes_conversations(train, seed=0, turns_per_chat=4)
    assert len(chats) == 3 * len(train)  # 9 turns per scene: chats of 4, 4 and 1 turns
    for scene_index in range(len(train)):
        turns = []
        for chat in chats.select(range(3 * scene_index, 3 * scene_index + 3))["messages"]:
            assert chat[0]["content"][0]["type"] == "image"
            assert all(part["type"] == "text" for message in chat[1:] for part in message["content"])
            turns += [(chat[i]["content"][-1]["text"], chat[i + 1]["content"][0]["text"]) for i in range(0, len(chat), 2)]
        short = {prompt.split("\n")[0]: answer for prompt, answer in turns if prompt.endswith("single word or phrase.")}
        for question in train[scene_index]["questions"]:
            assert short.pop(question["question"]) == question["answer"]
        for pair in train[scene_index]["yes_no"]:
            assert short.pop(pair["question"].replace(" Please answer yes or no.", "")) == pair["answer"]
        assert not short
        (choice_prompt, letter), = [(p, a) for p, a in turns if p.endswith("choices directly.")]
        options = dict(line.split(". ", 1) for line in choice_prompt.split("\n")[1:-1])
        asked = next(q for q in train[scene_index]["questions"] if choice_prompt.startswith(q["question"] + "\n"))
        assert options[letter] == asked["answer"]


def test_recipe_carries_the_settings(tmp_path):
    settings = HiveDemoSettings(cross_attention_layers=[[0, 1], [3, 3]], gate_init=0.25, num_train=10, num_test=4)
    recipe = demo_recipe(settings, tmp_path, text_model="llm-folder", seed=7)
    assert recipe.stage0 is None and recipe.data.tokenizer is None  # a given LLM: its own tokenizer, no stage 0
    pretrained = demo_recipe(settings, tmp_path, seed=7)
    assert pretrained.stages == [0, 1, 2, 3] and pretrained.stage_arguments(0, "x").max_steps == settings.pretrain_steps
    assert pretrained.data.shapes["turns_per_chat"] == settings.turns_per_chat
    assert recipe.model.text_model == "llm-folder"
    assert recipe.model.hive == {"cross_attention_layers": [[0, 1], [3, 3]], "hierarchy_mode": "paired", "gate_init": 0.25,
                                 "cross_attention_intermediate_size": settings.cross_attention_intermediate_size}
    assert recipe.model.vision_config["image_size"] == settings.image_size
    assert recipe.data.shapes["num_train"] == 10 and recipe.data.shapes["seed"] == 7
    assert recipe.stage_arguments(3, "x").max_steps == settings.stage3["max_steps"]


def test_sincos_table_encodes_row_and_column():
    table = sincos_position_embeddings(4, 16)  # half the channels for the row, half for the column
    assert table.shape == (16, 16)
    rows, columns = table[:, :8], table[:, 8:]
    for index in range(16):
        row, column = divmod(index, 4)
        assert torch.equal(rows[index], rows[4 * row])  # same row, same first half
        assert torch.equal(columns[index], columns[column])  # same column, same second half
    assert len({tuple(vector.tolist()) for vector in table}) == 16
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_position_embeddings(4, 18)


def test_tiny_vit_starts_from_the_sincos_table(tmp_path):
    settings = HiveDemoSettings(image_size=32, patch_size=8, vision_hidden_size=32, num_train=4, num_test=2)
    run = HiveDemoRun(demo_recipe(settings, tmp_path, text_model="unused"), tmp_path)

    encoder = AutoModel.from_pretrained(run.vision_source())

    embeddings = encoder.embeddings.position_embeddings[0]  # (1 + 16, 32): CLS, then the 4x4 patches
    assert torch.equal(embeddings[0], torch.zeros(32))
    assert torch.allclose(embeddings[1:], sincos_position_embeddings(4, 32))
